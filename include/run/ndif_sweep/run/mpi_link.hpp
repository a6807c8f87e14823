#pragma once
/// \file
/// The run loop's Link over MPI. A message to one's own rank never goes through MPI.

#include <cstdint>
#include <deque>
#include <list>
#include <optional>
#include <utility>

#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/link.hpp"

namespace ndif::run {

/// The link over MPI point-to-point messages (one tag). Sends never block: each is started and
/// kept until MPI is done with it, so two ranks sending each other at once cannot deadlock.
class MpiLink final : public Link {
 public:
  explicit MpiLink(const Communicator& comm) : comm_(comm) {}
  [[nodiscard]] int rank() const noexcept override { return comm_.rank(); }
  [[nodiscard]] int size() const noexcept override { return comm_.size(); }
  void send(int to, const Message& message) override;
  [[nodiscard]] std::optional<std::pair<int, Message>> receive() override;
  [[nodiscard]] bool flushed() override;
  /// Messages sent and received so far, to and from itself included: the run loop shortens its
  /// turns while this moves.
  [[nodiscard]] std::uint64_t moved() const noexcept { return moved_; }

 private:
  const Communicator& comm_;
  std::deque<Message> to_self_;      // delivered without MPI
  std::list<OutgoingSend> sending_;  // stable addresses: MPI holds pointers into them
  std::uint64_t moved_ = 0;
};

}  // namespace ndif::run
