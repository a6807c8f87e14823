#pragma once
/// \file
/// ndif-local: an NDIF-compatible HTTP server that runs ndif-sweep's graph requests against the
/// synthetic model, with a job queue, bandwidth cap and reproducible fault injection. It speaks G2
/// (a raw body, GET /result/{id} or [url, size]; docs/protocol.md) and G4 (a multipart POST with
/// the envelope `data` and the graph as `blob`, a 404 from /response/{id} until a first status is
/// stored, an expiring result URL, results keyed by variable name, zstd when `compress`), and
/// answers GET /env, GET /status and GET /stats (its counts of jobs submitted, finished, fetched).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/local/synthetic_model.hpp"

namespace ndif::local {

/// One kind of injected fault (README "Commands", `--fail-kinds`).
enum class FaultKind {
  http500,       ///< POST /request answers 500; no job is created
  http503,       ///< POST /request answers 503; no job is created
  reset,         ///< the connection drops mid-reply on the job's first status poll
  truncate,      ///< the first result download is cut short under a full Content-Length
  error_status,  ///< the job ends ERROR "Your job was cancelled or preempted by the server."
  expired_url,   ///< COMPLETED carries a URL that answers 403 "Request has expired"
  slow,          ///< the result download crawls, but completes
  bad_zstd,      ///< the result has the zstd magic number but a damaged frame
};

/// How a COMPLETED job hands over its result.
enum class Delivery {
  result,  ///< `data` null; the client GETs /result/{id} (G2)
  url,     ///< `data` is [url, size] of a presigned-looking URL on this server (G3)
};

/// Parses a fault name as written in `--fail-kinds`. Throws InputError listing the valid names.
[[nodiscard]] FaultKind parse_fault_kind(std::string_view name);
/// The `--fail-kinds` name of `kind`.
[[nodiscard]] const char* fault_name(FaultKind kind) noexcept;

/// Everything `ndif-local` is configured with.
struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  ///< 0 picks a free port
  SyntheticModelConfig model;
  std::vector<std::string> api_keys;  ///< empty: any non-empty key is accepted
  int workers = 1;                    ///< jobs that run at once
  int latency_ms = 0;                 ///< queue time before a job joins the worker queue
  double bandwidth_mbps = 0;          ///< cap on all result downloads together, 10^6 B/s; 0 = none
  double fail_rate = 0;               ///< share of jobs that meet one fault
  std::vector<FaultKind> fail_kinds;  ///< drawn from uniformly; empty with fail_rate > 0 = all
  std::uint64_t fail_seed = 0;
  Delivery delivery = Delivery::result;
  bool zstd = false;     ///< zstd-compress result files
  int url_ttl_s = 3600;  ///< G4: how long a COMPLETED job's result URL is valid
};

/// The fault that the job with POST sequence number `sequence` (0, 1, ...) meets, if any: a pure
/// function of the fault options, so a run is reproducible.
[[nodiscard]] std::optional<FaultKind> draw_fault(const ServerOptions& options,
                                                  std::uint64_t sequence) noexcept;

/// An ndif-local server running in background threads of this process.
class LocalServer {
 public:
  /// Validates the options. Throws InputError naming the bad option.
  explicit LocalServer(ServerOptions options);
  /// Stops the server if it still runs.
  ~LocalServer();
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  /// Binds, starts the HTTP and worker threads and returns once requests are accepted. Returns
  /// the port. Throws InputError when the host/port cannot be bound.
  int start();
  /// Stops accepting requests, finishes the running jobs and joins every thread.
  void stop();
  /// The bound port (after start()).
  [[nodiscard]] int port() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The whole `ndif-local` program: starts the server, writes the port to `port_file` (atomically,
/// via a temporary file and rename) when given, prints `listening on http://HOST:PORT` on stdout
/// and serves until SIGTERM or SIGINT. Throws InputError for bad options or an unbindable port.
void run_local_server(const ServerOptions& options, const std::optional<std::filesystem::path>& port_file);

}  // namespace ndif::local
