#include "ndif_sweep/run/mpi_link.hpp"

namespace ndif::run {

void MpiLink::send(int to, const Message& message) {
  ++moved_;
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
    ++moved_;
    return std::pair{comm_.rank(), std::move(m)};
  }
  auto m = comm_.try_receive();
  if (!m) return std::nullopt;
  ++moved_;
  return std::pair{m->source, decode_message(m->payload)};
}

}  // namespace ndif::run
