#pragma once
/// \file
/// Little-endian integer access to untrusted byte ranges: every read is bounds-checked and a
/// short read is a DecodeError naming what was being read.

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/core/error.hpp"

namespace ndif::torchsave::detail {

/// Throws DecodeError unless [offset, offset + length) lies inside a buffer of `size` bytes.
inline void require_range(std::size_t size, std::uint64_t offset, std::uint64_t length,
                          std::string_view what) {
  if (offset > size || length > size - offset)
    throw DecodeError(fmt::format("torch.save: {} at byte {} (+{} bytes) lies outside the {}-byte input",
                                  what, offset, length, size));
}

/// Reads an unsigned little-endian integer of sizeof(T) bytes at `offset`.
template <typename T>
[[nodiscard]] T read_le(std::span<const std::byte> bytes, std::uint64_t offset, std::string_view what) {
  require_range(bytes.size(), offset, sizeof(T), what);
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<std::uint64_t>(bytes[offset + i]) << (8 * i);
  return static_cast<T>(v);
}

/// Appends `value` as `n` little-endian bytes.
inline void put_le(std::vector<std::byte>& out, std::uint64_t value, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xFF));
}

/// Appends the bytes of a string.
inline void put_str(std::vector<std::byte>& out, std::string_view s) {
  for (char c : s) out.push_back(static_cast<std::byte>(c));
}

/// Views a byte range as characters (for names and pickle strings).
[[nodiscard]] inline std::string to_string(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace ndif::torchsave::detail
