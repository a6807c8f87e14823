#pragma once
/// \file
/// Progress of the whole job, printed by rank 0: batches done/total, rows, MB received, MB/s, ETA.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>

namespace ndif::run {

/// How progress is shown (`--progress`). `auto` is `bar` on a terminal, else `lines`.
enum class ProgressMode { auto_, bar, lines, jsonl, none };

/// The terminal a bar is drawn on, as far as the bar needs it.
struct Terminal {
  /// Its width in columns, asked again at every redraw so that a resize is followed; 0 if unknown.
  std::function<int()> columns;
};

/// The terminal that rank 0's stderr reaches: stderr itself when it is one, else, for a rank that
/// mpirun started, mpirun's stderr when that is one (mpirun copies every rank's output there).
/// nullopt when the output goes to a file or a pipe.
[[nodiscard]] std::optional<Terminal> find_terminal();

/// Parses "auto" | "bar" | "lines" | "jsonl" | "none"; throws InputError otherwise.
[[nodiscard]] ProgressMode parse_progress_mode(const std::string& text);

/// Counts and formats progress. Pure apart from writing to the stream it is given.
class ProgressReporter {
 public:
  using Clock = std::chrono::steady_clock;

  /// `done_batches`/`done_rows` already complete when the run starts (a resume). `terminal` is
  /// where `out` ends up, if it is a terminal: `auto` then draws a bar that fits its width.
  ProgressReporter(ProgressMode mode, std::ostream& out, std::int64_t total_batches, std::int64_t total_rows,
                   std::int64_t done_batches, std::int64_t done_rows, Clock::time_point start,
                   std::optional<Terminal> terminal = std::nullopt);

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
  /// Prints a log message (whole lines) without tearing the bar: the bar's line is cleared first
  /// and redrawn at the next tick.
  void log(const std::string& text);

  /// The bar's line for a terminal `columns` wide: always narrower than that (a line as wide as
  /// the terminal wraps, and every redraw would scroll), fields dropped by priority when it is
  /// narrow (counts first, then failures, ETA, queue states, rate, rows, megabytes).
  [[nodiscard]] std::string bar_line(Clock::time_point now, int columns) const;

  [[nodiscard]] ProgressMode mode() const noexcept { return mode_; }

  [[nodiscard]] std::int64_t done_batches() const noexcept { return done_batches_; }
  [[nodiscard]] std::int64_t total_batches() const noexcept { return total_batches_; }
  [[nodiscard]] std::int64_t failed_batches() const noexcept { return failed_batches_; }
  [[nodiscard]] std::int64_t bytes_received() const noexcept { return bytes_; }

  /// "1:02:03" or "--:--" when unknown.
  [[nodiscard]] static std::string format_duration(double seconds);

 private:
  struct Timing {
    double elapsed_s = 0;
    double eta_s = 0;  ///< NAN until this run has finished a batch
    double percent = 0;
  };
  [[nodiscard]] Timing timing(Clock::time_point now) const;
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
  std::optional<Terminal> terminal_;
  bool bar_drawn_ = false;
};

}  // namespace ndif::run
