#pragma once
/// \file
/// The MPI seam of the run loop: process setup, collectives on small values, and the tagged
/// point-to-point messages between the coordinator (rank 0) and the workers. The rest of the run
/// module sees MPI only through this header.

#include <mpi.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ndif::run {

/// Owns MPI's lifetime in a process: MPI_Init_thread in the constructor (funneled: only the main
/// thread calls MPI), MPI_Finalize in the destructor. Works under mpirun, srun and as a singleton.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};

/// Message kinds between coordinator and workers. The payload is a UTF-8 JSON text.
enum class Tag : int {
  request_work = 101,  ///< worker -> 0: {"slots": n}
  assign = 102,        ///< 0 -> worker: {"batches": [assignment...]} (empty = no more work)
  batch_done = 103,    ///< worker -> 0: per-batch statistics
  batch_failed = 104,  ///< worker -> 0: {"batch": b, "error": "..."} after all attempts
  refused = 105,       ///< worker -> 0: the service refused the request itself
  drain = 106,         ///< 0 -> worker: {"abandon": bool}
  bye = 107,           ///< worker -> 0: nothing in flight, leaving the loop
  states = 108,        ///< worker -> 0: {"STATUS": count} of its jobs in flight, when they change
};

/// A received message.
struct Message {
  int source = 0;
  Tag tag = Tag::bye;
  std::string payload;
};

/// A communicator (MPI_COMM_WORLD by default) with the few operations the run needs.
class Communicator {
 public:
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD);

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] MPI_Comm handle() const noexcept { return comm_; }

  /// Collective: the string of `root` on every rank.
  [[nodiscard]] std::string broadcast(const std::string& value, int root = 0) const;
  /// Collective: the largest of every rank's value.
  [[nodiscard]] int max_all(int value) const;
  /// Collective: the smallest of every rank's value.
  [[nodiscard]] int min_all(int value) const;
  /// Collective.
  void barrier() const;

  /// Sends a message (blocking until the buffer can be reused; payloads are small).
  void send(int dest, Tag tag, const std::string& payload) const;
  /// Returns a pending message of any tag from any rank, or nullopt without waiting.
  [[nodiscard]] std::optional<Message> try_receive() const;

  /// Ends every rank of the job with `code`; for a fatal error on one rank, so that no other rank
  /// waits forever in a collective call.
  [[noreturn]] void abort(int code) const;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace ndif::run
