#include "ndif_sweep/torchsave/torchsave.hpp"

#include <fmt/format.h>

#include <string_view>
#include <unordered_map>

#include "archive_layout.hpp"
#include "byte_io.hpp"
#include "ndif_sweep/core/error.hpp"
#include "pickle.hpp"
#include "zip_archive.hpp"

namespace ndif::torchsave {
namespace {

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// torch names every record "<archive>/<record>" with one top folder, chosen by the writer.
std::string find_archive_folder(const std::vector<detail::ZipEntry>& entries) {
  constexpr std::string_view kPickle = "/data.pkl";
  std::string folder;
  int found = 0;
  for (const auto& e : entries) {
    const std::string_view name = e.name;
    if (name.size() <= kPickle.size() || !name.ends_with(kPickle)) continue;
    const auto prefix = name.substr(0, name.size() - kPickle.size());
    if (prefix.find('/') != std::string_view::npos) continue;
    folder = prefix;
    ++found;
  }
  if (found != 1)
    throw DecodeError(
        fmt::format("torch.save: expected one <archive>/data.pkl entry in the ZIP, found {}", found));
  return folder;
}

/// Both loads; with an `owner`, storages view `bytes` instead of copying them.
Value load_file(std::span<const std::byte> bytes, const std::shared_ptr<const void>& owner) {
  const auto entries = detail::read_zip(bytes);
  const std::string folder = find_archive_folder(entries);
  std::unordered_map<std::string_view, std::span<const std::byte>> records;
  for (const auto& e : entries) records.emplace(e.name, e.data);

  if (auto it = records.find(folder + "/byteorder"); it != records.end()) {
    const auto order = detail::to_string(it->second);
    if (order != "little")
      throw DecodeError(fmt::format("torch.save: byteorder is \"{}\"; only little-endian files are supported",
                                    order.substr(0, 16)));
  }

  const detail::StorageLoader load_storage = [&](const std::string& key, DType dtype, std::int64_t numel) {
    const std::string name = folder + "/data/" + key;
    auto it = records.find(name);
    if (it == records.end()) throw DecodeError(fmt::format("torch.save: storage entry {} is missing", name));
    const std::size_t es = element_size(dtype);
    if (static_cast<std::uint64_t>(numel) > it->second.size() / es ||
        it->second.size() != static_cast<std::size_t>(numel) * es)
      throw DecodeError(fmt::format("torch.save: storage {} holds {} bytes, but {} elements of {} need {}",
                                    name, it->second.size(), numel, dtype_name(dtype),
                                    static_cast<std::uint64_t>(numel) * es));
    if (owner) return std::make_shared<const Storage>(Storage{dtype, {}, it->second, owner});
    return std::make_shared<const Storage>(Storage{dtype, {it->second.begin(), it->second.end()}, {}, {}});
  };

  const auto pkl = records.find(folder + "/data.pkl");
  return detail::unpickle(pkl->second, load_storage);
}

}  // namespace

Value load(std::span<const std::byte> bytes) { return load_file(bytes, nullptr); }

Value load_in_place(std::span<const std::byte> bytes, std::shared_ptr<const void> owner) {
  if (!owner) throw InternalError("torchsave: load_in_place needs the owner of the file's bytes");
  return load_file(bytes, owner);
}

std::vector<std::byte> save(const Value& value, const std::string& archive) {
  return detail::save_archive(value, archive, 0xFFFFFFFFu);
}

namespace detail {

std::vector<std::byte> save_archive(const Value& value, const std::string& archive,
                                    std::uint64_t zip64_threshold) {
  if (archive.empty() || archive.find('/') != std::string::npos)
    throw InternalError(
        fmt::format("torchsave: archive folder name \"{}\" must be one non-empty path component", archive));
  const Pickled pickled = pickle_value(value);
  ZipBuffer zip(zip64_threshold);
  zip.add(archive + "/data.pkl", pickled.pickle);
  zip.add(archive + "/byteorder", as_bytes("little"));
  for (std::size_t i = 0; i < pickled.storages.size(); ++i)
    zip.add(fmt::format("{}/data/{}", archive, i), pickled.storages[i]->data());
  zip.add(archive + "/version", as_bytes("3\n"));
  return std::move(zip).finish();
}

}  // namespace detail
}  // namespace ndif::torchsave
