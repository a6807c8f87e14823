#include "ndif_sweep/run/link.hpp"

namespace ndif::run {

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
