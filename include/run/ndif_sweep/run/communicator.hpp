#pragma once
/// \file
/// The MPI seam of the run loop: process setup, collectives on small values, and the tagged
/// point-to-point messages between the coordinator (rank 0) and the workers. The rest of the run
/// module sees MPI only through this header.

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
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

/// The tag of the run loop's messages (messages.hpp says what they hold).
enum class Tag : int {
  message = 101,
  gather = 102,   ///< Communicator::gather_to_root, before the run loop starts
  strings = 103,  ///< the prompts' strings on their way to rank 0 as the output file is created
};

/// A received message's bytes.
struct Envelope {
  int source = 0;
  Tag tag = Tag::message;
  std::string payload;
};

/// A send MPI has not finished with: its payload lives here until Communicator::done says so.
struct OutgoingSend {
  std::string payload;
  MPI_Request request = MPI_REQUEST_NULL;
};

/// A framed message on its way to another rank (Communicator::start_framed_send): its length and
/// bytes live here until Communicator::done says so. The receiver takes it with receive().
struct FramedSend {
  unsigned long long length = 0;
  std::string payload;
  std::vector<MPI_Request> requests;
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
  /// Collective: `value` of `root` into `value` of every rank, without a copy on `root` (for large
  /// values: the prompts file's index is 16 bytes a prompt).
  void broadcast_in_place(std::string& value, int root = 0) const;
  /// Collective: the largest of every rank's value.
  [[nodiscard]] int max_all(int value) const;
  /// Collective: the smallest of every rank's value.
  [[nodiscard]] int min_all(int value) const;
  /// Collective.
  void barrier() const;
  /// Collective: rank 0 is handed every other rank's `value`, in rank order, through
  /// `take(rank, bytes)`, one at a time (so it never holds them all); the other ranks return once
  /// theirs is sent. Rank 0's own `value` is not used. Chunked: values beyond INT_MAX bytes travel.
  void gather_to_root(const std::string& value,
                      const std::function<void(int rank, std::string&& bytes)>& take) const;
  /// Starts sending `out.payload` to `dest` as one framed message (its length, then its bytes in
  /// chunks that an int counts, so that messages beyond INT_MAX bytes travel) and returns at once.
  /// `out` must stay where it is until done(out). Not collective.
  void start_framed_send(int dest, Tag tag, FramedSend& out) const;
  /// True once MPI has finished with every part of a framed send (MPI_Testall); never waits.
  [[nodiscard]] bool done(FramedSend& out) const;
  /// Waits until done(out), without spinning.
  void wait(FramedSend& out) const;
  /// Sends `bytes` to `dest` framed and returns once MPI is done with them: for large messages, once
  /// `dest` takes them, so that a receiver that takes one message at a time sets the pace. Not
  /// collective.
  void send(int dest, Tag tag, std::string_view bytes) const;
  /// The next framed message of `tag` from `source`, waiting for it without spinning. Not collective.
  ///
  /// These waits poll with short sleeps (20 us, doubling to 1 ms) instead of MPI's own waits, which
  /// spin a core: on a node with more threads than cores (a rank reading ahead on a thread of its
  /// own, ranks sharing cores) a spinning wait takes the core from the work it waits for.
  [[nodiscard]] std::string receive(int source, Tag tag) const;
  /// The next framed message of `tag` from `source` if one has come, without waiting.
  [[nodiscard]] std::optional<std::string> poll(int source, Tag tag) const;
  /// Collective: the `value` of every rank of this communicator that runs on this rank's node
  /// (shares its memory), in rank order; this rank's is at index `*mine`. Every rank's value must
  /// have the same size (InternalError otherwise).
  [[nodiscard]] std::vector<std::string> allgather_on_node(const std::string& value, std::size_t* mine) const;

  /// Starts sending `out.payload` to `dest` and returns at once (MPI_Isend): two ranks that send
  /// each other a large message at the same moment must not wait on each other. `out` must stay
  /// where it is until done(out).
  void start_send(int dest, Tag tag, OutgoingSend& out) const;
  /// True once MPI has finished with a started send (MPI_Test); never waits.
  [[nodiscard]] bool done(OutgoingSend& out) const;
  /// Returns a pending message of any tag from any rank, or nullopt without waiting.
  [[nodiscard]] std::optional<Envelope> try_receive() const;

  /// Ends every rank of the job with `code`; for a fatal error on one rank, so that no other rank
  /// waits forever in a collective call.
  [[noreturn]] void abort(int code) const;
  /// The same after saying why, in one write to stderr (the line of one rank is not torn by
  /// another's): "ndif-sweep: error on rank R: <why>; <what_follows>".
  [[noreturn]] void abort(int code, std::string_view why,
                          std::string_view what_follows = "stopping every rank") const;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace ndif::run
