#pragma once
/// \file
/// The write phase of a run: every rank opens the output file through MPI-IO and writes the rows of
/// the batches it finished, then sets their completion flags. Only raw data changes during a run;
/// the file's shape was fixed when it was created (create_output_file).

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/store/batch_records.hpp"

namespace ndif::store {

/// The checksum stored in /batches/checksum: XXH3-64 (seed 0) of the concatenation, in probe order
/// (the order of the job's probes, which is the creation order of /acts), of each probe's data for
/// the batch, whose rows are in the batch's /batches/order order; each row is (L_p, P, H) elements
/// of the file dtype, little-endian, as stored.
[[nodiscard]] std::uint64_t batch_checksum(const std::vector<std::span<const std::byte>>& per_probe_data);

/// Writes this rank's rows [first_row, first_row + positions.size() / P) of /prompts/positions
/// (row-major, P of the file each) into `temporary`, a file made by create_unpublished with
/// `positions_from_ranks`, through MPI-IO: every rank one independent write of its own contiguous
/// rows, so that the N x P positions never meet on one rank. Collective over `comm` (the open and
/// the close); a rank with no rows writes nothing. A rank whose rows do not fit the file, or whose
/// write fails, still reaches the close, so no rank is left waiting in it; it throws afterwards
/// (InternalError, StorageError), and the caller agrees on the outcome.
void write_positions(const std::filesystem::path& temporary, MPI_Comm comm, std::size_t first_row,
                     std::span<const std::int32_t> positions);

/// The output file opened for writing by all ranks of a run (MPI-IO driver). Move-only.
class ParallelOutput {
 public:
  /// Opens `path` read-write on every rank of `comm`. Collective over `comm`. The file must exist
  /// (create_output_file) and no serial writer may have it open. Throws StorageError.
  [[nodiscard]] static ParallelOutput open(const std::filesystem::path& path, MPI_Comm comm);

  ParallelOutput(ParallelOutput&&) noexcept;
  ParallelOutput& operator=(ParallelOutput&&) noexcept;
  ParallelOutput(const ParallelOutput&) = delete;
  ParallelOutput& operator=(const ParallelOutput&) = delete;
  /// Closes quietly if close() was not called; a run closes explicitly (collective) on the normal
  /// path and only reaches this on error paths, where the process is about to abort anyway.
  ~ParallelOutput();

  /// Number of batches (B) and of prompt rows (N).
  [[nodiscard]] std::size_t batch_count() const noexcept;
  [[nodiscard]] std::size_t row_count() const noexcept;
  /// Names of the probes, in the order write_batch expects their data.
  [[nodiscard]] std::vector<std::string> probe_names() const;
  /// Bytes of one row of each probe (L_p * P * H * element size), in probe order.
  [[nodiscard]] std::vector<std::size_t> probe_row_bytes() const;

  /// Reads /batches/done as it is on disk now. Independent (any rank, any time).
  [[nodiscard]] std::vector<std::uint8_t> read_done_flags() const;

  /// Reads /journal/jobs, one entry per batch (all empty for a file made before the journal).
  /// Independent.
  [[nodiscard]] std::vector<JournalEntry> read_journal() const;

  /// Records the job a rank is about to wait on for `batch`. Independent: the rank that submitted
  /// it calls it alone, right after the submit; one element write, in the file when it returns.
  /// A no-op for a file made before the journal. Throws StorageError if the write fails, and
  /// InternalError for a job id of kJournalIdBytes or more.
  void journal(std::int32_t batch, const JournalEntry& entry);

  /// Writes the rows of batch `batch` and then marks it done. Independent: the rank that finished
  /// the batch calls it alone. `rows` are the batch's prompt rows in send order, which must equal
  /// the batch's slice of /batches/order; `per_probe_data[p]` holds rows.size() rows of
  /// (L_p, P, H) elements of the file dtype in that same order. Order of effects: activations, then
  /// the statistics and the checksum (batch_checksum), then done[batch] = 1, so a crash at any point
  /// leaves every flagged batch complete. Throws InternalError if the arguments do not match the
  /// file, StorageError if a write fails.
  void write_batch(std::int32_t batch, std::span<const std::int64_t> rows,
                   const std::vector<std::span<const std::byte>>& per_probe_data, const BatchStats& stats);

  /// Closes every dataset and the file. Collective over the communicator given to open().
  /// Throws StorageError.
  void close();

 private:
  struct State;
  explicit ParallelOutput(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace ndif::store
