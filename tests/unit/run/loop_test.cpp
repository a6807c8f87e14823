// The run loop's state machine, driven in one process: a coordinator and workers on an in-process
// link, each worker with a scripted NDIF and a recording file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "loop_fakes.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/run/coordinator.hpp"
#include "ndif_sweep/run/link.hpp"
#include "ndif_sweep/run/messages.hpp"
#include "ndif_sweep/run/worker.hpp"

namespace ndif::run {
namespace {

using namespace std::chrono_literals;
using remote::Verdict;
using testing::FakeClient;
using testing::RecordingSink;

std::deque<std::int32_t> batches(int n) {
  std::deque<std::int32_t> out;
  for (int b = 0; b < n; ++b) out.push_back(b);
  return out;
}

/// A coordinator on rank 0 and a worker on every rank.
struct Loop {
  explicit Loop(int ranks, std::deque<std::int32_t> pending, int max_inflight = 2,
                std::map<std::int32_t, store::JournalEntry> journal = {}, int total = -1,
                unsigned decode_threads = 0)
      : net(ranks),
        progress(ProgressMode::none, log, total < 0 ? static_cast<std::int64_t>(pending.size()) : total, 1000,
                 0, 0, ProgressReporter::Clock::now()),
        coordinator(
            std::move(pending), ranks,
            [journal](std::int32_t b) {
              auto a = testing::test_assignment(b);
              if (auto it = journal.find(b); it != journal.end()) a.journaled = it->second;
              return a;
            },
            progress, log) {
    auto settings = testing::test_settings(max_inflight);
    settings.decode_threads = decode_threads;
    for (int r = 0; r < ranks; ++r) {
      clients.push_back(std::make_unique<FakeClient>());
      sinks.push_back(std::make_unique<RecordingSink>());
      workers.push_back(std::make_unique<Worker>(settings, encoder, *clients.back(), *sinks.back(),
                                                 static_cast<std::uint64_t>(r), log));
    }
  }

  void deliver() {
    net.deliver([&](int to, int from, const Message& m) {
      if (to_coordinator(m)) {
        ASSERT_EQ(to, 0) << encode_message(m);
        coordinator.receive(from, m, net.link(0));
      } else {
        ASSERT_EQ(from, 0) << encode_message(m);
        workers[static_cast<std::size_t>(to)]->receive(m);
      }
    });
  }

  /// One turn of every rank that has not finished, with every message delivered around it.
  void step() {
    deliver();
    for (std::size_t r = 0; r < workers.size(); ++r)
      if (!workers[r]->finished()) workers[r]->turn(0ms, net.link(static_cast<int>(r)));
    deliver();
  }

  /// Two steps: work is asked for and handed out, then sent.
  void start() {
    step();
    step();
  }

  /// Steps, calling `each()` before every step, until every worker finished (or `limit` steps).
  template <typename Each>
  int run(Each&& each, int limit = 500) {
    int steps = 0;
    while (!all_finished() && steps++ < limit) {
      each();
      step();
      std::this_thread::sleep_for(1ms);  // lets the tests' millisecond backoffs pass
    }
    return steps;
  }
  int run() {
    return run([] {});
  }

  [[nodiscard]] bool all_finished() const {
    for (const auto& w : workers)
      if (!w->finished()) return false;
    return coordinator.finished();
  }
  [[nodiscard]] int written() const {
    int n = 0;
    for (const auto& s : sinks) n += static_cast<int>(s->written.size());
    return n;
  }
  [[nodiscard]] int submits() const {
    int n = 0;
    for (const auto& c : clients) n += static_cast<int>(c->submits.size());
    return n;
  }
  void complete_all() {
    for (auto& c : clients) c->complete_all();
  }

  std::ostringstream log;
  InProcessNetwork net;
  ProgressReporter progress;
  Coordinator coordinator;
  remote::GraphRequestEncoder encoder;
  std::vector<std::unique_ptr<FakeClient>> clients;
  std::vector<std::unique_ptr<RecordingSink>> sinks;
  std::vector<std::unique_ptr<Worker>> workers;
};

// ---------------------------------------------------------------------------------------------
// Messages

TEST(Messages, EveryMessageSurvivesItsTextForm) {
  auto a = testing::test_assignment(7);
  a.journaled = store::JournalEntry{"abc-123", 2, 1.7e9, 0xfedcba9876543210ULL};
  const std::vector<Message> all = {msg::RequestWork{3},
                                    msg::Done{BatchReport{4, 9, 1234, 2, 0.5}},
                                    msg::Failed{5, "why \"quoted\"\n", true},
                                    msg::Refused{"no key"},
                                    msg::SignalSeen{true},
                                    msg::States{{{"QUEUED", 2}, {"RETRY", 1}}},
                                    msg::Idle{},
                                    msg::Assign{{a, testing::test_assignment(8)}},
                                    msg::Drain{false},
                                    msg::Finish{},
                                    msg::Outcome{3}};
  for (const auto& m : all) {
    const auto text = encode_message(m);
    const auto back = decode_message(text);
    EXPECT_EQ(back.index(), m.index()) << text;
    EXPECT_EQ(encode_message(back), text);
  }
  const auto back = std::get<msg::Assign>(decode_message(encode_message(all[7])));
  ASSERT_EQ(back.batches.size(), 2U);
  EXPECT_EQ(back.batches[0].rows, (std::vector<std::int64_t>{14, 15}));
  EXPECT_EQ(back.batches[0].journaled->request_hash, 0xfedcba9876543210ULL);
  EXPECT_EQ(back.batches[0].journaled->job_id, "abc-123");
  EXPECT_FALSE(back.batches[1].journaled);
  EXPECT_TRUE(to_coordinator(all[0]));
  EXPECT_FALSE(to_coordinator(all[7]));
}

TEST(Messages, AnythingElseIsAnInternalError) {
  for (const char* text : {"", "[1, 2]", R"({"type": "teleport"})", R"({"type": "request_work"})",
                           R"({"type": "assign", "batches": [{"batch": "x"}]})"}) {
    EXPECT_THROW(static_cast<void>(decode_message(text)), InternalError) << text;
  }
}

// ---------------------------------------------------------------------------------------------
// The loop

TEST(Loop, EveryBatchIsWrittenOnceAcrossRanksWithItsOwnDataAndJournaledFirst) {
  Loop loop(2, batches(7));
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 7);
  std::set<std::int32_t> seen;
  for (const auto& sink : loop.sinks) {
    for (const auto& w : sink->written) {
      EXPECT_TRUE(seen.insert(w.batch).second) << "batch " << w.batch << " written twice";
      ASSERT_EQ(w.parts.size(), 1U);
      ASSERT_EQ(w.parts[0].size(), 2U * 2 * 1 * 4 * 2);  // B x L x P x H float16
      std::uint16_t v = 0;
      std::memcpy(&v, w.parts[0].data() + 6, 2);
      EXPECT_EQ(v, testing::test_value(w.batch));
      EXPECT_EQ(w.stats.attempts, 1);
      // Every write follows the journal entry of the job it came from.
      const auto& j = sink->journal_log;
      const auto it = std::find_if(j.begin(), j.end(), [&](const auto& e) { return e.first == w.batch; });
      ASSERT_NE(it, j.end()) << "batch " << w.batch << " was never journaled";
      EXPECT_EQ(it->second.job_id, "job-" + std::to_string(w.batch) + "-1");
      EXPECT_EQ(it->second.attempt, 1);
      EXPECT_EQ(it->second.request_hash, remote::request_hash(testing::test_request(w.batch)));
      EXPECT_GT(it->second.submitted_unix, 1.7e9);
    }
  }
  EXPECT_FALSE(loop.sinks[0]->written.empty());
  EXPECT_FALSE(loop.sinks[1]->written.empty());
  EXPECT_EQ(loop.coordinator.outcome().name, "complete");
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 0);
  EXPECT_EQ(loop.progress.done_batches(), 7);
}

TEST(Loop, ResultsDecodedInTheBackgroundAreEachWrittenOnceWithTheirOwnData) {
  Loop loop(2, batches(9), 2, {}, -1, 2);
  loop.run([&] { loop.complete_all(); }, 5000);
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 9);
  std::set<std::int32_t> seen;
  std::set<std::int64_t> sizes;  // every batch's result file has the same size here
  for (const auto& sink : loop.sinks) {
    for (const auto& w : sink->written) {
      EXPECT_TRUE(seen.insert(w.batch).second) << "batch " << w.batch << " written twice";
      ASSERT_EQ(w.parts.size(), 1U);
      ASSERT_EQ(w.parts[0].size(), 2U * 2 * 1 * 4 * 2);
      for (std::size_t i = 0; i < w.parts[0].size(); i += 2) {
        std::uint16_t v = 0;
        std::memcpy(&v, w.parts[0].data() + i, 2);
        ASSERT_EQ(v, testing::test_value(w.batch)) << "batch " << w.batch << " byte " << i;
      }
      EXPECT_EQ(w.stats.attempts, 1);
      // The size of the file received, carried past the decoding: the data and its container.
      EXPECT_GT(w.stats.bytes, static_cast<std::int64_t>(w.parts[0].size()));
      sizes.insert(w.stats.bytes);
    }
  }
  EXPECT_EQ(sizes.size(), 1U);
  // The decoding threads woke each rank's wait once per result (each just after its result could
  // be taken, so the last may come after the run ended).
  const auto woken = [&] { return loop.clients[0]->wakes_seen() + loop.clients[1]->wakes_seen(); };
  for (int i = 0; i < 2000 && woken() < 9; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(woken(), 9);
  EXPECT_EQ(loop.coordinator.outcome().name, "complete");
}

TEST(Loop, AResultThatFailsToDecodeInTheBackgroundFailsItsBatchWithTheReasonAndTheRestIsWritten) {
  Loop loop(1, batches(2), 2, {}, -1, 1);
  loop.start();
  ASSERT_EQ(loop.submits(), 2);
  // Received whole and still not a result: the service answered so, and asking again would not
  // change it (remote::classify_decode), so the batch fails, as when decoding is inline.
  ASSERT_TRUE(loop.clients[0]->complete_truncated(0));
  loop.run([&] { loop.complete_all(); }, 5000);
  ASSERT_TRUE(loop.all_finished());
  ASSERT_EQ(loop.written(), 1) << loop.log.str();
  EXPECT_EQ(loop.sinks[0]->written[0].batch, 1);
  EXPECT_EQ(loop.submits(), 2);
  EXPECT_NE(
      loop.log.str().find("batch 0 failed after all attempts: torch.save: no ZIP end-of-central-directory"),
      std::string::npos)
      << loop.log.str();
  EXPECT_EQ(loop.coordinator.outcome().name, "incomplete");
}

TEST(Loop, AnAbandoningDrainDropsResultsThatAreStillDecoding) {
  Loop loop(1, batches(2), 2, {}, -1, 1);
  loop.start();
  ASSERT_EQ(loop.submits(), 2);
  loop.complete_all();
  // The turn hands both results to the decoding thread and writes those that are back before it
  // ends (none, one or both: the thread races the turn). The drain comes before the next turn:
  // whatever was still decoding or waiting then is never written.
  loop.workers[0]->turn(0ms, loop.net.link(0));
  const int before_drain = loop.written();
  loop.net.link(0).send(0, msg::SignalSeen{true});
  loop.run([] {}, 5000);
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), before_drain);
  EXPECT_EQ(loop.coordinator.outcome().name, before_drain == 2 ? "complete" : "drained");
}

TEST(Loop, NoWorkerHoldsMoreThanItsSlots) {
  Loop loop(2, batches(9), 3);
  int steps = 0;
  loop.run([&] {
    for (const auto& c : loop.clients) EXPECT_LE(c->in_flight.size(), 3U);
    // Complete one job per step per rank, so jobs queue up.
    if (++steps % 2 == 0)
      for (auto& c : loop.clients)
        if (!c->in_flight.empty()) c->complete(c->in_flight.front().ticket.batch);
  });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 9);
}

TEST(Loop, ADownloadingJobGivesItsSlotToTheNextBatchAndDownloadsAreBoundedByAsManyAgain) {
  Loop loop(1, batches(8), 2);
  loop.start();
  auto& client = *loop.clients[0];
  ASSERT_EQ(client.submits.size(), 2U);
  ASSERT_TRUE(client.start_download(client.in_flight[0].ticket.batch));
  loop.start();
  // Two wait at the service again, beside the one downloading.
  EXPECT_EQ(client.submits.size(), 3U);
  for (auto& job : client.in_flight) job.downloading = true;
  loop.start();
  // Three download and one more was sent: four held, twice max_inflight, and no more.
  EXPECT_EQ(client.submits.size(), 4U);
  for (auto& job : client.in_flight) job.downloading = true;
  loop.start();
  EXPECT_EQ(client.submits.size(), 4U);
  EXPECT_EQ(loop.workers[0]->batches_held(), 4U);
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 8);
}

TEST(Loop, WithoutOverlapADownloadingJobKeepsItsSlotUntilItIsWritten) {
  Loop loop(1, batches(4), 1);
  auto settings = testing::test_settings(1);
  settings.overlap_downloads = false;
  loop.workers[0] =
      std::make_unique<Worker>(settings, loop.encoder, *loop.clients[0], *loop.sinks[0], 0, loop.log);
  loop.start();
  auto& client = *loop.clients[0];
  ASSERT_EQ(client.submits.size(), 1U);
  ASSERT_TRUE(client.start_download(client.in_flight[0].ticket.batch));
  loop.start();
  EXPECT_EQ(client.submits.size(), 1U);
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 4);
  EXPECT_EQ(client.submits.size(), 4U);
}

TEST(Loop, RanksThatGetNoBatchGoIdleAndTheRunFinishes) {
  Loop loop(4, batches(1));
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 1);
  EXPECT_EQ(loop.submits(), 1);
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 0);
}

TEST(Loop, NothingPendingFinishesAtOnce) {
  Loop loop(3, {}, 2, {}, 5);
  loop.run();
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.submits(), 0);
  EXPECT_EQ(loop.coordinator.outcome().name, "incomplete");  // 0 of 5 done, none pending
}

TEST(Loop, ATransientFailureIsRetriedAndTheAttemptCounted) {
  Loop loop(1, batches(1));
  loop.start();
  ASSERT_TRUE(loop.clients[0]->fail(0, Verdict::retry));
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  ASSERT_EQ(loop.sinks[0]->written.size(), 1U);
  EXPECT_EQ(loop.sinks[0]->written[0].stats.attempts, 2);
  EXPECT_EQ(loop.submits(), 2);
  EXPECT_NE(loop.log.str().find("batch 0 attempt 1 failed (injected); retrying"), std::string::npos)
      << loop.log.str();
  // The retry's new job replaced the journal entry.
  EXPECT_EQ(loop.sinks[0]->journal_log.back().second.job_id, "job-0-2");
}

TEST(Loop, ExhaustedRetriesFailTheBatchAndTheRunIsIncomplete) {
  Loop loop(1, batches(2));
  loop.run([&] {
    auto& c = *loop.clients[0];
    if (!c.in_flight.empty() && c.in_flight.front().ticket.batch == 0)
      c.fail(0, Verdict::retry);
    else
      c.complete_all();
  });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 1);
  // max_attempts 3: three submissions of batch 0, then it fails.
  EXPECT_EQ(std::count_if(loop.clients[0]->submits.begin(), loop.clients[0]->submits.end(),
                          [](const auto& t) { return t.batch == 0; }),
            3);
  EXPECT_EQ(loop.progress.failed_batches(), 1);
  EXPECT_EQ(loop.coordinator.outcome().name, "incomplete");
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 3);
  EXPECT_NE(loop.log.str().find("batch 0 failed after all attempts: injected (attempt 3)"),
            std::string::npos);
}

TEST(Loop, ADrainDuringARetryGivesTheBatchUpWithoutSendingItAgain) {
  Loop loop(2, batches(4), 1);
  loop.start();
  // Rank 1's batch fails and waits out its backoff when the drain comes.
  ASSERT_TRUE(loop.clients[1]->fail(loop.clients[1]->in_flight.front().ticket.batch, Verdict::retry));
  loop.step();
  loop.coordinator.drain(DrainRequest::finish_in_flight, loop.net.link(0));
  const int submits_at_drain = loop.submits();
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  // No new submission after the drain, neither the retry nor a new batch; rank 0's job in flight
  // finished and was written.
  EXPECT_EQ(loop.submits(), submits_at_drain);
  EXPECT_EQ(loop.written(), submits_at_drain - 1);
  EXPECT_EQ(loop.coordinator.outcome().name, "drained");
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 3);
}

TEST(Loop, AResultThatArrivesAfterADrainIsStillWrittenAndCounted) {
  Loop loop(2, batches(2), 1);
  loop.start();
  ASSERT_EQ(loop.submits(), 2);
  // SIGUSR1 on rank 1: its worker tells the coordinator, which drains every rank.
  loop.net.link(1).send(0, msg::SignalSeen{false});
  loop.step();
  EXPECT_EQ(loop.coordinator.drain_level(), DrainRequest::finish_in_flight);
  EXPECT_FALSE(loop.all_finished());
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 2);
  // Both batches arrived after the drain: the run is complete after all.
  EXPECT_EQ(loop.coordinator.outcome().name, "complete");
}

TEST(Loop, AnAbandoningDrainCancelsJobsInFlightKeepsTheirJournalAndIgnoresLateResults) {
  Loop loop(2, batches(6), 2);
  loop.start();
  ASSERT_EQ(loop.submits(), 4);
  std::vector<FakeClient::Job> late = loop.clients[1]->in_flight;
  loop.net.link(1).send(0, msg::SignalSeen{true});
  loop.step();
  EXPECT_EQ(loop.clients[0]->cancelled + loop.clients[1]->cancelled, 4);
  // A result the transport had already finished when it was cancelled.
  loop.clients[1]->in_flight = late;
  loop.clients[1]->complete_all();
  loop.run();
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 0);
  EXPECT_EQ(loop.sinks[0]->journal_log.size() + loop.sinks[1]->journal_log.size(), 4U);
  EXPECT_EQ(loop.coordinator.outcome().name, "drained");
}

TEST(Loop, ARefusalStopsEveryRankWithExit5) {
  Loop loop(2, batches(8), 2);
  loop.start();
  const int submitted = loop.submits();
  loop.clients[1]->fail(loop.clients[1]->in_flight.front().ticket.batch, Verdict::refused, "401 invalid key",
                        401);
  loop.run([&] {});
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.submits(), submitted);
  EXPECT_GT(loop.clients[0]->cancelled, 0);
  EXPECT_EQ(loop.coordinator.outcome().name, "failed");
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 5);
  ASSERT_TRUE(loop.coordinator.refusal());
  EXPECT_NE(loop.coordinator.refusal()->find("401 invalid key"), std::string::npos);
}

TEST(Loop, ThreeInvalidBatchesInARowStopTheRestFromBeingSent) {
  Loop loop(1, batches(10), 1);
  loop.run([&] {
    auto& c = *loop.clients[0];
    if (!c.in_flight.empty()) c.fail(c.in_flight.front().ticket.batch, Verdict::job_invalid, "bad module");
  });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.submits(), 3);
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 5);
  ASSERT_TRUE(loop.coordinator.refusal());
  EXPECT_NE(loop.coordinator.refusal()->find("3 batches in a row were rejected"), std::string::npos);
  EXPECT_NE(loop.log.str().find("batch 2 was rejected by the service and is not retried: bad module"),
            std::string::npos);
}

TEST(Loop, AJournaledJobIsPolledInsteadOfSentAndItsResultWritten) {
  const auto hash = remote::request_hash(testing::test_request(1));
  Loop loop(1, batches(2), 2, {{1, store::JournalEntry{"old-1", 2, 1.0e9, hash}}});
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  auto& c = *loop.clients[0];
  ASSERT_EQ(c.resumes.size(), 1U);
  EXPECT_EQ(c.resumes[0].job_id, "old-1");
  EXPECT_EQ(c.resumes[0].ticket.attempt, 2);
  // Submitted 1e9 s after 1970: far longer ago than any grace for an unknown job.
  EXPECT_GT(c.resumes[0].since_submit, std::chrono::hours(24 * 365));
  ASSERT_EQ(c.submits.size(), 1U);
  EXPECT_EQ(c.submits[0].batch, 0);
  EXPECT_EQ(loop.written(), 2);
  const auto& w = loop.sinks[0]->written;
  const auto it = std::find_if(w.begin(), w.end(), [](const auto& x) { return x.batch == 1; });
  ASSERT_NE(it, w.end());
  EXPECT_EQ(it->stats.attempts, 2);
}

TEST(Loop, AJournaledJobThatExpiredIsSentAgainWithAFreshRetryBudget) {
  const auto hash = remote::request_hash(testing::test_request(0));
  // Attempt 3 of max_attempts 3 in the journal: the restart still has its own three.
  Loop loop(1, batches(1), 1, {{0, store::JournalEntry{"expired-0", 3, 1.0e9, hash}}});
  loop.start();
  ASSERT_EQ(loop.clients[0]->resumes.size(), 1U);
  ASSERT_TRUE(loop.clients[0]->fail(0, Verdict::retry, "404 No response for request expired-0", 404));
  loop.step();
  loop.step();
  ASSERT_EQ(loop.clients[0]->submits.size(), 1U);
  EXPECT_EQ(loop.clients[0]->submits[0].attempt, 4);
  ASSERT_TRUE(loop.clients[0]->fail(0, Verdict::retry));
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_EQ(loop.written(), 1);
  EXPECT_EQ(loop.sinks[0]->written[0].stats.attempts, 5);
  EXPECT_NE(loop.log.str().find("the journaled NDIF job expired-0 cannot be used"), std::string::npos);
}

TEST(Loop, AJournaledJobOfAnotherRequestIsNotPolled) {
  Loop loop(1, batches(1), 1, {{0, store::JournalEntry{"other", 1, 1.0e9, 12345}}});
  loop.run([&] { loop.complete_all(); });
  ASSERT_TRUE(loop.all_finished());
  EXPECT_TRUE(loop.clients[0]->resumes.empty());
  ASSERT_EQ(loop.clients[0]->submits.size(), 1U);
  EXPECT_EQ(loop.clients[0]->submits[0].attempt, 2);
  EXPECT_NE(loop.log.str().find("was made for another request"), std::string::npos);
}

TEST(Loop, AResumedJobTheServiceRefusesStopsTheRun) {
  const auto hash = remote::request_hash(testing::test_request(0));
  Loop loop(1, batches(3), 1, {{0, store::JournalEntry{"old", 1, 1.0e9, hash}}});
  loop.start();
  ASSERT_TRUE(loop.clients[0]->fail(0, Verdict::refused, "403", 403));
  loop.run();
  ASSERT_TRUE(loop.all_finished());
  EXPECT_TRUE(loop.clients[0]->submits.empty());
  EXPECT_EQ(loop.coordinator.outcome().exit_code, 5);
}

TEST(Loop, TheCoordinatorShowsEveryRanksQueueStates) {
  std::ostringstream out;
  ProgressReporter lines(ProgressMode::lines, out, 4, 8, 0, 0, ProgressReporter::Clock::now());
  Coordinator c(
      {}, 2, [](std::int32_t b) { return testing::test_assignment(b); }, lines, out);
  InProcessNetwork net(2);
  c.receive(0, msg::States{{{"QUEUED", 2}}}, net.link(0));
  c.receive(1, msg::States{{{"QUEUED", 1}, {"RETRY", 1}}}, net.link(0));
  lines.tick(ProgressReporter::Clock::now(), true);
  EXPECT_NE(out.str().find("QUEUED 3, RETRY 1"), std::string::npos) << out.str();
  // An idle rank's states are gone.
  c.receive(1, msg::Idle{}, net.link(0));
  lines.tick(ProgressReporter::Clock::now(), true);
  EXPECT_NE(out.str().rfind("QUEUED 2"), std::string::npos) << out.str();
  EXPECT_EQ(out.str().find("RETRY", out.str().rfind("batches")), std::string::npos) << out.str();
}

TEST(Loop, WorkersReportTheirQueueStates) {
  // What a worker sent its coordinator, as the coordinator's progress line shows it.
  std::ostringstream out;
  ProgressReporter lines(ProgressMode::lines, out, 2, 4, 0, 0, ProgressReporter::Clock::now());
  InProcessNetwork net(1);
  Coordinator c(
      batches(2), 1, [](std::int32_t b) { return testing::test_assignment(b); }, lines, out);
  FakeClient client;
  RecordingSink sink;
  remote::GraphRequestEncoder encoder;
  Worker w(testing::test_settings(2), encoder, client, sink, 0, out);
  for (int i = 0; i < 3; ++i) {
    net.deliver([&](int, int from, const Message& m) {
      if (to_coordinator(m))
        c.receive(from, m, net.link(0));
      else
        w.receive(m);
    });
    w.turn(0ms, net.link(0));
  }
  net.deliver([&](int, int from, const Message& m) { c.receive(from, m, net.link(0)); });
  lines.tick(ProgressReporter::Clock::now(), true);
  EXPECT_NE(out.str().find("QUEUED 2"), std::string::npos) << out.str();
}

TEST(Loop, AWorkerNeverWaitsPastItsNextRetry) {
  auto settings = testing::test_settings(1);
  settings.retry = spec::RetryOptions{3, 0.5, 0.5};
  InProcessNetwork net(1);
  FakeClient client;
  RecordingSink sink;
  remote::GraphRequestEncoder encoder;
  std::ostringstream log;
  Worker w(settings, encoder, client, sink, 0, log);
  w.receive(msg::Assign{{testing::test_assignment(0)}});
  w.turn(10s, net.link(0));  // sends the batch: with nothing due, the turn may wait all 10 s
  ASSERT_EQ(client.submits.size(), 1U);
  EXPECT_EQ(client.waits.back(), 10s);
  ASSERT_TRUE(client.fail(0, Verdict::retry));
  w.turn(0ms, net.link(0));  // takes the failure: a retry in 0.25 to 0.5 s
  w.turn(10s, net.link(0));
  EXPECT_LE(client.waits.back(), 500ms);
  EXPECT_GE(client.waits.back(), 100ms);
  EXPECT_EQ(client.submits.size(), 1U);
}

}  // namespace
}  // namespace ndif::run
