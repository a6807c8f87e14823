#include "ndif_sweep/run/local_server.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <vector>

#include "ndif_sweep/core/error.hpp"

extern char** environ;

namespace ndif::run {
namespace {

std::filesystem::path make_temp_dir() {
  std::string templ = (std::filesystem::temp_directory_path() / "ndif-local-XXXXXX").string();
  if (!mkdtemp(templ.data()))
    throw InternalError("cannot create a temporary directory for ndif-local's port file");
  return templ;
}

}  // namespace

std::filesystem::path LocalServerProcess::default_binary() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "ndif-local";
  return self.parent_path() / "ndif-local";
}

LocalServerProcess::LocalServerProcess(const std::filesystem::path& binary,
                                       const spec::LocalServerOptions& options)
    : dir_(make_temp_dir()) {
  if (!std::filesystem::exists(binary))
    throw InternalError(
        fmt::format("endpoint \"local\" needs the ndif-local binary, expected at {}", binary.string()));
  const auto port_file = dir_ / "port";
  const auto log_file = dir_ / "ndif-local.log";
  std::vector<std::string> args{binary.string(), "--host", "127.0.0.1", "--port", "0", "--port-file",
                                port_file.string(), "--layers", std::to_string(options.layers), "--hidden",
                                std::to_string(options.hidden), "--seed", std::to_string(options.seed),
                                "--model-dtype", options.model_dtype, "--workers", "2",
                                // It ends with this process, however this process ends.
                                "--parent-pid", std::to_string(getpid())};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_file.c_str(), O_WRONLY | O_APPEND, 0600);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  const int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    pid_ = -1;
    throw InternalError(fmt::format("cannot start {}: {}", binary.string(), std::strerror(rc)));
  }

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) {
      url_ = fmt::format("http://127.0.0.1:{}", port);
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream log(log_file);
      std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      throw InternalError(fmt::format("ndif-local exited before it listened:\n{}", text));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop();
  throw InternalError("ndif-local did not start listening within 30 s");
}

LocalServerProcess::~LocalServerProcess() { stop(); }

void LocalServerProcess::stop() noexcept {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace ndif::run
