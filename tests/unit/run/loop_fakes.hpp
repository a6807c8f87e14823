#pragma once
// A scriptable NDIF (FakeClient), a recording file (RecordingSink) and the batches of a small job,
// for driving the coordinator and the workers without a server, a file or (in the unit tests) MPI.

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../remote/result_files.hpp"
#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/run/worker.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::run::testing {

/// The prompts of rows {2b, 2b + 1} (batch b): two prompts whose ids say which batch they belong to.
inline std::vector<plan::EncodedPrompt> test_prompts(const std::vector<std::int64_t>& rows) {
  const auto b = static_cast<std::int32_t>(rows.at(0) / 2);
  return {plan::EncodedPrompt{{1, 100 + b, 7}, {2}}, plan::EncodedPrompt{{1, 200 + b}, {1}}};
}

/// The job every loop test runs: one probe of 2 layers, P = 1, H = 4, float16.
inline WorkerSettings test_settings(int max_inflight = 2) {
  WorkerSettings s;
  s.model = "test/model";
  s.model_key = "test-key";
  s.probes = {spec::Probe{"resid", "model.layers.{layer}", std::nullopt, {0, 1}, "[0, 1]"}};
  s.dtype = DType::float16;
  s.hidden = 4;
  s.max_inflight = max_inflight;
  s.retry = spec::RetryOptions{3, 0.001, 0.002};
  s.states_every = std::chrono::milliseconds(0);
  s.prompts_of = test_prompts;
  // Each turn's effects complete when it returns; the tests of the decoding threads turn them on.
  s.decode_threads = 0;
  return s;
}

/// Batch b: rows 2b and 2b + 1, whose prompts are test_prompts'.
inline Assignment test_assignment(std::int32_t b) {
  Assignment a;
  a.batch = b;
  a.rows = {2 * b, 2 * b + 1};
  a.padded_len = 3;
  return a;
}

/// The BatchRequest a worker with test_settings() builds for test_assignment(b).
inline remote::BatchRequest test_request(std::int32_t b) {
  const auto s = test_settings();
  const auto a = test_assignment(b);
  return remote::BatchRequest{s.model, s.model_key, test_prompts(a.rows), a.padded_len, s.probes,
                              s.dtype, s.hidden};
}

/// The value every element of batch b's result holds (as float16 bits): data says its batch.
inline std::uint16_t test_value(std::int64_t batch) { return static_cast<std::uint16_t>(0x3c00 + batch); }

/// A G2 result file for `expected`, every element test_value(batch).
inline std::vector<std::byte> test_result(const remote::ExpectedResult& expected, std::int64_t batch) {
  const auto count = static_cast<std::size_t>(expected.data_bytes() / 2);
  std::vector<std::byte> bytes(count * 2);
  const auto v = test_value(batch);
  for (std::size_t i = 0; i < count; ++i) std::memcpy(bytes.data() + 2 * i, &v, 2);
  return remote::testing::g2_file_for(expected, std::move(bytes));
}

/// NDIF as a test scripts it. Every submit is answered at once with a job id (a `submitted`
/// event); what becomes of a job is up to the test: complete(), fail(), or nothing (it stays
/// QUEUED).
class FakeClient final : public JobClient {
 public:
  struct Job {
    remote::JobTicket ticket;
    std::string job_id;
    remote::EncodedRequest request;
    bool resumed = false;
    std::chrono::milliseconds since_submit{0};
    bool downloading = false;  ///< COMPLETED at the service, its result on its way
  };

  void submit(remote::JobTicket ticket, remote::EncodedRequest request) override {
    const auto id = "job-" + std::to_string(ticket.batch) + "-" + std::to_string(ticket.attempt);
    submits.push_back(ticket);
    in_flight.push_back(Job{ticket, id, std::move(request)});
    pending.submitted.push_back(remote::SubmittedJob{ticket, id});
  }
  void resume(remote::JobTicket ticket, const std::string& job_id, remote::EncodedRequest request,
              std::chrono::milliseconds since_submit) override {
    resumes.push_back(Job{ticket, job_id, request, true, since_submit});
    in_flight.push_back(Job{ticket, job_id, std::move(request), true, since_submit});
  }
  [[nodiscard]] remote::TransportEvents run(std::chrono::milliseconds max_wait) override {
    waits.push_back(max_wait);
    if (pending.finished.empty() && pending.submitted.empty()) {
      // As the transport does: nothing to report, so wait the time out or until woken.
      std::unique_lock lock(wake_mutex);
      wake_cv.wait_for(lock, max_wait, [&] { return woken; });
      woken = false;
    }
    return std::exchange(pending, {});
  }
  void wake() noexcept override {
    {
      const std::lock_guard lock(wake_mutex);
      woken = true;
      ++wakes;
    }
    wake_cv.notify_all();
  }
  [[nodiscard]] std::vector<remote::JobState> in_flight_states() const override {
    std::vector<remote::JobState> states;
    for (const auto& job : in_flight)
      states.push_back(job.downloading ? remote::JobState::completed : remote::JobState::queued);
    return states;
  }
  /// wake() calls so far (from the worker's decoding thread).
  [[nodiscard]] int wakes_seen() {
    const std::lock_guard lock(wake_mutex);
    return wakes;
  }
  void cancel_all() noexcept override {
    cancelled += static_cast<int>(in_flight.size());
    in_flight.clear();
    pending = {};
  }

  /// Ends the job in flight for `batch` with its exact result; false if none is in flight.
  bool complete(std::int64_t batch) {
    auto job = take(batch);
    if (!job) return false;
    remote::FinishedJob f;
    f.ticket = job->ticket;
    f.job_id = job->job_id;
    f.result = test_result(job->request.expected, batch);
    f.bytes_received = static_cast<std::int64_t>(f.result.size());
    pending.finished.push_back(std::move(f));
    return true;
  }
  /// Ends the job in flight for `batch` with a result cut off halfway (a DecodeError when it is
  /// decoded); false if none is in flight.
  bool complete_truncated(std::int64_t batch) {
    if (!complete(batch)) return false;
    auto& result = pending.finished.back().result;
    result.resize(result.size() / 2);
    return true;
  }
  /// Ends the job in flight for `batch` with a failure of `verdict`; false if none is in flight.
  bool fail(std::int64_t batch, remote::Verdict verdict, std::string why = "injected", long http = 500) {
    auto job = take(batch);
    if (!job) return false;
    remote::FinishedJob f;
    f.ticket = job->ticket;
    f.job_id = job->job_id;
    f.failure = remote::TransportFailure{verdict, remote::FailureCause::http_status, remote::Stage::poll,
                                         http, std::move(why)};
    pending.finished.push_back(std::move(f));
    return true;
  }
  /// Marks the job in flight for `batch` as downloading its result; false if none is in flight.
  bool start_download(std::int64_t batch) {
    for (auto& job : in_flight)
      if (job.ticket.batch == batch) return job.downloading = true;
    return false;
  }
  /// Completes every job in flight.
  void complete_all() {
    while (!in_flight.empty()) complete(in_flight.front().ticket.batch);
  }

  std::mutex wake_mutex;
  std::condition_variable wake_cv;
  bool woken = false;
  int wakes = 0;
  std::vector<remote::JobTicket> submits;
  std::vector<Job> resumes;
  std::vector<Job> in_flight;
  std::vector<std::chrono::milliseconds> waits;
  int cancelled = 0;

 private:
  std::optional<Job> take(std::int64_t batch) {
    for (auto it = in_flight.begin(); it != in_flight.end(); ++it) {
      if (it->ticket.batch != batch) continue;
      Job job = std::move(*it);
      in_flight.erase(it);
      return job;
    }
    return std::nullopt;
  }
  remote::TransportEvents pending;
};

/// What a worker wrote: the journal and the batches, in order.
class RecordingSink final : public BatchSink {
 public:
  void journal(std::int32_t batch, const store::JournalEntry& entry) override {
    journal_log.emplace_back(batch, entry);
  }
  void write(const Assignment& batch, const std::vector<std::span<const std::byte>>& parts,
             const store::BatchStats& stats) override {
    Written w{batch.batch, batch.rows, {}, stats};
    for (const auto& p : parts) w.parts.emplace_back(p.begin(), p.end());
    written.push_back(std::move(w));
  }

  struct Written {
    std::int32_t batch;
    std::vector<std::int64_t> rows;
    std::vector<std::vector<std::byte>> parts;
    store::BatchStats stats;
  };
  std::vector<std::pair<std::int32_t, store::JournalEntry>> journal_log;
  std::vector<Written> written;
};

}  // namespace ndif::run::testing
