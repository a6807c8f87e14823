#include "ndif_sweep/run/progress.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

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

namespace {

int columns_of(int fd) {
  winsize size{};
  if (ioctl(fd, TIOCGWINSZ, &size) != 0) return 0;
  return size.ws_col;
}

/// A terminal opened by path, closed with the last copy of the Terminal that reads its width.
std::optional<Terminal> open_terminal(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  auto owned = std::shared_ptr<int>(new int(fd), [](const int* p) {
    close(*p);
    delete p;
  });
  if (!isatty(fd)) return std::nullopt;
  return Terminal{[owned] { return columns_of(*owned); }};
}

}  // namespace

std::optional<Terminal> find_terminal() {
  if (isatty(STDERR_FILENO)) return Terminal{[] { return columns_of(STDERR_FILENO); }};
  // Under mpirun our stderr is a pipe to the launcher (OpenMPI's mpirun or prterun is the parent of
  // the ranks on its node), which writes what it reads to its own stderr.
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr && std::getenv("PMIX_RANK") == nullptr)
    return std::nullopt;
  return open_terminal(fmt::format("/proc/{}/fd/2", getppid()));
}

ProgressReporter::ProgressReporter(ProgressMode mode, std::ostream& out, std::int64_t total_batches,
                                   std::int64_t total_rows, std::int64_t done_batches, std::int64_t done_rows,
                                   Clock::time_point start, std::optional<Terminal> terminal)
    : mode_(mode),
      out_(out),
      total_batches_(total_batches),
      total_rows_(total_rows),
      start_batches_(done_batches),
      done_batches_(done_batches),
      done_rows_(done_rows),
      start_(start),
      last_print_(start),
      terminal_(std::move(terminal)) {
  if (mode_ == ProgressMode::auto_) mode_ = terminal_ ? ProgressMode::bar : ProgressMode::lines;
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

ProgressReporter::Timing ProgressReporter::timing(Clock::time_point now) const {
  Timing t;
  t.elapsed_s = std::chrono::duration<double>(now - start_).count();
  // The rate of this run alone: batches a resumed run found done took none of its time.
  const auto new_batches = done_batches_ - start_batches_;
  t.eta_s = new_batches > 0 ? t.elapsed_s / static_cast<double>(new_batches) *
                                  static_cast<double>(total_batches_ - done_batches_)
                            : NAN;
  t.percent = total_batches_ > 0
                  ? 100.0 * static_cast<double>(done_batches_) / static_cast<double>(total_batches_)
                  : 100.0;
  return t;
}

std::string ProgressReporter::line(Clock::time_point now) const {
  const auto [elapsed, eta, pct] = timing(now);
  const double mb = static_cast<double>(bytes_) / 1e6;
  const double rate = elapsed > 0 ? mb / elapsed : 0;
  std::string failed = failed_batches_ ? fmt::format("  failed {}", failed_batches_) : "";
  std::string flight;
  for (const auto& [state, n] : in_flight_)
    if (n > 0) flight += fmt::format("{}{} {}", flight.empty() ? "  in flight: " : ", ", state, n);
  return fmt::format(
      "batches {}/{} ({:.1f}%)  rows {}/{}  {:.1f} MB received  {:.2f} MB/s  elapsed {}  ETA {}{}{}",
      done_batches_, total_batches_, pct, done_rows_, total_rows_, mb, rate, format_duration(elapsed),
      format_duration(eta), failed, flight);
}

std::string ProgressReporter::bar_line(Clock::time_point now, int columns) const {
  const auto [elapsed, eta, pct] = timing(now);
  std::string flight;
  for (const auto& [state, n] : in_flight_)
    if (n > 0) flight += fmt::format("{}{} {}", flight.empty() ? "" : " ", state, n);

  // Fields in display order, each with its priority (0 is kept first).
  struct Field {
    std::string text;
    int priority;
  };
  std::vector<Field> fields = {
      {fmt::format(" {}/{} {:.1f}%", done_batches_, total_batches_, pct), 0},
      {failed_batches_ ? fmt::format("  failed {}", failed_batches_) : "", 1},
      {fmt::format("  rows {}/{}", done_rows_, total_rows_), 5},
      {fmt::format("  {:.1f} MB", static_cast<double>(bytes_) / 1e6), 6},
      {fmt::format("  {:.2f} MB/s", elapsed > 0 ? static_cast<double>(bytes_) / 1e6 / elapsed : 0.0), 4},
      {fmt::format("  ETA {}", format_duration(eta)), 2},
      {flight.empty() ? "" : "  " + flight, 3},
  };
  constexpr int kMinBar = 8, kMaxBar = 30;
  // One column short of the width: a line that reaches the last column wraps on some terminals.
  const int room = std::max(columns, 20) - 1;
  std::vector<bool> keep(fields.size(), false);
  int used = kMinBar + 2;  // "[" bar "]"
  // Strictly by priority: once a field does not fit, no less useful one takes its place.
  for (int priority = 0; priority <= 6; ++priority) {
    bool fits = true;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      const int len = static_cast<int>(fields[i].text.size());
      if (fields[i].priority != priority || len == 0) continue;
      if (used + len > room) {
        fits = false;
        break;
      }
      keep[i] = true;
      used += len;
    }
    if (!fits) break;
  }
  const int width = std::clamp(kMinBar + room - used, kMinBar, kMaxBar);
  const int filled = total_batches_ > 0 ? static_cast<int>(width * done_batches_ / total_batches_) : width;
  std::string out = "[" + std::string(static_cast<std::size_t>(filled), '#') +
                    std::string(static_cast<std::size_t>(width - filled), '.') + "]";
  for (std::size_t i = 0; i < fields.size(); ++i)
    if (keep[i]) out += fields[i].text;
  if (static_cast<int>(out.size()) > room) out.resize(static_cast<std::size_t>(room));
  return out;
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
      const int columns = terminal_ && terminal_->columns ? terminal_->columns() : 0;
      // One write: stderr is unbuffered, and under mpirun another process's output could land between
      // the pieces of a redraw.
      out_ << ('\r' + bar_line(now, columns > 0 ? columns : 80) + "\x1b[K") << std::flush;
      bar_drawn_ = true;
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
  // One write: under mpirun, stderr and stdout reach the terminal through separate pipes, and the
  // "output:" line that follows on stdout landed between the pieces of a summary written in several.
  const std::string erase = mode_ == ProgressMode::bar && bar_drawn_ ? "\r\x1b[K" : "";
  out_ << (erase + line(now) + "  -> " + outcome + '\n') << std::flush;
}

void ProgressReporter::log(const std::string& text) {
  if (text.empty()) return;
  std::string erase;
  if (mode_ == ProgressMode::bar && bar_drawn_) {
    erase = "\r\x1b[K";
    bar_drawn_ = false;
    last_print_ = start_ - interval_;  // redraw at the next tick
  }
  out_ << (erase + text) << std::flush;  // one write, as in finish()
}

}  // namespace ndif::run
