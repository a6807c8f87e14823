#pragma once
/// \file
/// The libcurl transport: submits batches to an NDIF service, polls their status and downloads
/// their results, many at once on one thread. Failures are values classified by retry.hpp.
///
/// libcurl must be initialised once per process before any function here runs:
/// `curl_global_init(CURL_GLOBAL_DEFAULT)` in `main()` (the binaries do this), because it is not
/// thread-safe and must not be repeated per transport.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/remote/retry.hpp"
#include "ndif_sweep/remote/service.hpp"
#include "ndif_sweep/remote/status.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::remote {

/// Where and how to talk to the service.
struct TransportOptions {
  std::string base_url;  ///< "http(s)://host[:port]", no trailing slash needed
  /// Sent as `ndif-api-key` on every request to `base_url`, never to a presigned URL, and never
  /// written to a log, an error message or a process argument. The caller reads it from the
  /// job's `api_key_env` variable.
  std::string api_key;
  spec::Timeouts timeouts;
  std::size_t max_result_bytes = std::size_t{4} << 30;  ///< hard cap on any one download
  int poll_failures_allowed = 4;  ///< transient failures of single status polls tolerated per attempt
  /// How long a G4 job resumed from the journal may answer 404 (not stored yet) before it counts
  /// as gone: its submit was answered, so the server had it.
  std::chrono::milliseconds resumed_not_stored{std::chrono::minutes(2)};
};

/// The caller's name for one attempt of one batch.
struct JobTicket {
  std::int64_t batch = 0;
  int attempt = 0;
};

/// A failed attempt, classified once.
struct TransportFailure {
  Verdict verdict = Verdict::retry;
  FailureCause cause = FailureCause::connection;
  Stage stage = Stage::submit;
  long http_status = 0;  ///< 0 when no HTTP status applies
  std::string message;   ///< names the stage, the URL path and the server's own words
};

/// An attempt that ended, successfully or not.
struct FinishedJob {
  JobTicket ticket;
  std::string job_id;                       ///< "" if the submit failed
  std::optional<TransportFailure> failure;  ///< nullopt on success
  std::vector<std::byte> result;            ///< the downloaded result file, on success
  std::int64_t bytes_received = 0;          ///< bytes of the result download
  double seconds = 0;                       ///< from submit to the end of the download
};

/// A job id learnt from a submit reply: the caller journals it before it waits on the job.
struct SubmittedJob {
  JobTicket ticket;
  std::string job_id;
};

/// What happened during one `run`.
struct TransportEvents {
  std::vector<FinishedJob> finished;    ///< attempts that ended
  std::vector<SubmittedJob> submitted;  ///< attempts whose job id the service just gave
  [[nodiscard]] bool empty() const noexcept { return finished.empty() && submitted.empty(); }
};

/// Runs attempts through their lifecycle: POST /request, then GET /response/{id} with backoff
/// (poll_delay) until COMPLETED or ERROR, then the download from /result/{id} or from the URL in
/// the COMPLETED status. A request with an envelope is sent as G4 (docs/protocol.md, G4): a
/// multipart POST with `data` and `blob` and an `ndif-timestamp` header, and a 404 from
/// /response/{id} before its first stored status means "not stored yet". A presigned URL is
/// fetched with no NDIF header and no key. Single-threaded: nothing happens between calls to
/// `run`. Not copyable.
class JobTransport {
 public:
  /// Throws InternalError if libcurl cannot create its multi handle.
  explicit JobTransport(TransportOptions options);
  ~JobTransport();
  JobTransport(const JobTransport&) = delete;
  JobTransport& operator=(const JobTransport&) = delete;

  /// Starts one attempt of a batch. The whole attempt is bounded by `timeouts.job_s`, each HTTP
  /// request by `request_s`, each connect by `connect_s`; the download by the smaller of
  /// `max_result_bytes` and what `request.expected` can produce. Throws InternalError on a libcurl
  /// setup failure.
  void submit(JobTicket ticket, EncodedRequest request);

  /// Continues an attempt whose job `job_id` was submitted `since_submit` ago (a journaled job
  /// after a restart): polls it, downloads its result. A G4 job that still answers 404 once
  /// `resumed_not_stored` has passed since its submit counts as gone (a failed attempt, retried):
  /// one submitted an hour ago is known gone at its first 404.
  void resume(JobTicket ticket, const std::string& job_id, EncodedRequest request,
              std::chrono::milliseconds since_submit = std::chrono::milliseconds(0));

  /// Drives the transfers for up to `max_wait` and returns what happened meanwhile, as soon as
  /// anything did: attempts that ended, job ids learnt. With nothing in flight it waits the time
  /// out (a caller's loop never spins). Never throws for network or server failures: they come
  /// back as `FinishedJob::failure`.
  [[nodiscard]] TransportEvents run(std::chrono::milliseconds max_wait);

  /// Ends the current or the next `run` early (at once, if it is waiting). Thread-safe: the one
  /// call another thread may make (a result decoded beside the transfers wakes the rank to write it).
  void wake() noexcept;

  /// Attempts submitted and not yet returned by `run`.
  [[nodiscard]] std::size_t in_flight() const noexcept;

  /// The last status each attempt in flight reported (RECEIVED until its first; COMPLETED while
  /// its result downloads), for progress output.
  [[nodiscard]] std::vector<JobState> in_flight_states() const;

  /// Abandons every attempt in flight; they are not returned by `run`.
  void cancel_all() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// GET {base_url}/env (no key). Blocking. Throws Error (exit 1) when the service cannot be
/// reached or answers an HTTP error, DecodeError on a reply of another shape.
[[nodiscard]] ServerEnv fetch_env(const std::string& base_url, const spec::Timeouts& timeouts);

/// GET {base_url}/status with the key. Blocking. Throws ServiceRefused on 401/403, Error (exit 1)
/// when the service cannot be reached, DecodeError on a malformed reply.
[[nodiscard]] std::vector<Deployment> fetch_deployments(const std::string& base_url,
                                                        const std::string& api_key,
                                                        const spec::Timeouts& timeouts);

/// Asks the service whether it takes `api_key`, without creating a job: a G4 POST /request with
/// the envelope and no blob, which the service refuses with 401/403 (400 for a malformed key)
/// when the key is bad and with 422 (the missing blob) once the key has passed. Blocking; never
/// throws for a network failure (outcome unknown).
[[nodiscard]] KeyCheck check_api_key(const std::string& base_url, const std::string& api_key,
                                     const std::string& envelope, const spec::Timeouts& timeouts);

/// True if `GET {base_url}/ping` answers 200 within the timeouts. Blocking; never throws for a
/// network failure.
[[nodiscard]] bool ping(const std::string& base_url, const spec::Timeouts& timeouts);

}  // namespace ndif::remote
