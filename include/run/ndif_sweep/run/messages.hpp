#pragma once
/// \file
/// The messages between the coordinator (rank 0) and the workers (every rank, rank 0 included),
/// as named structs, serialised in one place (JSON text; the link carries bytes).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/store/batch_records.hpp"

namespace ndif::run {

/// One batch as the coordinator hands it to a worker: its rows and padded length (the worker reads
/// and tokenizes the rows' prompts itself, WorkerSettings::prompts_of), and the NDIF job the
/// journal recorded for it, which the worker polls before it sends the batch again.
struct Assignment {
  std::int32_t batch = 0;
  std::vector<std::int64_t> rows;
  std::int32_t padded_len = 0;
  std::optional<store::JournalEntry> journaled;
};

/// Statistics of a batch a worker wrote.
struct BatchReport {
  std::int32_t batch = 0;
  std::int64_t rows = 0;
  std::int64_t bytes = 0;
  int attempts = 0;
  double seconds = 0;
};

namespace msg {

// Worker -> coordinator.
struct RequestWork {
  int slots = 0;  ///< batches the worker can take now
};
struct Done {
  BatchReport report;  ///< written and flagged
};
struct Failed {
  std::int32_t batch = 0;
  std::string error;
  bool invalid = false;  ///< the service says the request itself is wrong: not retried
};
struct Refused {
  std::string error;  ///< the service refused us (key, client version): the run stops, exit 5
};
struct SignalSeen {
  bool abandon = false;  ///< a drain signal arrived on the worker's rank (SIGTERM/INT: abandon)
};
struct States {
  std::map<std::string, int> counts;  ///< the worker's jobs in flight by status, for progress
};
struct Idle {};  ///< nothing in flight and no more work: the worker waits for Finish

// Coordinator -> worker.
struct Assign {
  std::vector<Assignment> batches;  ///< empty: no more work for this worker
};
struct Drain {
  bool abandon = false;  ///< stop taking work; abandon the jobs in flight too
};
struct Finish {};  ///< every worker is idle: leave the loop and close the file
struct Outcome {
  int exit_code = 0;  ///< the run's exit code, after rank 0 recorded it
};

}  // namespace msg

/// Every message of the run loop.
using Message = std::variant<msg::RequestWork, msg::Done, msg::Failed, msg::Refused, msg::SignalSeen,
                             msg::States, msg::Idle, msg::Assign, msg::Drain, msg::Finish, msg::Outcome>;

/// True for the messages a worker sends to the coordinator, false for those it receives.
[[nodiscard]] bool to_coordinator(const Message& message) noexcept;

/// The JSON text of a message: {"type": "...", ...fields}.
[[nodiscard]] std::string encode_message(const Message& message);

/// Parses what encode_message wrote. Throws InternalError on anything else (ranks of one run
/// speak one version).
[[nodiscard]] Message decode_message(std::string_view text);

}  // namespace ndif::run
