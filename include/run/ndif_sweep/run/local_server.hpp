#pragma once
/// \file
/// Starts the bundled `ndif-local` for a job whose endpoint is `local`, and stops it afterwards.

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::run {

/// A child `ndif-local` process listening on a free loopback port. Stopped (SIGTERM, then SIGKILL
/// after a grace period) when destroyed.
class LocalServerProcess {
 public:
  /// Starts `binary` with the job's `local` options and waits until it accepts requests.
  /// No API key is passed: the bundled server accepts any non-empty key, so none ever reaches a
  /// process argument. Throws InternalError if it does not come up.
  LocalServerProcess(const std::filesystem::path& binary, const spec::LocalServerOptions& options);
  ~LocalServerProcess();
  LocalServerProcess(const LocalServerProcess&) = delete;
  LocalServerProcess& operator=(const LocalServerProcess&) = delete;

  /// "http://127.0.0.1:PORT".
  [[nodiscard]] const std::string& base_url() const noexcept { return url_; }

  /// The `ndif-local` next to the running executable (both are built into the same bin/).
  [[nodiscard]] static std::filesystem::path default_binary();

 private:
  void stop() noexcept;
  pid_t pid_ = -1;
  std::filesystem::path dir_;
  std::string url_;
};

}  // namespace ndif::run
