#pragma once
// A small output-file layout and its expected activation bytes, shared by the serial store tests
// and the MPI tests. Every byte is a pure function of (probe, row, element), so a test can check
// any row of the file without keeping what was written.

#include <hdf5.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ndif_sweep/store/output_file.hpp"

namespace ndif::store::testing {

inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// `batches` batches of 1 to 4 rows, rows shuffled across batches (as a length sort does), P = 2,
/// H = 4, probes "resid" (layers 0, 2, 5; output 0) and "mlp" (layer 1; tensor output).
inline FileLayout example_layout(const std::string& dtype, std::size_t batches = 3, std::size_t hidden = 4) {
  FileLayout layout;
  layout.job_json = R"({"model":"test/model"})";
  layout.job_hash = "a1b2c3";
  layout.model = "test/model";
  layout.model_key = "test.model:key";
  layout.tokenizer_sha256 = std::string(64, 'f');
  layout.tool_version = "0.1.0";
  std::vector<std::int64_t> counts;
  std::size_t n = 0;
  for (std::size_t b = 0; b < batches; ++b) {
    counts.push_back(static_cast<std::int64_t>(1 + (b * 5 + 2) % 4));
    n += static_cast<std::size_t>(counts.back());
  }
  std::vector<std::int64_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<std::int64_t>(i);
  std::mt19937 random(42);
  std::shuffle(order.begin(), order.end(), random);
  layout.order = order;
  layout.batch_of_row.assign(n, 0);
  std::int64_t start = 0;
  for (std::size_t b = 0; b < batches; ++b) {
    layout.batch_start.push_back(start);
    layout.batch_count.push_back(counts[b]);
    for (std::int64_t k = start; k < start + counts[b]; ++k)
      layout.batch_of_row[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])] =
          static_cast<std::int32_t>(b);
    start += counts[b];
  }
  layout.positions_per_row = 2;
  for (std::size_t r = 0; r < n; ++r) {
    layout.text.push_back("prompt \xC3\xA9 number " + std::to_string(r));
    layout.id.push_back("p" + std::to_string(r));
    layout.meta.push_back(R"({"row": )" + std::to_string(r) + "}");
    layout.n_tokens.push_back(static_cast<std::int32_t>(5 + r));
    layout.positions.push_back(static_cast<std::int32_t>(r % 3));
    layout.positions.push_back(static_cast<std::int32_t>(4 + r));
  }
  layout.probes = {{"resid", "model.layers.{layer}", 0, {0, 2, 5}, "[0, 2, 5]"},
                   {"mlp", "model.layers.{layer}.mlp", std::nullopt, {1}, "1:2"}};
  layout.hidden = hidden;
  layout.dtype = *dtype_from_name(dtype);
  return layout;
}

inline std::size_t row_bytes(const FileLayout& layout, std::size_t probe) {
  return layout.probes[probe].layers.size() * layout.positions_per_row * layout.hidden *
         element_size(layout.dtype);
}

/// The bytes of one row of one probe.
inline std::vector<std::byte> expected_row(const FileLayout& layout, std::size_t probe, std::int64_t row) {
  std::vector<std::byte> bytes(row_bytes(layout, probe));
  for (std::size_t i = 0; i < bytes.size(); ++i)
    bytes[i] =
        static_cast<std::byte>(mix((probe << 48) ^ (static_cast<std::uint64_t>(row) << 24) ^ i) & 0xff);
  return bytes;
}

/// The rows of batch `b` in batch order.
inline std::vector<std::int64_t> batch_rows(const FileLayout& layout, std::size_t b) {
  const auto first = layout.order.begin() + layout.batch_start[b];
  return {first, first + layout.batch_count[b]};
}

/// One probe's data of a batch, rows in batch order, as a run hands it to write_batch.
inline std::vector<std::byte> batch_data(const FileLayout& layout, std::size_t probe, std::size_t b) {
  std::vector<std::byte> data;
  for (const std::int64_t row : batch_rows(layout, b)) {
    const auto bytes = expected_row(layout, probe, row);
    data.insert(data.end(), bytes.begin(), bytes.end());
  }
  return data;
}

/// Reads a whole dataset's raw bytes in its own file type with the plain HDF5 C API.
inline std::vector<std::byte> read_raw(const std::string& path, const std::string& dataset) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t type = H5Dget_type(set);
  const hid_t space = H5Dget_space(set);
  std::vector<std::byte> bytes(static_cast<std::size_t>(H5Sget_simple_extent_npoints(space)) *
                               H5Tget_size(type));
  H5Dread(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data());
  H5Sclose(space);
  H5Tclose(type);
  H5Dclose(set);
  H5Fclose(file);
  return bytes;
}

/// Reads a whole dataset of numbers of type T (its file type's size) with the plain HDF5 C API.
template <typename T>
std::vector<T> read_numbers(const std::string& path, const std::string& dataset) {
  const auto raw = read_raw(path, dataset);
  std::vector<T> values(raw.size() / sizeof(T));
  std::memcpy(values.data(), raw.data(), raw.size());
  return values;
}

/// Reads a whole 1-D variable-length string dataset with the plain HDF5 C API.
inline std::vector<std::string> read_strings_raw(const std::string& path, const std::string& dataset) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t type = H5Dget_type(set);
  const hid_t space = H5Dget_space(set);
  std::vector<char*> pointers(static_cast<std::size_t>(H5Sget_simple_extent_npoints(space)), nullptr);
  std::vector<std::string> values;
  if (H5Tis_variable_str(type) > 0 &&
      H5Dread(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()) >= 0) {
    for (char* p : pointers) values.emplace_back(p != nullptr ? p : "");
    H5Dvlen_reclaim(type, space, H5P_DEFAULT, pointers.data());
  }
  H5Sclose(space);
  H5Tclose(type);
  H5Dclose(set);
  H5Fclose(file);
  return values;
}

}  // namespace ndif::store::testing
