#include "ndif_sweep/remote/retry.hpp"

#include <gtest/gtest.h>

#include <set>

namespace ndif::remote {
namespace {

TEST(RetryPolicy, HttpStatusTable) {
  struct Case {
    Stage stage;
    long status;
    bool presigned;
    Verdict verdict;
  };
  const Case cases[] = {
      {Stage::submit, 500, false, Verdict::retry},     {Stage::submit, 502, false, Verdict::retry},
      {Stage::submit, 503, false, Verdict::retry},     {Stage::submit, 429, false, Verdict::retry},
      {Stage::submit, 408, false, Verdict::retry},     {Stage::submit, 401, false, Verdict::refused},
      {Stage::submit, 403, false, Verdict::refused},   {Stage::submit, 400, false, Verdict::refused},
      {Stage::submit, 422, false, Verdict::refused},   {Stage::submit, 404, false, Verdict::refused},
      {Stage::poll, 401, false, Verdict::refused},     {Stage::poll, 403, false, Verdict::refused},
      {Stage::poll, 404, false, Verdict::retry},       {Stage::poll, 503, false, Verdict::retry},
      {Stage::download, 401, false, Verdict::refused}, {Stage::download, 403, false, Verdict::refused},
      {Stage::download, 403, true, Verdict::retry},    {Stage::download, 404, false, Verdict::retry},
      {Stage::download, 500, true, Verdict::retry},    {Stage::download, 400, true, Verdict::refused},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(classify_http(c.stage, c.status, c.presigned), c.verdict)
        << static_cast<int>(c.stage) << " " << c.status << " presigned=" << c.presigned;
  }
}

TEST(RetryPolicy, JobErrorTable) {
  EXPECT_EQ(classify_job_error("ERROR", "Job took longer than timeout: 3600.0 seconds"), Verdict::retry);
  EXPECT_EQ(classify_job_error("ERROR", "Your job was cancelled or preempted by the server."),
            Verdict::retry);
  EXPECT_EQ(classify_job_error("ERROR", "CUDA out of memory"), Verdict::retry);
  EXPECT_EQ(classify_job_error("ERROR", ""), Verdict::retry);
  EXPECT_EQ(classify_job_error("ERROR", "InvalidRequest: unknown module .model.layers.99"),
            Verdict::job_invalid);
  EXPECT_EQ(classify_job_error("ERROR", "InvalidRequestX"), Verdict::retry);
  EXPECT_EQ(classify_job_error("ERROR", "Missing or invalid API key. Please visit https://login.ndif.us/"),
            Verdict::refused);
  EXPECT_EQ(classify_job_error(
                "ERROR", "Model gpt2 is not dedicated and hotswapping is not supported for this API key"),
            Verdict::refused);
  EXPECT_EQ(classify_job_error("NNSIGHT_ERROR", "IndexError: index 7 is out of bounds"),
            Verdict::job_invalid);
}

// The descriptions ndif 0.1 writes (services/ray/deployments/modeling/base.py, services/api/queue,
// common/errors.py).
TEST(RetryPolicy, Ndif01JobErrorsSayWhetherTheRequestOrTheServerIsAtFault) {
  for (const char* transient : {
           "Your job exceeded the execution timeout of 3600s.",
           "Replica was evicted while processing your request. Sorry for the inconvenience. Please try again "
           "later.",
           "Error submitting request to model deployment. Please try again later. Sorry for the "
           "inconvenience.",
           "Error provisioning model. Please try again later. Sorry for the inconvenience.",
           "Critical server error occurred. Please try again later. Sorry for the inconvenience.",
           "Your request payload could not be read (ZstdError: bad frame). It may be truncated or corrupted "
           "in "
           "transit, or compressed differently than the request declared. Re-sending it usually resolves "
           "this",
           "Traceback (most recent call last):\n  File \"x.py\", line 3\ntorch.OutOfMemoryError: CUDA out of "
           "memory.",
       }) {
    EXPECT_EQ(classify_job_error("ERROR", transient), Verdict::retry) << transient;
  }
  for (const char* request_fault : {
           "Traceback (most recent call last):\n  File \"encoder.py\", line 80, in _trace\n"
           "IndexError: index 300 is out of bounds for dimension 1 with size 12",
           "Traceback (most recent call last):\nAttributeError: 'Envoy' object (nor its module) has "
           "attribute 'x'",
           "The model architecture on this server doesn't match the one your code was traced against: it has "
           "no "
           "module at 'Module:model.model.layers.9'.",
       }) {
    EXPECT_EQ(classify_job_error("ERROR", request_fault), Verdict::job_invalid) << request_fault;
  }
}

TEST(RetryPolicy, DecodeOfATruncatedBodyIsRetriedOfACompleteOneIsFatal) {
  EXPECT_EQ(classify_decode(false), Verdict::retry);
  EXPECT_EQ(classify_decode(true), Verdict::fatal);
}

TEST(RetryPolicy, BackoffDoublesUpToTheMaximumWithJitterInTheUpperHalf) {
  const RetryPolicy policy(spec::RetryOptions{6, 1.0, 10.0}, 42);
  const double full[] = {1, 2, 4, 8, 10, 10, 10};
  for (int failures = 1; failures <= 7; ++failures) {
    const auto ms = policy.backoff(3, failures).count();
    const auto cap = static_cast<std::int64_t>(full[failures - 1] * 1000);
    EXPECT_GE(ms, cap / 2) << failures;
    EXPECT_LE(ms, cap) << failures;
  }
}

TEST(RetryPolicy, JitterIsReproducibleFromTheSeedAndDiffersAcrossBatches) {
  const RetryPolicy a(spec::RetryOptions{6, 1.0, 60.0}, 7);
  const RetryPolicy b(spec::RetryOptions{6, 1.0, 60.0}, 7);
  std::set<std::int64_t> seen;
  for (std::int64_t batch = 0; batch < 20; ++batch) {
    EXPECT_EQ(a.backoff(batch, 3), b.backoff(batch, 3));
    seen.insert(a.backoff(batch, 3).count());
  }
  EXPECT_GT(seen.size(), 15U);  // batches that fail together do not come back together
  EXPECT_NE(RetryPolicy(spec::RetryOptions{6, 1.0, 60.0}, 8).backoff(0, 3), a.backoff(0, 3));
}

TEST(RetryPolicy, AttemptsAreCappedByMaxAttempts) {
  const RetryPolicy policy(spec::RetryOptions{3, 1.0, 60.0}, 0);
  EXPECT_TRUE(policy.may_retry(1));
  EXPECT_TRUE(policy.may_retry(2));
  EXPECT_FALSE(policy.may_retry(3));
}

TEST(PollDelay, StartsAt50msAndDoublesUpToThePollInterval) {
  std::vector<std::int64_t> delays;
  for (int poll = 0; poll < 7; ++poll) delays.push_back(poll_delay(poll, 0.5).count());
  EXPECT_EQ(delays, (std::vector<std::int64_t>{50, 100, 200, 400, 500, 500, 500}));
  EXPECT_EQ(poll_delay(0, 0.02).count(), 20);
  EXPECT_EQ(poll_delay(1000, 2.0).count(), 2000);
}

}  // namespace
}  // namespace ndif::remote
