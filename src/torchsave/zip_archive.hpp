#pragma once
/// \file
/// The ZIP container of torch.save files: a reader of stored (uncompressed) entries, ZIP64
/// included, for untrusted input, and an in-memory archive on the project's one ZIP writer that
/// lays entries out as torch does (data aligned to 64 bytes through an "FB" padding extra field).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/core/zip_writer.hpp"

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

/// A torch.save archive built in memory with the project's ZIP writer (core/zip_writer.hpp),
/// entry data aligned to 64 bytes as torch aligns it. Not copyable or movable: the writer appends
/// to this object's buffer.
class ZipBuffer {
 public:
  explicit ZipBuffer(std::uint64_t zip64_threshold = 0xFFFFFFFFu)
      : writer_([this](std::span<const std::byte> b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); },
                ZipWriter::Options{zip64_threshold, 64}) {}
  ZipBuffer(const ZipBuffer&) = delete;
  ZipBuffer& operator=(const ZipBuffer&) = delete;

  /// Appends one entry.
  void add(const std::string& name, std::span<const std::byte> data) { writer_.add(name, data); }

  /// Writes the central directory and end records and returns the archive.
  [[nodiscard]] std::vector<std::byte> finish() && {
    writer_.finish();
    return std::move(bytes_);
  }

 private:
  std::vector<std::byte> bytes_;
  ZipWriter writer_;
};

}  // namespace ndif::torchsave::detail
