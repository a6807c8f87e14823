#pragma once
/// \file
/// The pickle protocol 2 subset that torch.save uses for `data.pkl`: an unpickler restricted to
/// an allow-list of globals, and a pickler of Values whose tensors refer to storages by
/// persistent id, as torch's own pickler writes them.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::torchsave::detail {

/// The torch class naming a storage of `dtype`, e.g. "FloatStorage" for float32.
[[nodiscard]] const char* storage_type_name(DType dtype) noexcept;
/// The dtype of a storage class name of module `torch`, or nothing for an unknown name.
[[nodiscard]] std::optional<DType> dtype_of_storage_type(std::string_view name) noexcept;

/// Returns the storage persisted under `key` (the archive's `data/<key>` entry) holding `numel`
/// elements of `dtype`; called once per key, so views of one storage share it.
using StorageLoader =
    std::function<std::shared_ptr<const Storage>(const std::string& key, DType dtype, std::int64_t numel)>;

/// Runs the restricted pickle VM over `pickle` and returns the value it leaves.
/// Throws DecodeError naming the opcode and byte position on anything outside the subset.
[[nodiscard]] Value unpickle(std::span<const std::byte> pickle, const StorageLoader& load_storage);

/// A pickled value and the storages its persistent ids name: storage i has key "i".
struct Pickled {
  std::vector<std::byte> pickle;
  std::vector<std::shared_ptr<const Storage>> storages;
};

/// Pickles `value` (protocol 2) the way torch.save does. Throws InternalError on a tensor whose
/// view does not fit its storage or on nesting deeper than the reader accepts.
[[nodiscard]] Pickled pickle_value(const Value& value);

/// Nesting depth of lists, tuples and dicts that both directions accept.
inline constexpr int kMaxDepth = 200;

}  // namespace ndif::torchsave::detail
