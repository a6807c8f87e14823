#pragma once
/// \file
/// Overflow-safe checks of a strided view against its storage, shared by the reader (which
/// rejects bad views from the network) and the tensor code (which refuses to read out of bounds).

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace ndif::torchsave::detail {

/// The product of `shape`, or nothing if a size is negative or the product overflows.
[[nodiscard]] std::optional<std::int64_t> checked_numel(std::span<const std::int64_t> shape) noexcept;

/// Why the view (offset, shape, stride) does not fit a storage of `storage_numel` elements, or
/// nothing when every element it addresses lies inside the storage.
[[nodiscard]] std::optional<std::string> view_error(std::int64_t storage_numel, std::int64_t offset,
                                                    std::span<const std::int64_t> shape,
                                                    std::span<const std::int64_t> stride);

}  // namespace ndif::torchsave::detail
