#include "ndif_sweep/run/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "ndif_sweep/core/error.hpp"

namespace ndif::run {

ProgressMode parse_progress_mode(const std::string& text) {
  if (text == "auto") return ProgressMode::auto_;
  if (text == "bar") return ProgressMode::bar;
  if (text == "lines") return ProgressMode::lines;
  if (text == "jsonl") return ProgressMode::jsonl;
  if (text == "none") return ProgressMode::none;
  throw InputError(fmt::format("--progress: expected auto, bar, lines, jsonl or none, got \"{}\"", text));
}

ProgressReporter::ProgressReporter(ProgressMode mode, std::ostream& out, std::int64_t total_batches,
                                   std::int64_t total_rows, std::int64_t done_batches, std::int64_t done_rows,
                                   Clock::time_point start)
    : mode_(mode),
      out_(out),
      total_batches_(total_batches),
      total_rows_(total_rows),
      start_batches_(done_batches),
      done_batches_(done_batches),
      done_rows_(done_rows),
      start_(start),
      last_print_(start) {
  if (mode_ == ProgressMode::auto_) mode_ = isatty(STDERR_FILENO) ? ProgressMode::bar : ProgressMode::lines;
  interval_ = mode_ == ProgressMode::bar ? std::chrono::milliseconds(250) : std::chrono::milliseconds(2000);
}

void ProgressReporter::batch_done(std::int64_t rows, std::int64_t bytes_received) {
  ++done_batches_;
  done_rows_ += rows;
  bytes_ += bytes_received;
}

void ProgressReporter::batch_failed() { ++failed_batches_; }

std::string ProgressReporter::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<long long>(std::llround(seconds));
  return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

std::string ProgressReporter::line(Clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double mb = static_cast<double>(bytes_) / 1e6;
  const double rate = elapsed > 0 ? mb / elapsed : 0;
  const auto new_batches = done_batches_ - start_batches_;
  const double eta = new_batches > 0 ? elapsed / static_cast<double>(new_batches) *
                                           static_cast<double>(total_batches_ - done_batches_)
                                     : NAN;
  const double pct = total_batches_ > 0
                         ? 100.0 * static_cast<double>(done_batches_) / static_cast<double>(total_batches_)
                         : 100.0;
  std::string failed = failed_batches_ ? fmt::format("  failed {}", failed_batches_) : "";
  std::string flight;
  for (const auto& [state, n] : in_flight_)
    if (n > 0) flight += fmt::format("{}{} {}", flight.empty() ? "  in flight: " : ", ", state, n);
  return fmt::format(
      "batches {}/{} ({:.1f}%)  rows {}/{}  {:.1f} MB received  {:.2f} MB/s  elapsed {}  ETA {}{}{}",
      done_batches_, total_batches_, pct, done_rows_, total_rows_, mb, rate, format_duration(elapsed),
      format_duration(eta), failed, flight);
}

std::string ProgressReporter::json(Clock::time_point now, const std::string& event) const {
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  nlohmann::json j{{"event", event},
                   {"batches_done", done_batches_},
                   {"batches_total", total_batches_},
                   {"batches_failed", failed_batches_},
                   {"rows_done", done_rows_},
                   {"rows_total", total_rows_},
                   {"bytes_received", bytes_},
                   {"in_flight", in_flight_},
                   {"elapsed_s", elapsed}};
  return j.dump();
}

void ProgressReporter::tick(Clock::time_point now, bool force) {
  if (mode_ == ProgressMode::none) return;
  if (!force && now - last_print_ < interval_) return;
  last_print_ = now;
  switch (mode_) {
    case ProgressMode::bar: {
      const int width = 30;
      const int filled =
          total_batches_ > 0 ? static_cast<int>(width * done_batches_ / total_batches_) : width;
      out_ << '\r' << '[' << std::string(static_cast<size_t>(filled), '#')
           << std::string(static_cast<size_t>(width - filled), '.') << "] " << line(now) << "\x1b[K"
           << std::flush;
      break;
    }
    case ProgressMode::lines:
      out_ << line(now) << '\n' << std::flush;
      break;
    case ProgressMode::jsonl:
      out_ << json(now, "progress") << '\n' << std::flush;
      break;
    default:
      break;
  }
}

void ProgressReporter::finish(Clock::time_point now, const std::string& outcome) {
  in_flight_.clear();
  if (mode_ == ProgressMode::none) return;
  if (mode_ == ProgressMode::jsonl) {
    auto j = nlohmann::json::parse(json(now, "finished"));
    j["outcome"] = outcome;
    out_ << j.dump() << '\n' << std::flush;
    return;
  }
  if (mode_ == ProgressMode::bar) out_ << '\n';
  out_ << line(now) << "  -> " << outcome << '\n' << std::flush;
}

}  // namespace ndif::run
