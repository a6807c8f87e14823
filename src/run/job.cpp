#include "ndif_sweep/run/job.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

namespace ndif::run {
namespace {

void apply_overrides(spec::JobSpec& spec, const JobOverrides& overrides) {
  if (overrides.endpoint) {
    const auto& e = *overrides.endpoint;
    if (e != "local" && e.rfind("http://", 0) != 0 && e.rfind("https://", 0) != 0)
      throw InputError(
          fmt::format("--endpoint: expected \"local\" or a base URL http(s)://host[:port], got \"{}\"", e));
    spec.endpoint = e;
    if (!spec.encoder_given)
      spec.encoder = e == "local" ? spec::EncoderKind::graph : spec::EncoderKind::nnsight;
    if (spec.encoder == spec::EncoderKind::nnsight && spec.protocol == spec::Protocol::g2)
      throw InputError(fmt::format(
          "--endpoint {}: the job's \"protocol\": \"g2\" cannot carry the nnsight encoder that a remote "
          "endpoint uses by default; set \"encoder\": \"graph\" in {} for an nnsight-0.4 server",
          e, spec.job_file.string()));
  }
  if (overrides.output) spec.output = std::filesystem::absolute(*overrides.output);
  if (overrides.max_inflight) {
    if (*overrides.max_inflight < 1)
      throw InputError(fmt::format("--max-inflight: must be at least 1, got {}", *overrides.max_inflight));
    spec.max_inflight = *overrides.max_inflight;
  }
}

std::string human_bytes(std::int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e12) return fmt::format("{:.2f} TB", b / 1e12);
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.2f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.2f} kB", b / 1e3);
  return fmt::format("{} B", bytes);
}

}  // namespace

spec::JobSpec load_job_spec(const std::filesystem::path& job_file, const JobOverrides& overrides) {
  auto spec = spec::parse_job_spec(job_file);
  apply_overrides(spec, overrides);
  return spec;
}

PreparedJob prepare_job(const std::filesystem::path& job_file, const JobOverrides& overrides,
                        const ModelConfigSource& config_source) {
  return prepare_job(load_job_spec(job_file, overrides), config_source, {});
}

PreparedJob prepare_job(spec::JobSpec spec, const ModelConfigSource& config_source,
                        const StoredPlanSource& stored_plan) {
  auto job = open_job(std::move(spec), config_source, stored_plan);
  if (!job.plan_from_file)
    plan_job(job, plan::scan_prompts(*job.prompts_file, job.spec.positions, *job.tokenizer,
                                     job.spec.add_special_tokens,
                                     std::max(1U, std::thread::hardware_concurrency())));
  return job;
}

PreparedJob open_job(spec::JobSpec spec, const ModelConfigSource& config_source,
                     const StoredPlanSource& stored_plan) {
  PreparedJob job;
  job.spec = std::move(spec);

  if (auto known = job.spec.effective_model_config()) {
    job.model_config = *known;
  } else {
    job.model_config = config_source(job.spec);
    spec::check_layers(job.spec, job.model_config);
  }

  // The tokenizer is parsed and hashed from the same bytes, so the hash is of what was used; the
  // prompts are hashed as they are indexed, and every line read again is checked against its hash.
  job.prompts_file = std::make_shared<const spec::PromptsFile>(spec::PromptsFile::index(job.spec.prompts));
  const auto tokenizer_text = read_file(job.spec.tokenizer, "tokenizer file");
  job.tokenizer = std::make_shared<const tokenizer::Tokenizer>(
      tokenizer::Tokenizer::from_json(tokenizer_text, job.spec.tokenizer.string()));
  job.tokenizer_sha256 = sha256_hex(tokenizer_text);
  job.prompts_sha256 = job.prompts_file->sha256();
  job.job_hash = sha256_hex(job_identity(job).dump());

  job.shape.hidden = job.model_config.hidden_size;
  job.shape.dtype_bytes = spec::dtype_bytes(job.spec.dtype);
  for (const auto& p : job.spec.probes) job.shape.total_layers += static_cast<std::int64_t>(p.layers.size());

  // A file of this very job holds the plan that was made from these bytes: a restart takes it
  // and tokenizes nothing but the batches it sends.
  if (stored_plan) {
    if (auto stored = stored_plan(job)) {
      if (stored->n_tokens.size() != job.prompts_file->rows())
        throw SpecMismatch(fmt::format("the output file's plan holds {} prompts but {} has {}",
                                       stored->n_tokens.size(), job.spec.prompts.string(),
                                       job.prompts_file->rows()));
      job.plan = plan::plan_from_arrays(stored->n_tokens, stored->order, stored->start, stored->count);
      job.shapes.n_tokens = std::move(stored->n_tokens);
      job.shape.positions = stored->positions_per_row;
      job.shapes.positions_per_row = stored->positions_per_row;
      job.plan_from_file = true;
      return job;
    }
  }
  // The first line fixes P (and, when it is bad, it is the first bad line).
  job.shape.positions =
      static_cast<std::int64_t>(plan::positions_per_row(*job.prompts_file, job.spec.positions));
  return job;
}

void plan_job(PreparedJob& job, plan::PromptShapes shapes) {
  if (shapes.positions_per_row != job.shape.positions || shapes.n_tokens.size() != job.prompts_file->rows())
    throw InternalError("planning: the measured prompts do not fit the job");
  job.shapes = std::move(shapes);
  job.plan = plan::make_batch_plan(job.shapes.n_tokens, job.spec.batch, job.shape);
}

spec::PromptRecord prompt_record(const PreparedJob& job, std::int64_t row) {
  return BatchTokenizer::of(job).record(row);
}

BatchTokenizer BatchTokenizer::of(const PreparedJob& job) {
  return BatchTokenizer{job.prompts_file, job.tokenizer, job.spec.positions, job.spec.add_special_tokens,
                        static_cast<std::size_t>(job.shape.positions)};
}

PromptSource PromptSource::of(const spec::JobSpec& spec) {
  return PromptSource{std::filesystem::absolute(spec.prompts).lexically_normal(),
                      std::filesystem::absolute(spec.tokenizer).lexically_normal(), spec.positions,
                      spec.add_special_tokens};
}

std::string PromptSource::encode() const {
  return nlohmann::json{{"prompts", prompts.string()},
                        {"tokenizer", tokenizer.string()},
                        {"positions", spec::positions_json(default_positions)},
                        {"add_special_tokens", add_special_tokens}}
      .dump();
}

PromptSource PromptSource::decode(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    return PromptSource{j.at("prompts").get<std::string>(), j.at("tokenizer").get<std::string>(),
                        spec::positions_from_json(j.at("positions"), "rank 0's job: "),
                        j.at("add_special_tokens").get<bool>()};
  } catch (const nlohmann::json::exception& e) {
    throw InternalError(fmt::format("rank 0's prompt source does not decode: {}", e.what()));
  }
}

BatchTokenizer BatchTokenizer::for_rank(const PromptSource& source, std::string_view prompts_index,
                                        const std::string& tokenizer_sha256, std::size_t positions_per_row) {
  const auto tokenizer_text = read_file(source.tokenizer, "tokenizer file");
  if (sha256_hex(tokenizer_text) != tokenizer_sha256)
    throw InputError(
        fmt::format("{}: the tokenizer file on this node differs from the one rank 0 read; every "
                    "node must see the same tokenizer file",
                    source.tokenizer.string()));
  return BatchTokenizer{
      std::make_shared<const spec::PromptsFile>(spec::PromptsFile::from_index(source.prompts, prompts_index)),
      std::make_shared<const tokenizer::Tokenizer>(
          tokenizer::Tokenizer::from_json(tokenizer_text, source.tokenizer.string())),
      source.default_positions, source.add_special_tokens, positions_per_row};
}

spec::PromptRecord BatchTokenizer::record(std::int64_t row) const {
  const auto r = static_cast<std::size_t>(row);
  return spec::parse_prompt(prompts_file->line(r), r, prompts_file->path(), default_positions);
}

std::vector<plan::EncodedPrompt> BatchTokenizer::encode(const std::vector<std::int64_t>& rows) const {
  std::vector<spec::PromptRecord> records;
  records.reserve(rows.size());
  for (const auto row : rows) records.push_back(record(row));
  return plan::encode_records(records, positions_per_row, *tokenizer, add_special_tokens,
                              prompts_file->path());
}

std::vector<plan::EncodedPrompt> encode_batch(const PreparedJob& job, const std::vector<std::int64_t>& rows) {
  return BatchTokenizer::of(job).encode(rows);
}

nlohmann::json job_identity(const PreparedJob& job) {
  auto canon = job.spec.canonical_json();
  // How requests are built and travel, and which interpreter builds them, change nothing that a
  // batch computes: a run may resume with another of them.
  for (const char* key : {"output", "timeouts", "retry", "max_inflight", "api_key_env", "encoder", "protocol",
                          "python", "model_key"})
    canon.erase(key);
  // Paths only locate the files; their contents are what identifies the job.
  canon.erase("tokenizer");
  canon.erase("prompts");
  // The bundled server's synthetic values must never mix with a service's, but the service's address
  // may change between runs (another port, a proxy) without changing what it computes.
  const bool local = job.spec.endpoint == "local";
  canon["endpoint"] = local ? "local" : "remote";
  if (!local) canon.erase("local");
  return nlohmann::json{{"spec", canon},
                        {"prompts_sha256", job.prompts_sha256},
                        {"tokenizer_sha256", job.tokenizer_sha256},
                        {"hidden_size", job.model_config.hidden_size},
                        {"num_hidden_layers", job.model_config.num_hidden_layers}};
}

nlohmann::json plan_summary_json(const PreparedJob& job) {
  const auto s = plan::summarize(job.plan, job.shapes.n_tokens, job.shape);
  return nlohmann::json{{"prompts", s.prompts},
                        {"tokens", s.tokens},
                        {"padded_tokens", s.padded_tokens},
                        {"batches", s.batches},
                        {"max_batch_bytes", s.max_batch_bytes},
                        {"download_bytes", s.download_bytes},
                        {"file_bytes", s.file_bytes},
                        {"jobs", s.jobs}};
}

std::string plan_summary_text(const PreparedJob& job) {
  const auto s = plan::summarize(job.plan, job.shapes.n_tokens, job.shape);
  std::string probes;
  for (const auto& p : job.spec.probes)
    probes += fmt::format("{}{} ({} layers)", probes.empty() ? "" : ", ", p.name, p.layers.size());
  const double waste = s.padded_tokens > 0 ? 100.0 * static_cast<double>(s.padded_tokens - s.tokens) /
                                                 static_cast<double>(s.padded_tokens)
                                           : 0;
  return fmt::format(
      "job        {}\n"
      "model      {} (hidden {}, {} layers)\n"
      "endpoint   {}\n"
      "prompts    {} ({} tokens, {} padded tokens sent, {:.1f}% padding)\n"
      "positions  {} per prompt\n"
      "probes     {}\n"
      "batches    {} NDIF jobs, largest {}\n"
      "download   {} in all ({} per row, dtype {})\n"
      "output     {} ({} of datasets)\n",
      job.spec.job_file.string(), job.spec.model, job.model_config.hidden_size,
      job.model_config.num_hidden_layers, job.spec.endpoint, s.prompts, s.tokens, s.padded_tokens, waste,
      job.shape.positions, probes, s.batches, human_bytes(s.max_batch_bytes), human_bytes(s.download_bytes),
      human_bytes(job.shape.row_bytes()), dtype_name(job.spec.dtype), job.spec.output.string(),
      human_bytes(s.file_bytes));
}

}  // namespace ndif::run
