#pragma once
/// \file
/// A job made ready to run: spec parsed, prompts read and tokenized, positions resolved, batches
/// planned, identity hashed. Shared by `plan` (which stops here) and `run`. Pure apart from reading
/// the job's own files.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/spec/job_spec.hpp"
#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"
#include "ndif_sweep/store/readers.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

namespace ndif::run {

/// Command-line flags that override keys of the job spec.
struct JobOverrides {
  std::optional<std::string> endpoint;
  std::optional<std::filesystem::path> output;
  std::optional<int> max_inflight;
};

/// Everything known about a job before any output file or network is touched.
struct PreparedJob {
  spec::JobSpec spec;
  /// The prompts file, indexed: a batch's lines are read again from it when it is handed out, and
  /// the file's strings when the output file is created.
  std::shared_ptr<const spec::PromptsFile> prompts_file;
  /// The plan came from an output file of this job: nothing was tokenized, `shapes` holds P only.
  bool plan_from_file = false;
  /// Lengths of every prompt, and P (its token ids and positions are not kept: encode_batch makes a
  /// batch's again when it is handed out, and the ranks write the positions into the file).
  plan::PromptShapes shapes;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  spec::ModelConfig model_config;
  plan::RowShape shape;
  plan::BatchPlan plan;
  std::string tokenizer_sha256;
  std::string prompts_sha256;
  std::string job_hash;  ///< identity of the data the job produces; see job_identity()
};

/// Asked once the job's identity (`job_hash`) is known: the plan of an existing output file of this
/// job, or nothing (then the prompts are tokenized and planned).
using StoredPlanSource = std::function<std::optional<store::StoredPlan>(const PreparedJob&)>;

/// Where the model's shape comes from when the spec does not give it (GET /status of the service).
using ModelConfigSource = std::function<spec::ModelConfig(const spec::JobSpec&)>;

/// Parses, validates, tokenizes and plans. `config_source` is asked only when the shape is not known
/// without network; `plan` passes a source that throws an InputError explaining what to add.
/// Throws InputError (exit 2) for anything wrong in the job's files or flags.
[[nodiscard]] PreparedJob prepare_job(const std::filesystem::path& job_file, const JobOverrides& overrides,
                                      const ModelConfigSource& config_source);

/// The same, in two steps: the spec with the flags applied (throws InputError), then the rest.
[[nodiscard]] spec::JobSpec load_job_spec(const std::filesystem::path& job_file,
                                          const JobOverrides& overrides);
/// With `stored_plan`, a restart takes the plan of the file instead of tokenizing every prompt.
[[nodiscard]] PreparedJob prepare_job(spec::JobSpec spec, const ModelConfigSource& config_source,
                                      const StoredPlanSource& stored_plan = {});

/// prepare_job without measuring the prompts: the spec, the model's shape, the prompts file indexed,
/// the tokenizer, the job's identity, P (from the first line, or the stored plan), and the stored
/// plan when `stored_plan` gives one (`plan_from_file`). Otherwise the prompts are measured, by
/// plan::scan_prompts or by every rank a part (run_sweep), and plan_job cuts the batches.
[[nodiscard]] PreparedJob open_job(spec::JobSpec spec, const ModelConfigSource& config_source,
                                   const StoredPlanSource& stored_plan = {});

/// Takes the measured prompts (their P must be the job's) and cuts the batches.
void plan_job(PreparedJob& job, plan::PromptShapes shapes);

/// The part of a job that tokenizing its prompts depends on, as rank 0 read it: the other ranks
/// take it from rank 0 instead of reading their job file again (which may have been edited since,
/// or be another on their node).
struct PromptSource {
  std::filesystem::path prompts;    ///< absolute
  std::filesystem::path tokenizer;  ///< absolute
  std::vector<spec::PositionSpec> default_positions;
  bool add_special_tokens = true;

  /// `spec`'s, with its paths made absolute. Throws if a path cannot be (filesystem_error).
  [[nodiscard]] static PromptSource of(const spec::JobSpec& spec);
  /// As JSON text for a broadcast, and back (InternalError when the text is not one).
  [[nodiscard]] std::string encode() const;
  [[nodiscard]] static PromptSource decode(const std::string& text);
};

/// What a rank needs to tokenize the prompts of its batches again, as planning did: the prompts
/// file, the tokenizer and the job's positions. Rank 0 takes its PreparedJob's; the other ranks
/// make theirs from rank 0's job spec and index of the prompts file (for_rank).
struct BatchTokenizer {
  std::shared_ptr<const spec::PromptsFile> prompts_file;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  std::vector<spec::PositionSpec> default_positions;
  bool add_special_tokens = true;
  std::size_t positions_per_row = 0;

  /// The job's, on the rank that prepared it.
  [[nodiscard]] static BatchTokenizer of(const PreparedJob& job);
  /// Another rank's, for rank 0's `source`: the tokenizer file read
  /// here must have rank 0's SHA-256 `tokenizer_sha256`, and the prompts file is opened with rank
  /// 0's index (PromptsFile::index_bytes). Throws InputError naming the file when this node sees
  /// other files than rank 0.
  [[nodiscard]] static BatchTokenizer for_rank(const PromptSource& source, std::string_view prompts_index,
                                               const std::string& tokenizer_sha256,
                                               std::size_t positions_per_row);

  /// Row `row` of the prompts file, read and parsed again. Throws as spec::PromptsFile::lines.
  [[nodiscard]] spec::PromptRecord record(std::int64_t row) const;
  /// The token ids and positions of the prompts `rows`, in that order. Throws as
  /// plan::encode_records, and as spec::PromptsFile::lines when a line changed.
  [[nodiscard]] std::vector<plan::EncodedPrompt> encode(const std::vector<std::int64_t>& rows) const;
};

/// Row `row` of the prompts file, read and parsed again: BatchTokenizer::of(job).record(row).
[[nodiscard]] spec::PromptRecord prompt_record(const PreparedJob& job, std::int64_t row);

/// The JSON that `job_hash` is the SHA-256 of: the canonical spec without the keys that only steer
/// a run (output, timeouts, retry, max_inflight, api_key_env), with the endpoint reduced to "local"
/// (the bundled server and its `local` options) or "remote" (any URL), plus the SHA-256 of the
/// prompts and tokenizer files and the model shape. Moving the output file, retuning retries or
/// reaching the service at another address keeps the hash; anything that changes stored values
/// changes it.
[[nodiscard]] nlohmann::json job_identity(const PreparedJob& job);

/// The token ids and positions of the prompts `rows`, in that order, tokenized again as planning
/// did (deterministic): BatchTokenizer::of(job).encode(rows). Throws as plan::encode_records, and as
/// spec::PromptsFile::lines when a line changed.
[[nodiscard]] std::vector<plan::EncodedPrompt> encode_batch(const PreparedJob& job,
                                                            const std::vector<std::int64_t>& rows);

/// The `plan --json` object (docs/user-guide.md section 2).
[[nodiscard]] nlohmann::json plan_summary_json(const PreparedJob& job);

/// The human-readable pre-flight estimate printed by `ndif-sweep plan`.
[[nodiscard]] std::string plan_summary_text(const PreparedJob& job);

}  // namespace ndif::run
