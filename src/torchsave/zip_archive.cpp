#include "zip_archive.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "byte_io.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/zip_format.hpp"

namespace ndif::torchsave::detail {
namespace {

using namespace ndif::zip;  // the format's numbers

std::uint32_t crc32_of(std::span<const std::byte> data) { return ndif::crc32(data); }

struct EndRecord {
  std::uint64_t entries = 0;
  std::uint64_t dir_size = 0;
  std::uint64_t dir_offset = 0;
  std::uint64_t dir_limit = 0;  // the directory must end before the end records
};

EndRecord find_end(std::span<const std::byte> zip) {
  if (zip.size() < kEndSize)
    throw DecodeError(fmt::format("torch.save: {} bytes are too short for a ZIP archive", zip.size()));
  // The end record is followed only by its comment, so the right one is the last signature whose
  // comment length reaches exactly to the end of the input.
  const std::size_t lowest = zip.size() >= kEndSize + 0xFFFF ? zip.size() - kEndSize - 0xFFFF : 0;
  std::size_t pos = zip.size() - kEndSize;
  for (;; --pos) {
    if (read_le<std::uint32_t>(zip, pos, "end record") == kEndSig &&
        pos + kEndSize + read_le<std::uint16_t>(zip, pos + 20, "end record") == zip.size())
      break;
    if (pos == lowest)
      throw DecodeError(
          "torch.save: no ZIP end-of-central-directory record; the input is not a zipfile-format "
          "torch.save file (the legacy format is not supported)");
  }
  EndRecord end;
  const auto disk = read_le<std::uint16_t>(zip, pos + 4, "end record");
  const auto dir_disk = read_le<std::uint16_t>(zip, pos + 6, "end record");
  end.entries = read_le<std::uint16_t>(zip, pos + 10, "end record");
  end.dir_size = read_le<std::uint32_t>(zip, pos + 12, "end record");
  end.dir_offset = read_le<std::uint32_t>(zip, pos + 16, "end record");
  end.dir_limit = pos;

  if (pos >= kZip64LocatorSize &&
      read_le<std::uint32_t>(zip, pos - kZip64LocatorSize, "ZIP64 locator") == kZip64LocatorSig) {
    const std::size_t loc = pos - kZip64LocatorSize;
    const auto z64 = read_le<std::uint64_t>(zip, loc + 8, "ZIP64 locator");
    if (z64 > loc || loc - z64 < kZip64EndSize)
      throw DecodeError(fmt::format("torch.save: ZIP64 end record offset {} is out of place", z64));
    if (read_le<std::uint32_t>(zip, z64, "ZIP64 end record") != kZip64EndSig)
      throw DecodeError(fmt::format("torch.save: no ZIP64 end record at byte {}", z64));
    if (read_le<std::uint32_t>(zip, z64 + 16, "ZIP64 end record") != 0 ||
        read_le<std::uint32_t>(zip, z64 + 20, "ZIP64 end record") != 0)
      throw DecodeError("torch.save: multi-disk ZIP archives are not supported");
    end.entries = read_le<std::uint64_t>(zip, z64 + 32, "ZIP64 end record");
    end.dir_size = read_le<std::uint64_t>(zip, z64 + 40, "ZIP64 end record");
    end.dir_offset = read_le<std::uint64_t>(zip, z64 + 48, "ZIP64 end record");
    end.dir_limit = z64;
  } else if (disk != 0 || dir_disk != 0) {
    throw DecodeError("torch.save: multi-disk ZIP archives are not supported");
  }
  if (end.dir_offset > end.dir_limit || end.dir_size > end.dir_limit - end.dir_offset)
    throw DecodeError(
        fmt::format("torch.save: ZIP central directory (byte {}, {} bytes) overlaps its end record",
                    end.dir_offset, end.dir_size));
  if (end.entries > end.dir_size / kCentralHeaderSize)
    throw DecodeError(fmt::format("torch.save: ZIP claims {} entries in a {}-byte central directory",
                                  end.entries, end.dir_size));
  return end;
}

// Replaces the 32-bit fields that are 0xFFFFFFFF by their values from the ZIP64 extra field.
void apply_zip64_extra(std::span<const std::byte> extra, const std::string& name, std::uint64_t& size,
                       std::uint64_t& compressed, std::uint64_t& offset) {
  std::size_t p = 0;
  while (p + 4 <= extra.size()) {
    const auto id = read_le<std::uint16_t>(extra, p, "ZIP extra field");
    const auto len = read_le<std::uint16_t>(extra, p + 2, "ZIP extra field");
    const auto body = p + 4;
    require_range(extra.size(), body, len, "ZIP extra field of " + name);
    if (id == kZip64ExtraId) {
      std::size_t q = body;
      for (std::uint64_t* field : {&size, &compressed, &offset}) {
        if (*field != k32) continue;
        if (q + 8 > body + len)
          throw DecodeError(fmt::format("torch.save: ZIP64 extra field of {} is too short", name));
        *field = read_le<std::uint64_t>(extra, q, "ZIP64 extra field");
        q += 8;
      }
    }
    p = body + len;
  }
}

}  // namespace

std::vector<ZipEntry> read_zip(std::span<const std::byte> zip) {
  const EndRecord end = find_end(zip);
  std::vector<ZipEntry> entries;
  std::set<std::string> names;
  const std::uint64_t dir_end = end.dir_offset + end.dir_size;
  std::uint64_t p = end.dir_offset;
  for (std::uint64_t i = 0; i < end.entries; ++i) {
    require_range(dir_end, p, kCentralHeaderSize, "ZIP central directory entry");
    if (read_le<std::uint32_t>(zip, p, "central header") != kCentralHeaderSig)
      throw DecodeError(fmt::format("torch.save: bad ZIP central directory signature at byte {}", p));
    const auto flags = read_le<std::uint16_t>(zip, p + 8, "central header");
    const auto method = read_le<std::uint16_t>(zip, p + 10, "central header");
    const auto crc = read_le<std::uint32_t>(zip, p + 16, "central header");
    std::uint64_t compressed = read_le<std::uint32_t>(zip, p + 20, "central header");
    std::uint64_t size = read_le<std::uint32_t>(zip, p + 24, "central header");
    const auto name_len = read_le<std::uint16_t>(zip, p + 28, "central header");
    const auto extra_len = read_le<std::uint16_t>(zip, p + 30, "central header");
    const auto comment_len = read_le<std::uint16_t>(zip, p + 32, "central header");
    std::uint64_t offset = read_le<std::uint32_t>(zip, p + 42, "central header");
    const std::uint64_t record = kCentralHeaderSize + name_len + extra_len + comment_len;
    require_range(dir_end, p, record, "ZIP central directory entry");
    std::string name = to_string(zip.subspan(p + kCentralHeaderSize, name_len));
    apply_zip64_extra(zip.subspan(p + kCentralHeaderSize + name_len, extra_len), name, size, compressed,
                      offset);
    p += record;

    if ((flags & 0x1) != 0) throw DecodeError(fmt::format("torch.save: ZIP entry {} is encrypted", name));
    if (method != 0)
      throw DecodeError(fmt::format(
          "torch.save: ZIP entry {} is compressed (method {}); torch.save writes stored entries only", name,
          method));
    if (compressed != size)
      throw DecodeError(fmt::format("torch.save: stored ZIP entry {} has compressed size {} but size {}",
                                    name, compressed, size));
    if (!names.insert(name).second)
      throw DecodeError(fmt::format("torch.save: duplicate ZIP entry {}", name));

    require_range(zip.size(), offset, kLocalHeaderSize, "local header of " + name);
    if (read_le<std::uint32_t>(zip, offset, "local header") != kLocalHeaderSig)
      throw DecodeError(fmt::format("torch.save: no ZIP local header for {} at byte {}", name, offset));
    const auto local_name_len = read_le<std::uint16_t>(zip, offset + 26, "local header");
    const auto local_extra_len = read_le<std::uint16_t>(zip, offset + 28, "local header");
    require_range(zip.size(), offset + kLocalHeaderSize, local_name_len, "local header of " + name);
    if (to_string(zip.subspan(offset + kLocalHeaderSize, local_name_len)) != name)
      throw DecodeError(fmt::format("torch.save: local header at byte {} does not name {}", offset, name));
    const std::uint64_t data = offset + kLocalHeaderSize + local_name_len + local_extra_len;
    require_range(zip.size(), data, size, "data of ZIP entry " + name);
    auto bytes = zip.subspan(data, size);
    if (crc32_of(bytes) != crc)
      throw DecodeError(
          fmt::format("torch.save: CRC-32 mismatch in ZIP entry {}; the file is damaged", name));
    entries.push_back({std::move(name), bytes});
  }
  return entries;
}

}  // namespace ndif::torchsave::detail
