#include "ndif_sweep/core/dtype.hpp"

#include <utility>

namespace ndif {
namespace {

struct Entry {
  DType dtype;
  const char* name;
  std::size_t size;
};

constexpr Entry kTypes[] = {
    {DType::float16, "float16", 2}, {DType::bfloat16, "bfloat16", 2}, {DType::float32, "float32", 4},
    {DType::float64, "float64", 8}, {DType::int64, "int64", 8},       {DType::int32, "int32", 4},
    {DType::int16, "int16", 2},     {DType::int8, "int8", 1},         {DType::uint8, "uint8", 1},
    {DType::bool_, "bool", 1},
};

}  // namespace

const char* dtype_name(DType dtype) noexcept {
  for (const auto& e : kTypes)
    if (e.dtype == dtype) return e.name;
  return "unknown";
}

std::size_t element_size(DType dtype) noexcept {
  for (const auto& e : kTypes)
    if (e.dtype == dtype) return e.size;
  return 0;
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (const auto& e : kTypes)
    if (name == e.name) return e.dtype;
  return std::nullopt;
}

bool is_activation_dtype(DType dtype) noexcept {
  return dtype == DType::float16 || dtype == DType::bfloat16 || dtype == DType::float32;
}

}  // namespace ndif
