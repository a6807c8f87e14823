// The orchestration loop of `ndif-sweep run`: the only place that ties spec, plan, request,
// transport and store together.
//
// Every rank is a worker with `max_inflight` NDIF jobs in flight; rank 0 is also the coordinator.
// Rank 0 opens the job (spec, service, prompts index) and broadcasts the index; every rank measures
// a part of the prompts (lengths and positions, never ids kept) and rank 0 merges the parts, plans,
// creates or checks the output file and hands out pending batches as ranks ask for them. An
// assignment carries rows only: each rank reads and tokenizes its batches' prompts again through
// the index. The rank that wrote a batch sets its flag right after the data write returns, so a
// crash of any rank, rank 0 included, loses no finished batch.
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
#include <sstream>
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
#include "ndif_sweep/run/coordinator.hpp"
#include "ndif_sweep/run/file_creation.hpp"
#include "ndif_sweep/run/local_server.hpp"
#include "ndif_sweep/run/mpi_link.hpp"
#include "ndif_sweep/run/planning.hpp"
#include "ndif_sweep/run/service.hpp"
#include "ndif_sweep/run/signals.hpp"
#include "ndif_sweep/run/worker.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/output_lock.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "ndif_sweep/store/readers.hpp"

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

/// What every rank needs to measure its part of the prompts and tokenize its batches; rank 0
/// broadcasts it once the job is open, with its index of the prompts file.
struct PlanningContext {
  bool plan_from_file = false;         ///< a restart: the plan is the output file's, nothing is measured
  std::string tokenizer_sha256;        ///< what the other ranks check their own tokenizer file against
  std::int64_t positions_per_row = 0;  ///< P of every prompt
  PromptSource source;                 ///< rank 0's prompts file, tokenizer and positions

  /// Rank 0's. It may throw (a path that cannot be made absolute), so it runs in a root step.
  [[nodiscard]] static PlanningContext of(const PreparedJob& job) {
    return PlanningContext{job.plan_from_file, job.tokenizer_sha256, job.shape.positions,
                           PromptSource::of(job.spec)};
  }
  [[nodiscard]] std::string encode() const {
    return json{{"plan_from_file", plan_from_file},
                {"tokenizer_sha256", tokenizer_sha256},
                {"positions_per_row", positions_per_row},
                {"source", source.encode()}}
        .dump();
  }
  [[nodiscard]] static PlanningContext decode(const std::string& bytes) {
    const auto j = json::parse(bytes);
    return PlanningContext{j.at("plan_from_file"), j.at("tokenizer_sha256"), j.at("positions_per_row"),
                           PromptSource::decode(j.at("source"))};
  }
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
  std::optional<ServiceFacts> facts;
  std::size_t run_index = 0;
  bool resumed = false;
};

/// Phase 1 on rank 0, before any lock or file exists, in two steps around the measuring of the
/// prompts by every rank: validate everything, ask the service about the model and the key, start
/// and check the nnsight encoder (versions, probes, the tokenizer canary), and check an existing
/// output file read-only, so that bad input, a refusal or another job's file leaves the disk
/// exactly as it was and no job is sent. The first step opens the job: spec, service, prompts
/// index, tokenizer, and the stored plan of a restart.
std::unique_ptr<RootSetup> open_on_root(const RunOptions& options) {
  auto setup = std::make_unique<RootSetup>();
  auto& c = setup->ctx;
  auto spec = load_job_spec(options.job_file, options.overrides);
  c.api_key = env_or_empty(spec.api_key_env.c_str());
  if (spec.endpoint != "local" && c.api_key.empty())
    throw InputError(
        fmt::format("{}: the environment variable {} (api_key_env) is not set; export your NDIF API key "
                    "in it (the key never goes into the job file)",
                    spec.job_file.string(), spec.api_key_env));
  auto& facts = setup->facts;
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

  setup->job = open_job(
      std::move(spec), [&](const spec::JobSpec& s) { return deployment_shape(s, *facts); },
      [](const PreparedJob& j) -> std::optional<store::StoredPlan> {
        // Another job's file (or a damaged one) is refused below, once the prompts were checked:
        // broken input is exit 2 whatever file the output path holds.
        try {
          if (store::check_existing(j.spec.output, j.job_hash) != store::Existing::same_job)
            return std::nullopt;
        } catch (const SpecMismatch&) {
          return std::nullopt;
        }
        return store::read_plan(j.spec.output);
      });
  return setup;
}

/// The second step, once the prompts are measured and planned.
void finish_on_root(RootSetup& setup) {
  auto& c = setup.ctx;
  auto& job = setup.job;
  const auto& facts = setup.facts;
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
    setup.encoder =
        std::make_unique<remote::NnsightEncoder>(encoder_options(final_spec, c.run_token), job_for_encoder);
    const auto hello = setup.encoder->hello();
    if (facts && facts->env) {
      check_nnsight_versions(hello, *facts->env, final_spec.endpoint);
      c.server_nnsight = facts->env->nnsight_version;
    }
    check_encoder_model(setup.encoder->open(), job);
    const auto checked = run_tokenizer_canary(job, *setup.encoder);
    std::cerr << fmt::format(
        "ndif-sweep: encoder: nnsight {} with {} ({}the server's); tokenizer canary: {} prompts tokenize "
        "identically\n",
        hello.nnsight_version, hello.executable, c.server_nnsight ? "matches " : "no version from ", checked);
  }
  setup.resumed = job.plan_from_file ||
                  store::check_existing(final_spec.output, job.job_hash) == store::Existing::same_job;

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
  } catch (...) {
    auto report = report_of(std::current_exception());
    code = static_cast<int>(report.code);
    message = std::move(report.message);
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

/// The file's layout. Its strings and positions come from every rank (file_creation.hpp): the
/// strings, read again from the prompts file by the rank that measured them, through
/// create_with_every_rank; the positions, which stayed with that rank, through write_positions.
store::FileLayout file_layout(const PreparedJob& job, const std::string& model_key) {
  const auto& spec = job.spec;
  store::FileLayout layout;
  layout.job_json = spec.canonical_json().dump();
  layout.job_hash = job.job_hash;
  layout.model = spec.model;
  layout.model_key = model_key;
  layout.tokenizer_sha256 = job.tokenizer_sha256;
  layout.tool_version = kToolVersion;
  layout.n_tokens = job.shapes.n_tokens;
  layout.positions_from_ranks = true;
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

/// Phase 1's end on rank 0, holding the lock: whether the file must be created (another run may
/// have made it between the start and the lock; a restart's file may have gone meanwhile).
bool file_to_create_on_root(RootSetup& setup) {
  const auto& spec = setup.job.spec;
  setup.resumed = store::check_existing(spec.output, setup.job.job_hash) == store::Existing::same_job;
  if (!setup.resumed && setup.job.plan_from_file)
    throw StorageError(fmt::format("{} was removed while this run started; run the same command again",
                                   spec.output.string()));
  return !setup.resumed;
}

/// Phase 2 on rank 0, the file in place: start the bundled server, and record this run.
void start_on_root(RootSetup& setup, int ranks) {
  const auto& spec = setup.job.spec;
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

/// Collective: creates the output file with every rank (file_creation.hpp): rank 0 writes it and
/// the strings every rank reads of its part, every rank writes its part's positions, rank 0
/// publishes it. Returns 0, or the exit code every rank leaves with (the failing rank says why);
/// an unpublished file is removed on failure.
int create_output_with_every_rank(const Communicator& comm, RootSetup* setup, const BatchTokenizer& prompts,
                                  unsigned cores, const std::filesystem::path& output,
                                  const MeasuredPart& part) {
  const bool root = comm.rank() == 0;
  std::filesystem::path temporary;
  if (int code = all_ranks_step(comm, [&] {
        temporary = create_with_every_rank(comm, prompts, cores, output,
                                           [&] { return file_layout(setup->job, setup->ctx.model_key); });
      }))
    return code;
  temporary = comm.broadcast(temporary.string());
  int code = all_ranks_step(
      comm, [&] { store::write_positions(temporary, comm.handle(), part.first, part.positions); });
  if (code == 0) {
    code = root_step(comm, [&] {
      try {
        store::publish(temporary, output);
      } catch (...) {
        store::discard_unpublished(temporary);
        throw;
      }
    });
  } else if (root) {
    store::discard_unpublished(temporary);
  }
  return code;
}

/// Ends every rank after an error on this one, so no rank waits forever in the collective close.
[[noreturn]] void abort_all(const Communicator& comm, const char* what, int code) {
  comm.abort(code == 0 ? 1 : code, what,
             "stopping every rank (finished batches are kept, run the same command again to resume)");
}

/// The test hook of docs/design.md (the run loop): NDIF_SWEEP_TEST_FAIL="phase:rank" makes
/// that rank fail as it enters `phase` (start, run, finalize, outcome), so that tests can show
/// every rank ends, with the documented exit code, whatever fails where.
void injected_failure(const char* phase, int rank) {
  const char* spec = std::getenv("NDIF_SWEEP_TEST_FAIL");
  if (spec == nullptr || fmt::format("{}:{}", phase, rank) != spec) return;
  throw StorageError(fmt::format("injected test failure (NDIF_SWEEP_TEST_FAIL={})", spec));
}

/// Where a rank's batches go: its handle on the shared file (independent writes).
class FileSink final : public BatchSink {
 public:
  explicit FileSink(store::ParallelOutput& output) : output_(output) {}
  void journal(std::int32_t batch, const store::JournalEntry& entry) override {
    output_.journal(batch, entry);
  }
  void write(const Assignment& batch, const std::vector<std::span<const std::byte>>& parts,
             const store::BatchStats& stats) override {
    output_.write_batch(batch.batch, batch.rows, parts, stats);
  }

 private:
  store::ParallelOutput& output_;
};

WorkerSettings worker_settings(const RunContext& c, BatchTokenizer prompts, unsigned cores) {
  WorkerSettings s;
  s.prompts_of = [prompts = std::move(prompts)](const std::vector<std::int64_t>& rows) {
    return prompts.encode(rows);
  };
  s.model = c.model;
  s.model_key = c.model_key;
  s.probes = c.probes;
  s.dtype = c.dtype;
  s.hidden = c.hidden;
  s.max_inflight = c.max_inflight;
  s.retry = c.retry;
  s.decode_threads = cores;
  // The benchmark hook of docs/design.md (the run loop): the one-batch-at-a-time baseline.
  s.overlap_downloads = env_or_empty("NDIF_SWEEP_BENCH_SERIAL") != "1";
  return s;
}

/// Rank 0's half of the loop: the pending batches (journaled ones first, so a restart polls them
/// before it sends anything new) and the coordinator that hands them out.
struct RootLoop {
  std::vector<store::JournalEntry> journal;
  /// What the coordinator and rank 0's worker log, printed through the progress reporter so that
  /// a message never tears the bar.
  std::ostringstream log;
  std::optional<ProgressReporter> progress;
  std::optional<Coordinator> coordinator;
};

void start_root_loop(RootLoop& loop, const RootSetup& setup, const RunContext& ctx,
                     const store::ParallelOutput& output, const RunOptions& options, int ranks) {
  const auto& job = setup.job;
  const auto flags = output.read_done_flags();
  // The bundled server starts afresh with every run: the jobs an earlier run journaled died with it.
  if (job.spec.endpoint != "local") loop.journal = output.read_journal();
  std::deque<std::int32_t> journaled, fresh;
  std::int64_t done_batches = 0, done_rows = 0;
  for (std::size_t b = 0; b < flags.size(); ++b) {
    if (flags[b]) {
      ++done_batches;
      done_rows += static_cast<std::int64_t>(job.plan.batches[b].rows.size());
    } else if (b < loop.journal.size() && !loop.journal[b].empty()) {
      journaled.push_back(static_cast<std::int32_t>(b));
    } else {
      fresh.push_back(static_cast<std::int32_t>(b));
    }
  }
  const auto to_go = journaled.size() + fresh.size();
  loop.progress.emplace(options.progress, std::cerr, ctx.batches,
                        static_cast<std::int64_t>(job.shapes.n_tokens.size()), done_batches, done_rows,
                        Clock::now(), find_terminal());
  if (setup.resumed) {
    std::cerr << fmt::format("ndif-sweep: resuming {}: {} of {} batches already done, {} to go, {} rank(s)\n",
                             ctx.output, done_batches, ctx.batches, to_go, ranks);
    if (!journaled.empty())
      std::cerr << fmt::format(
          "ndif-sweep: {} NDIF job(s) of an earlier run are in the journal: polling them before sending "
          "anything new\n",
          journaled.size());
  } else {
    std::cerr << fmt::format("ndif-sweep: {} prompts in {} batches -> {} ({} rank(s), endpoint {})\n",
                             job.shapes.n_tokens.size(), ctx.batches, ctx.output, ranks, job.spec.endpoint);
  }
  std::deque<std::int32_t> pending = std::move(journaled);
  pending.insert(pending.end(), fresh.begin(), fresh.end());
  auto assignment_of = [&job, &loop](std::int32_t b) {
    const auto& batch = job.plan.batches[static_cast<std::size_t>(b)];
    // Rows only: the worker reads and tokenizes them again, so no rank holds the token ids of
    // prompts it does not send.
    Assignment a{b, batch.rows, batch.padded_len, std::nullopt};
    if (static_cast<std::size_t>(b) < loop.journal.size() &&
        !loop.journal[static_cast<std::size_t>(b)].empty())
      a.journaled = loop.journal[static_cast<std::size_t>(b)];
    return a;
  };
  loop.coordinator.emplace(std::move(pending), ranks, std::move(assignment_of), *loop.progress, loop.log);
}

/// Waits, without spinning, until every message this rank sent has been taken or `patience` has
/// passed (a rank that died cannot take one; small messages leave at once anyway).
void flush(Link& link, std::chrono::milliseconds patience = std::chrono::seconds(10)) {
  const auto until = Clock::now() + patience;
  while (!link.flushed() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

/// How long a rank waits on NDIF in one turn before it looks at its messages again. MPI offers
/// nothing to block on beside curl's sockets, so a rank looks at its messages between waits: 1 ms
/// right after messages moved (a reply is usually on its way: hand-out, idle, finish, outcome),
/// doubling to 50 ms while nothing moves. A rank whose jobs all wait in a queue then wakes 20 times
/// a second (bench/loop_bench.py: under 1% of a core), and an exchange of messages costs a few
/// milliseconds instead of 50 per hop.
class TurnPacer {
 public:
  static constexpr std::chrono::milliseconds kShortest{1};
  static constexpr std::chrono::milliseconds kLongest{50};

  /// The wait of the next turn, given how many messages this rank has sent and received so far
  /// (MpiLink::moved).
  std::chrono::milliseconds next(std::uint64_t moved) noexcept {
    if (moved != moved_) {
      moved_ = moved;
      wait_ = kShortest;
    } else {
      wait_ = std::min(kLongest, wait_ * 2);
    }
    return wait_;
  }

 private:
  std::uint64_t moved_ = 0;
  std::chrono::milliseconds wait_ = kShortest;
};

/// The benchmark hook of docs/design.md (phase times): with NDIF_SWEEP_PHASE_TIMES=1, rank 0 prints
/// how long each step of the start took, once the file is in place, so that a benchmark reads the
/// time of one step instead of subtracting two noisy wall times.
class PhaseTimes {
 public:
  explicit PhaseTimes(bool root) : on_(root && env_or_empty("NDIF_SWEEP_PHASE_TIMES") == "1") {}
  /// Ends the step `name` now.
  void mark(const char* name) {
    if (!on_) return;
    const auto now = Clock::now();
    text_ += fmt::format("{}{} {:.3f} s", text_.empty() ? "" : ", ", name,
                         std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }
  void print() const {
    if (on_) std::cerr << "ndif-sweep: phase times: " << text_ << '\n';
  }

 private:
  bool on_;
  Clock::time_point last_ = Clock::now();
  std::string text_;
};

}  // namespace

int run_sweep(const RunOptions& options) {
  install_drain_handlers();
  const Communicator comm;
  const int rank = comm.rank();
  const bool root = rank == 0;
  PhaseTimes times(root);

  // Start. Everything that can be wrong with the input is found before any lock or file exists
  // (exit 2, 4 or 5 with the disk as it was): rank 0 opens the job, every rank measures a part of
  // the prompts, rank 0 plans and checks the rest; then every rank readies its encoder.
  std::unique_ptr<RootSetup> setup;
  std::string planning_bytes;
  if (int code = root_step(comm, [&] {
        setup = open_on_root(options);
        planning_bytes = PlanningContext::of(setup->job).encode();
      }))
    return code;
  const auto planning = PlanningContext::decode(comm.broadcast(planning_bytes));
  // Every rank reads the prompts file through rank 0's index of it (16 bytes a prompt) instead of
  // indexing the whole file again: to measure its part, and to tokenize the batches it sends.
  std::string prompts_index;
  if (comm.size() > 1) {
    if (root) prompts_index = setup->job.prompts_file->index_bytes();
    comm.broadcast_in_place(prompts_index);
  }
  BatchTokenizer batch_prompts;
  if (int code = all_ranks_step(comm, [&] {
        batch_prompts =
            root ? BatchTokenizer::of(setup->job)
                 : BatchTokenizer::for_rank(planning.source, prompts_index, planning.tokenizer_sha256,
                                            static_cast<std::size_t>(planning.positions_per_row));
      }))
    return code;
  std::string().swap(prompts_index);
  // The cores this rank keeps busy, planning and then decoding its results (collective).
  const unsigned cores = core_share(comm);
  times.mark("open");
  // A restart takes its file's plan and measures nothing. Otherwise each rank keeps the positions of
  // its part for the file, and rank 0 the lengths of every prompt for the plan.
  Measurement measured;
  if (!planning.plan_from_file) measured = measure_prompts_in_parts(comm, batch_prompts, cores);
  times.mark("measure");
  if (int code = root_step(comm, [&] {
        if (measured.merged) plan_job(setup->job, std::move(*measured.merged).shapes(batch_prompts));
        measured.merged.reset();
        finish_on_root(*setup);
      }))
    return code;
  times.mark("plan");
  RunContext ctx =
      decode_context(json::parse(comm.broadcast(root ? encode_context(setup->ctx) : std::string())));
  std::unique_ptr<remote::RequestEncoder> encoder;
  if (int code = all_ranks_step(comm, [&] {
        injected_failure("start", rank);
        if (root && setup->encoder) {
          encoder = std::move(setup->encoder);
        } else {
          encoder = make_encoder(ctx);
        }
        prepare_encoder(*encoder, ctx);
      }))
    return code;
  auto lock = store::OutputLock::acquire(ctx.output, comm.handle());
  bool create = false;
  if (int code = root_step(comm, [&] { create = file_to_create_on_root(*setup); })) return code;
  times.mark("encoders and lock");
  if (comm.broadcast(root && create ? "1" : "0") == "1") {
    if (int code =
            create_output_with_every_rank(comm, setup.get(), batch_prompts, cores, ctx.output, measured.mine))
      return code;
  }
  measured = {};
  times.mark("create");
  if (int code = root_step(comm, [&] { start_on_root(*setup, comm.size()); })) return code;
  times.mark("server and run record");
  times.print();
  ctx.base_url = comm.broadcast(root ? setup->ctx.base_url : std::string());
  auto output = store::ParallelOutput::open(ctx.output, comm.handle());

  // Run and finalize. Every rank runs on its own until the collective close; an error on one rank
  // (a failed write, a broken message) must not leave the others waiting in that close: it is
  // reported and the whole job ends. Flagged batches stay valid; the run resumes from them.
  RootLoop loop;
  MpiLink link(comm);
  try {
    if (root) start_root_loop(loop, *setup, ctx, output, options, comm.size());
    TransportClient client(remote::TransportOptions{ctx.base_url, ctx.api_key, ctx.timeouts});
    FileSink sink(output);
    Worker worker(worker_settings(ctx, batch_prompts, cores), *encoder, client, sink,
                  static_cast<std::uint64_t>(rank), root ? static_cast<std::ostream&>(loop.log) : std::cerr);
    const auto show_log = [&] {
      if (!root || loop.log.tellp() == 0) return;
      loop.progress->log(loop.log.str());
      loop.log.str("");
    };
    DrainRequest seen = DrainRequest::none;
    TurnPacer pacer;
    for (int turn = 0; !worker.finished(); ++turn) {
      if (turn == 10) injected_failure("run", rank);
      // A signal on any rank goes to the coordinator, which drains every rank.
      if (const auto sig = drain_requested(); sig > seen) {
        seen = sig;
        if (root) loop.log << fmt::format("ndif-sweep: {} received\n", last_signal_name());
        link.send(0, msg::SignalSeen{sig == DrainRequest::abandon_in_flight});
      }
      while (auto m = link.receive()) {
        if (!to_coordinator(m->second))
          worker.receive(m->second);
        else if (loop.coordinator)
          loop.coordinator->receive(m->first, m->second, link);
        else
          throw InternalError(fmt::format("run loop: rank {} received a message meant for rank 0", rank));
      }
      if (worker.finished()) break;
      worker.turn(pacer.next(link.moved()), link);
      show_log();
      if (root) loop.progress->tick(Clock::now());
    }
    show_log();
    flush(link);
    injected_failure("finalize", rank);
    output.close();
  } catch (const Error& e) {
    abort_all(comm, e.what(), static_cast<int>(e.exit_code()));
  } catch (const std::exception& e) {
    abort_all(comm, e.what(), 1);
  }

  // Outcome. Rank 0 records it and tells the others, which wait for it without spinning and
  // without a collective call: if rank 0 fails here it ends them all, and a rank that fails here
  // ends alone, after its data is closed.
  if (root) {
    RunOutcome outcome;
    try {
      injected_failure("outcome", rank);
      outcome = loop.coordinator->outcome();
      store::set_run_outcome(ctx.output, setup->run_index, outcome.name);
    } catch (const Error& e) {
      abort_all(comm, e.what(), static_cast<int>(e.exit_code()));
    }
    loop.progress->log(loop.log.str());
    loop.progress->finish(Clock::now(), outcome.name);
    if (const auto& why = loop.coordinator->refusal())
      std::cerr << "ndif-sweep: error: the service refused the request: " << *why << '\n';
    if (outcome.exit_code == 0)
      std::cout << "output: " << ctx.output << '\n';
    else
      std::cout << fmt::format(
          "output: {} (incomplete: {} of {} batches done; run the same command again to resume)\n",
          ctx.output, loop.progress->done_batches(), ctx.batches);
    std::cout << std::flush;
    for (int r = 1; r < comm.size(); ++r) link.send(r, msg::Outcome{outcome.exit_code});
    flush(link);
    return outcome.exit_code;
  }
  try {
    injected_failure("outcome", rank);
    while (true) {
      while (auto m = link.receive())
        if (const auto* o = std::get_if<msg::Outcome>(&m->second)) return o->exit_code;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  } catch (const Error& e) {
    std::cerr << fmt::format("ndif-sweep: error on rank {} after the file was closed: {}\n", rank, e.what());
    return static_cast<int>(e.exit_code());
  }
}

}  // namespace ndif::run
