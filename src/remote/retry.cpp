#include "ndif_sweep/remote/retry.hpp"

#include <algorithm>
#include <cmath>

#include "ndif_sweep/core/hash.hpp"

namespace ndif::remote {

const char* cause_name(FailureCause cause) noexcept {
  switch (cause) {
    case FailureCause::timeout:
      return "timeout";
    case FailureCause::connection:
      return "connection";
    case FailureCause::http_status:
      return "http_status";
    case FailureCause::truncated:
      return "truncated";
    case FailureCause::oversized:
      return "oversized";
    case FailureCause::bad_reply:
      return "bad_reply";
    case FailureCause::job_error:
      return "job_error";
  }
  return "unknown";
}

const char* verdict_name(Verdict verdict) noexcept {
  switch (verdict) {
    case Verdict::retry:
      return "retry";
    case Verdict::refused:
      return "refused";
    case Verdict::job_invalid:
      return "job_invalid";
    case Verdict::fatal:
      return "fatal";
  }
  return "unknown";
}

Verdict classify_http(Stage stage, long status, bool presigned) noexcept {
  if (status == 408 || status == 429 || status >= 500) return Verdict::retry;
  if (stage == Stage::download) {
    // An expired presigned URL answers 403; a G2 server deletes a result after one download, so a
    // missing one is lost, not wrong. Both are fixed by running the job again.
    if (presigned && (status == 403 || status == 404 || status == 410)) return Verdict::retry;
    if (status == 404 || status == 410) return Verdict::retry;
  }
  // A poll for a job the server no longer knows (restarted, expired) is also fixed by resubmitting.
  if (stage == Stage::poll && status == 404) return Verdict::retry;
  if (status == 401 || status == 403 || status == 400 || status == 422) return Verdict::refused;
  if (status >= 400) return Verdict::refused;
  return Verdict::retry;
}

Verdict classify_job_error(std::string_view status, std::string_view description) noexcept {
  const auto has = [&](std::string_view text) { return description.find(text) != std::string_view::npos; };
  // NNSIGHT_ERROR (0.4) is the graph failing on the server: the same request fails the same way.
  if (status == "NNSIGHT_ERROR") return Verdict::job_invalid;
  if (description.starts_with(kInvalidRequestPrefix)) return Verdict::job_invalid;
  // G2 servers refused a bad key, and refuse models outside a key's tier, with an ERROR status
  // instead of an HTTP status; the next attempt would be refused the same way.
  if (has("API key") || has("hotswapping is not supported")) return Verdict::refused;
  // ndif 0.1 (common/errors.py): the caller's module tree differs from the server's. Package drift,
  // not a passing fault: every attempt fails at the same module.
  if (has("The model architecture on this server doesn't match")) return Verdict::job_invalid;
  // ndif 0.1 reports an exception raised while running the request's own code as its traceback
  // (modeling/base.py format_error): a bad index, a module path, a dtype. Running out of device
  // memory is the exception: it depends on what else the server runs.
  if (has("Traceback (most recent call last)")) {
    return has("OutOfMemoryError") || has("out of memory") ? Verdict::retry : Verdict::job_invalid;
  }
  // Everything else -- cancelled or preempted, the execution timeout, an evicted replica, an
  // unreadable payload ("Re-sending it usually resolves this"), "Please try again later" -- may pass.
  return Verdict::retry;
}

Verdict classify_decode(bool body_complete) noexcept {
  return body_complete ? Verdict::fatal : Verdict::retry;
}

std::chrono::milliseconds RetryPolicy::backoff(std::int64_t batch, int failures) const noexcept {
  const int doublings = std::clamp(failures - 1, 0, 62);
  const double full =
      std::min(options_.max_backoff_s, options_.initial_backoff_s * std::ldexp(1.0, doublings));
  const std::uint64_t draw = mix64(seed_ ^ mix64(static_cast<std::uint64_t>(batch) * 0x9E3779B97F4A7C15ULL +
                                                 static_cast<std::uint64_t>(failures)));
  const double unit = static_cast<double>(draw >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  const double seconds = full / 2 + unit * full / 2;
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
}

std::chrono::milliseconds poll_delay(int poll, double poll_interval_s) noexcept {
  constexpr double kFirst = 0.05;
  const double cap = std::max(poll_interval_s, 0.001);
  const double seconds = std::min(cap, kFirst * std::ldexp(1.0, std::clamp(poll, 0, 30)));
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
}

}  // namespace ndif::remote
