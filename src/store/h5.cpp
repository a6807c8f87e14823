#include "h5.hpp"

#include <array>
#include <mutex>

#include "ndif_sweep/core/error.hpp"

namespace ndif::store::h5 {

void silence_diagnostics() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

namespace {

std::string message_text(hid_t msg_id) {
  std::array<char, 256> text{};
  H5E_type_t type{};
  if (H5Eget_msg(msg_id, &type, text.data(), text.size()) < 0) return "?";
  return text.data();
}

herr_t append_frame(unsigned n, const H5E_error2_t* frame, void* client) {
  auto& out = *static_cast<std::string*>(client);
  out += "\n  #" + std::to_string(n) + " " + (frame->func_name ? frame->func_name : "?") + ": " +
         (frame->desc ? frame->desc : "") + " (" + message_text(frame->maj_num) + "; " +
         message_text(frame->min_num) + ")";
  return 0;
}

[[noreturn]] void fail(std::string_view what) {
  throw StorageError("HDF5 failed to " + std::string(what) + error_stack_text());
}

}  // namespace

std::string error_stack_text() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, append_frame, &text);
  H5Eclear2(H5E_DEFAULT);
  return text;
}

herr_t check(herr_t status, std::string_view what) {
  if (status < 0) fail(what);
  return status;
}

hid_t check_id(hid_t id, std::string_view what) {
  if (id < 0) fail(what);
  return id;
}

std::int64_t check_size(std::int64_t size, std::string_view what) {
  if (size < 0) fail(what);
  return size;
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    if (valid()) H5Idec_ref(id_);
    id_ = other.release();
  }
  return *this;
}

Handle::~Handle() {
  // A destructor runs on error paths too; HDF5's own stack already explains any failure there.
  if (valid()) H5Idec_ref(id_);
}

void Handle::close(std::string_view what) {
  if (!valid()) return;
  const hid_t id = release();
  check(H5Idec_ref(id), what);
}

Handle serial_access(bool reader) {
  silence_diagnostics();
  Handle fapl(check_id(H5Pcreate(H5P_FILE_ACCESS), "create a file access property list"));
  check(H5Pset_fapl_sec2(fapl.get()), "select the sec2 driver");
  check(H5Pset_file_locking(fapl.get(), false, true), "turn off HDF5 file locking");
  if (reader) {
    check(H5Pset_sieve_buf_size(fapl.get(), 0), "turn off the sieve buffer");
    check(H5Pset_cache(fapl.get(), 0, 0, 0, 0.0), "turn off the chunk cache");
  }
  return fapl;
}

Handle utf8_string_type() {
  Handle type(check_id(H5Tcopy(H5T_C_S1), "copy the C string type"));
  check(H5Tset_size(type.get(), H5T_VARIABLE), "make the string type variable-length");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "set the string type to UTF-8");
  return type;
}

Handle float16_type() {
  Handle type(check_id(H5Tcopy(H5T_IEEE_F32LE), "copy the float32 type"));
  check(H5Tset_fields(type.get(), 15, 10, 5, 0, 10), "set the float16 bit fields");
  check(H5Tset_size(type.get(), 2), "set the float16 size");
  check(H5Tset_ebias(type.get(), 15), "set the float16 exponent bias");
  return type;
}

Handle journal_type() {
  Handle id(check_id(H5Tcopy(H5T_C_S1), "copy the C string type"));
  check(H5Tset_size(id.get(), kJournalIdBytes), "size the job id type");
  check(H5Tset_strpad(id.get(), H5T_STR_NULLPAD), "pad the job id type");
  Handle type(check_id(H5Tcreate(H5T_COMPOUND, sizeof(JournalRecord)), "create the journal type"));
  check(H5Tinsert(type.get(), "job_id", HOFFSET(JournalRecord, job_id), id.get()), "add journal job_id");
  check(H5Tinsert(type.get(), "attempt", HOFFSET(JournalRecord, attempt), H5T_NATIVE_INT32),
        "add journal attempt");
  check(H5Tinsert(type.get(), "submitted_unix", HOFFSET(JournalRecord, submitted_unix), H5T_NATIVE_DOUBLE),
        "add journal submitted_unix");
  check(H5Tinsert(type.get(), "request_hash", HOFFSET(JournalRecord, request_hash), H5T_NATIVE_UINT64),
        "add journal request_hash");
  return type;
}

Handle activation_type(DType dtype) {
  if (dtype == DType::float16) return float16_type();
  if (dtype == DType::bfloat16) return Handle(check_id(H5Tcopy(H5T_STD_U16LE), "copy the uint16 type"));
  if (dtype == DType::float32) return Handle(check_id(H5Tcopy(H5T_IEEE_F32LE), "copy the float32 type"));
  throw InputError(std::string("dtype \"") + dtype_name(dtype) +
                   "\" is not one of float16, bfloat16, float32");
}

Handle open_file_read(const std::filesystem::path& path) {
  Handle fapl = serial_access(true);
  return Handle(
      check_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), "open " + path.string() + " for reading"));
}

Handle open_file_write(const std::filesystem::path& path) {
  Handle fapl = serial_access(false);
  return Handle(
      check_id(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()), "open " + path.string() + " for writing"));
}

Handle open_group(hid_t loc, const std::string& name) {
  return Handle(check_id(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), "open group " + name));
}

Handle open_dataset(hid_t loc, const std::string& name) {
  return Handle(check_id(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
}

bool link_exists(hid_t loc, const std::string& name) {
  return check(H5Lexists(loc, name.c_str(), H5P_DEFAULT), "look up link " + name) > 0;
}

bool attribute_exists(hid_t obj, const std::string& name) {
  return check(H5Aexists(obj, name.c_str()), "look up attribute " + name) > 0;
}

std::vector<hsize_t> dataset_shape(hid_t dataset, const std::string& name) {
  Handle space(check_id(H5Dget_space(dataset), "get the dataspace of " + name));
  const int rank =
      static_cast<int>(check_size(H5Sget_simple_extent_ndims(space.get()), "get the rank of " + name));
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), "get the extent of " + name);
  return dims;
}

namespace {

void write_attribute_raw(hid_t obj, const std::string& name, hid_t type, hid_t space, const void* value) {
  Handle attr(check_id(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT),
                       "create attribute " + name));
  check(H5Awrite(attr.get(), type, value), "write attribute " + name);
  attr.close("close attribute " + name);
}

}  // namespace

void write_attribute(hid_t obj, const std::string& name, const std::string& value) {
  Handle type = utf8_string_type();
  Handle space(check_id(H5Screate(H5S_SCALAR), "create a scalar dataspace"));
  const char* text = value.c_str();
  write_attribute_raw(obj, name, type.get(), space.get(), &text);
}

void write_attribute(hid_t obj, const std::string& name, std::int64_t value) {
  Handle space(check_id(H5Screate(H5S_SCALAR), "create a scalar dataspace"));
  write_attribute_raw(obj, name, H5T_NATIVE_INT64, space.get(), &value);
}

void write_attribute(hid_t obj, const std::string& name, const std::vector<int>& values) {
  const hsize_t n = values.size();
  Handle space(
      check_id(n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr), "create a dataspace"));
  write_attribute_raw(obj, name, H5T_NATIVE_INT, space.get(), values.data());
}

void rewrite_attribute(hid_t obj, const std::string& name, const std::string& value) {
  check(H5Adelete(obj, name.c_str()), "delete attribute " + name);
  write_attribute(obj, name, value);
}

std::string read_string_attribute(hid_t obj, const std::string& name, const std::string& where) {
  if (!attribute_exists(obj, name)) throw StorageError(where + " has no attribute \"" + name + "\"");
  Handle attr(check_id(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "open attribute " + name + " of " + where));
  Handle file_type(check_id(H5Aget_type(attr.get()), "get the type of attribute " + name));
  if (H5Tget_class(file_type.get()) != H5T_STRING)
    throw StorageError("attribute \"" + name + "\" of " + where + " is not a string");
  Handle space(check_id(H5Aget_space(attr.get()), "get the dataspace of attribute " + name));
  if (check_size(H5Sget_simple_extent_npoints(space.get()), "count attribute " + name) != 1)
    throw StorageError("attribute \"" + name + "\" of " + where + " is not a single string");
  if (check(H5Tis_variable_str(file_type.get()), "inspect attribute " + name) > 0) {
    Handle type = utf8_string_type();
    char* text = nullptr;
    check(H5Aread(attr.get(), type.get(), &text), "read attribute " + name + " of " + where);
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  const std::size_t size = H5Tget_size(file_type.get());
  std::string value(size, '\0');
  check(H5Aread(attr.get(), file_type.get(), value.data()), "read attribute " + name + " of " + where);
  value.resize(value.find('\0') == std::string::npos ? size : value.find('\0'));
  return value;
}

std::int64_t read_int_attribute(hid_t obj, const std::string& name, const std::string& where) {
  if (!attribute_exists(obj, name)) throw StorageError(where + " has no attribute \"" + name + "\"");
  Handle attr(check_id(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "open attribute " + name + " of " + where));
  std::int64_t value = 0;
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), "read attribute " + name + " of " + where);
  return value;
}

std::vector<int> read_int_array_attribute(hid_t obj, const std::string& name, const std::string& where) {
  if (!attribute_exists(obj, name)) throw StorageError(where + " has no attribute \"" + name + "\"");
  Handle attr(check_id(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "open attribute " + name + " of " + where));
  Handle space(check_id(H5Aget_space(attr.get()), "get the dataspace of attribute " + name));
  const auto n = check_size(H5Sget_simple_extent_npoints(space.get()), "count attribute " + name);
  std::vector<int> values(static_cast<std::size_t>(n));
  if (n > 0)
    check(H5Aread(attr.get(), H5T_NATIVE_INT, values.data()), "read attribute " + name + " of " + where);
  return values;
}

template <>
hid_t native_type<std::uint8_t>() {
  return H5T_NATIVE_UINT8;
}
template <>
hid_t native_type<std::int32_t>() {
  return H5T_NATIVE_INT32;
}
template <>
hid_t native_type<std::int64_t>() {
  return H5T_NATIVE_INT64;
}
template <>
hid_t native_type<std::uint64_t>() {
  return H5T_NATIVE_UINT64;
}
template <>
hid_t native_type<double>() {
  return H5T_NATIVE_DOUBLE;
}

template <typename T>
std::vector<T> read_all(hid_t loc, const std::string& name) {
  Handle dataset = open_dataset(loc, name);
  std::size_t count = 1;
  for (const hsize_t d : dataset_shape(dataset.get(), name)) count *= d;
  std::vector<T> values(count);
  if (count > 0)
    check(H5Dread(dataset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
          "read " + name);
  return values;
}

template std::vector<std::uint8_t> read_all(hid_t, const std::string&);
template std::vector<std::int32_t> read_all(hid_t, const std::string&);
template std::vector<std::int64_t> read_all(hid_t, const std::string&);
template std::vector<std::uint64_t> read_all(hid_t, const std::string&);
template std::vector<double> read_all(hid_t, const std::string&);

std::vector<std::string> read_strings(hid_t loc, const std::string& name) {
  Handle dataset = open_dataset(loc, name);
  const auto shape = dataset_shape(dataset.get(), name);
  const std::size_t count = shape.empty() ? 1 : shape[0];
  std::vector<char*> raw(count, nullptr);
  Handle type = utf8_string_type();
  if (count > 0)
    check(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()), "read " + name);
  std::vector<std::string> values;
  values.reserve(count);
  for (char* text : raw) values.emplace_back(text ? text : "");
  Handle space(check_id(H5Dget_space(dataset.get()), "get the dataspace of " + name));
  check(H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, raw.data()), "free the strings of " + name);
  return values;
}

}  // namespace ndif::store::h5
