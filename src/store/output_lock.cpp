#include "ndif_sweep/store/output_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ndif_sweep/core/error.hpp"

namespace ndif::store {

namespace {

std::string held_message(const std::filesystem::path& output) {
  return "another run holds " + output.string() + " (lock " + lock_path(output).string() +
         "); wait for it to end or use another --output";
}

int open_lock_file(const std::filesystem::path& output) {
  const std::filesystem::path path = lock_path(output);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw InputError("cannot create the lock file " + path.string() + " next to the output: " +
                     std::strerror(errno) + "; choose an output path in a writable directory");
  return fd;
}

/// flock without blocking; false when another process holds a conflicting lock.
bool try_flock(int fd, int operation, const std::filesystem::path& output) {
  while (::flock(fd, operation | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return false;
    if (errno != EINTR)
      throw StorageError("cannot lock " + lock_path(output).string() + ": " + std::strerror(errno));
  }
  return true;
}

/// MPI status of rank 0's attempt, broadcast to the other ranks.
enum class Outcome : int { locked = 0, held = 1, bad_path = 2, storage = 3 };

void broadcast_outcome(Outcome& outcome, std::string& message, MPI_Comm comm) {
  int code = static_cast<int>(outcome);
  MPI_Bcast(&code, 1, MPI_INT, 0, comm);
  outcome = static_cast<Outcome>(code);
  int length = static_cast<int>(message.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, comm);
  message.resize(static_cast<std::size_t>(length));
  if (length > 0) MPI_Bcast(message.data(), length, MPI_CHAR, 0, comm);
}

[[noreturn]] void rethrow(Outcome outcome, const std::string& message) {
  switch (outcome) {
    case Outcome::held:
      throw SpecMismatch(message);
    case Outcome::bad_path:
      throw InputError(message);
    default:
      throw StorageError(message);
  }
}

}  // namespace

std::filesystem::path lock_path(const std::filesystem::path& output) { return output.string() + ".lock"; }

OutputLock OutputLock::acquire_exclusive(const std::filesystem::path& output,
                                         std::chrono::milliseconds patience) {
  const int fd = open_lock_file(output);
  OutputLock lock(output, fd);
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (!try_flock(fd, LOCK_EX, output)) {
    if (std::chrono::steady_clock::now() >= deadline) throw SpecMismatch(held_message(output));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return lock;
}

OutputLock OutputLock::acquire(const std::filesystem::path& output, MPI_Comm comm,
                               std::chrono::milliseconds patience) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  OutputLock lock(output, -1);
  Outcome outcome = Outcome::locked;
  std::string message;
  if (rank == 0) {
    try {
      lock = acquire_exclusive(output, patience);
      lock.share();
    } catch (const SpecMismatch& e) {
      outcome = Outcome::held;
      message = e.what();
    } catch (const InputError& e) {
      outcome = Outcome::bad_path;
      message = e.what();
    } catch (const Error& e) {
      outcome = Outcome::storage;
      message = e.what();
    }
  }
  broadcast_outcome(outcome, message, comm);
  if (outcome != Outcome::locked) rethrow(outcome, message);

  if (rank != 0) {
    try {
      lock = OutputLock(output, open_lock_file(output));
      // Rank 0 holds a shared lock, so no exclusive lock can exist now; a refusal means the lock
      // file was replaced under us, which is another run's doing.
      if (!try_flock(lock.fd_, LOCK_SH, output)) {
        outcome = Outcome::held;
        message = held_message(output);
      }
    } catch (const Error& e) {
      outcome = Outcome::storage;
      message = e.what();
    }
  }
  int failed = outcome == Outcome::locked ? 0 : 1;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm);
  if (any_failed != 0) {
    lock.release();
    throw SpecMismatch(
        failed != 0 ? message : "a rank of this run could not share the lock " + lock_path(output).string());
  }
  return lock;
}

OutputLock::OutputLock(OutputLock&& other) noexcept : output_(std::move(other.output_)), fd_(other.fd_) {
  other.fd_ = -1;
}

OutputLock& OutputLock::operator=(OutputLock&& other) noexcept {
  if (this != &other) {
    release();
    output_ = std::move(other.output_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

OutputLock::~OutputLock() { release(); }

void OutputLock::share() {
  if (fd_ < 0) throw InternalError("OutputLock::share on a released lock of " + output_.string());
  // flock(2) converts by dropping and re-taking; a competitor that got the exclusive lock in
  // between makes the shared request fail, and this run stops instead of writing beside it.
  if (!try_flock(fd_, LOCK_SH, output_)) {
    release();
    throw SpecMismatch(held_message(output_));
  }
}

void OutputLock::release() noexcept {
  if (fd_ < 0) return;
  ::close(fd_);  // closing the last descriptor of the open file drops the flock
  fd_ = -1;
}

}  // namespace ndif::store
