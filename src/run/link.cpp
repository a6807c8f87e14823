#include "ndif_sweep/run/link.hpp"

namespace ndif::run {

void MpiLink::send(int to, const Message& message) {
  if (to == comm_.rank()) {
    to_self_.push_back(message);
    return;
  }
  auto& out = sending_.emplace_back();
  out.payload = encode_message(message);
  comm_.start_send(to, Tag::message, out);
  static_cast<void>(flushed());
}

bool MpiLink::flushed() {
  std::erase_if(sending_, [&](OutgoingSend& out) { return comm_.done(out); });
  return sending_.empty();
}

std::optional<std::pair<int, Message>> MpiLink::receive() {
  static_cast<void>(flushed());
  if (!to_self_.empty()) {
    Message m = std::move(to_self_.front());
    to_self_.pop_front();
    return std::pair{comm_.rank(), std::move(m)};
  }
  auto m = comm_.try_receive();
  if (!m) return std::nullopt;
  return std::pair{m->source, decode_message(m->payload)};
}

class InProcessNetwork::End final : public Link {
 public:
  End(InProcessNetwork& net, int rank) : net_(net), rank_(rank) {}
  [[nodiscard]] int rank() const noexcept override { return rank_; }
  [[nodiscard]] int size() const noexcept override { return static_cast<int>(net_.links_.size()); }
  void send(int to, const Message& message) override {
    // Through the text form, as over MPI: what a test sends is what a run sends.
    net_.links_.at(static_cast<std::size_t>(to))
        ->inbox.emplace_back(rank_, decode_message(encode_message(message)));
  }
  [[nodiscard]] bool flushed() override { return true; }
  [[nodiscard]] std::optional<std::pair<int, Message>> receive() override {
    if (inbox.empty()) return std::nullopt;
    auto m = std::move(inbox.front());
    inbox.pop_front();
    return m;
  }
  std::deque<std::pair<int, Message>> inbox;

 private:
  InProcessNetwork& net_;
  int rank_;
};

InProcessNetwork::InProcessNetwork(int ranks) {
  for (int r = 0; r < ranks; ++r) links_.push_back(std::make_unique<End>(*this, r));
}

InProcessNetwork::~InProcessNetwork() = default;

Link& InProcessNetwork::link(int rank) { return *links_.at(static_cast<std::size_t>(rank)); }

std::size_t InProcessNetwork::pending() const noexcept {
  std::size_t n = 0;
  for (const auto& end : links_) n += end->inbox.size();
  return n;
}

}  // namespace ndif::run
