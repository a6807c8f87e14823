#pragma once
/// \file
/// Hashes used in the output file: SHA-256 for identities (job, tokenizer), XXH3-64 for batch
/// checksums.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace ndif {

/// SHA-256 of `bytes` as 64 lowercase hex digits.
[[nodiscard]] std::string sha256_hex(std::string_view bytes);

/// SHA-256 of a whole file as 64 lowercase hex digits. Throws InputError if it cannot be read.
[[nodiscard]] std::string sha256_file_hex(const std::filesystem::path& path);

/// XXH3-64 of `bytes`, the checksum stored in /batches/checksum.
[[nodiscard]] std::uint64_t xxh3_64(std::span<const std::byte> bytes) noexcept;

}  // namespace ndif
