#include "ndif_sweep/remote/nnsight_encoder.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <iostream>
#include <mutex>
#include <thread>

#include "ndif_sweep/remote/encoder_wire.hpp"

extern char** environ;

namespace ndif::remote {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string errno_text(int error) { return std::strerror(error); }

// One file descriptor, closed once.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  [[nodiscard]] int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// The directory of the socket and the lock: created private, and refused when another user could
// have placed it (a symlink, another owner, group or world access), since a socket there would
// hand our requests to someone else's process.
void make_private_dir(const std::filesystem::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw InputError(
        fmt::format("cannot create the encoder directory {}: {}", dir.string(), errno_text(errno)));
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & 077) != 0) {
    throw InputError(fmt::format(
        "the encoder directory {} is not a directory of this user with mode 0700; remove it or set TMPDIR "
        "to a private directory",
        dir.string()));
  }
}

Fd connect_socket(const std::filesystem::path& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string text = path.string();
  if (text.size() >= sizeof address.sun_path)
    throw InternalError(fmt::format("encoder socket path {} is longer than a Unix socket allows", text));
  std::memcpy(address.sun_path, text.c_str(), text.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw InternalError(fmt::format("socket(AF_UNIX) failed: {}", errno_text(errno)));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) return Fd();
  return fd;
}

// The lines an encoder writes to its standard output and error: copied to ours with a prefix, the
// last few kept to explain a failure to start.
class OutputRelay {
 public:
  OutputRelay(Fd fd, long pid) : thread_([this, fd = std::move(fd), pid]() mutable { relay(fd, pid); }) {}
  ~OutputRelay() {
    if (thread_.joinable()) thread_.join();
  }
  OutputRelay(const OutputRelay&) = delete;
  OutputRelay& operator=(const OutputRelay&) = delete;

  [[nodiscard]] std::string tail() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& line : lines_) out += "\n    " + line;
    return out;
  }

 private:
  void relay(Fd& fd, long pid) {
    std::string pending;
    std::array<char, 4096> chunk{};
    while (true) {
      const ssize_t n = ::read(fd.get(), chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      pending.append(chunk.data(), static_cast<std::size_t>(n));
      for (auto end = pending.find('\n'); end != std::string::npos; end = pending.find('\n')) {
        emit(pid, pending.substr(0, end));
        pending.erase(0, end + 1);
      }
    }
    if (!pending.empty()) emit(pid, pending);
  }

  void emit(long pid, const std::string& line) {
    std::cerr << fmt::format("ndif-sweep: encoder {}: {}\n", pid, line) << std::flush;
    std::lock_guard lock(mutex_);
    lines_.push_back(line);
    if (lines_.size() > 12) lines_.pop_front();
  }

  mutable std::mutex mutex_;
  std::deque<std::string> lines_;
  std::thread thread_;
};

// An encoder process this rank started.
struct Child {
  pid_t pid = -1;
  Fd stdin_fd;  // only we hold the write end: closing it ends the encoder
  std::unique_ptr<OutputRelay> output;

  // Ends the encoder: end of input first, then SIGKILL if it does not leave within a second.
  void stop() noexcept {
    if (pid <= 0) return;
    stdin_fd.reset();
    const auto until = Clock::now() + std::chrono::seconds(1);
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (Clock::now() >= until) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid = -1;
    output.reset();  // joins the relay once the pipe has closed
  }

  // Exit status text when the encoder has ended, else nullopt.
  std::optional<std::string> ended() {
    if (pid <= 0) return std::string("not running");
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) != pid) return std::nullopt;
    pid = -1;
    if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return fmt::format("was killed by signal {}", WTERMSIG(status));
    return std::string("ended");
  }
};

class Spawn {
 public:
  Spawn() {
    if (posix_spawn_file_actions_init(&actions_) != 0)
      throw InternalError("posix_spawn_file_actions_init failed");
    if (posix_spawnattr_init(&attr_) != 0) throw InternalError("posix_spawnattr_init failed");
  }
  ~Spawn() {
    posix_spawn_file_actions_destroy(&actions_);
    posix_spawnattr_destroy(&attr_);
  }
  Spawn(const Spawn&) = delete;
  Spawn& operator=(const Spawn&) = delete;
  posix_spawn_file_actions_t actions_{};
  posix_spawnattr_t attr_{};
};

void check_spawn(int rc, const char* what) {
  if (rc != 0) throw InternalError(fmt::format("{} failed: {}", what, errno_text(rc)));
}

}  // namespace

std::filesystem::path bundled_package_dir() {
  std::error_code error;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    const auto installed = self.parent_path().parent_path() / "share" / "ndif-sweep" / "python";
    if (std::filesystem::exists(installed / "ndif_sweep" / "encoder.py", error)) return installed;
  }
#ifdef NDIF_SWEEP_SOURCE_PYTHON_DIR
  const std::filesystem::path source(NDIF_SWEEP_SOURCE_PYTHON_DIR);
  if (std::filesystem::exists(source / "ndif_sweep" / "encoder.py", error)) return source;
#endif
  return {};
}

std::string python_path_with(const std::filesystem::path& package_dir, std::string_view existing) {
  if (package_dir.empty()) return std::string(existing);
  return existing.empty() ? package_dir.string() : package_dir.string() + ":" + std::string(existing);
}

struct NnsightEncoder::Impl {
  EncoderOptions options;
  EncoderJob job;
  std::filesystem::path socket_path;
  std::filesystem::path lock_path;
  Fd connection;
  std::optional<EncoderHello> hello;
  std::optional<EncoderModel> model;
  Child child;  // the encoder this rank started, if any

  Impl(EncoderOptions o, EncoderJob j) : options(std::move(o)), job(std::move(j)) {
    socket_path = options.node_dir / "encoder.sock";
    lock_path = options.node_dir / "encoder.lock";
  }

  ~Impl() {
    connection.reset();
    if (child.pid > 0) {
      child.stop();
      // The run is over on this node: leave nothing behind in the temporary directory (a rank that
      // still needs an encoder makes the directory again).
      std::error_code ignored;
      std::filesystem::remove(socket_path, ignored);
      std::filesystem::remove(lock_path, ignored);
      std::filesystem::remove(options.node_dir, ignored);
    }
  }

  [[nodiscard]] std::vector<std::string> child_environment() const {
    std::vector<std::string> env;
    std::string pythonpath;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string_view line(*entry);
      const auto name = line.substr(0, line.find('='));
      if (!options.scrub_env.empty() && name == options.scrub_env) continue;
      if (name == "PYTHONPATH") {
        pythonpath = std::string(line.substr(name.size() + 1));
        continue;
      }
      if (name == "HF_HUB_OFFLINE" || name == "TRANSFORMERS_OFFLINE" || name == "PYTHONUNBUFFERED") continue;
      env.emplace_back(line);
    }
    pythonpath = python_path_with(options.package_dir, pythonpath);
    if (!pythonpath.empty()) env.push_back("PYTHONPATH=" + pythonpath);
    // The encoder never touches the network, whatever the user's environment says.
    env.emplace_back("HF_HUB_OFFLINE=1");
    env.emplace_back("TRANSFORMERS_OFFLINE=1");
    env.emplace_back("PYTHONUNBUFFERED=1");
    return env;
  }

  void spawn() {
    child.stop();
    int in[2];
    int out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
      throw InternalError(fmt::format("pipe2 for the encoder failed: {}", errno_text(errno)));
    Fd in_read(in[0]), in_write(in[1]), out_read(out[0]), out_write(out[1]);

    Spawn spawn;
    check_spawn(posix_spawn_file_actions_adddup2(&spawn.actions_, in_read.get(), 0), "adddup2");
    check_spawn(posix_spawn_file_actions_adddup2(&spawn.actions_, out_write.get(), 1), "adddup2");
    check_spawn(posix_spawn_file_actions_adddup2(&spawn.actions_, out_write.get(), 2), "adddup2");
    // Nothing else of this process (the output file, its lock, MPI's and curl's sockets) reaches it.
    check_spawn(posix_spawn_file_actions_addclosefrom_np(&spawn.actions_, 3), "addclosefrom_np");
    sigset_t none;
    sigemptyset(&none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE, SIGHUP}) sigaddset(&defaults, sig);
    check_spawn(posix_spawnattr_setsigmask(&spawn.attr_, &none), "posix_spawnattr_setsigmask");
    check_spawn(posix_spawnattr_setsigdefault(&spawn.attr_, &defaults), "posix_spawnattr_setsigdefault");
    check_spawn(posix_spawnattr_setflags(&spawn.attr_, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF),
                "posix_spawnattr_setflags");

    const std::vector<std::string> args{options.python, "-m", "ndif_sweep.encoder", "--socket",
                                        socket_path.string()};
    const auto env = child_environment();
    std::vector<char*> argv;
    std::vector<char*> envp;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);

    pid_t pid = -1;
    const int rc =
        posix_spawnp(&pid, options.python.c_str(), &spawn.actions_, &spawn.attr_, argv.data(), envp.data());
    if (rc != 0) {
      throw InputError(
          fmt::format("cannot start the nnsight encoder with \"{}\": {}; set the job's \"python\" key or "
                      "NDIF_SWEEP_PYTHON to "
                      "an interpreter that has nnsight",
                      options.python, errno_text(rc)));
    }
    child.pid = pid;
    child.stdin_fd = std::move(in_write);
    child.output = std::make_unique<OutputRelay>(std::move(out_read), static_cast<long>(pid));
  }

  // Connects to the node's encoder, starting one (under the node's lock, so one rank does) when
  // none answers; then hello and open on the new connection.
  void ensure_connected() {
    if (connection) return;
    make_private_dir(options.node_dir);
    connection = connect_socket(socket_path);
    if (!connection) {
      Fd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
      if (!lock)
        throw InternalError(fmt::format("cannot open {}: {}", lock_path.string(), errno_text(errno)));
      while (::flock(lock.get(), LOCK_EX) != 0) {
        if (errno != EINTR)
          throw InternalError(fmt::format("flock {}: {}", lock_path.string(), errno_text(errno)));
      }
      connection = connect_socket(socket_path);  // another rank may have started it meanwhile
      if (!connection) {
        spawn();
        const auto until = Clock::now() + options.start_timeout;
        while (!(connection = connect_socket(socket_path))) {
          if (auto ended = child.ended()) {
            throw InputError(
                fmt::format("the nnsight encoder (\"{} -m ndif_sweep.encoder\") {} before it served "
                            "its socket; what it wrote:{}",
                            options.python, *ended, child.output ? child.output->tail() : ""));
          }
          if (Clock::now() >= until) {
            child.stop();
            throw EncoderFailure(fmt::format("the nnsight encoder did not start within {} s",
                                             options.start_timeout.count() / 1000));
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
    }
    handshake();
  }

  void handshake() {
    hello = wire::hello_reply(round_trip(json{{"op", "hello"}}, {}, options.start_timeout).body,
                              socket_path.string());
    json probes = json::array();
    for (const auto& p : job.probes) {
      probes.push_back({{"name", p.name},
                        {"module", p.module},
                        {"layers", p.layers},
                        {"output_index", p.output_index ? json(*p.output_index) : json(nullptr)}});
    }
    const json config{{"model", job.model},
                      {"revision", job.revision ? json(*job.revision) : json(nullptr)},
                      {"model_dir", job.model_dir ? json(*job.model_dir) : json(nullptr)},
                      {"model_key", job.model_key},
                      {"probes", probes},
                      {"dtype", dtype_name(job.dtype)}};
    model = wire::open_reply(
        round_trip(json{{"op", "open"}, {"config", config}}, {}, options.start_timeout).body);
  }

  // One request and its reply, bounded by `timeout`. A broken or silent connection is closed and
  // reported as EncoderFailure.
  wire::Message round_trip(const json& request, std::span<const std::byte> attachment,
                           std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    const auto bytes = wire::frame(request, attachment);
    const auto fail = [&](const std::string& why) -> wire::Message {
      connection.reset();
      throw EncoderFailure(fmt::format("nnsight encoder ({}): {}", request.value("op", "?"), why));
    };
    std::size_t sent = 0;
    while (sent < bytes.size()) {
      if (!wait_for(POLLOUT, deadline)) return fail("timed out sending the request");
      const ssize_t n = ::send(connection.get(), bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return fail(fmt::format("the connection broke while sending ({})", errno_text(errno)));
      sent += static_cast<std::size_t>(n);
    }
    wire::FrameReader reader;
    std::vector<std::byte> chunk(1 << 16);
    while (true) {
      try {
        if (auto message = reader.next()) return std::move(*message);
      } catch (const DecodeError& e) {
        return fail(e.what());
      }
      if (!wait_for(POLLIN, deadline))
        return fail(fmt::format("no answer within {} s",
                                std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
      const ssize_t n = ::recv(connection.get(), chunk.data(), chunk.size(), 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n == 0) return fail("the encoder closed the connection (did it crash?)");
      if (n < 0) return fail(fmt::format("reading its answer failed ({})", errno_text(errno)));
      reader.feed(std::span(chunk.data(), static_cast<std::size_t>(n)));
    }
  }

  bool wait_for(short events, Clock::time_point deadline) const {
    while (true) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd fd{connection.get(), events, 0};
      const int rc = ::poll(&fd, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (rc > 0) return true;
      if (rc < 0 && errno != EINTR) return false;
    }
  }

  // After a failure: the encoder is not to be trusted with the next request. Ends it (whichever
  // rank started it) so that the next connection starts a fresh one.
  void discard_encoder() {
    connection.reset();
    if (hello && hello->pid > 0 && hello->pid != static_cast<long>(::getpid()))
      ::kill(static_cast<pid_t>(hello->pid), SIGKILL);
    if (child.pid > 0) child.stop();
    hello.reset();
    // The socket file stays: a new encoder replaces it atomically, and another rank may already
    // have started one there.
  }

  template <typename Call>
  auto with_restarts(const char* what, Call&& call) {
    for (int attempt = 0;; ++attempt) {
      try {
        ensure_connected();
        return call();
      } catch (const EncoderFailure& e) {
        if (attempt >= options.restarts) throw;
        std::cerr << fmt::format("ndif-sweep: {}; starting the encoder again for the {}\n", e.what(), what)
                  << std::flush;
        discard_encoder();
      }
    }
  }
};

NnsightEncoder::NnsightEncoder(EncoderOptions options, EncoderJob job)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(job))) {}

NnsightEncoder::~NnsightEncoder() = default;

EncoderHello NnsightEncoder::hello() {
  return impl_->with_restarts("hello", [&] { return *impl_->hello; });
}

EncoderModel NnsightEncoder::open() {
  return impl_->with_restarts("open", [&] { return *impl_->model; });
}

const EncoderModel& NnsightEncoder::model() {
  if (!impl_->model) static_cast<void>(open());
  return *impl_->model;
}

std::vector<std::vector<std::int64_t>> NnsightEncoder::tokenize(const std::vector<std::string>& texts,
                                                                bool add_special_tokens) {
  return impl_->with_restarts("tokenizer canary", [&] {
    const auto reply = impl_->round_trip(
        json{{"op", "tokenize"}, {"texts", texts}, {"add_special_tokens", add_special_tokens}}, {},
        impl_->options.request_timeout);
    wire::check_reply(reply.body, "tokenize");
    const auto ids = reply.body.find("ids");
    if (ids == reply.body.end() || !ids->is_array() || ids->size() != texts.size())
      throw EncoderFailure("the encoder's tokenize reply does not hold one id list per text");
    std::vector<std::vector<std::int64_t>> out;
    for (const auto& row : *ids) {
      if (!row.is_array())
        throw EncoderFailure("the encoder's tokenize reply holds a row that is not a list");
      auto& ids_row = out.emplace_back();
      for (const auto& id : row) {
        if (!id.is_number_integer())
          throw EncoderFailure("the encoder's tokenize reply holds a non-integer id");
        ids_row.push_back(id.get<std::int64_t>());
      }
    }
    return out;
  });
}

EncodedRequest NnsightEncoder::encode(const BatchRequest& request) {
  auto& d = *impl_;
  return d.with_restarts("batch", [&] {
    const auto padded = pad_batch(request, d.model->pad_token_id);
    std::vector<std::byte> attachment;
    const auto append = [&](const void* data, std::size_t size) {
      const auto* bytes = static_cast<const std::byte*>(data);
      attachment.insert(attachment.end(), bytes, bytes + size);
    };
    // Little-endian on every machine this runs on; the encoder reads the same layout.
    append(padded.input_ids.data(), padded.input_ids.size() * sizeof(std::int32_t));
    append(padded.attention_mask.data(), padded.attention_mask.size());
    append(padded.positions_padded.data(), padded.positions_padded.size() * sizeof(std::int32_t));
    const json message{{"op", "encode"},
                       {"batch", padded.batch},
                       {"seq", padded.seq},
                       {"positions", padded.positions},
                       {"position_ids", d.model->position_ids}};
    return wire::encode_reply(d.round_trip(message, attachment, d.options.request_timeout), d.job.model_key,
                              request);
  });
}

}  // namespace ndif::remote
