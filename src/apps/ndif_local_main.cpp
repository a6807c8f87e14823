// ndif-local: the bundled NDIF-compatible server (README "Commands", docs/protocol.md).
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/version.hpp"
#include "ndif_sweep/local/server.hpp"

int main(int argc, char** argv) {
  using namespace ndif;
  CLI::App app{"ndif-local: an NDIF-compatible server running a deterministic synthetic model"};
  app.set_version_flag("--version", kToolVersion);
  local::ServerOptions options;
  std::string port_file;
  std::string model_dtype = "bfloat16";
  std::string fail_kinds;
  std::string delivery = "result";
  app.add_option("--host", options.host, "address to listen on")->capture_default_str();
  app.add_option("--port", options.port, "port; 0 picks a free one")->capture_default_str();
  app.add_option("--port-file", port_file, "write the port to this file once listening");
  app.add_option("--layers", options.model.layers, "num_hidden_layers")->capture_default_str();
  app.add_option("--hidden", options.model.hidden, "hidden_size")->capture_default_str();
  app.add_option("--seed", options.model.seed, "seed of the synthetic model")->capture_default_str();
  app.add_option("--model-dtype", model_dtype, "dtype the model holds values in")
      ->check(CLI::IsMember({"bfloat16", "float16", "float32"}))
      ->capture_default_str();
  app.add_option("--api-key", options.api_keys,
                 "accept only these keys (repeatable); default any non-empty key");
  app.add_option("--workers", options.workers, "jobs that run at once")->capture_default_str();
  app.add_option("--latency-ms", options.latency_ms, "queue time of every job before it may run")
      ->capture_default_str();
  app.add_option("--bandwidth-mbps", options.bandwidth_mbps, "cap on all result downloads, MB/s (0 = none)")
      ->capture_default_str();
  app.add_option("--fail-rate", options.fail_rate, "share of jobs that meet one injected fault")
      ->capture_default_str();
  app.add_option("--fail-kinds", fail_kinds,
                 "comma-separated: http500,http503,reset,truncate,error_status,expired_url,slow,bad_zstd");
  app.add_option("--fail-seed", options.fail_seed, "seed of the fault draws")->capture_default_str();
  app.add_option("--delivery", delivery, "result: GET /result/{id}; url: COMPLETED carries [url, size]")
      ->check(CLI::IsMember({"result", "url"}))
      ->capture_default_str();
  app.add_flag("--zstd", options.zstd,
               "zstd-compress result files (G4 requests ask for it in their envelope)");
  app.add_option("--url-ttl-s", options.url_ttl_s, "G4: seconds a result URL stays valid")
      ->capture_default_str();
  long parent_pid = 0;
  app.add_option("--parent-pid", parent_pid,
                 "the pid of the process that starts this server: stop (as on SIGTERM) when it ends, "
                 "even when it is killed");
  CLI11_PARSE(app, argc, argv);
  // A sweep killed with SIGKILL (or by OOM) must not leave its bundled server computing the jobs it
  // sent, holding gigabytes: the kernel sends SIGTERM when the parent dies. If it died before this
  // line, the server has another parent already and stops at once.
  if (parent_pid > 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
      std::cerr << "ndif-local: --parent-pid: cannot ask to be stopped with the parent process\n";
      return static_cast<int>(ndif::ExitCode::failure);
    }
    if (getppid() != static_cast<pid_t>(parent_pid)) {
      std::cerr << "ndif-local: --parent-pid " << parent_pid << ": not this server's parent (" << getppid()
                << "), or it has ended; give the pid of the process that starts the server\n";
      return static_cast<int>(ndif::ExitCode::invalid_input);
    }
  }

  try {
    options.model.dtype = *dtype_from_name(model_dtype);  // one of the three CLI11 checked
    options.delivery = delivery == "url" ? local::Delivery::url : local::Delivery::result;
    for (std::size_t start = 0; start < fail_kinds.size();) {
      const std::size_t comma = std::min(fail_kinds.find(',', start), fail_kinds.size());
      options.fail_kinds.push_back(local::parse_fault_kind(fail_kinds.substr(start, comma - start)));
      start = comma + 1;
    }
    local::run_local_server(
        options, port_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(port_file));
    return 0;
  } catch (const Error& e) {
    std::cerr << "ndif-local: " << e.what() << '\n';
    return static_cast<int>(e.exit_code());
  } catch (const std::exception& e) {
    std::cerr << "ndif-local: internal error: " << e.what() << '\n';
    return static_cast<int>(ExitCode::failure);
  }
}
