#pragma once
/// \file
/// A rank's results decoded on threads of their own (zstd, torch.save, the checks of
/// remote::decode_result and the non-finite count) while the rank's main thread drives its
/// transfers and writes the results already decoded. A G4 result's zstd is four fifths of what a
/// rank spends on it (bench/write_bench.cpp) and one frame decompresses on one core only, so
/// results decoding side by side, beside the write, are what lets a rank with more than one core
/// take in more than one core's worth. No MPI, HDF5 or curl: the threads run decode_result and
/// nothing else; the main thread keeps every MPI and HDF5 call (MPI_THREAD_FUNNELED).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/remote/result.hpp"

namespace ndif::remote {

/// A result that was decoded, or why it could not be.
struct DecodeOutcome {
  std::int64_t key = 0;                 ///< what submit() was given with the result
  std::optional<DecodedResult> result;  ///< set when it decoded
  std::string error;                    ///< the DecodeError's message when it did not
};

/// Decodes submitted results on background threads, several at once, or in submit() itself.
/// One thread submits and takes (not thread-safe among callers); the decoding runs beside it.
class DecodePool {
 public:
  /// `threads` decode at most as many results at once; 0 decodes in submit() itself, so that each
  /// call's effect is complete when it returns (unit tests of every transition). `ready` is called
  /// on a decoding thread after each result, to wake the thread that takes them: it must be
  /// thread-safe and must not throw.
  DecodePool(unsigned threads, std::function<void()> ready);
  /// Stops the threads once the results they are decoding are done; results not taken are dropped.
  ~DecodePool();
  DecodePool(const DecodePool&) = delete;
  DecodePool& operator=(const DecodePool&) = delete;

  /// Queues a downloaded result for decoding against `expected`.
  void submit(std::int64_t key, std::vector<std::byte> bytes, ExpectedResult expected);
  /// The results decoded since the last take, in the order they were done (with one thread, the
  /// order they were submitted in); never waits.
  /// An error other than a DecodeError (out of memory, an internal error) is rethrown here, on
  /// the caller's thread.
  [[nodiscard]] std::vector<DecodeOutcome> take();
  /// As take(), after waiting up to `max_wait` for at least one result when none is ready.
  [[nodiscard]] std::vector<DecodeOutcome> take(std::chrono::milliseconds max_wait);
  /// Results submitted and not taken yet: queued, decoding or decoded.
  [[nodiscard]] std::size_t pending() const;
  /// Forgets every result submitted and not taken (the caller gave up on them); one that is
  /// decoding at the time finishes and is dropped.
  void discard();

 private:
  struct Job {
    std::int64_t key = 0;
    std::vector<std::byte> bytes;
    ExpectedResult expected;
    ResultRoom room;  // for the decoded forms, allocated by submit()
    std::uint64_t generation = 0;
  };
  struct Done {
    DecodeOutcome outcome;
    std::exception_ptr failure;
  };

  static Done decode(Job job);
  void loop();
  void stop() noexcept;
  std::vector<DecodeOutcome> take_locked(std::unique_lock<std::mutex>& lock);

  std::function<void()> ready_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;   // the decoding threads wait for a job or the stop
  std::condition_variable ready_cv_;  // take(max_wait) waits for a result
  std::deque<Job> queue_;
  std::vector<Done> done_;
  std::size_t decoding_ = 0;
  std::uint64_t generation_ = 0;  // bumped by discard(): what is decoding then is dropped
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: started once everything they read exists
};

}  // namespace ndif::remote
