// The orchestration loop of `ndif-sweep run`: the only place that ties spec, plan, request,
// transport and store together.
//
// Every rank is a worker with `max_inflight` NDIF jobs in flight; rank 0 is also the coordinator.
// Rank 0 prepares the job (parse, tokenize, plan), creates or checks the output file and hands out
// pending batches as ranks ask for them; an assignment carries the batch's token ids and positions,
// so workers never read the prompts. The rank that wrote a batch sets its flag right after the data
// write returns, so a crash of any rank, rank 0 included, loses no finished batch.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/version.hpp"
#include "ndif_sweep/remote/nnsight_encoder.hpp"
#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/remote/result.hpp"
#include "ndif_sweep/remote/retry.hpp"
#include "ndif_sweep/remote/transport.hpp"
#include "ndif_sweep/run/commands.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/local_server.hpp"
#include "ndif_sweep/run/service.hpp"
#include "ndif_sweep/run/signals.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/output_lock.hpp"
#include "ndif_sweep/store/parallel_output.hpp"

namespace ndif::run {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

/// What every rank needs to run batches; rank 0 broadcasts it (the API key travels in memory only).
struct RunContext {
  std::string base_url;
  std::string api_key;
  std::string model;
  std::string model_key;
  std::vector<spec::Probe> probes;
  DType dtype = DType::float16;
  std::int64_t hidden = 0;
  spec::RetryOptions retry;
  spec::Timeouts timeouts;
  int max_inflight = 2;
  std::string output;
  std::int64_t batches = 0;
  spec::EncoderKind encoder = spec::EncoderKind::graph;
  spec::Protocol protocol = spec::Protocol::g4;
  // The nnsight encoder of every node: what it runs, what it is opened for, and what to match.
  std::string python;
  std::string run_token;
  std::string api_key_env;
  std::optional<std::string> revision;
  std::optional<std::string> model_dir;
  std::optional<std::string> server_nnsight;
  int num_hidden_layers = 0;
};

json probe_to_json(const spec::Probe& p) {
  return json{{"name", p.name},
              {"module", p.module},
              {"output_index", p.output_index ? json(*p.output_index) : json()},
              {"layers", p.layers},
              {"layers_text", p.layers_text}};
}

spec::Probe probe_from_json(const json& j) {
  spec::Probe p;
  p.name = j.at("name");
  p.module = j.at("module");
  if (!j.at("output_index").is_null()) p.output_index = j.at("output_index").get<int>();
  p.layers = j.at("layers").get<std::vector<int>>();
  p.layers_text = j.at("layers_text");
  return p;
}

std::string encode_context(const RunContext& c) {
  json probes = json::array();
  for (const auto& p : c.probes) probes.push_back(probe_to_json(p));
  return json{{"base_url", c.base_url},
              {"api_key", c.api_key},
              {"model", c.model},
              {"model_key", c.model_key},
              {"probes", probes},
              {"dtype", static_cast<int>(c.dtype)},
              {"hidden", c.hidden},
              {"retry", {c.retry.max_attempts, c.retry.initial_backoff_s, c.retry.max_backoff_s}},
              {"timeouts",
               {c.timeouts.connect_s, c.timeouts.request_s, c.timeouts.job_s, c.timeouts.poll_interval_s}},
              {"max_inflight", c.max_inflight},
              {"output", c.output},
              {"batches", c.batches},
              {"encoder", static_cast<int>(c.encoder)},
              {"protocol", static_cast<int>(c.protocol)},
              {"python", c.python},
              {"run_token", c.run_token},
              {"api_key_env", c.api_key_env},
              {"revision", c.revision ? json(*c.revision) : json()},
              {"model_dir", c.model_dir ? json(*c.model_dir) : json()},
              {"server_nnsight", c.server_nnsight ? json(*c.server_nnsight) : json()},
              {"num_hidden_layers", c.num_hidden_layers}}
      .dump();
}

std::optional<std::string> optional_string(const json& j) {
  return j.is_null() ? std::nullopt : std::optional<std::string>(j.get<std::string>());
}

RunContext decode_context(const json& j) {
  RunContext c;
  c.base_url = j.at("base_url");
  c.api_key = j.at("api_key");
  c.model = j.at("model");
  c.model_key = j.at("model_key");
  for (const auto& p : j.at("probes")) c.probes.push_back(probe_from_json(p));
  c.dtype = static_cast<DType>(j.at("dtype").get<int>());
  c.hidden = j.at("hidden");
  const auto& r = j.at("retry");
  c.retry = {r[0].get<int>(), r[1].get<double>(), r[2].get<double>()};
  const auto& t = j.at("timeouts");
  c.timeouts = {t[0].get<double>(), t[1].get<double>(), t[2].get<double>(), t[3].get<double>()};
  c.max_inflight = j.at("max_inflight");
  c.output = j.at("output");
  c.batches = j.at("batches");
  c.encoder = static_cast<spec::EncoderKind>(j.at("encoder").get<int>());
  c.protocol = static_cast<spec::Protocol>(j.at("protocol").get<int>());
  c.python = j.at("python");
  c.run_token = j.at("run_token");
  c.api_key_env = j.at("api_key_env");
  c.revision = optional_string(j.at("revision"));
  c.model_dir = optional_string(j.at("model_dir"));
  c.server_nnsight = optional_string(j.at("server_nnsight"));
  c.num_hidden_layers = j.at("num_hidden_layers");
  return c;
}

/// This rank's request encoder: the node's nnsight encoder process, or ndif-sweep's own graph.
std::unique_ptr<remote::RequestEncoder> make_encoder(const RunContext& c) {
  if (c.encoder == spec::EncoderKind::nnsight) {
    return std::make_unique<remote::NnsightEncoder>(
        encoder_options(c.python, c.run_token, c.api_key_env, c.timeouts.request_s),
        remote::EncoderJob{c.model, c.revision, c.model_dir, c.model_key, c.probes, c.dtype});
  }
  return std::make_unique<remote::GraphRequestEncoder>(c.protocol);
}

/// One batch as handed to a worker.
struct Assignment {
  std::int32_t batch = 0;
  std::vector<std::int64_t> rows;
  std::int32_t padded_len = 0;
  std::vector<plan::EncodedPrompt> prompts;
};

json assignment_to_json(const Assignment& a) {
  json prompts = json::array();
  for (const auto& p : a.prompts) prompts.push_back({p.ids, p.positions});
  return json{{"batch", a.batch}, {"rows", a.rows}, {"padded_len", a.padded_len}, {"prompts", prompts}};
}

Assignment assignment_from_json(const json& j) {
  Assignment a;
  a.batch = j.at("batch");
  a.rows = j.at("rows").get<std::vector<std::int64_t>>();
  a.padded_len = j.at("padded_len");
  for (const auto& p : j.at("prompts"))
    a.prompts.push_back({p[0].get<std::vector<std::int32_t>>(), p[1].get<std::vector<std::int32_t>>()});
  return a;
}

/// Statistics of a written batch, reported to rank 0.
struct BatchReport {
  std::int32_t batch = 0;
  std::int64_t rows = 0;
  std::int64_t bytes = 0;
  int attempts = 0;
  double seconds = 0;
};

// ---------------------------------------------------------------------------------------------
// Coordinator: rank 0's view of the whole job.

class Coordinator {
 public:
  Coordinator(const PreparedJob& job, std::deque<std::int32_t> pending, int ranks, ProgressReporter& progress)
      : job_(job), pending_(std::move(pending)), progress_(progress) {
    for (int r = 0; r < ranks; ++r) active_.insert(r);
  }

  /// Up to `slots` pending batches; none once draining or when the queue is empty.
  std::vector<Assignment> take(int slots) {
    std::vector<Assignment> out;
    while (slots-- > 0 && !pending_.empty() && drain_ == DrainRequest::none) {
      const auto b = pending_.front();
      pending_.pop_front();
      const auto& batch = job_.plan.batches[static_cast<size_t>(b)];
      Assignment a{b, batch.rows, batch.padded_len, {}};
      for (auto row : batch.rows) a.prompts.push_back(job_.encoded[static_cast<size_t>(row)]);
      out.push_back(std::move(a));
    }
    return out;
  }

  void done(const BatchReport& r) {
    progress_.batch_done(r.rows, r.bytes);
    rejected_in_a_row_ = 0;
  }
  void failed(std::int32_t batch, const std::string& why) {
    progress_.batch_failed();
    std::cerr << fmt::format("ndif-sweep: batch {} failed after all attempts: {}\n", batch, why);
  }
  /// A batch the service says is wrong in itself: it stops, not retried, and the run ends with 5.
  void invalid(std::int32_t batch, const std::string& why) {
    progress_.batch_failed();
    ++invalid_;
    std::cerr << fmt::format("ndif-sweep: batch {} was rejected by the service and is not retried: {}\n",
                             batch, why);
    // The same request built for other prompts: when batch after batch is rejected with nothing
    // done between, the rest would be rejected too. Stop sending them.
    if (++rejected_in_a_row_ == kRejectedInARowToStop) {
      refused(
          fmt::format("{} batches in a row were rejected as invalid requests (the last: {}); stopping "
                      "before sending the rest",
                      kRejectedInARowToStop, why));
    }
  }
  /// The states of `rank`'s jobs in flight, for the progress line.
  void states(int rank, std::map<std::string, int> counts) {
    in_flight_[rank] = std::move(counts);
    std::map<std::string, int> all;
    for (const auto& [r, per_rank] : in_flight_)
      for (const auto& [state, n] : per_rank) all[state] += n;
    progress_.set_in_flight(std::move(all));
  }
  void refused(const std::string& why) {
    if (!refusal_) refusal_ = why;
    request_drain(DrainRequest::abandon_in_flight);
  }
  void request_drain(DrainRequest d) {
    if (d > drain_) drain_ = d;
  }
  void bye(int rank) { active_.erase(rank); }

  [[nodiscard]] DrainRequest drain() const noexcept { return drain_; }
  [[nodiscard]] bool all_gone() const noexcept { return active_.empty(); }
  [[nodiscard]] const std::set<int>& active() const noexcept { return active_; }
  [[nodiscard]] const std::optional<std::string>& refusal() const noexcept { return refusal_; }
  [[nodiscard]] int invalid_batches() const noexcept { return invalid_; }

 private:
  const PreparedJob& job_;
  static constexpr int kRejectedInARowToStop = 3;
  std::map<int, std::map<std::string, int>> in_flight_;
  int invalid_ = 0;
  int rejected_in_a_row_ = 0;
  std::deque<std::int32_t> pending_;
  ProgressReporter& progress_;
  std::set<int> active_;
  DrainRequest drain_ = DrainRequest::none;
  std::optional<std::string> refusal_;
};

// ---------------------------------------------------------------------------------------------
// Worker: runs batches on one rank.

class Worker {
 public:
  Worker(const RunContext& ctx, store::ParallelOutput& output, remote::RequestEncoder& encoder,
         std::uint64_t seed)
      : ctx_(ctx),
        output_(output),
        transport_(remote::TransportOptions{ctx.base_url, ctx.api_key, ctx.timeouts}),
        encoder_(encoder),
        policy_(ctx.retry, seed) {}

  /// Slots this worker could fill now.
  [[nodiscard]] int free_slots() const noexcept {
    if (no_more_work_ || drain_ != DrainRequest::none) return 0;
    return ctx_.max_inflight - static_cast<int>(work_.size());
  }
  [[nodiscard]] bool finished() const noexcept {
    return work_.empty() && (no_more_work_ || drain_ != DrainRequest::none);
  }

  void accept(std::vector<Assignment> batches) {
    if (batches.empty()) no_more_work_ = true;
    for (auto& a : batches) {
      remote::EncodedRequest request;
      try {
        // Encoded once: a retry sends the same request again.
        request = encoder_.encode(remote::BatchRequest{ctx_.model, ctx_.model_key, a.prompts, a.padded_len,
                                                       ctx_.probes, ctx_.dtype, ctx_.hidden});
      } catch (const Error& e) {
        // The encoder could not build this batch (after restarting it): the batch fails, the run
        // goes on, and a later run can do it.
        encode_failures_.emplace_back(a.batch, fmt::format("encoding the request failed: {}", e.what()));
        continue;
      }
      auto& w = work_[a.batch];
      w.request = std::move(request);
      w.assignment = std::move(a);
      w.first_start = Clock::now();
      submit(w);
    }
  }

  /// How many of this rank's jobs in flight are in each state ("QUEUED", "RUNNING", ...; "RETRY"
  /// for those waiting out a backoff).
  [[nodiscard]] std::map<std::string, int> states() const {
    std::map<std::string, int> counts;
    for (const auto state : transport_.in_flight_states()) ++counts[remote::state_name(state)];
    for (const auto& [b, w] : work_)
      if (w.retry_at) ++counts["RETRY"];
    return counts;
  }

  void drain(DrainRequest d) {
    if (d <= drain_) return;
    drain_ = d;
    if (d == DrainRequest::abandon_in_flight) {
      transport_.cancel_all();
      work_.clear();
    } else {
      // Batches waiting for a retry have no job in flight: give them up now.
      std::erase_if(work_, [](const auto& kv) { return kv.second.retry_at.has_value(); });
    }
  }

  /// Drives the transport for up to `wait`; returns what happened for the coordinator.
  struct Events {
    std::vector<BatchReport> done;
    std::vector<std::pair<std::int32_t, std::string>> failed;
    std::vector<std::pair<std::int32_t, std::string>> invalid;
    std::optional<std::string> refused;
  };
  Events step(std::chrono::milliseconds wait) {
    Events ev;
    ev.failed = std::exchange(encode_failures_, {});
    const auto now = Clock::now();
    for (auto& [b, w] : work_)
      if (w.retry_at && *w.retry_at <= now) submit(w);
    for (auto& f : transport_.run(wait)) handle(f, ev);
    return ev;
  }

 private:
  struct Work {
    Assignment assignment;
    remote::EncodedRequest request;
    int attempts = 0;
    Clock::time_point first_start;
    std::optional<Clock::time_point> retry_at;
  };

  void submit(Work& w) {
    w.retry_at.reset();
    ++w.attempts;
    transport_.submit(remote::JobTicket{w.assignment.batch, w.attempts}, w.request);
  }

  void handle(remote::FinishedJob& f, Events& ev) {
    auto it = work_.find(static_cast<std::int32_t>(f.ticket.batch));
    if (it == work_.end()) return;
    auto& w = it->second;
    std::optional<remote::Verdict> verdict;
    std::string why;
    if (!f.failure) {
      try {
        auto decoded = remote::decode_result(f.result, w.request.expected);
        std::vector<std::span<const std::byte>> parts;
        for (const auto& p : decoded.probes) parts.emplace_back(p.bytes);
        const double seconds = std::chrono::duration<double>(Clock::now() - w.first_start).count();
        output_.write_batch(w.assignment.batch, w.assignment.rows, parts,
                            store::BatchStats{w.attempts, seconds, f.bytes_received, decoded.nonfinite});
        ev.done.push_back({w.assignment.batch, static_cast<std::int64_t>(w.assignment.rows.size()),
                           f.bytes_received, w.attempts, seconds});
        work_.erase(it);
        return;
      } catch (const DecodeError& e) {
        verdict = remote::classify_decode(true);
        why = e.what();
      }
    } else {
      verdict = f.failure->verdict;
      why = f.failure->message;
    }
    if (*verdict == remote::Verdict::refused) {
      ev.refused = fmt::format("batch {}: {}", w.assignment.batch, why);
      work_.erase(it);
      return;
    }
    if (*verdict == remote::Verdict::job_invalid) {
      ev.invalid.emplace_back(w.assignment.batch, why);
      work_.erase(it);
      return;
    }
    if (*verdict == remote::Verdict::retry && policy_.may_retry(w.attempts) && drain_ == DrainRequest::none) {
      const auto delay = policy_.backoff(w.assignment.batch, w.attempts);
      std::cerr << fmt::format("ndif-sweep: batch {} attempt {} failed ({}); retrying in {:.1f} s\n",
                               w.assignment.batch, w.attempts, why,
                               static_cast<double>(delay.count()) / 1000.0);
      w.retry_at = Clock::now() + delay;
      return;
    }
    ev.failed.emplace_back(w.assignment.batch, fmt::format("{} (attempt {})", why, w.attempts));
    work_.erase(it);
  }

  const RunContext& ctx_;
  store::ParallelOutput& output_;
  remote::JobTransport transport_;
  remote::RequestEncoder& encoder_;
  remote::RetryPolicy policy_;
  std::map<std::int32_t, Work> work_;
  std::vector<std::pair<std::int32_t, std::string>> encode_failures_;
  bool no_more_work_ = false;
  DrainRequest drain_ = DrainRequest::none;
};

json report_to_json(const BatchReport& r) {
  return json{{"batch", r.batch},
              {"rows", r.rows},
              {"bytes", r.bytes},
              {"attempts", r.attempts},
              {"seconds", r.seconds}};
}
BatchReport report_from_json(const json& j) {
  return BatchReport{j.at("batch"), j.at("rows"), j.at("bytes"), j.at("attempts"), j.at("seconds")};
}

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

/// What rank 0 learns and starts before the parallel phase.
struct RootSetup {
  PreparedJob job;
  RunContext ctx;
  std::unique_ptr<LocalServerProcess> local;
  /// Rank 0's nnsight encoder, started and checked during validation; the run keeps it.
  std::unique_ptr<remote::NnsightEncoder> encoder;
  std::size_t run_index = 0;
  bool resumed = false;
};

/// Phase 1 on rank 0, before any lock or file exists: validate everything, ask the service about
/// the model and the key, start and check the nnsight encoder (versions, probes, the tokenizer
/// canary), and check an existing output file read-only, so that bad input, a refusal or another
/// job's file leaves the disk exactly as it was and no job is sent.
std::unique_ptr<RootSetup> validate_on_root(const RunOptions& options) {
  auto setup = std::make_unique<RootSetup>();
  auto& c = setup->ctx;
  auto spec = load_job_spec(options.job_file, options.overrides);
  c.api_key = env_or_empty(spec.api_key_env.c_str());
  if (spec.endpoint != "local" && c.api_key.empty())
    throw InputError(
        fmt::format("{}: the environment variable {} (api_key_env) is not set; export your NDIF API key "
                    "in it (the key never goes into the job file)",
                    spec.job_file.string(), spec.api_key_env));
  std::optional<ServiceFacts> facts;
  if (spec.endpoint != "local") {
    facts = query_service(spec, c.api_key);
    if (spec.model_key && !facts->deployment.repo_id.empty() && facts->deployment.repo_id != spec.model &&
        facts->deployment.repo_id != "*") {
      std::cerr << fmt::format(
          "ndif-sweep: warning: the job's \"model_key\" names a deployment of \"{}\", not of \"model\" "
          "\"{}\"; "
          "its requests are built from {}'s files\n",
          facts->deployment.repo_id, spec.model, spec.model);
    }
  }

  auto& job = setup->job;
  job = prepare_job(std::move(spec), [&](const spec::JobSpec& s) { return deployment_shape(s, *facts); });
  const auto& final_spec = job.spec;
  // The bundled server accepts any non-empty key.
  if (c.api_key.empty()) c.api_key = "ndif-local";
  c.model = final_spec.model;
  c.model_key = facts ? facts->model_key : remote::model_key(final_spec.model);
  if (c.model_key.empty()) c.model_key = remote::model_key(final_spec.model);
  c.encoder = final_spec.encoder;
  c.protocol = final_spec.protocol;
  c.api_key_env = final_spec.api_key_env;
  c.revision = final_spec.revision;

  if (facts && final_spec.protocol == spec::Protocol::g4)
    static_cast<void>(require_api_key(final_spec, final_spec.endpoint, c.api_key, c.model_key));
  if (final_spec.encoder == spec::EncoderKind::nnsight) {
    c.run_token = make_run_token(job.job_hash);
    const auto job_for_encoder = encoder_job(final_spec, c.model_key);
    c.python = encoder_python(final_spec);
    c.model_dir = job_for_encoder.model_dir;
    setup->encoder =
        std::make_unique<remote::NnsightEncoder>(encoder_options(final_spec, c.run_token), job_for_encoder);
    const auto hello = setup->encoder->hello();
    if (facts && facts->env) {
      check_nnsight_versions(hello, *facts->env, final_spec.endpoint);
      c.server_nnsight = facts->env->nnsight_version;
    }
    check_encoder_model(setup->encoder->open(), job);
    const auto checked = run_tokenizer_canary(job, *setup->encoder);
    std::cerr << fmt::format(
        "ndif-sweep: encoder: nnsight {} with {} ({}the server's); tokenizer canary: {} prompts tokenize "
        "identically\n",
        hello.nnsight_version, hello.executable, c.server_nnsight ? "matches " : "no version from ", checked);
  }
  setup->resumed = store::check_existing(final_spec.output, job.job_hash) == store::Existing::same_job;

  c.probes = final_spec.probes;
  c.dtype = final_spec.dtype;
  c.hidden = job.model_config.hidden_size;
  c.num_hidden_layers = job.model_config.num_hidden_layers;
  c.retry = final_spec.retry;
  c.timeouts = final_spec.timeouts;
  c.max_inflight = final_spec.max_inflight;
  c.output = final_spec.output.string();
  c.batches = static_cast<std::int64_t>(job.plan.batches.size());
  c.base_url = final_spec.endpoint;
  return setup;
}

/// Every rank's encoder made ready before anything is written: on each node the first rank to
/// need it starts that node's encoder, and every rank checks its nnsight against the server's and
/// opens the job. Rank 0's was checked in validate_on_root.
void prepare_encoder(remote::RequestEncoder& encoder, const RunContext& c) {
  auto* nnsight = dynamic_cast<remote::NnsightEncoder*>(&encoder);
  if (nnsight == nullptr) return;
  const auto hello = nnsight->hello();
  if (c.server_nnsight) check_nnsight_versions(hello, remote::ServerEnv{"", c.server_nnsight}, c.base_url);
  const auto& model = nnsight->model();
  if (model.hidden_size != c.hidden ||
      (model.num_hidden_layers != 0 && model.num_hidden_layers != c.num_hidden_layers))
    throw InputError(fmt::format(
        "this node's encoder reads {} as hidden {} with {} layers, rank 0's as hidden {} with {}; "
        "every node must see the same model files",
        c.model, model.hidden_size, model.num_hidden_layers, c.hidden, c.num_hidden_layers));
}

/// Runs `step` on every rank; when it fails anywhere, the lowest failing rank prints why and every
/// rank returns the largest exit code (0 when it worked everywhere). Collective.
template <typename Step>
int all_ranks_step(const Communicator& comm, Step&& step) {
  int code = 0;
  std::string message;
  try {
    step();
  } catch (const Error& e) {
    code = static_cast<int>(e.exit_code());
    message = e.what();
  } catch (const std::exception& e) {
    code = 1;
    message = std::string("internal error: ") + e.what();
  }
  const int worst = comm.max_all(code);
  if (worst == 0) return 0;
  const int first = comm.min_all(code != 0 ? comm.rank() : INT_MAX);
  if (comm.rank() == first) {
    std::cerr << "ndif-sweep: error" << (comm.size() > 1 ? fmt::format(" on rank {}", first) : std::string())
              << ": " << message << '\n';
  }
  return worst;
}

store::FileLayout file_layout(const PreparedJob& job, const std::string& model_key) {
  const auto& spec = job.spec;
  store::FileLayout layout;
  layout.job_json = spec.canonical_json().dump();
  layout.job_hash = job.job_hash;
  layout.model = spec.model;
  layout.model_key = model_key;
  layout.tokenizer_sha256 = job.tokenizer_sha256;
  layout.tool_version = kToolVersion;
  for (std::size_t i = 0; i < job.prompts.size(); ++i) {
    layout.text.push_back(job.prompts[i].text);
    layout.id.push_back(job.prompts[i].id);
    layout.meta.push_back(job.prompts[i].meta_json);
    layout.n_tokens.push_back(job.n_tokens[i]);
    layout.positions.insert(layout.positions.end(), job.encoded[i].positions.begin(),
                            job.encoded[i].positions.end());
  }
  layout.positions_per_row = static_cast<std::size_t>(job.shape.positions);
  layout.batch_of_row = job.plan.batch_of_row;
  layout.order = job.plan.order;
  layout.batch_start = job.plan.start;
  layout.batch_count = job.plan.count;
  for (const auto& p : spec.probes)
    layout.probes.push_back({p.name, p.module, p.output_index, p.layers, p.layers_text});
  layout.hidden = static_cast<std::size_t>(job.model_config.hidden_size);
  layout.dtype = spec.dtype;
  return layout;
}

/// Phase 2 on rank 0, holding the lock: create the file (or re-check it: another run may have made
/// it between phase 1 and the lock), start the bundled server, and record this run.
void start_on_root(RootSetup& setup, int ranks) {
  const auto& spec = setup.job.spec;
  setup.resumed = store::check_existing(spec.output, setup.job.job_hash) == store::Existing::same_job;
  if (!setup.resumed) store::create_output_file(spec.output, file_layout(setup.job, setup.ctx.model_key));

  if (spec.endpoint == "local") {
    setup.local = std::make_unique<LocalServerProcess>(LocalServerProcess::default_binary(), spec.local);
    setup.ctx.base_url = setup.local->base_url();
  }

  store::RunRecord record;
  record.time_utc = store::utc_now_iso8601();
  record.ranks = ranks;
  record.host = host_name();
  record.slurm_job_id = env_or_empty("SLURM_JOB_ID");
  const auto restarts = env_or_empty("SLURM_RESTART_COUNT");
  record.slurm_restart_count = restarts.empty() ? 0 : std::atoll(restarts.c_str());
  record.tool_version = kToolVersion;
  setup.run_index = store::append_run_record(spec.output, record);
}

/// Runs `step` on rank 0 and broadcasts whether it worked, so that every rank leaves together with
/// rank 0's exit code instead of waiting in a collective call. Returns the exit code, 0 on success.
template <typename Step>
int root_step(const Communicator& comm, Step&& step) {
  int code = 0;
  if (comm.rank() == 0) {
    try {
      step();
    } catch (const Error& e) {
      code = static_cast<int>(e.exit_code());
      (void)comm.broadcast(std::to_string(code));
      throw;
    } catch (...) {
      (void)comm.broadcast("1");
      throw;
    }
  }
  return std::stoi(comm.broadcast(std::to_string(code)));
}

/// Ends every rank after an error on this one, so no rank waits forever in the collective close.
[[noreturn]] void abort_all(const Communicator& comm, const char* what, int code) {
  std::cerr << fmt::format(
                   "ndif-sweep: error on rank {}: {}; stopping every rank (finished batches are kept, "
                   "run the same command again to resume)\n",
                   comm.rank(), what)
            << std::flush;
  comm.abort(code == 0 ? 1 : code);
}

}  // namespace

int run_sweep(const RunOptions& options) {
  install_drain_handlers();
  const Communicator comm;
  const bool root = comm.rank() == 0;

  std::unique_ptr<RootSetup> setup;
  if (int code = root_step(comm, [&] { setup = validate_on_root(options); })) return code;
  RunContext ctx =
      decode_context(json::parse(comm.broadcast(root ? encode_context(setup->ctx) : std::string())));
  std::unique_ptr<remote::RequestEncoder> encoder;
  if (int code = all_ranks_step(comm, [&] {
        if (root && setup->encoder) {
          encoder = std::move(setup->encoder);
        } else {
          encoder = make_encoder(ctx);
        }
        prepare_encoder(*encoder, ctx);
      }))
    return code;
  auto lock = store::OutputLock::acquire(ctx.output, comm.handle());
  if (int code = root_step(comm, [&] { start_on_root(*setup, comm.size()); })) return code;
  ctx.base_url = comm.broadcast(root ? setup->ctx.base_url : std::string());

  auto output = store::ParallelOutput::open(ctx.output, comm.handle());

  std::optional<ProgressReporter> progress;
  std::optional<Coordinator> coordinator;
  DrainRequest local_drain = DrainRequest::none;
  // From here on every rank runs independently until the collective close. An error on one rank
  // (a failed write, a broken message) must not leave the others waiting in that close: report it
  // and end the whole job. Flagged batches stay valid; the run resumes from them.
  try {
    if (root) {
      const auto flags = output.read_done_flags();
      std::deque<std::int32_t> pending;
      std::int64_t done_batches = 0, done_rows = 0;
      for (std::size_t b = 0; b < flags.size(); ++b) {
        if (flags[b]) {
          ++done_batches;
          done_rows += static_cast<std::int64_t>(setup->job.plan.batches[b].rows.size());
        } else {
          pending.push_back(static_cast<std::int32_t>(b));
        }
      }
      progress.emplace(options.progress, std::cerr, ctx.batches,
                       static_cast<std::int64_t>(setup->job.prompts.size()), done_batches, done_rows,
                       Clock::now());
      if (setup->resumed)
        std::cerr << fmt::format(
            "ndif-sweep: resuming {}: {} of {} batches already done, {} to go, {} rank(s)\n", ctx.output,
            done_batches, ctx.batches, pending.size(), comm.size());
      else
        std::cerr << fmt::format("ndif-sweep: {} prompts in {} batches -> {} ({} rank(s), endpoint {})\n",
                                 setup->job.prompts.size(), ctx.batches, ctx.output, comm.size(),
                                 setup->job.spec.endpoint);
      coordinator.emplace(setup->job, std::move(pending), comm.size(), *progress);
    }

    Worker worker(ctx, output, *encoder, static_cast<std::uint64_t>(comm.rank()));
    bool awaiting_assignment = false, said_bye = false;
    std::map<std::string, int> reported_states;
    Clock::time_point states_sent{};

    while (true) {
      // Signals: rank 0 decides for everyone; other ranks pass theirs on.
      const auto sig = drain_requested();
      if (sig > local_drain) {
        local_drain = sig;
        if (root) {
          std::cerr << fmt::format("ndif-sweep: {} received: draining ({})\n", last_signal_name(),
                                   sig == DrainRequest::abandon_in_flight ? "abandoning batches in flight"
                                                                          : "finishing batches in flight");
          coordinator->request_drain(sig);
        } else {
          comm.send(0, Tag::drain, json{{"abandon", sig == DrainRequest::abandon_in_flight}}.dump());
        }
        worker.drain(sig);
      }

      // Messages.
      while (auto m = comm.try_receive()) {
        const auto body = m->payload.empty() ? json() : json::parse(m->payload);
        switch (m->tag) {
          case Tag::request_work: {
            json list = json::array();
            for (const auto& a : coordinator->take(body.at("slots").get<int>()))
              list.push_back(assignment_to_json(a));
            comm.send(m->source, Tag::assign, json{{"batches", list}}.dump());
            break;
          }
          case Tag::assign: {
            std::vector<Assignment> batches;
            for (const auto& a : body.at("batches")) batches.push_back(assignment_from_json(a));
            worker.accept(std::move(batches));
            awaiting_assignment = false;
            break;
          }
          case Tag::batch_done:
            coordinator->done(report_from_json(body));
            break;
          case Tag::batch_failed:
            if (body.value("invalid", false))
              coordinator->invalid(body.at("batch"), body.at("error"));
            else
              coordinator->failed(body.at("batch"), body.at("error"));
            break;
          case Tag::refused:
            coordinator->refused(body.at("error"));
            break;
          case Tag::drain:
            if (root)
              coordinator->request_drain(body.at("abandon").get<bool>() ? DrainRequest::abandon_in_flight
                                                                        : DrainRequest::finish_in_flight);
            else
              worker.drain(body.at("abandon").get<bool>() ? DrainRequest::abandon_in_flight
                                                          : DrainRequest::finish_in_flight);
            break;
          case Tag::bye:
            coordinator->bye(m->source);
            break;
          case Tag::states:
            coordinator->states(m->source, body.get<std::map<std::string, int>>());
            break;
        }
      }

      // Rank 0 tells every rank about a drain decided here (signal, refusal).
      if (root && coordinator->drain() > local_drain) {
        local_drain = coordinator->drain();
        const auto payload = json{{"abandon", local_drain == DrainRequest::abandon_in_flight}}.dump();
        for (int r : coordinator->active())
          if (r != 0) comm.send(r, Tag::drain, payload);
        worker.drain(local_drain);
      }

      // Ask for work.
      if (const int slots = worker.free_slots(); slots > 0 && !awaiting_assignment) {
        if (root) {
          worker.accept(coordinator->take(slots));
        } else {
          comm.send(0, Tag::request_work, json{{"slots", slots}}.dump());
          awaiting_assignment = true;
        }
      }

      // Run batches.
      auto ev = worker.step(std::chrono::milliseconds(20));
      for (const auto& d : ev.done) {
        if (root)
          coordinator->done(d);
        else
          comm.send(0, Tag::batch_done, report_to_json(d).dump());
      }
      for (const auto& [b, why] : ev.failed) {
        if (root)
          coordinator->failed(b, why);
        else
          comm.send(0, Tag::batch_failed, json{{"batch", b}, {"error", why}}.dump());
      }
      for (const auto& [b, why] : ev.invalid) {
        if (root)
          coordinator->invalid(b, why);
        else
          comm.send(0, Tag::batch_failed, json{{"batch", b}, {"error", why}, {"invalid", true}}.dump());
      }
      if (ev.refused) {
        if (root)
          coordinator->refused(*ev.refused);
        else
          comm.send(0, Tag::refused, json{{"error", *ev.refused}}.dump());
      }
      // Queue states of the jobs in flight, for rank 0's progress line: sent when they change, at
      // most once a second.
      if (auto states = worker.states();
          states != reported_states && Clock::now() - states_sent > std::chrono::seconds(1)) {
        reported_states = states;
        states_sent = Clock::now();
        if (root)
          coordinator->states(0, std::move(states));
        else
          comm.send(0, Tag::states, json(states).dump());
      }

      if (root) progress->tick(Clock::now());

      if (worker.finished() && !awaiting_assignment && !said_bye) {
        said_bye = true;
        if (root)
          coordinator->bye(0);
        else
          comm.send(0, Tag::bye, "");
      }
      if (said_bye && (!root || coordinator->all_gone())) break;
    }

    output.close();
  } catch (const Error& e) {
    abort_all(comm, e.what(), static_cast<int>(e.exit_code()));
  } catch (const std::exception& e) {
    abort_all(comm, e.what(), 1);
  }

  int code = 0;
  if (root) {
    const auto flags_done = progress->done_batches();
    std::string outcome;
    if (coordinator->refusal() || coordinator->invalid_batches() > 0) {
      outcome = flags_done == ctx.batches ? "complete" : "failed";
      code = flags_done == ctx.batches ? 0 : static_cast<int>(ExitCode::refused);
    } else if (flags_done == ctx.batches) {
      outcome = "complete";
    } else if (local_drain != DrainRequest::none) {
      outcome = "drained";
      code = static_cast<int>(ExitCode::incomplete);
    } else {
      outcome = "incomplete";
      code = static_cast<int>(ExitCode::incomplete);
    }
    store::set_run_outcome(ctx.output, setup->run_index, outcome);
    progress->finish(Clock::now(), outcome);
    if (coordinator->refusal())
      std::cerr << "ndif-sweep: error: the service refused the request: " << *coordinator->refusal() << '\n';
    if (code == 0)
      std::cout << "output: " << ctx.output << '\n';
    else
      std::cout << fmt::format(
          "output: {} (incomplete: {} of {} batches done; run the same command again to resume)\n",
          ctx.output, flags_done, ctx.batches);
  }
  code = comm.max_all(code);
  return code;
}

}  // namespace ndif::run
