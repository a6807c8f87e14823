#pragma once
/// \file
/// Rank 0's view of the whole run: hands pending batches to workers as they ask, turns a signal or
/// a refusal into a drain of every rank, counts what the workers report, ends the loop once every
/// worker is idle and decides the run's outcome. A plain class: it talks only through a Link, so a
/// unit test drives it in one process.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <string>

#include "ndif_sweep/run/link.hpp"
#include "ndif_sweep/run/messages.hpp"
#include "ndif_sweep/run/progress.hpp"
#include "ndif_sweep/run/signals.hpp"

namespace ndif::run {

/// How a run ended, for /runs and the exit code.
struct RunOutcome {
  std::string name;   ///< "complete", "drained", "incomplete" or "failed"
  int exit_code = 0;  ///< 0, 3 or 5 (README "Exit codes")
};

class Coordinator {
 public:
  using AssignmentOf = std::function<Assignment(std::int32_t batch)>;

  /// `pending` batches are handed out in this order (journaled ones first, so that a restart
  /// polls them before it sends anything new); `ranks` workers take part.
  Coordinator(std::deque<std::int32_t> pending, int ranks, AssignmentOf assignment_of,
              ProgressReporter& progress, std::ostream& log);

  /// Acts on a message a worker sent (see msg::): answers through `link`.
  void receive(int from, const Message& message, Link& link);

  /// A drain decided on rank 0 (a signal there): every worker is told, once per level.
  void drain(DrainRequest request, Link& link);

  /// True once every worker was told to finish.
  [[nodiscard]] bool finished() const noexcept { return finish_sent_; }

  /// The outcome, once finished: every batch done (`done_before` counted too) or not, and why.
  [[nodiscard]] RunOutcome outcome() const;

  [[nodiscard]] DrainRequest drain_level() const noexcept { return drain_; }
  /// Why the service refused the run, if it did.
  [[nodiscard]] const std::optional<std::string>& refusal() const noexcept { return refusal_; }
  /// Batches not handed out yet.
  [[nodiscard]] std::size_t pending() const noexcept { return pending_.size(); }

 private:
  void hand_out(int to, int slots, Link& link);
  void refuse(const std::string& why, Link& link);
  void maybe_finish(Link& link);
  void show_in_flight();

  static constexpr int kRejectedInARowToStop = 3;

  std::deque<std::int32_t> pending_;
  int ranks_;
  AssignmentOf assignment_of_;
  ProgressReporter& progress_;
  std::ostream& log_;
  std::set<int> idle_;
  std::map<int, std::map<std::string, int>> in_flight_;
  DrainRequest drain_ = DrainRequest::none;
  std::optional<std::string> refusal_;
  int invalid_ = 0;
  int rejected_in_a_row_ = 0;
  bool finish_sent_ = false;
};

}  // namespace ndif::run
