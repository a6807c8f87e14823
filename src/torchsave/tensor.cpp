#include <fmt/format.h>

#include <cstring>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/value.hpp"
#include "tensor_view.hpp"

namespace ndif::torchsave {

std::int64_t Tensor::numel() const noexcept {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

namespace detail {

std::optional<std::int64_t> checked_numel(std::span<const std::int64_t> shape) noexcept {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

std::optional<std::string> view_error(std::int64_t storage_numel, std::int64_t offset,
                                      std::span<const std::int64_t> shape,
                                      std::span<const std::int64_t> stride) {
  if (shape.size() != stride.size())
    return fmt::format("size has {} dimensions but stride has {}", shape.size(), stride.size());
  if (offset < 0) return fmt::format("negative storage offset {}", offset);
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) return fmt::format("negative size {} in dimension {}", shape[i], i);
    if (stride[i] < 0) return fmt::format("negative stride {} in dimension {}", stride[i], i);
  }
  const auto numel = checked_numel(shape);
  if (!numel) return std::string("element count overflows 64 bits");
  if (*numel == 0) {
    if (offset > storage_numel)
      return fmt::format("offset {} is past the end of a storage of {} elements", offset, storage_numel);
    return std::nullopt;
  }
  // The last element a view touches is offset + sum((size-1)*stride); it must lie in the storage.
  std::int64_t last = offset;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    std::int64_t span = 0;
    if (__builtin_mul_overflow(shape[i] - 1, stride[i], &span) || __builtin_add_overflow(last, span, &last))
      return std::string("view extent overflows 64 bits");
  }
  if (last >= storage_numel)
    return fmt::format("view reaches element {} of a storage of {} elements", last, storage_numel);
  return std::nullopt;
}

}  // namespace detail

std::optional<std::span<const std::byte>> Tensor::contiguous_view() const {
  if (!storage) throw InternalError("torchsave: a tensor without storage has no bytes");
  const std::size_t es = element_size(storage->dtype);
  const auto storage_numel = static_cast<std::int64_t>(storage->data().size() / es);
  if (auto err = detail::view_error(storage_numel, offset, shape, stride))
    throw InternalError(fmt::format("torchsave: tensor view does not fit its storage: {}", *err));
  // Row-major: each stride is the product of the later sizes (a dimension of size 1 has any stride).
  std::int64_t expect = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && stride[d] != expect) return std::nullopt;
    expect *= shape[d];
  }
  const auto n = static_cast<std::size_t>(numel());
  return std::span<const std::byte>(storage->data().data() + static_cast<std::size_t>(offset) * es, n * es);
}

std::vector<std::byte> Tensor::contiguous_bytes() const {
  // contiguous_view checks the view against its storage.
  if (const auto view = contiguous_view()) return {view->begin(), view->end()};
  const std::size_t es = element_size(storage->dtype);
  const auto n = static_cast<std::size_t>(numel());
  std::vector<std::byte> out(n * es);
  if (n == 0) return out;

  const std::byte* base = storage->data().data();
  const std::size_t dims = shape.size();
  // Walk the index space with the last dimension as the inner loop; a unit inner stride is one
  // memcpy per row, which is the common case for contiguous tensors and row slices.
  const std::int64_t inner = dims == 0 ? 1 : shape[dims - 1];
  const std::int64_t inner_stride = dims == 0 ? 1 : stride[dims - 1];
  const std::size_t outer_dims = dims == 0 ? 0 : dims - 1;
  std::vector<std::int64_t> index(outer_dims, 0);
  std::int64_t pos = offset;
  std::byte* dst = out.data();
  for (std::size_t row = 0, rows = n / static_cast<std::size_t>(inner); row < rows; ++row) {
    if (inner_stride == 1) {
      std::memcpy(dst, base + static_cast<std::size_t>(pos) * es, static_cast<std::size_t>(inner) * es);
      dst += static_cast<std::size_t>(inner) * es;
    } else {
      for (std::int64_t k = 0; k < inner; ++k) {
        std::memcpy(dst, base + static_cast<std::size_t>(pos + k * inner_stride) * es, es);
        dst += es;
      }
    }
    for (std::size_t d = outer_dims; d-- > 0;) {
      pos += stride[d];
      if (++index[d] < shape[d]) break;
      pos -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
}

Tensor Tensor::from_bytes(DType dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes) {
  const auto n = detail::checked_numel(shape);
  if (!n) throw InternalError("torchsave: from_bytes() with a negative or overflowing shape");
  if (bytes.size() != static_cast<std::size_t>(*n) * element_size(dtype))
    throw InternalError(fmt::format("torchsave: from_bytes() got {} bytes for {} elements of {}",
                                    bytes.size(), *n, dtype_name(dtype)));
  Tensor t;
  t.stride.assign(shape.size(), 1);
  for (std::size_t d = shape.size(); d-- > 1;) t.stride[d - 1] = t.stride[d] * shape[d];
  t.shape = std::move(shape);
  t.storage = std::make_shared<const Storage>(Storage{dtype, std::move(bytes), {}, {}});
  return t;
}

}  // namespace ndif::torchsave
