#pragma once
/// \file
/// Serial readers of an output file for `status`, `export` and `verify`. Each call opens the file
/// afresh, read-only, with HDF5's sieve buffer and chunk cache off and HDF5's file locking off, so
/// it may run while a run is writing the file and always sees what is on disk now.
/// Every reader throws SpecMismatch when the file is not an `ndif-sweep/1` file (not HDF5,
/// truncated, another format) and StorageError when reading fails.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "ndif_sweep/core/dtype.hpp"
#include "ndif_sweep/store/output_file.hpp"

namespace ndif::store {

/// A probe as the file describes it (attributes of /acts/<name>).
struct ProbeStatus {
  std::string name;
  std::string module;
  int output_index = -1;  ///< -1 for a tensor output
  std::vector<int> layers;
  DType dtype = DType::float16;
};

/// An NDIF job recorded in /journal/jobs for a batch that is not done yet: a restart polls it.
struct JournaledJob {
  std::int64_t batch = 0;
  std::string job_id;
  std::int32_t attempt = 0;
  double submitted_unix = 0.0;
};

/// Progress of an output file (`ndif-sweep status`).
struct FileStatus {
  std::string path;
  std::string format;
  std::string model;
  std::string model_key;
  std::string job_hash;
  std::string tool_version;
  std::string created_utc;
  std::int64_t batches_done = 0;
  std::int64_t batches_total = 0;
  std::int64_t rows_done = 0;
  std::int64_t rows_total = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> missing_batches;  ///< [first, last] ranges
  std::vector<ProbeStatus> probes;
  std::vector<RunRecord> runs;
  std::vector<JournaledJob> journal;  ///< jobs of batches not done, as the last run left them

  /// The `status --json` object of docs/output-format.md (plus model_key, job_hash,
  /// tool_version, created_utc).
  [[nodiscard]] nlohmann::json to_json() const;
  /// A few lines for people: progress, missing batches, probes, runs.
  [[nodiscard]] std::string to_text() const;
};

/// The plan a file was created with: what a restart reads instead of tokenizing and planning again.
struct StoredPlan {
  std::vector<std::int32_t> n_tokens;  ///< /prompts/n_tokens
  std::int64_t positions_per_row = 0;  ///< P, the second dimension of /prompts/positions
  std::vector<std::int64_t> order;     ///< /batches/order
  std::vector<std::int64_t> start;     ///< /batches/start
  std::vector<std::int64_t> count;     ///< /batches/count
};

/// Reads the stored plan of `path`. Serial, read-only.
[[nodiscard]] StoredPlan read_plan(const std::filesystem::path& path);

/// Reads the progress of `path`. Serial, read-only.
[[nodiscard]] FileStatus read_status(const std::filesystem::path& path);

/// File format of an export.
enum class ExportFormat { npy, npz };

/// Parses "npy" or "npz"; throws InputError naming the flag value otherwise.
[[nodiscard]] ExportFormat parse_export_format(const std::string& text);

/// Writes the completed rows (those whose batch is flagged done), ascending, to `dir` (created if
/// missing): `<probe>_layer<L>.npy` of shape (rows, P, H) per probe and layer number L (npy), or one
/// `<probe>.npz` per probe with arrays `layer<L>` (npz, stored without compression); `rows.npy`
/// (int64 prompt rows); `meta.json` (model, job hash, dtype, probes, and per exported row its id,
/// positions, n_tokens and meta). float16 and float32 keep their dtype; bfloat16, which NumPy lacks,
/// is exported as uint16 bit patterns and meta.json says "dtype": "bfloat16" (view the upper half
/// of float32: `(a.astype(np.uint32) << 16).view(np.float32)`). Rows are read and written in blocks
/// of bounded size, so memory does not grow with the file. Serial, read-only on `path`.
/// Throws InputError if `dir` cannot be created or written, SpecMismatch/StorageError as above.
void export_rows(const std::filesystem::path& path, const std::filesystem::path& dir, ExportFormat format);

/// A done batch whose data no longer matches its stored checksum.
struct ChecksumMismatch {
  std::int64_t batch = 0;
  std::uint64_t stored = 0;
  std::uint64_t computed = 0;
};

/// Result of verify().
struct VerifyReport {
  std::int64_t batches_checked = 0;  ///< done batches re-read
  std::int64_t batches_total = 0;
  std::vector<ChecksumMismatch> mismatches;
  [[nodiscard]] bool ok() const noexcept { return mismatches.empty(); }
  [[nodiscard]] nlohmann::json to_json() const;
  [[nodiscard]] std::string to_text() const;
};

/// Re-reads every done batch and recomputes batch_checksum over its rows in /batches/order order.
/// Serial, read-only; holds /batches/order and one batch in memory.
[[nodiscard]] VerifyReport verify(const std::filesystem::path& path);

}  // namespace ndif::store
