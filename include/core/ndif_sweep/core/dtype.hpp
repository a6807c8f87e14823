#pragma once
/// \file
/// The one vocabulary of element types: the job's target dtype, the tensors of a torch.save file
/// and the activations of the output file all name their types with it.

#include <cstddef>
#include <optional>
#include <string_view>

namespace ndif {

/// An element type, named as torch names it.
enum class DType { float16, bfloat16, float32, float64, int64, int32, int16, int8, uint8, bool_ };

/// "float16", "bfloat16", ... as in torch, in job specs and in the output file's `dtype` attribute.
[[nodiscard]] const char* dtype_name(DType dtype) noexcept;

/// Bytes per element.
[[nodiscard]] std::size_t element_size(DType dtype) noexcept;

/// The dtype of a name written by dtype_name, or nullopt.
[[nodiscard]] std::optional<DType> dtype_from_name(std::string_view name) noexcept;

/// True for the dtypes an activation can be stored in: float16, bfloat16 (as its uint16 bit
/// patterns) and float32.
[[nodiscard]] bool is_activation_dtype(DType dtype) noexcept;

}  // namespace ndif
