#pragma once
/// \file
/// SIGTERM / SIGINT / SIGUSR1 turn a run into a drain: no new batches start, the file is closed
/// cleanly and the run exits 3 (resumable). SIGUSR1 (SLURM's early warning) lets batches in flight
/// finish; SIGTERM and SIGINT abandon them, since their rows are simply redone on resume.

namespace ndif::run {

/// What a received signal asks for.
enum class DrainRequest { none, finish_in_flight, abandon_in_flight };

/// Installs the handlers (once per process). Not thread-safe; call from main's thread.
void install_drain_handlers();

/// The strongest drain requested so far; async-signal-safe to update, cheap to read.
[[nodiscard]] DrainRequest drain_requested() noexcept;

/// The name of the last signal received ("SIGTERM", ...), or "" when none.
[[nodiscard]] const char* last_signal_name() noexcept;

}  // namespace ndif::run
