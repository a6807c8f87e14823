#pragma once
/// \file
/// What a run records per batch besides its data, as plain values: the statistics stored next to
/// the flag and the journal entry of its NDIF job. No HDF5 or MPI header, so that the run loop's
/// state machine compiles without them.

#include <cstddef>
#include <cstdint>
#include <string>

namespace ndif::store {

/// Per-batch statistics stored next to the flag (/batches/attempts, seconds, bytes, nonfinite).
struct BatchStats {
  std::int32_t attempts = 0;   ///< submissions it took, the successful one included
  double seconds = 0.0;        ///< wall time from first submission to decoded result
  std::int64_t bytes = 0;      ///< bytes downloaded for the successful attempt
  std::int64_t nonfinite = 0;  ///< NaN or infinite values in the batch's data
};

/// Bytes of a job id in /journal/jobs, its NUL included (NDIF ids are 36-character UUIDs).
inline constexpr std::size_t kJournalIdBytes = 64;

/// The NDIF job a rank waits on for a batch, recorded in /journal/jobs before it waits, so that a
/// restart polls it instead of sending the batch again. A hint only: /batches/done stays the truth.
struct JournalEntry {
  std::string job_id;              ///< "" when none is recorded
  std::int32_t attempt = 0;        ///< the attempt of the batch that made the job
  double submitted_unix = 0.0;     ///< when it was submitted (seconds since 1970)
  std::uint64_t request_hash = 0;  ///< what the request asked for (remote::request_hash)

  [[nodiscard]] bool empty() const noexcept { return job_id.empty(); }
};

}  // namespace ndif::store
