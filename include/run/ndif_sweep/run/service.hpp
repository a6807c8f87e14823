#pragma once
/// \file
/// What a run learns from the service and from the nnsight encoder before it writes anything:
/// the deployment and its exact model key (GET /status), the server's nnsight (GET /env), that the
/// API key is accepted, that the encoder's nnsight matches the server's, and that the model's own
/// tokenizer agrees with ndif-sweep's on a sample of the prompts (the tokenizer canary). Shared by
/// `run` (rank 0, before the output file exists) and `check`.

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/remote/nnsight_encoder.hpp"
#include "ndif_sweep/remote/service.hpp"
#include "ndif_sweep/run/job.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::run {

/// What a remote endpoint says about the job's model.
struct ServiceFacts {
  remote::Deployment deployment;         ///< the one the job runs on
  std::string model_key;                 ///< what requests carry: the job's, else the deployment's
  std::optional<remote::ServerEnv> env;  ///< GET /env, asked for the nnsight encoder
};

/// GET /status (and GET /env when the job uses the nnsight encoder) of the job's endpoint, which
/// must not be "local". Throws ServiceRefused on 401/403, InputError when the model or the job's
/// model_key is not deployed there, Error (exit 1) when the service cannot be reached.
[[nodiscard]] ServiceFacts query_service(const spec::JobSpec& spec, const std::string& api_key);

/// The model's shape for a job whose spec does not give it: the deployment's. Throws InputError
/// naming `model_config` as the fix when the deployment reports none.
[[nodiscard]] spec::ModelConfig deployment_shape(const spec::JobSpec& spec, const ServiceFacts& facts);

/// Asks the service whether it takes the key (a G4 request with no blob: no job is made). Throws
/// ServiceRefused (exit 5) with the server's words when it refuses; returns what it said.
remote::KeyCheck require_api_key(const spec::JobSpec& spec, const std::string& base_url,
                                 const std::string& api_key, const std::string& model_key);

/// Throws ServiceRefused (exit 5) naming both versions and the fix when the encoder's nnsight is
/// not the server's (the blob is a pickle of nnsight's own objects: versions must match).
void check_nnsight_versions(const remote::EncoderHello& hello, const remote::ServerEnv& env,
                            const std::string& endpoint);

/// Throws InputError when the encoder's model (its config.json) disagrees with the job's shape.
void check_encoder_model(const remote::EncoderModel& model, const PreparedJob& job);

/// The interpreter of the nnsight encoder: the job's `python`, else $NDIF_SWEEP_PYTHON, else python3.
[[nodiscard]] std::string encoder_python(const spec::JobSpec& spec);

/// A directory private to this run on this host for the encoder's socket and lock: under $TMPDIR
/// (when short enough for a socket path) or /tmp, named by the uid, `run_token` (the same on every
/// rank) and a hash of this host's name, so that ranks of one node share it and nodes never do.
[[nodiscard]] std::filesystem::path encoder_node_dir(const std::string& run_token);

/// A token that names this run (rank 0 makes it, every rank receives it).
[[nodiscard]] std::string make_run_token(const std::string& job_hash);

/// The nnsight encoder of a job: options and what it encodes for. $NDIF_SWEEP_MODEL_DIR, when
/// set, is the directory of the model's config and tokenizer files instead of the HF cache.
[[nodiscard]] remote::EncoderOptions encoder_options(const spec::JobSpec& spec, const std::string& run_token);
[[nodiscard]] remote::EncoderOptions encoder_options(const std::string& python, const std::string& run_token,
                                                     const std::string& api_key_env, double request_s);
[[nodiscard]] remote::EncoderJob encoder_job(const spec::JobSpec& spec, const std::string& model_key);

/// The rows the tokenizer canary checks: about `want` spread evenly over the file, plus the
/// longest prompt; all of them when there are fewer. Ascending, unique.
[[nodiscard]] std::vector<std::size_t> canary_rows(const std::vector<std::int32_t>& n_tokens,
                                                   std::size_t want = 1000);

/// The tokenizer canary: the model's own Hugging Face tokenizer (through the encoder) on the
/// canary rows must give exactly ndif-sweep's ids. Throws InputError naming the first prompt that
/// differs (file, line, the first differing token) and the fix. Returns the rows checked.
std::size_t run_tokenizer_canary(const PreparedJob& job, remote::NnsightEncoder& encoder);

}  // namespace ndif::run
