#include <array>
#include <cstring>
#include <fstream>
#include <system_error>

#include "h5.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/store/output_file.hpp"

namespace ndif::store {

namespace {

/// Whether the file carries the HDF5 signature at offset 0 or at a user-block offset (512, 1024,
/// ...). Read by hand instead of H5Fis_hdf5, which in HDF5 1.10 opens the file with HDF5's own file
/// locking and would refuse a file that a run is writing.
bool has_hdf5_signature(const std::filesystem::path& path, std::uintmax_t size) {
  static constexpr std::array<char, 8> kSignature{'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SpecMismatch("output file " + path.string() + " cannot be read; check its permissions");
  for (std::uintmax_t offset = 0; offset + kSignature.size() <= size;
       offset = offset == 0 ? 512 : offset * 2) {
    std::array<char, 8> head{};
    in.seekg(static_cast<std::streamoff>(offset));
    if (!in.read(head.data(), head.size())) return false;
    if (head == kSignature) return true;
  }
  return false;
}

}  // namespace

Existing check_existing(const std::filesystem::path& path, const std::string& job_hash) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) return Existing::absent;
  if (fs::is_directory(status))
    throw InputError("output " + path.string() + " is a directory; give a file name such as " +
                     (path / "sweep.h5").string());
  const std::string file = "output file " + path.string();
  const std::string fix = "; use another --output or delete it";
  if (!fs::is_regular_file(status)) throw SpecMismatch(file + " is not a regular file" + fix);
  if (!has_hdf5_signature(path, fs::file_size(path, ec)))
    throw SpecMismatch(file + " is not an HDF5 file" + fix);

  h5::Handle handle;
  try {
    handle = h5::open_file_read(path);
  } catch (const StorageError& e) {
    throw SpecMismatch(file + " is an HDF5 file that cannot be opened (truncated or damaged)" + fix + "\n" +
                       e.what());
  }
  if (!h5::attribute_exists(handle.get(), "format"))
    throw SpecMismatch(file + " has no \"format\" attribute, so another tool made it" + fix);
  const std::string format = h5::read_string_attribute(handle.get(), "format", path.string());
  if (format != kFormat)
    throw SpecMismatch(file + " has format \"" + format + "\", not \"" + kFormat + "\"" + fix);
  if (!h5::attribute_exists(handle.get(), "job_hash"))
    throw SpecMismatch(file + " has no \"job_hash\" attribute" + fix);
  const std::string stored = h5::read_string_attribute(handle.get(), "job_hash", path.string());
  if (stored != job_hash)
    throw SpecMismatch("the output file " + path.string() + " was made by another job (job_hash " + stored +
                       ", this job " + job_hash + ")" + fix);
  handle.close("close " + path.string());
  return Existing::same_job;
}

}  // namespace ndif::store
