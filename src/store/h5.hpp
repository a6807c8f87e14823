#pragma once
/// \file
/// Thin RAII over the HDF5 C API, private to the store module: one owner per `hid_t`, one checked
/// shim per call. Every failure becomes a StorageError that names the operation and the object and
/// carries HDF5's own error stack.

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/core/dtype.hpp"
#include "ndif_sweep/store/batch_records.hpp"

namespace ndif::store::h5 {

/// Turns off HDF5's automatic printing of its error stack (the `HDF5-DIAG` lines) for this
/// process; errors are reported through exceptions instead. Idempotent; not collective.
void silence_diagnostics();

/// HDF5's current error stack as text, one frame per line (empty when the stack is empty).
[[nodiscard]] std::string error_stack_text();

/// Throws StorageError("HDF5 failed to <what>: <stack>") when `status` is negative.
herr_t check(herr_t status, std::string_view what);
/// Same for calls that return an identifier, a size or a tri-state (htri_t, hssize_t).
hid_t check_id(hid_t id, std::string_view what);
std::int64_t check_size(std::int64_t size, std::string_view what);

/// Owner of one HDF5 identifier. Move-only; the destructor closes quietly, `close()` reports.
class Handle {
 public:
  Handle() = default;
  /// Takes ownership of `id` (which must be valid, e.g. from `check_id`).
  explicit Handle(hid_t id) noexcept : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(other.release()) {}
  Handle& operator=(Handle&& other) noexcept;
  ~Handle();

  [[nodiscard]] hid_t get() const noexcept { return id_; }
  [[nodiscard]] bool valid() const noexcept { return id_ >= 0; }
  /// Closes the identifier, throwing StorageError naming `what` if HDF5 reports a failure.
  void close(std::string_view what);

 private:
  hid_t release() noexcept {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }
  hid_t id_ = H5I_INVALID_HID;
};

// --- property lists and types -------------------------------------------------------------------

/// A file access list for serial opens: sec2 driver, HDF5's own file locking off (the tool holds
/// its own lock, see OutputLock, and HDF5's lock would make a reader refuse a live file or block a
/// writer), and for readers no sieve buffer and no chunk cache, so every look sees the disk.
[[nodiscard]] Handle serial_access(bool reader);

/// A variable-length UTF-8 string type.
[[nodiscard]] Handle utf8_string_type();
/// IEEE half precision, little-endian (HDF5 1.10 has no predefined one; h5py builds the same).
[[nodiscard]] Handle float16_type();
/// The file type of an activation dtype (float16, bfloat16 stored as uint16, float32).
/// Throws InputError for any other name.
[[nodiscard]] Handle activation_type(DType dtype);

/// One element of /journal/jobs, as it is in memory and in the file.
struct JournalRecord {
  char job_id[kJournalIdBytes];  ///< NUL-padded; empty when no job is recorded
  std::int32_t attempt;
  double submitted_unix;
  std::uint64_t request_hash;
};

/// The compound type of /journal/jobs, for memory and file alike.
[[nodiscard]] Handle journal_type();

// --- files, groups, datasets, attributes ---------------------------------------------------------

/// Opens an existing file read-only for a serial reader.
[[nodiscard]] Handle open_file_read(const std::filesystem::path& path);
/// Opens an existing file read-write for a short serial edit (run records).
[[nodiscard]] Handle open_file_write(const std::filesystem::path& path);
[[nodiscard]] Handle open_group(hid_t loc, const std::string& name);
[[nodiscard]] Handle open_dataset(hid_t loc, const std::string& name);
[[nodiscard]] bool link_exists(hid_t loc, const std::string& name);
[[nodiscard]] bool attribute_exists(hid_t obj, const std::string& name);

/// Extent of a dataset's dataspace.
[[nodiscard]] std::vector<hsize_t> dataset_shape(hid_t dataset, const std::string& name);

/// Writes a scalar attribute (created here; it must not exist yet).
void write_attribute(hid_t obj, const std::string& name, const std::string& value);
void write_attribute(hid_t obj, const std::string& name, std::int64_t value);
void write_attribute(hid_t obj, const std::string& name, const std::vector<int>& values);
/// Replaces a string attribute that already exists.
void rewrite_attribute(hid_t obj, const std::string& name, const std::string& value);

/// Reads attributes; `where` names the object in error messages.
[[nodiscard]] std::string read_string_attribute(hid_t obj, const std::string& name, const std::string& where);
[[nodiscard]] std::int64_t read_int_attribute(hid_t obj, const std::string& name, const std::string& where);
[[nodiscard]] std::vector<int> read_int_array_attribute(hid_t obj, const std::string& name,
                                                        const std::string& where);

/// Reads a whole 1-D or N-D numeric dataset into `T` (the memory type is derived from `T`).
template <typename T>
[[nodiscard]] std::vector<T> read_all(hid_t loc, const std::string& name);
/// Reads a whole 1-D variable-length string dataset.
[[nodiscard]] std::vector<std::string> read_strings(hid_t loc, const std::string& name);

/// The native HDF5 memory type of `T`.
template <typename T>
[[nodiscard]] hid_t native_type();
template <>
hid_t native_type<std::uint8_t>();
template <>
hid_t native_type<std::int32_t>();
template <>
hid_t native_type<std::int64_t>();
template <>
hid_t native_type<std::uint64_t>();
template <>
hid_t native_type<double>();

}  // namespace ndif::store::h5
