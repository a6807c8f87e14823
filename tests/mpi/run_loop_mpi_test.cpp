// The run loop's coordinator and workers over MPI (MpiLink), each rank with a scripted NDIF: every
// batch is written exactly once across the ranks with its own data; a signal on the last rank
// drains every rank; large messages sent in both directions at once do not deadlock; every rank
// learns the outcome from rank 0. Exits 0 only when every rank's checks passed.

#include <mpi.h>

#include <cstring>
#include <deque>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "loop_fakes.hpp"
#include "mpi_checks.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/coordinator.hpp"
#include "ndif_sweep/run/mpi_link.hpp"
#include "ndif_sweep/run/worker.hpp"

namespace {

using namespace ndif;
using namespace ndif::run;
using namespace std::chrono_literals;

ndif::mpitest::MpiChecks checks;

void expect(bool ok, const std::string& what) { checks.expect(ok, what); }

/// How this rank's scripted NDIF behaves in a scenario.
struct Script {
  int batches = 40;
  bool fail_first_attempts = false;      ///< every batch's first attempt fails (retried)
  bool signal_after_first = false;       ///< the last rank sees SIGUSR1 after its first written batch
  bool invalid_with_long_error = false;  ///< every batch is rejected with a 256 KiB error text
  std::size_t batch_rows = 0;            ///< > 0: every batch this many rows (large Assign messages)
};

struct Result {
  std::vector<std::int32_t> written;  ///< batches this rank wrote
  int exit_code = -1;                 ///< the Outcome rank 0 sent
};

Result run_loop(const Communicator& comm, const Script& script) {
  MpiLink link(comm);
  std::ostringstream log;
  std::optional<ProgressReporter> progress;
  std::optional<Coordinator> coordinator;
  auto assignment_of = [&](std::int32_t b) {
    auto a = testing::test_assignment(b);
    for (std::size_t k = 2; k < script.batch_rows; ++k)
      a.rows.push_back(2 * b + static_cast<std::int64_t>(k));
    return a;
  };
  if (checks.rank == 0) {
    progress.emplace(ProgressMode::none, log, script.batches, 2 * script.batches, 0, 0,
                     ProgressReporter::Clock::now());
    std::deque<std::int32_t> pending;
    for (int b = 0; b < script.batches; ++b) pending.push_back(b);
    coordinator.emplace(std::move(pending), checks.size, assignment_of, *progress, log);
  }
  testing::FakeClient client;
  testing::RecordingSink sink;
  remote::GraphRequestEncoder encoder;
  // Prompts are made on this rank from the rows it was handed (test_prompts: the first two rows'
  // prompts, so the large-message scenario's requests stay small: it is about the messages
  // between ranks, not the requests).
  Worker worker(testing::test_settings(3), encoder, client, sink, static_cast<std::uint64_t>(checks.rank),
                log);
  std::map<std::int64_t, int> failed_once;
  bool signalled = false;
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (!worker.finished()) {
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("the loop did not finish in 120 s");
    while (auto m = link.receive()) {
      if (to_coordinator(m->second))
        coordinator->receive(m->first, m->second, link);
      else
        worker.receive(m->second);
    }
    if (worker.finished()) break;
    // This rank's NDIF: settles every job in flight as the script says.
    for (const auto& job : std::vector<testing::FakeClient::Job>(client.in_flight)) {
      const auto b = job.ticket.batch;
      if (script.invalid_with_long_error) {
        client.fail(b, remote::Verdict::job_invalid, std::string(256 * 1024, 'e'));
      } else if (script.fail_first_attempts && failed_once[b]++ == 0) {
        client.fail(b, remote::Verdict::retry);
      } else {
        client.complete(b);
      }
    }
    worker.turn(5ms, link);
    if (script.signal_after_first && checks.rank == checks.size - 1 && !signalled && !sink.written.empty()) {
      signalled = true;
      link.send(0, msg::SignalSeen{false});
    }
  }
  while (!link.flushed()) std::this_thread::sleep_for(1ms);
  Result result;
  for (const auto& w : sink.written) {
    result.written.push_back(w.batch);
    // Its own data: every element holds the batch's value.
    std::uint16_t v = 0;
    std::memcpy(&v, w.parts.at(0).data() + w.parts[0].size() - 2, 2);
    expect(v == testing::test_value(w.batch), "batch " + std::to_string(w.batch) + " holds its own data");
  }
  if (checks.rank == 0) {
    const auto outcome = coordinator->outcome();
    for (int r = 0; r < checks.size; ++r) link.send(r, msg::Outcome{outcome.exit_code});
  }
  while (!worker.outcome()) {
    while (auto m = link.receive()) worker.receive(m->second);
    std::this_thread::sleep_for(1ms);
  }
  while (!link.flushed()) std::this_thread::sleep_for(1ms);
  result.exit_code = *worker.outcome();
  comm.barrier();
  return result;
}

/// Rank 0: how often each batch was written across all ranks.
std::vector<int> written_counts(const Result& r, int batches) {
  int n = static_cast<int>(r.written.size());
  std::vector<int> counts_per_rank(static_cast<std::size_t>(checks.size));
  MPI_Gather(&n, 1, MPI_INT, counts_per_rank.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::vector<int> displacements(static_cast<std::size_t>(checks.size), 0);
  int total = 0;
  for (int k = 0; k < checks.size; ++k) {
    displacements[static_cast<std::size_t>(k)] = total;
    total += counts_per_rank[static_cast<std::size_t>(k)];
  }
  std::vector<std::int32_t> all(static_cast<std::size_t>(std::max(total, 1)));
  MPI_Gatherv(r.written.data(), n, MPI_INT32_T, all.data(), counts_per_rank.data(), displacements.data(),
              MPI_INT32_T, 0, MPI_COMM_WORLD);
  std::vector<int> counts(static_cast<std::size_t>(batches), 0);
  if (checks.rank == 0)
    for (int k = 0; k < total; ++k) ++counts.at(static_cast<std::size_t>(all[static_cast<std::size_t>(k)]));
  return counts;
}

void run_all() {
  const Communicator comm;
  {
    // Every batch, retried once each, written exactly once; every rank took part.
    Script script;
    script.fail_first_attempts = true;
    const auto r = run_loop(comm, script);
    expect(r.exit_code == 0, "complete run: outcome 0, got " + std::to_string(r.exit_code));
    expect(!r.written.empty(), "complete run: this rank wrote batches");
    const auto counts = written_counts(r, script.batches);
    if (checks.rank == 0)
      for (int b = 0; b < script.batches; ++b)
        expect(counts[static_cast<std::size_t>(b)] == 1, "batch " + std::to_string(b) + " written once");
  }
  {
    // A signal on the last rank: every rank drains; nothing is written twice.
    Script script;
    script.batches = 200;
    script.signal_after_first = true;
    const auto r = run_loop(comm, script);
    const auto counts = written_counts(r, script.batches);
    if (checks.rank == 0) {
      int done = 0;
      for (const int c : counts) {
        expect(c <= 1, "drained run: no batch written twice");
        done += c;
      }
      expect(done < script.batches, "drained run: stopped early (" + std::to_string(done) + " done)");
      expect(r.exit_code == 3, "drained run: outcome 3, got " + std::to_string(r.exit_code));
    } else {
      expect(r.exit_code == 3, "drained run: every rank learns outcome 3");
    }
  }
  {
    // Large messages both ways at once (480 KB assignments of 60000 rows out, 256 KiB errors back): rank 0
    // stops the run after three invalid batches in a row, with exit 5 on every rank.
    Script script;
    script.batches = 24;
    script.batch_rows = 60000;
    script.invalid_with_long_error = true;
    const auto r = run_loop(comm, script);
    expect(r.exit_code == 5, "rejected run: outcome 5, got " + std::to_string(r.exit_code));
    expect(r.written.empty(), "rejected run: nothing written");
  }
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  checks.start();
  try {
    run_all();
  } catch (const std::exception& e) {
    std::cerr << "rank " << checks.rank << ": " << e.what() << "\n";
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return checks.finish();
}
