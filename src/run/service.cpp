#include "ndif_sweep/run/service.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/remote/transport.hpp"

namespace ndif::run {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

std::string hex64(std::uint64_t value) { return fmt::format("{:016x}", value); }

std::uint64_t text_hash(std::string_view text) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : text) h = mix64(h ^ c);
  return h;
}

std::string ids_excerpt(const std::vector<std::int64_t>& ids) {
  constexpr std::size_t kShown = 12;
  std::string out = "[";
  for (std::size_t i = 0; i < std::min(ids.size(), kShown); ++i)
    out += (i ? ", " : "") + std::to_string(ids[i]);
  if (ids.size() > kShown) out += fmt::format(", ... ({} ids)", ids.size());
  return out + "]";
}

}  // namespace

ServiceFacts query_service(const spec::JobSpec& spec, const std::string& api_key) {
  ServiceFacts facts;
  const auto deployments = remote::fetch_deployments(spec.endpoint, api_key, spec.timeouts);
  facts.deployment = remote::choose_deployment(deployments, spec.model, spec.model_key, spec.endpoint);
  facts.model_key = spec.model_key ? *spec.model_key : facts.deployment.model_key;
  if (facts.model_key.empty() && spec.encoder == spec::EncoderKind::nnsight) {
    throw InputError(fmt::format(
        "{}: the deployment of \"{}\" at {} lists no model key; set \"model_key\" in the job to the key the "
        "service expects",
        spec.job_file.string(), spec.model, spec.endpoint));
  }
  if (spec.encoder == spec::EncoderKind::nnsight) facts.env = remote::fetch_env(spec.endpoint, spec.timeouts);
  return facts;
}

spec::ModelConfig deployment_shape(const spec::JobSpec& spec, const ServiceFacts& facts) {
  if (facts.deployment.config) return *facts.deployment.config;
  throw InputError(
      fmt::format("{}: the deployment \"{}\" at {} does not report its config; set \"model_config\" "
                  "({{\"hidden_size\": H, \"num_hidden_layers\": L}}) in the job",
                  spec.job_file.string(), facts.deployment.name, spec.endpoint));
}

remote::KeyCheck require_api_key(const spec::JobSpec& spec, const std::string& base_url,
                                 const std::string& api_key, const std::string& model_key) {
  const std::string envelope = nlohmann::json{
      {"model_key", model_key},
      {"session_id", ""},
      {"compress", true},
      {"env",
       nlohmann::json::object()}}.dump();
  auto check = remote::check_api_key(base_url, api_key, envelope, spec.timeouts);
  if (check.outcome == remote::KeyCheck::Outcome::refused) {
    throw ServiceRefused(fmt::format(
        "{} refused the API key from ${} with HTTP {}: {}; export a valid key in {} (the key never goes "
        "into the job file)",
        base_url, spec.api_key_env, check.http_status, check.words, spec.api_key_env));
  }
  return check;
}

void check_nnsight_versions(const remote::EncoderHello& hello, const remote::ServerEnv& env,
                            const std::string& endpoint) {
  if (!env.nnsight_version) return;  // the server does not say: nothing to compare
  if (hello.nnsight_version == *env.nnsight_version) return;
  throw ServiceRefused(fmt::format(
      "the encoder's nnsight {} ({}) differs from the nnsight {} that {} runs (GET /env); a G4 request is a "
      "pickle of nnsight's own objects, so they must match: install it with `{} -m pip install nnsight=={}`, "
      "or point the job's \"python\" key (or NDIF_SWEEP_PYTHON) at an interpreter that has it",
      hello.nnsight_version.empty() ? "(unknown)" : hello.nnsight_version, hello.executable,
      *env.nnsight_version, endpoint, hello.executable.empty() ? "python3" : hello.executable,
      *env.nnsight_version));
}

void check_encoder_model(const remote::EncoderModel& model, const PreparedJob& job) {
  const auto& config = job.model_config;
  if (model.hidden_size != config.hidden_size ||
      (model.num_hidden_layers != 0 && model.num_hidden_layers != config.num_hidden_layers)) {
    throw InputError(
        fmt::format("{}: the model files the encoder read for {} have hidden size {} and {} layers, but the "
                    "job is sized for "
                    "hidden {} and {} layers (from {}); they must describe the same model: check \"model\", "
                    "\"revision\" and "
                    "\"model_config\"",
                    job.spec.job_file.string(), job.spec.model, model.hidden_size, model.num_hidden_layers,
                    config.hidden_size, config.num_hidden_layers,
                    job.spec.model_config ? "\"model_config\"" : "the service's GET /status"));
  }
  if (model.vocab_size > 0 && job.shapes.max_token_id >= model.vocab_size) {
    throw InputError(fmt::format(
        "{}:{}: token id {} is outside the model's vocabulary of {}; \"tokenizer\" in {} is not this "
        "model's tokenizer",
        job.spec.prompts.string(), job.shapes.max_token_row + 1, job.shapes.max_token_id, model.vocab_size,
        job.spec.job_file.string()));
  }
}

std::string encoder_python(const spec::JobSpec& spec) {
  return spec.python.empty() ? env_or("NDIF_SWEEP_PYTHON", "python3") : spec.python;
}

std::filesystem::path encoder_node_dir(const std::string& run_token) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  // A socket path has room for 107 bytes: a deep $TMPDIR falls back to /tmp.
  std::filesystem::path base = env_or("TMPDIR", "/tmp");
  if (base.string().size() > 60 || !base.is_absolute()) base = "/tmp";
  return base / fmt::format("ndif-sweep-{}-{}-{}", ::geteuid(), run_token.substr(0, 12),
                            hex64(text_hash(host)).substr(0, 8));
}

std::string make_run_token(const std::string& job_hash) {
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return hex64(text_hash(fmt::format("{}:{}:{}:{}", job_hash, host, ::getpid(), now)));
}

remote::EncoderOptions encoder_options(const std::string& python, const std::string& run_token,
                                       const std::string& api_key_env, double request_s) {
  remote::EncoderOptions options;
  options.python = python;
  options.node_dir = encoder_node_dir(run_token);
  options.package_dir = remote::bundled_package_dir();
  options.scrub_env = api_key_env;
  options.request_timeout = std::chrono::milliseconds(static_cast<long long>(request_s * 1000));
  // Starting means importing torch and building the skeleton: slow file systems need minutes.
  options.start_timeout =
      std::max(options.request_timeout, std::chrono::milliseconds(std::chrono::minutes(5)));
  return options;
}

remote::EncoderOptions encoder_options(const spec::JobSpec& spec, const std::string& run_token) {
  return encoder_options(encoder_python(spec), run_token, spec.api_key_env, spec.timeouts.request_s);
}

remote::EncoderJob encoder_job(const spec::JobSpec& spec, const std::string& model_key) {
  remote::EncoderJob job;
  job.model = spec.model;
  job.revision = spec.revision;
  if (const char* dir = std::getenv("NDIF_SWEEP_MODEL_DIR"); dir != nullptr && *dir != '\0')
    job.model_dir = dir;
  job.model_key = model_key;
  job.probes = spec.probes;
  job.dtype = spec.dtype;
  return job;
}

std::vector<std::size_t> canary_rows(const std::vector<std::int32_t>& n_tokens, std::size_t want) {
  const std::size_t n = n_tokens.size();
  std::vector<std::size_t> rows;
  if (n == 0) return rows;
  if (n <= want) {
    rows.resize(n);
    for (std::size_t i = 0; i < n; ++i) rows[i] = i;
    return rows;
  }
  for (std::size_t k = 0; k < want; ++k) rows.push_back(k * n / want);
  rows.push_back(
      static_cast<std::size_t>(std::max_element(n_tokens.begin(), n_tokens.end()) - n_tokens.begin()));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

std::size_t run_tokenizer_canary(const PreparedJob& job, remote::NnsightEncoder& encoder) {
  const auto rows = canary_rows(job.shapes.n_tokens);
  std::vector<std::string> texts;
  texts.reserve(rows.size());
  for (auto row : rows) texts.push_back(prompt_record(job, static_cast<std::int64_t>(row)).text);
  const auto reference = encoder.tokenize(texts, job.spec.add_special_tokens);
  std::vector<std::int64_t> rows64(rows.begin(), rows.end());
  const auto encoded = encode_batch(job, rows64);
  for (std::size_t k = 0; k < rows.size(); ++k) {
    const auto& ours = encoded[k].ids;
    const auto& theirs = reference[k];
    const std::vector<std::int64_t> ours64(ours.begin(), ours.end());
    if (ours64 == theirs) continue;
    std::size_t at = 0;
    while (at < ours64.size() && at < theirs.size() && ours64[at] == theirs[at]) ++at;
    throw InputError(fmt::format(
        "{}:{}: ndif-sweep's tokenizer ({}) gives {} but the model's own tokenizer gives {} (first "
        "difference at "
        "token {}); positions would be read from the wrong tokens. Use the model's own tokenizer.json as "
        "\"tokenizer\" in {}, with \"add_special_tokens\" as the model expects",
        job.spec.prompts.string(), rows[k] + 1, job.spec.tokenizer.string(), ids_excerpt(ours64),
        ids_excerpt(theirs), at, job.spec.job_file.string()));
  }
  return rows.size();
}

}  // namespace ndif::run
