#pragma once
/// \file
/// Pieces shared by the serial readers (status, export, verify); private to the store module.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "h5.hpp"
#include "ndif_sweep/store/readers.hpp"

namespace ndif::store::reading {

/// Opens an `ndif-sweep/1` file read-only (fresh handle, no caches). Throws SpecMismatch when the
/// file is not HDF5, cannot be opened, or has another format.
[[nodiscard]] h5::Handle open_output(const std::filesystem::path& path);

/// The names of /acts in creation order, which is the probe order of the job.
[[nodiscard]] std::vector<std::string> probe_names(hid_t file);

/// A probe's dataset opened for reading, with its shape and element type.
struct ProbeReader {
  ProbeStatus status;
  h5::Handle dataset;
  h5::Handle type;
  std::vector<hsize_t> dims;  ///< N, L_p, P, H
  std::size_t row_bytes = 0;
  std::size_t element_bytes = 0;
};
[[nodiscard]] std::vector<ProbeReader> open_probes(hid_t file, const std::string& where);

/// Reads rows `ascending_rows` (strictly increasing) of a probe into `out` (rows x row_bytes), one
/// H5Dread per run of consecutive rows.
void read_rows(const ProbeReader& probe, std::span<const std::int64_t> ascending_rows,
               std::span<std::byte> out);

}  // namespace ndif::store::reading
