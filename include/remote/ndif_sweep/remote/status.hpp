#pragma once
/// \file
/// The status JSON of an NDIF job (docs/protocol.md). Pure; the input is untrusted
/// bytes from the network.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ndif::remote {

/// Where a job stands. Statuses this client does not know count as still running.
enum class JobState {
  received,
  queued,
  provisioning,  ///< G4: the server is placing the model (no replica yet)
  deploying,     ///< G4: the model's weights are loading
  dispatched,
  running,
  log,
  completed,
  error,
  nnsight_error,
  unknown,
};

/// "RECEIVED", "QUEUED", ... as the server spells it; "UNKNOWN" for unknown.
[[nodiscard]] const char* state_name(JobState state) noexcept;

/// One status reply.
struct JobStatus {
  std::string id;
  JobState state = JobState::unknown;
  std::string status;       ///< the status string as sent, e.g. "QUEUED"
  std::string description;  ///< "" when absent or null
  /// For COMPLETED: the presigned URL of the result (G3, G4), or nullopt to fetch `/result/{id}` (G2).
  std::optional<std::string> result_url;
  /// For COMPLETED with `[url, size]`: the size the server announced.
  std::optional<std::int64_t> result_size;

  /// True for COMPLETED, ERROR and NNSIGHT_ERROR.
  [[nodiscard]] bool finished() const noexcept {
    return state == JobState::completed || state == JobState::error || state == JobState::nnsight_error;
  }
};

/// Parses a status reply. Throws DecodeError, quoting the start of the reply, when it is not a JSON
/// object with string `id` and `status`, or when a COMPLETED `data` is not null, a URL string or
/// `[url, size]`. An NNSIGHT_ERROR's `data.err_message` becomes the description when it has none.
[[nodiscard]] JobStatus parse_status(std::string_view body);

}  // namespace ndif::remote
