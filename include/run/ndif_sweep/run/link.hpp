#pragma once
/// \file
/// How the ranks of a run reach each other: a small interface with an MPI implementation for runs
/// (mpi_link.hpp) and an in-process one here, so the coordinator and the workers can be driven in
/// a unit test without MPI.

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "ndif_sweep/run/messages.hpp"

namespace ndif::run {

/// One rank's end of the run's messages.
class Link {
 public:
  virtual ~Link() = default;
  [[nodiscard]] virtual int rank() const noexcept = 0;
  [[nodiscard]] virtual int size() const noexcept = 0;
  /// Sends `message` to rank `to` (this rank included). Messages between two ranks arrive in order.
  virtual void send(int to, const Message& message) = 0;
  /// A message that has arrived, with its sender, or nullopt at once.
  [[nodiscard]] virtual std::optional<std::pair<int, Message>> receive() = 0;
  /// True once every message this rank sent has left it (a receiver has taken it).
  [[nodiscard]] virtual bool flushed() = 0;
};

/// Every rank's link in one process, for tests: `link(r)` is rank r's end.
class InProcessNetwork {
 public:
  explicit InProcessNetwork(int ranks);
  ~InProcessNetwork();
  [[nodiscard]] Link& link(int rank);
  /// Messages sent and not yet received, all ranks together.
  [[nodiscard]] std::size_t pending() const noexcept;
  /// Delivers messages: every rank's `handle(rank, from, message)` is called until no message is
  /// left (or `limit` deliveries, against a test that loops). Returns the number delivered.
  template <typename Handle>
  std::size_t deliver(Handle&& handle, std::size_t limit = 100000) {
    std::size_t n = 0;
    for (bool any = true; any && n < limit;) {
      any = false;
      for (int r = 0; r < static_cast<int>(links_.size()); ++r) {
        while (auto m = link(r).receive()) {
          handle(r, m->first, m->second);
          any = true;
          ++n;
        }
      }
    }
    return n;
  }

 private:
  class End;
  std::vector<std::unique_ptr<End>> links_;
};

}  // namespace ndif::run
