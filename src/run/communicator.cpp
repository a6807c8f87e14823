#include "ndif_sweep/run/communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "ndif_sweep/core/error.hpp"

namespace ndif::run {
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw InternalError(fmt::format("MPI: {} failed: {}", what, std::string(text, static_cast<size_t>(len))));
}

/// Payloads travel in chunks of this many bytes, so that an int counts each.
constexpr unsigned long long kChunkBytes = 1ULL << 30;

/// Calls `ready` until it says yes, sleeping between calls: 20 us at first, doubling to 1 ms
/// (communicator.hpp, receive(), says why not MPI's own waits).
template <typename Ready>
void wait_until(Ready&& ready) {
  auto pause = std::chrono::microseconds(20);
  while (!ready()) {
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(1));
  }
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors come back as codes that check() turns into exceptions, instead of aborting silently.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Communicator::Communicator(MPI_Comm comm) : comm_(comm) {
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

std::string Communicator::broadcast(const std::string& value, int root) const {
  std::string out = rank_ == root ? value : std::string();
  broadcast_in_place(out, root);
  return out;
}

void Communicator::broadcast_in_place(std::string& value, int root) const {
  unsigned long long len = value.size();
  check(MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, root, comm_), "MPI_Bcast (length)");
  if (rank_ != root) value.assign(len, '\0');
  // Chunked so that payloads beyond INT_MAX bytes still broadcast.
  for (unsigned long long off = 0; off < len; off += kChunkBytes) {
    const int n = static_cast<int>(std::min(kChunkBytes, len - off));
    check(MPI_Bcast(value.data() + off, n, MPI_CHAR, root, comm_), "MPI_Bcast (payload)");
  }
}

int Communicator::max_all(int value) const {
  int out = 0;
  check(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
  return out;
}

int Communicator::min_all(int value) const {
  int out = 0;
  check(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
  return out;
}

void Communicator::barrier() const { check(MPI_Barrier(comm_), "MPI_Barrier"); }

void Communicator::start_framed_send(int dest, Tag tag, FramedSend& out) const {
  out.length = out.payload.size();
  out.requests.assign(1 + (out.length + kChunkBytes - 1) / kChunkBytes, MPI_REQUEST_NULL);
  check(
      MPI_Isend(&out.length, 1, MPI_UNSIGNED_LONG_LONG, dest, static_cast<int>(tag), comm_, &out.requests[0]),
      "MPI_Isend (length)");
  try {
    for (unsigned long long off = 0, k = 1; off < out.length; off += kChunkBytes, ++k)
      check(MPI_Isend(out.payload.data() + off, static_cast<int>(std::min(kChunkBytes, out.length - off)),
                      MPI_CHAR, dest, static_cast<int>(tag), comm_, &out.requests[k]),
            "MPI_Isend (payload)");
  } catch (const std::exception& e) {
    // Half a message is on its way and MPI still reads `out`: nothing can take it back.
    abort(1, e.what());
  }
}

bool Communicator::done(FramedSend& out) const {
  int flag = 0;
  check(MPI_Testall(static_cast<int>(out.requests.size()), out.requests.data(), &flag, MPI_STATUSES_IGNORE),
        "MPI_Testall");
  return flag != 0;
}

void Communicator::wait(FramedSend& out) const {
  wait_until([&] { return done(out); });
}

void Communicator::send(int dest, Tag tag, std::string_view bytes) const {
  FramedSend out;
  out.payload.assign(bytes);
  start_framed_send(dest, tag, out);
  wait(out);
}

namespace {

bool message_waits(MPI_Comm comm, int source, Tag tag) {
  int flag = 0;
  check(MPI_Iprobe(source, static_cast<int>(tag), comm, &flag, MPI_STATUS_IGNORE), "MPI_Iprobe");
  return flag != 0;
}

}  // namespace

std::optional<std::string> Communicator::poll(int source, Tag tag) const {
  if (!message_waits(comm_, source, tag)) return std::nullopt;
  return receive(source, tag);
}

std::string Communicator::receive(int source, Tag tag) const {
  wait_until([&] { return message_waits(comm_, source, tag); });
  unsigned long long len = 0;
  check(MPI_Recv(&len, 1, MPI_UNSIGNED_LONG_LONG, source, static_cast<int>(tag), comm_, MPI_STATUS_IGNORE),
        "MPI_Recv (length)");
  std::string bytes(len, '\0');
  // The bytes follow their length at once: MPI_Recv's short wait for them is no spin worth avoiding.
  for (unsigned long long off = 0; off < len; off += kChunkBytes)
    check(MPI_Recv(bytes.data() + off, static_cast<int>(std::min(kChunkBytes, len - off)), MPI_CHAR, source,
                   static_cast<int>(tag), comm_, MPI_STATUS_IGNORE),
          "MPI_Recv (payload)");
  return bytes;
}

void Communicator::gather_to_root(const std::string& value,
                                  const std::function<void(int, std::string&&)>& take) const {
  if (rank_ != 0) {
    send(0, Tag::gather, value);
    return;
  }
  // In rank order, so that rank 0 merges as it receives.
  for (int source = 1; source < size_; ++source) take(source, receive(source, Tag::gather));
}

std::vector<std::string> Communicator::allgather_on_node(const std::string& value, std::size_t* mine) const {
  MPI_Comm node = MPI_COMM_NULL;
  check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int size = 1, rank = 0;
  int rc = MPI_Comm_size(node, &size);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(node, &rank);
  // Same sizes everywhere, checked first so that no rank waits in a gather of another size.
  int len = static_cast<int>(value.size()), smallest = 0, largest = 0;
  if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&len, &smallest, 1, MPI_INT, MPI_MIN, node);
  if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&len, &largest, 1, MPI_INT, MPI_MAX, node);
  std::string all;
  if (rc == MPI_SUCCESS && smallest == largest) {
    all.resize(value.size() * static_cast<std::size_t>(size));
    rc = MPI_Allgather(value.data(), len, MPI_CHAR, all.data(), len, MPI_CHAR, node);
  }
  MPI_Comm_free(&node);
  check(rc, "gathering on the node");
  if (smallest != largest) throw InternalError("allgather_on_node: the ranks' values differ in size");
  std::vector<std::string> out;
  for (int r = 0; r < size; ++r)
    out.push_back(all.substr(static_cast<std::size_t>(r) * value.size(), value.size()));
  if (mine != nullptr) *mine = static_cast<std::size_t>(rank);
  return out;
}

void Communicator::start_send(int dest, Tag tag, OutgoingSend& out) const {
  if (out.payload.size() > static_cast<std::size_t>(INT_MAX))
    throw InternalError(
        fmt::format("run loop: a message of {} bytes is too large to send", out.payload.size()));
  check(MPI_Isend(out.payload.data(), static_cast<int>(out.payload.size()), MPI_CHAR, dest,
                  static_cast<int>(tag), comm_, &out.request),
        "MPI_Isend");
}

bool Communicator::done(OutgoingSend& out) const {
  int flag = 0;
  check(MPI_Test(&out.request, &flag, MPI_STATUS_IGNORE), "MPI_Test");
  return flag != 0;
}

std::optional<Envelope> Communicator::try_receive() const {
  int flag = 0;
  MPI_Status status{};
  check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &status), "MPI_Iprobe");
  if (!flag) return std::nullopt;
  int count = 0;
  check(MPI_Get_count(&status, MPI_CHAR, &count), "MPI_Get_count");
  Envelope m;
  m.source = status.MPI_SOURCE;
  m.tag = static_cast<Tag>(status.MPI_TAG);
  m.payload.resize(static_cast<size_t>(count));
  check(MPI_Recv(m.payload.data(), count, MPI_CHAR, status.MPI_SOURCE, status.MPI_TAG, comm_,
                 MPI_STATUS_IGNORE),
        "MPI_Recv");
  return m;
}

void Communicator::abort(int code) const {
  MPI_Abort(comm_, code);
  std::_Exit(code);
}

void Communicator::abort(int code, std::string_view why, std::string_view what_follows) const {
  std::fputs(fmt::format("ndif-sweep: error on rank {}: {}; {}\n", rank(), why, what_follows).c_str(),
             stderr);
  std::fflush(stderr);
  abort(code);
}

}  // namespace ndif::run
