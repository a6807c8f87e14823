#include "ndif_sweep/run/worker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <type_traits>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/status.hpp"

namespace ndif::run {
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

Worker::Worker(WorkerSettings settings, remote::RequestEncoder& encoder, JobClient& client, BatchSink& sink,
               std::uint64_t seed, std::ostream& log)
    : settings_(std::move(settings)),
      encoder_(encoder),
      client_(client),
      sink_(sink),
      policy_(settings_.retry, seed),
      log_(log),
      decoder_(settings_.decode_threads, [&client] { client.wake(); }) {}

int Worker::free_slots() const {
  if (no_more_work_ || drain_ != DrainRequest::none) return 0;
  // A job whose result is downloading no longer waits at NDIF: its slot goes to the next batch, so
  // that the next job's queueing overlaps this download. Without that, the jobs of all ranks finish
  // their shared downloads together and then queue together while the link idles
  // (bench/link_bench.py: 0.76 of the link with 4 ranks of 2). The downloads are bounded by as many
  // again, which bounds the results a rank holds.
  const auto states = client_.in_flight_states();
  // A result decoding has left NDIF's queue too.
  const auto downloading =
      settings_.overlap_downloads
          ? static_cast<int>(
                std::count(states.begin(), states.end(), remote::JobState::completed) +
                std::count_if(work_.begin(), work_.end(), [](const auto& kv) { return kv.second.decoding; }))
          : 0;
  const int held = static_cast<int>(work_.size());
  return std::max(0,
                  std::min(settings_.max_inflight - (held - downloading), 2 * settings_.max_inflight - held));
}

void Worker::receive(const Message& message) {
  std::visit(
      [&](const auto& m) {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, msg::Assign>) {
          awaiting_assignment_ = false;
          accept(m.batches);
        } else if constexpr (std::is_same_v<M, msg::Drain>) {
          drain(m.abandon ? DrainRequest::abandon_in_flight : DrainRequest::finish_in_flight);
        } else if constexpr (std::is_same_v<M, msg::Finish>) {
          finished_ = true;
        } else if constexpr (std::is_same_v<M, msg::Outcome>) {
          outcome_ = m.exit_code;
        } else {
          throw InternalError("run loop: a worker received a message meant for the coordinator");
        }
      },
      message);
}

void Worker::accept(std::vector<Assignment> batches) {
  if (batches.empty()) no_more_work_ = true;
  // Handed out before a drain that arrived after them: they are not started.
  if (drain_ != DrainRequest::none) return;
  if (!settings_.prompts_of) throw InternalError("Worker: WorkerSettings::prompts_of is not set");
  for (auto& a : batches) {
    remote::BatchRequest request{settings_.model, settings_.model_key, settings_.prompts_of(a.rows),
                                 a.padded_len,    settings_.probes,    settings_.dtype,
                                 settings_.hidden};
    Work w;
    try {
      // Encoded once: a retry sends the same request again.
      w.request = encoder_.encode(request);
    } catch (const Error& e) {
      // The encoder could not build this batch (after restarting it): the batch fails, the run
      // goes on, and a later run can do it.
      encode_failures_.push_back(
          msg::Failed{a.batch, fmt::format("encoding the request failed: {}", e.what())});
      continue;
    }
    w.request_hash = remote::request_hash(request);
    if (a.journaled && a.journaled->empty()) a.journaled.reset();
    if (a.journaled && a.journaled->request_hash != w.request_hash) {
      log_ << fmt::format(
          "ndif-sweep: batch {}: the journaled NDIF job {} was made for another request; sending the batch "
          "again\n",
          a.batch, a.journaled->job_id);
      w.attempt = a.journaled->attempt;
      a.journaled.reset();
    }
    w.first_start = Clock::now();
    w.send_at = w.first_start;
    w.assignment = std::move(a);
    const auto batch = w.assignment.batch;
    work_.insert_or_assign(batch, std::move(w));
  }
}

void Worker::drain(DrainRequest level) {
  if (level <= drain_) return;
  drain_ = level;
  if (level == DrainRequest::abandon_in_flight) {
    // Their journal entries stay: a restart polls those jobs instead of sending them again.
    client_.cancel_all();
    decoder_.discard();
    work_.clear();
  } else {
    // Batches not in flight or decoding (not sent yet, or waiting out a backoff) are given up now.
    std::erase_if(work_, [](const auto& kv) { return !kv.second.in_flight && !kv.second.decoding; });
  }
}

void Worker::start(Work& w) {
  const auto ticket_batch = static_cast<std::int64_t>(w.assignment.batch);
  w.send_at.reset();
  w.in_flight = true;
  if (auto j = std::exchange(w.assignment.journaled, std::nullopt)) {
    // A job submitted by an earlier run: poll it before paying NDIF's queue again (once: if it
    // cannot be used, the batch is sent afresh).
    w.resumed = true;
    w.attempt = j->attempt;
    const auto since = std::chrono::duration<double>(unix_now() - j->submitted_unix);
    client_.resume(remote::JobTicket{ticket_batch, w.attempt}, j->job_id, w.request,
                   std::chrono::duration_cast<std::chrono::milliseconds>(since));
    return;
  }
  w.resumed = false;
  ++w.attempt;
  ++w.tries_this_run;
  client_.submit(remote::JobTicket{ticket_batch, w.attempt}, w.request);
}

void Worker::turn(std::chrono::milliseconds wait, Link& link) {
  for (auto& f : std::exchange(encode_failures_, {})) link.send(0, f);
  if (!awaiting_assignment_) {
    if (const int slots = free_slots(); slots > 0) {
      link.send(0, msg::RequestWork{slots});
      awaiting_assignment_ = true;
    }
  }

  auto now = Clock::now();
  auto until = now + wait;
  for (auto& [batch, w] : work_) {
    if (!w.send_at) continue;
    if (*w.send_at <= now)
      start(w);
    else
      until = std::min(until, *w.send_at);
  }

  // Rounded up, so that a retry due in under 1 ms is a short wait rather than a turn that spins.
  auto events = client_.run(std::chrono::ceil<std::chrono::milliseconds>(until - now));

  for (const auto& s : events.submitted) {
    const auto it = work_.find(static_cast<std::int32_t>(s.ticket.batch));
    if (it == work_.end() || it->second.attempt != s.ticket.attempt) continue;
    // Before the rank waits on the job: a crash from here on leaves the job id in the file.
    sink_.journal(it->first,
                  store::JournalEntry{s.job_id, s.ticket.attempt, unix_now(), it->second.request_hash});
  }
  for (auto& f : events.finished) on_finished(f, link);
  for (auto& d : decoder_.take()) on_decoded(d, link);

  if (!idle_sent_) report_states(link);
  if (!idle_sent_ && work_.empty() && encode_failures_.empty() && !awaiting_assignment_ &&
      (no_more_work_ || drain_ != DrainRequest::none)) {
    // The worker's last message until Finish.
    link.send(0, msg::Idle{});
    idle_sent_ = true;
  }
}

void Worker::on_finished(remote::FinishedJob& job, Link& link) {
  const auto it = work_.find(static_cast<std::int32_t>(job.ticket.batch));
  // An attempt this worker no longer holds (abandoned, or superseded): nothing to do.
  if (it == work_.end() || it->second.attempt != job.ticket.attempt || !it->second.in_flight) return;
  auto& w = it->second;
  w.in_flight = false;
  if (job.failure) {
    on_failed(it, job.failure->verdict, job.failure->message, job.job_id, link);
    return;
  }
  w.decoding = true;
  w.job_id = job.job_id;
  w.bytes_received = job.bytes_received;
  decoder_.submit(it->first, std::move(job.result), w.request.expected);
}

void Worker::on_decoded(remote::DecodeOutcome& decoded, Link& link) {
  const auto it = work_.find(static_cast<std::int32_t>(decoded.key));
  // Given up while it decoded (a drain that abandons what is in flight): nothing to do.
  if (it == work_.end() || !it->second.decoding) return;
  auto& w = it->second;
  w.decoding = false;
  if (!decoded.result) {
    on_failed(it, remote::classify_decode(true), decoded.error, w.job_id, link);
    return;
  }
  std::vector<std::span<const std::byte>> parts;
  for (const auto& p : decoded.result->probes) parts.emplace_back(p.bytes);
  const double seconds = std::chrono::duration<double>(Clock::now() - w.first_start).count();
  sink_.write(w.assignment, parts,
              store::BatchStats{w.attempt, seconds, w.bytes_received, decoded.result->nonfinite});
  link.send(0, msg::Done{BatchReport{w.assignment.batch, static_cast<std::int64_t>(w.assignment.rows.size()),
                                     w.bytes_received, w.attempt, seconds}});
  work_.erase(it);
}

void Worker::on_failed(std::map<std::int32_t, Work>::iterator it, remote::Verdict verdict,
                       const std::string& why, const std::string& job_id, Link& link) {
  auto& w = it->second;
  const auto batch = w.assignment.batch;
  if (verdict == remote::Verdict::refused) {
    link.send(0, msg::Refused{fmt::format("batch {}: {}", batch, why)});
    work_.erase(it);
    return;
  }
  if (w.resumed && drain_ == DrainRequest::none) {
    // Whatever became of the journaled job (gone, expired, failed), the batch is sent afresh with
    // this run's full retry budget.
    log_ << fmt::format(
        "ndif-sweep: batch {}: the journaled NDIF job {} cannot be used ({}); sending the batch again\n",
        batch, job_id, why);
    w.send_at = Clock::now();
    return;
  }
  if (verdict == remote::Verdict::job_invalid) {
    link.send(0, msg::Failed{batch, why, true});
    work_.erase(it);
    return;
  }
  if (verdict == remote::Verdict::retry && policy_.may_retry(w.tries_this_run) &&
      drain_ == DrainRequest::none) {
    const auto delay = policy_.backoff(batch, w.tries_this_run);
    log_ << fmt::format("ndif-sweep: batch {} attempt {} failed ({}); retrying in {:.1f} s\n", batch,
                        w.attempt, why, static_cast<double>(delay.count()) / 1000.0);
    w.send_at = Clock::now() + delay;
    return;
  }
  link.send(0, msg::Failed{batch, fmt::format("{} (attempt {})", why, w.attempt), false});
  work_.erase(it);
}

void Worker::report_states(Link& link) {
  std::map<std::string, int> counts;
  for (const auto state : client_.in_flight_states()) ++counts[remote::state_name(state)];
  const auto now = Clock::now();
  for (const auto& [batch, w] : work_)
    if (w.send_at && *w.send_at > now) ++counts["RETRY"];
  if (counts == reported_states_ || now - states_sent_ < settings_.states_every) return;
  reported_states_ = counts;
  states_sent_ = now;
  link.send(0, msg::States{std::move(counts)});
}

}  // namespace ndif::run
