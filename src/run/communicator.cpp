#include "ndif_sweep/run/communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

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
  constexpr unsigned long long kChunk = 1ULL << 30;
  for (unsigned long long off = 0; off < len; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, len - off));
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

void Communicator::gather_to_root(const std::string& value,
                                  const std::function<void(int, std::string&&)>& take) const {
  constexpr unsigned long long kChunk = 1ULL << 30;
  const int tag = static_cast<int>(Tag::gather);
  if (rank_ != 0) {
    unsigned long long len = value.size();
    check(MPI_Send(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, tag, comm_), "MPI_Send (length)");
    for (unsigned long long off = 0; off < len; off += kChunk)
      check(MPI_Send(value.data() + off, static_cast<int>(std::min(kChunk, len - off)), MPI_CHAR, 0, tag,
                     comm_),
            "MPI_Send (payload)");
    return;
  }
  // In rank order, so that rank 0 merges as it receives.
  for (int source = 1; source < size_; ++source) {
    unsigned long long len = 0;
    check(MPI_Recv(&len, 1, MPI_UNSIGNED_LONG_LONG, source, tag, comm_, MPI_STATUS_IGNORE),
          "MPI_Recv (length)");
    std::string bytes(len, '\0');
    for (unsigned long long off = 0; off < len; off += kChunk)
      check(MPI_Recv(bytes.data() + off, static_cast<int>(std::min(kChunk, len - off)), MPI_CHAR, source, tag,
                     comm_, MPI_STATUS_IGNORE),
            "MPI_Recv (payload)");
    take(source, std::move(bytes));
  }
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

}  // namespace ndif::run
