#pragma once
/// \file
/// Hashes used in the output file: SHA-256 for identities (job, tokenizer), XXH3-64 for batch
/// checksums.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ndif {

/// SHA-256 of `bytes` as 64 lowercase hex digits.
[[nodiscard]] std::string sha256_hex(std::string_view bytes);

/// SHA-256 of a whole file as 64 lowercase hex digits. Throws InputError if it cannot be read.
[[nodiscard]] std::string sha256_file_hex(const std::filesystem::path& path);

/// SHA-256 of bytes that arrive in pieces (a file read in blocks): the same digest as sha256_hex
/// of their concatenation.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(std::string_view bytes);
  /// The digest as 64 lowercase hex digits; the object is spent afterwards.
  [[nodiscard]] std::string finish_hex();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// SplitMix64's finaliser: a cheap bijective 64-bit mixer (arithmetic modulo 2^64). The synthetic
/// model's `mix` (docs/protocol.md, the synthetic model) and the retry policy's seeded jitter are built on
/// it.
[[nodiscard]] constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

/// XXH3-64 of `bytes`, the checksum stored in /batches/checksum.
[[nodiscard]] std::uint64_t xxh3_64(std::span<const std::byte> bytes) noexcept;

}  // namespace ndif
