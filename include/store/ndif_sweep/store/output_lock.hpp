#pragma once
/// \file
/// The lock that keeps two runs from writing one output file. Parallel HDF5 takes no lock of its
/// own (the MPI-IO driver ignores other processes), so the tool locks a side file `<FILE>.lock`
/// with flock(2).
///
/// Protocol, carried out by OutputLock::acquire (collective over the run's communicator):
///  1. rank 0 takes an exclusive lock on `<FILE>.lock`, retrying for a few seconds: ranks of a
///     killed run can live on for about a second and still hold their shared locks;
///  2. rank 0 turns its lock into a shared one; no other run can take the exclusive lock from now on;
///  3. every other rank takes a shared lock too, and all hold it for the whole run.
/// A second run therefore fails at step 1 as long as any rank of the first still lives. The kernel
/// drops a process's locks when it dies, so a crash never leaves a stale lock; the lock file itself
/// stays (removing it would race with a run that has just opened it) and is empty.

#include <mpi.h>

#include <chrono>
#include <filesystem>

namespace ndif::store {

/// The side file that carries the lock for `output`: `<output>.lock`.
[[nodiscard]] std::filesystem::path lock_path(const std::filesystem::path& output);

/// One process's hold on `<FILE>.lock`. Move-only; released on destruction or by release().
class OutputLock {
 public:
  /// Runs the protocol above. Collective over `comm`. On success every rank holds a shared lock.
  /// Throws SpecMismatch ("another run holds FILE (lock FILE.lock)") on every rank when rank 0
  /// cannot get the exclusive lock within `patience`; InputError when the lock file cannot be
  /// created (missing or read-only directory).
  [[nodiscard]] static OutputLock acquire(const std::filesystem::path& output, MPI_Comm comm,
                                          std::chrono::milliseconds patience = std::chrono::seconds(5));

  /// Step 1 alone for a single process: an exclusive lock, retried for `patience`. Not collective.
  /// Throws like acquire().
  [[nodiscard]] static OutputLock acquire_exclusive(const std::filesystem::path& output,
                                                    std::chrono::milliseconds patience);

  OutputLock(OutputLock&& other) noexcept;
  OutputLock& operator=(OutputLock&& other) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock();

  /// Turns an exclusive lock into a shared one (step 2). Throws SpecMismatch if another process
  /// slipped in while flock(2) converted the lock.
  void share();
  /// Releases the lock now. Never throws.
  void release() noexcept;
  /// Whether this object still holds a lock.
  [[nodiscard]] bool held() const noexcept { return fd_ >= 0; }

 private:
  OutputLock(std::filesystem::path output, int fd) : output_(std::move(output)), fd_(fd) {}
  std::filesystem::path output_;
  int fd_ = -1;
};

}  // namespace ndif::store
