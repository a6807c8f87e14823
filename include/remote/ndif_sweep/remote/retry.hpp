#pragma once
/// \file
/// The retry policy: every failure at the HTTP edge is classified once, here, by pure functions.
/// The transport reports failures as values carrying the verdict; the run loop acts on it.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "ndif_sweep/core/wire.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::remote {

/// What to do about a failed attempt.
enum class Verdict {
  retry,        ///< transient: resubmit the batch after a backoff, while attempts remain
  refused,      ///< the service refused us (credentials, client version, body): stop the run, exit 5
  job_invalid,  ///< the service says this batch's request is wrong: the batch stops, not retried
  fatal,        ///< a complete reply we cannot use (oversized, undecodable): the batch stops
};

/// Which request of an attempt failed.
enum class Stage { submit, poll, download };

/// Why an attempt failed.
enum class FailureCause {
  timeout,      ///< a request, or the whole attempt (job_s), ran out of time
  connection,   ///< could not connect, connection reset, TLS or name resolution failure
  http_status,  ///< the server answered with an HTTP error status
  truncated,    ///< the body ended before its announced size
  oversized,    ///< the result is larger than the request can produce
  bad_reply,    ///< a status reply that does not parse
  job_error,    ///< the job ended with an ERROR status
};

/// "timeout", "connection", ...
[[nodiscard]] const char* cause_name(FailureCause cause) noexcept;
/// "retry", "refused", ...
[[nodiscard]] const char* verdict_name(Verdict verdict) noexcept;

/// An HTTP error status of one request. `presigned` is true for a download from a URL given in
/// COMPLETED data, whose 403 means the URL expired (resubmitting gets a fresh one).
[[nodiscard]] Verdict classify_http(Stage stage, long status, bool presigned = false) noexcept;

/// A job that ended with ERROR or NNSIGHT_ERROR and this description. The request's own fault
/// (job_invalid): ndif-local's "InvalidRequest: ...", NNSIGHT_ERROR, ndif's architecture mismatch,
/// and a Python traceback of the request's code (except running out of memory). A refusal of the
/// key: a description that mentions the "API key" (G2 answers a bad key this way) or hotswapping.
/// Everything else (cancelled, preempted, the execution timeout, an evicted replica, an unreadable
/// payload, out of memory) may pass.
[[nodiscard]] Verdict classify_job_error(std::string_view status, std::string_view description) noexcept;

/// A result or status body that did not decode: a truncated body is retried, a complete one is not.
[[nodiscard]] Verdict classify_decode(bool body_complete) noexcept;

/// Backoff between attempts of one batch: `initial_backoff_s` doubling per failure up to
/// `max_backoff_s`, with "equal jitter" (a uniform draw in [d/2, d]) that depends only on the seed,
/// the batch and the failure count, so runs are reproducible.
class RetryPolicy {
 public:
  RetryPolicy(spec::RetryOptions options, std::uint64_t seed) noexcept : options_(options), seed_(seed) {}

  /// True while `attempts_made` (failed attempts so far) leaves room for another attempt.
  [[nodiscard]] bool may_retry(int attempts_made) const noexcept {
    return attempts_made < options_.max_attempts;
  }

  /// The wait before the next attempt of `batch` after its `failures`-th failure (1-based).
  [[nodiscard]] std::chrono::milliseconds backoff(std::int64_t batch, int failures) const noexcept;

  [[nodiscard]] const spec::RetryOptions& options() const noexcept { return options_; }

 private:
  spec::RetryOptions options_;
  std::uint64_t seed_;
};

/// The wait before the `poll`-th status poll of a job (0-based): 50 ms doubling up to
/// `poll_interval_s`, so short jobs finish quickly and long ones poll at the configured rate.
[[nodiscard]] std::chrono::milliseconds poll_delay(int poll, double poll_interval_s) noexcept;

}  // namespace ndif::remote
