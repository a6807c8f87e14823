#pragma once
/// \file
/// The output file, format `ndif-sweep/1` (docs/output-format.md): creating it, checking an
/// existing one against a job, and the run records under `/runs`. All of these are serial and are
/// called by rank 0 alone, never while a ParallelOutput has the file open.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/core/dtype.hpp"

namespace ndif::store {

/// The format name stored in the root attribute `format`.
inline constexpr const char* kFormat = "ndif-sweep/1";

/// One probe's dataset `/acts/<name>` of shape (N, layers.size(), P, H).
struct ProbeLayout {
  std::string name;                 ///< dataset name under /acts
  std::string module;               ///< module path template, e.g. "model.layers.{layer}"
  std::optional<int> output_index;  ///< tuple element, or none for a tensor output
  std::vector<int> layers;          ///< the layer numbers, in dataset order
  std::string layers_text;          ///< the layers as the job spec wrote them, e.g. "0:32"
};

/// The strings of consecutive prompts, text, id and meta of each in row order, as NUL-ended C strings
/// where their owner keeps them (HDF5 takes a variable-length string as a pointer to one).
struct PromptStrings {
  std::vector<const char*> text, id, meta;
};
/// The next block of prompts' strings: fills `out` (empty on call) with the strings of rows
/// [first, first + k), k >= 1, and returns `first`; or returns nothing once every row was given.
/// The strings stay where they are until the next call. Blocks come in any order a source likes (by
/// bytes, in turn from the parts of several ranks), each row in exactly one block.
using PromptStringSource = std::function<std::optional<std::size_t>(PromptStrings& out)>;

/// Everything the file is created from: identity, prompts, batch plan, probes.
struct FileLayout {
  std::string job_json;          ///< canonical job JSON (no secrets)
  std::string job_hash;          ///< hex hash of job_json
  std::string model;             ///< repo id
  std::string model_key;         ///< the service's model key
  std::string tokenizer_sha256;  ///< SHA-256 of the tokenizer.json used
  std::string tool_version;      ///< ndif-sweep version that created the file

  std::vector<std::string> text;  ///< N prompts (or empty, with `prompt_strings`)
  std::vector<std::string> id;    ///< N ids (likewise)
  std::vector<std::string> meta;  ///< N JSON objects as text (likewise)
  /// When set, the vectors above stay empty and the string datasets are written a block of rows at a
  /// time from this source, so that no list of every prompt's strings is held.
  PromptStringSource prompt_strings;
  std::vector<std::int32_t> n_tokens;  ///< N token counts
  /// N x P resolved positions, row-major; or empty with `positions_from_ranks`.
  std::vector<std::int32_t> positions;
  /// /prompts/positions is allocated but not written here: every rank writes the rows it measured
  /// (write_positions) into the unpublished file before it is published.
  bool positions_from_ranks = false;
  std::size_t positions_per_row = 0;  ///< P

  std::vector<std::int32_t> batch_of_row;  ///< N: the batch that writes each row
  std::vector<std::int64_t> order;         ///< N: prompt rows in batch order
  std::vector<std::int64_t> batch_start;   ///< B: first index of each batch in `order`
  std::vector<std::int64_t> batch_count;   ///< B: rows of each batch

  std::vector<ProbeLayout> probes;  ///< in job order; this order is kept in the file
  std::size_t hidden = 0;           ///< H
  DType dtype = DType::float16;     ///< float16, bfloat16 (stored as its uint16 bits) or float32
};

/// Creates the output file at `path` with every dataset of format `ndif-sweep/1` at its final size.
/// Not collective: rank 0 alone, serial driver. The file is written as `<path>.creating` and renamed
/// to `path` only after a successful close, so a crash during creation leaves no half-made file
/// under the real name. `/batches/done` and the per-batch statistics are written as zeros;
/// `/acts/<probe>` are chunked (c, L_p, P, H) with c chosen for chunks of about 2 MiB, allocated
/// early and never filled (the file is sparse until rows arrive). Attribute `output_index` of a
/// probe is -1 for a tensor output (no index).
/// Throws InputError if `path` cannot become a file (a directory, a missing parent directory, a
/// directory that is not writable) before anything is created; InternalError if `layout` is
/// inconsistent; StorageError if HDF5 or the rename fails.
void create_output_file(const std::filesystem::path& path, const FileLayout& layout);

/// create_output_file in steps, for a file whose rows the ranks write in parallel: the file is made
/// as `<path>.creating` (unpublished_path), everything of it but what `layout.positions_from_ranks`
/// leaves to write_positions (parallel_output.hpp), closed and left there; publish() renames it.
/// Not collective: rank 0 alone, serial driver. Removes the temporary and throws as
/// create_output_file when anything fails. Returns the temporary's path.
[[nodiscard]] std::filesystem::path create_unpublished(const std::filesystem::path& path,
                                                       const FileLayout& layout);
/// `<path>.creating`: where a file is made before it is published under `path`.
[[nodiscard]] std::filesystem::path unpublished_path(const std::filesystem::path& path);
/// Renames a file made by create_unpublished to `path`: from then on it is the job's output file,
/// whole. Rank 0 alone. Throws StorageError if the rename fails (the temporary stays).
void publish(const std::filesystem::path& temporary, const std::filesystem::path& path);
/// Removes an unpublished file after a failure. Never throws.
void discard_unpublished(const std::filesystem::path& temporary) noexcept;

/// What check_existing found at the output path.
enum class Existing { absent, same_job };

/// Tells whether `path` is absent or an `ndif-sweep/1` file of the job `job_hash`. Serial,
/// read-only; never modifies the file. Throws SpecMismatch naming the file and the reason when the
/// file is not HDF5, cannot be opened (truncated, damaged), has no or another `format`, or was made
/// by another job; InputError when `path` is a directory.
[[nodiscard]] Existing check_existing(const std::filesystem::path& path, const std::string& job_hash);

/// One start of a run, stored as group `/runs/<k>` (k = 0, 1, ...) whose attributes are the fields
/// below (strings as UTF-8, numbers as int64).
struct RunRecord {
  std::string time_utc;      ///< ISO 8601 start time, e.g. 2025-01-31T12:00:00Z
  std::int64_t ranks = 1;    ///< MPI ranks of the run
  std::string host;          ///< host name of rank 0
  std::string slurm_job_id;  ///< empty outside SLURM
  std::int64_t slurm_restart_count = 0;
  std::string tool_version;
  std::string outcome = "running";  ///< running | complete | incomplete | failed | drained
};

/// Appends `record` as the next `/runs/<k>` and returns k. Serial, rank 0, before the parallel open.
/// Throws StorageError if the file cannot be written.
std::size_t append_run_record(const std::filesystem::path& path, const RunRecord& record);

/// Sets the outcome of run `index`. Serial, rank 0, after the parallel close. Throws InternalError
/// for an unknown outcome or index, StorageError if the file cannot be written.
void set_run_outcome(const std::filesystem::path& path, std::size_t index, const std::string& outcome);

/// Reads every run record, in order. Serial, read-only.
[[nodiscard]] std::vector<RunRecord> read_run_records(const std::filesystem::path& path);

/// The current UTC time as ISO 8601 with seconds, e.g. 2025-01-31T12:00:00Z.
[[nodiscard]] std::string utc_now_iso8601();

}  // namespace ndif::store
