#pragma once
/// \file
/// The job spec (docs/user-guide.md section 2, a contract): parsed, validated and canonicalised.
/// Pure: reads only the job file it is given.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/core/dtype.hpp"

namespace ndif::spec {

/// Bytes per element of an activation dtype: 2 or 4.
[[nodiscard]] inline int dtype_bytes(DType dtype) noexcept { return static_cast<int>(element_size(dtype)); }

/// What builds each batch's request body (docs/user-guide.md section 2, `encoder`).
enum class EncoderKind {
  graph,    ///< ndif-sweep's own JSON intervention graph (ndif-local, nnsight-0.4 servers)
  nnsight,  ///< the user's nnsight in an encoder process (production NDIF)
};

/// How requests travel (docs/user-guide.md section 2, `protocol`).
enum class Protocol {
  g4,  ///< multipart POST, GET /response/{id} polling, result by presigned URL (nnsight >= 0.8)
  g2,  ///< raw body with settings in headers, GET /result/{id} (nnsight 0.4)
};

/// "graph" | "nnsight".
[[nodiscard]] const char* encoder_name(EncoderKind kind) noexcept;
/// "g4" | "g2".
[[nodiscard]] const char* protocol_name(Protocol protocol) noexcept;

/// One thing to collect: the output of `module` (with `{layer}` filled in) at each layer.
struct Probe {
  std::string name;                 ///< dataset name under /acts, [A-Za-z0-9_]+
  std::string module;               ///< e.g. "model.layers.{layer}"
  std::optional<int> output_index;  ///< element of a tuple output; nullopt for a tensor output
  std::vector<int> layers;          ///< resolved layer numbers, in the order given
  std::string layers_text;          ///< as written in the spec ("0:32" or "[1, 5]") for the file's attrs

  /// The module path for one layer, e.g. "model.layers.3".
  [[nodiscard]] std::string module_for(int layer) const;
};

struct LocalServerOptions {
  int layers = 32;
  int hidden = 64;
  std::uint64_t seed = 0;
  std::string model_dtype = "bfloat16";
};

struct ModelConfig {
  int hidden_size = 0;
  int num_hidden_layers = 0;
};

struct BatchOptions {
  double target_mb = 32;
  int max_prompts = 256;
  int max_tokens = 32768;
  bool sort_by_length = true;
};

struct RetryOptions {
  int max_attempts = 6;
  double initial_backoff_s = 1;
  double max_backoff_s = 60;
};

struct Timeouts {
  double connect_s = 10;
  double request_s = 300;
  double job_s = 3600;
  double poll_interval_s = 0.5;
};

/// A default position or an entry of a prompt's "positions": an index, or a span of text.
struct PositionSpec {
  bool is_span = false;
  std::int64_t index = 0;       ///< when !is_span; negative counts from the end
  std::string span;             ///< when is_span: the substring
  std::int64_t occurrence = 0;  ///< which occurrence of `span`; negative counts from the end
  bool last_token = true;       ///< "token": "last" (true) or "first"
};

/// The whole job spec, with defaults applied and relative paths resolved against the job file.
struct JobSpec {
  std::filesystem::path job_file;
  std::string model;
  std::optional<std::string> revision;
  std::string endpoint = "local";  ///< "local" or a base URL
  LocalServerOptions local;
  std::string api_key_env = "NDIF_API_KEY";
  std::filesystem::path tokenizer;
  bool add_special_tokens = true;
  std::filesystem::path prompts;
  std::vector<PositionSpec> positions;  ///< default positions [-1]
  std::vector<Probe> probes;
  std::optional<ModelConfig> model_config;  ///< as given; see effective_model_config()
  DType dtype = DType::float16;
  BatchOptions batch;
  RetryOptions retry;
  Timeouts timeouts;
  int max_inflight = 2;
  std::filesystem::path output;
  EncoderKind encoder = EncoderKind::graph;  ///< default: graph for endpoint local, else nnsight
  bool encoder_given = false;                ///< the job file names it (else it follows the endpoint)
  Protocol protocol = Protocol::g4;
  /// The interpreter of the nnsight encoder as written ("" = $NDIF_SWEEP_PYTHON, else python3).
  std::string python;
  /// The model key exactly as the server lists it; nullopt = taken from GET /status by repo_id.
  std::optional<std::string> model_key;

  /// The model shape known without network: `model_config`, else the `local` section when the
  /// endpoint is local, else nullopt (it then comes from the server's GET /status).
  [[nodiscard]] std::optional<ModelConfig> effective_model_config() const;

  /// The spec as canonical JSON (sorted keys, defaults filled in, paths as given relative to the
  /// job file, no secrets) -- what the output file stores in its `job` attribute.
  [[nodiscard]] nlohmann::json canonical_json() const;
};

/// Parses and validates a job spec. Throws InputError naming the file and the key (exit code 2).
/// Checks layers against the model shape when that is known without network.
[[nodiscard]] JobSpec parse_job_spec(const std::filesystem::path& job_file);

/// Same, from JSON text; `job_file` is used for messages and to resolve relative paths.
[[nodiscard]] JobSpec parse_job_spec_text(const std::string& text, const std::filesystem::path& job_file);

/// A positions list in the JSON form of the job file's "positions".
[[nodiscard]] nlohmann::json positions_json(const std::vector<PositionSpec>& positions);

/// A positions list from that form, checked as the job file's is. Throws InputError whose message
/// starts with `prefix` (e.g. "job.json: ").
[[nodiscard]] std::vector<PositionSpec> positions_from_json(const nlohmann::json& value,
                                                            const std::string& prefix);

/// Checks every probe's layers against the model shape (once it is known, e.g. from /status).
/// Throws InputError naming the probe.
void check_layers(const JobSpec& spec, const ModelConfig& config);

}  // namespace ndif::spec
