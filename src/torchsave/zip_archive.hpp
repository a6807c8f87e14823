#pragma once
/// \file
/// The ZIP container of torch.save files: a reader of stored (uncompressed) entries, ZIP64
/// included, for untrusted input, and a writer that lays entries out as torch does (data aligned
/// to 64 bytes through an "FB" padding extra field).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ndif::torchsave::detail {

/// One stored entry of an archive; `data` points into the archive's bytes.
struct ZipEntry {
  std::string name;
  std::span<const std::byte> data;
};

/// Lists the entries of a ZIP archive through its central directory, checking each entry's local
/// header, bounds and CRC-32. Throws DecodeError on anything malformed, on compressed or
/// encrypted entries, on duplicate names and on multi-disk archives.
[[nodiscard]] std::vector<ZipEntry> read_zip(std::span<const std::byte> archive);

/// Builds a ZIP archive of stored entries in the order they are added.
class ZipWriter {
public:
  /// Entries at least this large (and archives whose directory lies beyond it) use ZIP64 records.
  /// Lowering it lets tests exercise the ZIP64 layout without gigabyte-sized inputs.
  explicit ZipWriter(std::uint64_t zip64_threshold = 0xFFFFFFFFu) : zip64_threshold_(zip64_threshold) {}

  /// Appends one entry; its data starts at a 64-byte aligned offset of the archive.
  void add(const std::string& name, std::span<const std::byte> data);

  /// Writes the central directory and end records and returns the archive.
  [[nodiscard]] std::vector<std::byte> finish() &&;

private:
  struct Record {
    std::string name;
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;
  };
  std::uint64_t zip64_threshold_;
  std::vector<std::byte> out_;
  std::vector<Record> records_;
};

}  // namespace ndif::torchsave::detail
