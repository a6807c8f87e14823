#pragma once
/// \file
/// The one ZIP writer of the project: archives of stored (uncompressed) entries, written as they
/// go through a sink, with ZIP64 records where sizes or offsets need them. torch.save files (in
/// memory, entry data aligned to 64 bytes as torch aligns it) and `export --format npz` (to a
/// file, entries of any size) are both written with it.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace ndif {

/// CRC-32 (the ZIP and zlib polynomial) of `data`, continuing from `crc`.
[[nodiscard]] std::uint32_t crc32(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept;

class ZipWriter {
 public:
  /// Receives the archive's bytes in order.
  using Sink = std::function<void(std::span<const std::byte>)>;

  struct Options {
    /// Entries and offsets at least this large use ZIP64 records. Lowering it lets tests exercise
    /// the ZIP64 layout without gigabyte-sized inputs.
    std::uint64_t zip64_threshold = 0xFFFFFFFFu;
    /// Each entry's data starts at a multiple of this (padding in an "FB" extra field, as torch
    /// writes it); 1 for no alignment.
    std::size_t alignment = 1;
  };

  explicit ZipWriter(Sink sink, Options options) : sink_(std::move(sink)), options_(options) {}
  explicit ZipWriter(Sink sink) : ZipWriter(std::move(sink), Options{}) {}

  /// Appends an entry holding `data`. Throws InternalError for a name longer than 65535 bytes.
  void add(const std::string& name, std::span<const std::byte> data);

  /// Appends an entry of `size` bytes whose CRC-32 is `crc` (a stored entry's header comes before
  /// its data); `write` must pass exactly those bytes to the sink it is given.
  void add(const std::string& name, std::uint64_t size, std::uint32_t crc,
           const std::function<void(const Sink&)>& write);

  /// Writes the central directory and the end records. No entry may follow.
  void finish();

  /// Bytes written so far.
  [[nodiscard]] std::uint64_t size() const noexcept { return offset_; }

 private:
  struct Record {
    std::string name;
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;
  };
  void emit(const std::vector<std::byte>& bytes);

  Sink sink_;
  Options options_;
  std::uint64_t offset_ = 0;
  std::vector<Record> records_;
};

}  // namespace ndif
