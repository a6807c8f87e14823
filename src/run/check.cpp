// `ndif-sweep check`: the pre-flight a user runs before spending cluster hours. Each step is one
// line of a checklist; a step that fails stops the ones that depend on it. Nothing is written.
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/nnsight_encoder.hpp"
#include "ndif_sweep/remote/result.hpp"
#include "ndif_sweep/remote/transport.hpp"
#include "ndif_sweep/run/commands.hpp"
#include "ndif_sweep/run/local_server.hpp"
#include "ndif_sweep/run/service.hpp"

namespace ndif::run {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

enum class Outcome { ok, warn, fail, skip };

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::ok:
      return "ok";
    case Outcome::warn:
      return "warn";
    case Outcome::fail:
      return "FAIL";
    case Outcome::skip:
      return "skip";
  }
  return "?";
}

struct Step {
  std::string name;
  Outcome outcome = Outcome::ok;
  std::string detail;
};

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string human_bytes(std::size_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.2f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{} B", bytes);
}

class Checklist {
 public:
  /// Runs `body`; an Error becomes a failed step (and the exit code of the first one), and the
  /// steps after a failure are skipped.
  bool step(const std::string& name, const std::function<std::string()>& body) {
    if (failed_) {
      steps_.push_back({name, Outcome::skip, "not checked: an earlier step failed"});
      return false;
    }
    try {
      steps_.push_back({name, Outcome::ok, body()});
      return true;
    } catch (...) {
      auto report = report_of(std::current_exception());
      fail(name, std::move(report.message), static_cast<int>(report.code));
    }
    return false;
  }
  void warn(const std::string& name, std::string detail) {
    steps_.push_back({name, Outcome::warn, std::move(detail)});
  }
  void skip(const std::string& name, std::string detail) {
    steps_.push_back({name, Outcome::skip, std::move(detail)});
  }

  [[nodiscard]] int exit_code() const noexcept { return code_; }

  void print(std::ostream& out, bool as_json, const std::filesystem::path& job_file) const {
    if (as_json) {
      json steps = json::array();
      for (const auto& s : steps_)
        steps.push_back({{"name", s.name}, {"status", outcome_name(s.outcome)}, {"detail", s.detail}});
      for (auto& s : steps) {
        if (s["status"] == "FAIL") s["status"] = "fail";
      }
      out << json{{"job", job_file.string()}, {"ok", code_ == 0}, {"exit_code", code_}, {"checks", steps}}
                 .dump(2)
          << '\n';
      return;
    }
    out << "ndif-sweep check " << job_file.string() << '\n';
    for (const auto& s : steps_)
      out << fmt::format("  {:<5} {:<11} {}\n", outcome_name(s.outcome), s.name, s.detail);
    out << (code_ == 0 ? "every check passed\n" : fmt::format("a check failed (exit code {})\n", code_));
  }

 private:
  void fail(const std::string& name, std::string detail, int code) {
    steps_.push_back({name, Outcome::fail, std::move(detail)});
    failed_ = true;
    if (code_ == 0) code_ = code == 0 ? 1 : code;
  }

  std::vector<Step> steps_;
  bool failed_ = false;
  int code_ = 0;
};

std::string env_or_empty(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  return value != nullptr ? value : "";
}

// One 1-prompt job end to end: submit, wait, download, decode; the result must have the shape
// and dtype that was asked for.
std::string probe_one_prompt(const PreparedJob& job, remote::RequestEncoder& encoder,
                             const std::string& base_url, const std::string& api_key,
                             const std::string& model_key) {
  const auto started = Clock::now();
  const auto prompt = encode_batch(job, {0}).front();
  remote::BatchRequest request{job.spec.model,
                               model_key,
                               {prompt},
                               static_cast<std::int32_t>(prompt.ids.size()),
                               job.spec.probes,
                               job.spec.dtype,
                               job.model_config.hidden_size};
  auto encoded = encoder.encode(request);
  const auto expected = encoded.expected;
  remote::JobTransport transport(remote::TransportOptions{base_url, api_key, job.spec.timeouts});
  transport.submit(remote::JobTicket{0, 1}, std::move(encoded));
  while (true) {
    auto finished = transport.run(std::chrono::milliseconds(500)).finished;
    if (finished.empty()) continue;
    auto& f = finished.front();
    if (f.failure) throw ServiceRefused(fmt::format("the 1-prompt job failed: {}", f.failure->message));
    const auto received = f.result.size();
    const auto decoded = remote::decode_result(std::move(f.result), expected);
    return fmt::format("a 1-prompt job (row 0) came back in {:.1f} s: ({}, {}, {}, {}) {}, {} received",
                       ms_since(started) / 1000, expected.batch, expected.total_layers(), expected.positions,
                       expected.hidden, dtype_name(expected.dtype), human_bytes(received));
  }
}

}  // namespace

int check_command(const std::filesystem::path& job_file, bool probe, bool as_json, std::ostream& out) {
  Checklist list;
  std::optional<spec::JobSpec> spec;
  list.step("job file", [&] {
    spec = load_job_spec(job_file, {});
    return fmt::format("{} via {} ({} encoder, protocol {})", spec->model, spec->endpoint,
                       spec::encoder_name(spec->encoder), spec::protocol_name(spec->protocol));
  });

  std::unique_ptr<LocalServerProcess> local;
  std::string base_url;
  std::string api_key;
  std::optional<ServiceFacts> facts;
  const bool remote = spec && spec->endpoint != "local";
  if (spec) api_key = env_or_empty(spec->api_key_env);
  list.step("endpoint", [&] {
    const auto started = Clock::now();
    if (!remote) {
      local = std::make_unique<LocalServerProcess>(LocalServerProcess::default_binary(), spec->local);
      base_url = local->base_url();
      return fmt::format("the bundled ndif-local started at {} ({:.0f} ms)", base_url, ms_since(started));
    }
    base_url = spec->endpoint;
    if (!remote::ping(base_url, spec->timeouts))
      throw Error(ExitCode::failure,
                  fmt::format("{} does not answer GET /ping; check the endpoint and the network", base_url));
    return fmt::format("{} answers GET /ping ({:.0f} ms)", base_url, ms_since(started));
  });
  if (remote) {
    list.step("api key", [&] {
      if (api_key.empty())
        throw InputError(fmt::format(
            "the environment variable {} (api_key_env) is not set; export your NDIF API key in it",
            spec->api_key_env));
      return fmt::format("${} is set", spec->api_key_env);
    });
    list.step("deployment", [&] {
      facts = query_service(*spec, api_key);
      const auto& d = facts->deployment;
      return fmt::format("{} is {}{} with key {}", d.repo_id.empty() ? d.name : d.repo_id,
                         d.deployment_level.empty() ? d.application_state : d.deployment_level,
                         d.running() ? "" : " (not running now: the first job waits for it to deploy)",
                         facts->model_key);
    });
    if (facts && facts->env) {
      list.step("server", [&] {
        return fmt::format("nnsight {}, Python {}", facts->env->nnsight_version.value_or("(not listed)"),
                           facts->env->python_version.substr(0, facts->env->python_version.find(' ')));
      });
    }
    if (spec && spec->protocol == spec::Protocol::g4) {
      list.step("key check", [&] {
        const auto check = require_api_key(*spec, base_url, api_key, facts->model_key);
        if (check.outcome == remote::KeyCheck::Outcome::unknown)
          return fmt::format("could not be checked ({}); the first job will tell", check.words);
        return std::string("the service accepts the API key (no job was made)");
      });
    }
  }

  std::optional<PreparedJob> job;
  list.step("prompts", [&] {
    job = prepare_job(*spec, [&](const spec::JobSpec& s) { return deployment_shape(s, *facts); });
    const auto summary = plan_summary_json(*job);
    return fmt::format("{} prompts, {} tokens, {} batches, {} to download",
                       summary["prompts"].get<std::int64_t>(), summary["tokens"].get<std::int64_t>(),
                       summary["batches"].get<std::int64_t>(),
                       human_bytes(summary["download_bytes"].get<std::size_t>()));
  });

  const std::string model_key =
      facts ? facts->model_key : (spec ? remote::model_key(spec->model) : std::string());
  std::unique_ptr<remote::RequestEncoder> encoder;
  list.step("encoder", [&] {
    if (job->spec.encoder == spec::EncoderKind::graph) {
      encoder = std::make_unique<remote::GraphRequestEncoder>(job->spec.protocol);
      return std::string("ndif-sweep's graph (no Python needed)");
    }
    const auto started = Clock::now();
    auto nnsight = std::make_unique<remote::NnsightEncoder>(
        encoder_options(job->spec, make_run_token(job->job_hash)), encoder_job(job->spec, model_key));
    const auto hello = nnsight->hello();
    if (facts && facts->env) check_nnsight_versions(hello, *facts->env, base_url);
    check_encoder_model(nnsight->open(), *job);
    const double start_ms = ms_since(started);
    encoder = std::move(nnsight);
    return fmt::format("nnsight {} with {} started in {:.1f} s{}", hello.nnsight_version, hello.executable,
                       start_ms / 1000, facts && facts->env ? ", the server's version" : "");
  });
  if (job && job->spec.encoder == spec::EncoderKind::nnsight) {
    list.step("canary", [&] {
      const auto rows = run_tokenizer_canary(*job, dynamic_cast<remote::NnsightEncoder&>(*encoder));
      return fmt::format("{} prompts tokenize exactly as the model's own tokenizer does", rows);
    });
  }
  list.step("encode", [&] {
    const auto& batch = job->plan.batches.front();
    remote::BatchRequest request{
        job->spec.model,  model_key,       encode_batch(*job, batch.rows), batch.padded_len,
        job->spec.probes, job->spec.dtype, job->model_config.hidden_size};
    const auto started = Clock::now();
    const auto encoded = encoder->encode(request);
    return fmt::format("batch 0 ({} prompts of up to {} tokens) in {:.0f} ms: {} request{}",
                       batch.rows.size(), batch.padded_len, ms_since(started),
                       human_bytes(encoded.body.size() + encoded.envelope.size()),
                       encoded.multipart() ? " (envelope and blob)" : "");
  });
  if (probe) {
    list.step("probe", [&] {
      return probe_one_prompt(*job, *encoder, base_url, api_key.empty() ? "ndif-local" : api_key, model_key);
    });
  } else {
    list.skip("probe", "add --probe to run one 1-prompt job end to end");
  }
  encoder.reset();
  list.print(out, as_json, job_file);
  return list.exit_code();
}

}  // namespace ndif::run
