#include "ndif_sweep/run/coordinator.hpp"

#include <fmt/format.h>

#include <type_traits>

namespace ndif::run {

Coordinator::Coordinator(std::deque<std::int32_t> pending, int ranks, AssignmentOf assignment_of,
                         ProgressReporter& progress, std::ostream& log)
    : pending_(std::move(pending)),
      ranks_(ranks),
      assignment_of_(std::move(assignment_of)),
      progress_(progress),
      log_(log) {}

void Coordinator::hand_out(int to, int slots, Link& link) {
  msg::Assign assign;
  while (slots-- > 0 && !pending_.empty() && drain_ == DrainRequest::none) {
    assign.batches.push_back(assignment_of_(pending_.front()));
    pending_.pop_front();
  }
  link.send(to, assign);
}

void Coordinator::drain(DrainRequest request, Link& link) {
  if (request <= drain_) return;
  drain_ = request;
  log_ << fmt::format("ndif-sweep: draining every rank ({})\n",
                      request == DrainRequest::abandon_in_flight
                          ? "abandoning the jobs in flight; the journal keeps them"
                          : "letting the jobs in flight finish");
  for (int r = 0; r < ranks_; ++r) link.send(r, msg::Drain{request == DrainRequest::abandon_in_flight});
}

void Coordinator::refuse(const std::string& why, Link& link) {
  if (!refusal_) refusal_ = why;
  drain(DrainRequest::abandon_in_flight, link);
}

void Coordinator::maybe_finish(Link& link) {
  if (finish_sent_ || static_cast<int>(idle_.size()) < ranks_) return;
  finish_sent_ = true;
  for (int r = 0; r < ranks_; ++r) link.send(r, msg::Finish{});
}

void Coordinator::show_in_flight() {
  std::map<std::string, int> all;
  for (const auto& [rank, counts] : in_flight_)
    for (const auto& [state, n] : counts) all[state] += n;
  progress_.set_in_flight(std::move(all));
}

void Coordinator::receive(int from, const Message& message, Link& link) {
  std::visit(
      [&](const auto& m) {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, msg::RequestWork>) {
          hand_out(from, m.slots, link);
        } else if constexpr (std::is_same_v<M, msg::Done>) {
          progress_.batch_done(m.report.rows, m.report.bytes);
          rejected_in_a_row_ = 0;
        } else if constexpr (std::is_same_v<M, msg::Failed>) {
          progress_.batch_failed();
          if (!m.invalid) {
            log_ << fmt::format("ndif-sweep: batch {} failed after all attempts: {}\n", m.batch, m.error);
            return;
          }
          ++invalid_;
          log_ << fmt::format("ndif-sweep: batch {} was rejected by the service and is not retried: {}\n",
                              m.batch, m.error);
          // The same request built for other prompts: when batch after batch is rejected with
          // nothing done between, the rest would be rejected too. Stop sending them.
          if (++rejected_in_a_row_ == kRejectedInARowToStop) {
            refuse(
                fmt::format("{} batches in a row were rejected as invalid requests (the last: {}); stopping "
                            "before sending the rest",
                            kRejectedInARowToStop, m.error),
                link);
          }
        } else if constexpr (std::is_same_v<M, msg::Refused>) {
          refuse(m.error, link);
        } else if constexpr (std::is_same_v<M, msg::SignalSeen>) {
          drain(m.abandon ? DrainRequest::abandon_in_flight : DrainRequest::finish_in_flight, link);
        } else if constexpr (std::is_same_v<M, msg::States>) {
          in_flight_[from] = m.counts;
          show_in_flight();
        } else if constexpr (std::is_same_v<M, msg::Idle>) {
          idle_.insert(from);
          in_flight_.erase(from);
          show_in_flight();
          maybe_finish(link);
        }
        // Coordinator-to-worker messages never reach here (to_coordinator()).
      },
      message);
}

RunOutcome Coordinator::outcome() const {
  const bool complete = progress_.done_batches() == progress_.total_batches();
  if (refusal_ || invalid_ > 0) return complete ? RunOutcome{"complete", 0} : RunOutcome{"failed", 5};
  if (complete) return {"complete", 0};
  if (drain_ != DrainRequest::none) return {"drained", 3};
  return {"incomplete", 3};
}

}  // namespace ndif::run
