#pragma once
/// \file
/// One rank's batches: asks the coordinator for work, encodes each batch once, submits it (or
/// resumes the NDIF job the journal recorded for it), journals each job id before it waits on the
/// job, retries with backoff, writes and flags the result, and reports to the coordinator. A plain
/// class: NDIF, the file and the other ranks are behind small interfaces, so a unit test drives
/// every transition in one process.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/remote/decode_pool.hpp"
#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/remote/retry.hpp"
#include "ndif_sweep/remote/transport.hpp"
#include "ndif_sweep/run/link.hpp"
#include "ndif_sweep/run/messages.hpp"
#include "ndif_sweep/run/signals.hpp"
#include "ndif_sweep/store/batch_records.hpp"

namespace ndif::run {

/// What a worker asks of NDIF: the calls of remote::JobTransport, so a test can play the service.
class JobClient {
 public:
  virtual ~JobClient() = default;
  virtual void submit(remote::JobTicket ticket, remote::EncodedRequest request) = 0;
  virtual void resume(remote::JobTicket ticket, const std::string& job_id, remote::EncodedRequest request,
                      std::chrono::milliseconds since_submit) = 0;
  /// Waits up to `max_wait` for something to happen, and says what did. The worker's one wait point.
  [[nodiscard]] virtual remote::TransportEvents run(std::chrono::milliseconds max_wait) = 0;
  [[nodiscard]] virtual std::vector<remote::JobState> in_flight_states() const = 0;
  virtual void cancel_all() noexcept = 0;
  /// Ends the current or the next `run` early. Thread-safe: the worker's decoding thread calls it
  /// when a result is ready to write.
  virtual void wake() noexcept = 0;
};

/// The JobClient of a run: a remote::JobTransport.
class TransportClient final : public JobClient {
 public:
  explicit TransportClient(remote::TransportOptions options) : transport_(std::move(options)) {}
  void submit(remote::JobTicket ticket, remote::EncodedRequest request) override {
    transport_.submit(ticket, std::move(request));
  }
  void resume(remote::JobTicket ticket, const std::string& job_id, remote::EncodedRequest request,
              std::chrono::milliseconds since_submit) override {
    transport_.resume(ticket, job_id, std::move(request), since_submit);
  }
  [[nodiscard]] remote::TransportEvents run(std::chrono::milliseconds max_wait) override {
    return transport_.run(max_wait);
  }
  [[nodiscard]] std::vector<remote::JobState> in_flight_states() const override {
    return transport_.in_flight_states();
  }
  void cancel_all() noexcept override { transport_.cancel_all(); }
  void wake() noexcept override { transport_.wake(); }

 private:
  remote::JobTransport transport_;
};

/// Where a worker's batches go: the shared output file (a run's store::ParallelOutput), or a test's
/// record of it.
class BatchSink {
 public:
  virtual ~BatchSink() = default;
  /// Records the job the worker is about to wait on for `batch` (durably, before returning).
  virtual void journal(std::int32_t batch, const store::JournalEntry& entry) = 0;
  /// Writes a batch's data, one part per probe, and then its flag.
  virtual void write(const Assignment& batch, const std::vector<std::span<const std::byte>>& parts,
                     const store::BatchStats& stats) = 0;
};

/// What every worker's requests share: the job's half of remote::BatchRequest, and its limits.
struct WorkerSettings {
  std::string model;
  std::string model_key;
  std::vector<spec::Probe> probes;
  DType dtype = DType::float16;
  std::int64_t hidden = 0;
  int max_inflight = 2;
  spec::RetryOptions retry;
  /// How often at most the worker reports its jobs' queue states (they also go out on a change).
  std::chrono::milliseconds states_every{std::chrono::seconds(1)};
  /// Whether a job's slot goes to the next batch as soon as its result starts to download (true:
  /// the next job queues while this one downloads) or only once its data is written (the
  /// one-batch-at-a-time loop that bench/link_bench.py measures as its baseline).
  bool overlap_downloads = true;
  /// Threads that decode results (remote::DecodePool) while the worker writes those already
  /// decoded and drives its transfers: a rank's share of its node's cores (run::core_share) in a
  /// run, since a G4 result decompresses on one core only (bench/write_bench.cpp); 0 decodes within
  /// the turn that received the result (every transition complete when turn() returns: the unit
  /// tests' choice).
  unsigned decode_threads = 1;
  /// The token ids and positions of a batch's rows, in that order, read and tokenized on this rank
  /// as planning did (deterministic): what the worker sends for an Assignment. Errors propagate
  /// (a prompts file changed under the run stops it, exit 2).
  std::function<std::vector<plan::EncodedPrompt>(const std::vector<std::int64_t>& rows)> prompts_of;
};

class Worker {
 public:
  using Clock = std::chrono::steady_clock;

  /// `seed` varies the retry jitter between ranks. Sends nothing until the first turn.
  Worker(WorkerSettings settings, remote::RequestEncoder& encoder, JobClient& client, BatchSink& sink,
         std::uint64_t seed, std::ostream& log);

  /// Acts on a message from the coordinator (Assign, Drain, Finish, Outcome).
  void receive(const Message& message);

  /// One turn: asks for work when there is room, sends batches that are due, waits up to `wait`
  /// on NDIF (the rank's one wait point: never busy), journals the jobs it learns of, writes the
  /// results that arrive and reports to the coordinator through `link`.
  void turn(std::chrono::milliseconds wait, Link& link);

  /// True once the coordinator said Finish: the rank leaves its loop.
  [[nodiscard]] bool finished() const noexcept { return finished_; }
  /// The run's exit code, once the coordinator sent it.
  [[nodiscard]] std::optional<int> outcome() const noexcept { return outcome_; }
  /// Batches this worker holds: waiting to be sent, in flight, decoding, or waiting out a backoff.
  [[nodiscard]] std::size_t batches_held() const noexcept { return work_.size(); }

 private:
  struct Work {
    Assignment assignment;
    remote::EncodedRequest request;
    std::uint64_t request_hash = 0;
    int attempt = 0;         // the ticket's attempt number, continuing the journal's
    int tries_this_run = 0;  // what the retry policy counts: a restart gets the full budget
    bool resumed = false;    // the attempt in flight is a journaled job, polled after a restart
    bool in_flight = false;
    bool decoding = false;  // its result is with decoder_, to be written when it comes back
    std::string job_id;     // of the attempt whose result is decoding
    std::int64_t bytes_received = 0;
    Clock::time_point first_start;
    std::optional<Clock::time_point> send_at;  // set: waiting to be sent (now, or after a backoff)
  };

  void accept(std::vector<Assignment> batches);
  void drain(DrainRequest level);
  void start(Work& w);
  void on_finished(remote::FinishedJob& job, Link& link);
  void on_decoded(remote::DecodeOutcome& decoded, Link& link);
  void on_failed(std::map<std::int32_t, Work>::iterator it, remote::Verdict verdict, const std::string& why,
                 const std::string& job_id, Link& link);
  void report_states(Link& link);
  [[nodiscard]] int free_slots() const;

  WorkerSettings settings_;
  remote::RequestEncoder& encoder_;
  JobClient& client_;
  BatchSink& sink_;
  remote::RetryPolicy policy_;
  std::ostream& log_;
  std::map<std::int32_t, Work> work_;
  std::vector<msg::Failed> encode_failures_;
  bool awaiting_assignment_ = false;
  bool no_more_work_ = false;
  bool idle_sent_ = false;
  bool finished_ = false;
  std::optional<int> outcome_;
  DrainRequest drain_ = DrainRequest::none;
  std::map<std::string, int> reported_states_;
  Clock::time_point states_sent_{};
  remote::DecodePool decoder_;  // last: its thread may call client_ until it is joined
};

}  // namespace ndif::run
