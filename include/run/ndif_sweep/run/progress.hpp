#pragma once
/// \file
/// Progress of the whole job, printed by rank 0: batches done/total, rows, MB received, MB/s, ETA.

#include <chrono>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>

namespace ndif::run {

/// How progress is shown (`--progress`). `auto` is `bar` on a terminal, else `lines`.
enum class ProgressMode { auto_, bar, lines, jsonl, none };

/// Parses "auto" | "bar" | "lines" | "jsonl" | "none"; throws InputError otherwise.
[[nodiscard]] ProgressMode parse_progress_mode(const std::string& text);

/// Counts and formats progress. Pure apart from writing to the stream it is given.
class ProgressReporter {
 public:
  using Clock = std::chrono::steady_clock;

  /// `done_batches`/`done_rows` already complete when the run starts (a resume).
  ProgressReporter(ProgressMode mode, std::ostream& out, std::int64_t total_batches, std::int64_t total_rows,
                   std::int64_t done_batches, std::int64_t done_rows, Clock::time_point start);

  /// Records one finished batch.
  void batch_done(std::int64_t rows, std::int64_t bytes_received);
  /// Records a batch that failed after all its attempts.
  void batch_failed();
  /// The states of the jobs in flight on every rank ("QUEUED": 3, ...), shown until replaced.
  void set_in_flight(std::map<std::string, int> counts) { in_flight_ = std::move(counts); }
  /// Prints a line when `interval` has passed since the last one (or always for `jsonl` events).
  void tick(Clock::time_point now, bool force = false);
  /// The final line.
  void finish(Clock::time_point now, const std::string& outcome);

  [[nodiscard]] std::int64_t done_batches() const noexcept { return done_batches_; }
  [[nodiscard]] std::int64_t total_batches() const noexcept { return total_batches_; }
  [[nodiscard]] std::int64_t failed_batches() const noexcept { return failed_batches_; }
  [[nodiscard]] std::int64_t bytes_received() const noexcept { return bytes_; }

  /// "1:02:03" or "--:--" when unknown.
  [[nodiscard]] static std::string format_duration(double seconds);

 private:
  [[nodiscard]] std::string line(Clock::time_point now) const;
  [[nodiscard]] std::string json(Clock::time_point now, const std::string& event) const;

  ProgressMode mode_;
  std::ostream& out_;
  std::int64_t total_batches_, total_rows_;
  std::int64_t start_batches_, done_batches_, done_rows_;
  std::int64_t failed_batches_ = 0;
  std::int64_t bytes_ = 0;
  std::map<std::string, int> in_flight_;
  Clock::time_point start_, last_print_;
  std::chrono::milliseconds interval_;
};

}  // namespace ndif::run
