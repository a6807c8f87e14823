#pragma once
/// \file
/// What an NDIF service says about itself: GET /env (its Python and nnsight versions) and
/// GET /status (its deployments, their exact model keys and shapes). Pure parsing and choosing;
/// the bytes are untrusted. The requests themselves are in transport.hpp.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::remote {

/// GET /env: `{"python_version": str, "packages": {"nnsight": str, ...}}` (ndif 0.1 controller).
struct ServerEnv {
  std::string python_version;
  std::optional<std::string> nnsight_version;  ///< nullopt when the server does not list nnsight
};

/// Parses a GET /env reply. Throws DecodeError quoting the start of a reply of another shape.
[[nodiscard]] ServerEnv parse_env(std::string_view body);

/// One deployment of GET /status.
struct Deployment {
  std::string name;               ///< its key in "deployments"
  std::string model_key;          ///< "" when the server lists none
  std::string repo_id;            ///< "" when the server lists none; "*" for ndif-local's any-model
  std::string application_state;  ///< "RUNNING", "DEPLOYING", "UNHEALTHY" or ""
  std::string deployment_level;   ///< "HOT", "WARM", "COLD" or ""
  /// hidden_size and num_hidden_layers read from its `config` (an object, or the JSON string of
  /// a transformers config as ndif 0.1 sends it; GPT-2's n_embd/n_layer and a nested
  /// text_config count too), nullopt when it has none.
  std::optional<spec::ModelConfig> config;

  /// True when the server runs it now (HOT, or no level but RUNNING).
  [[nodiscard]] bool running() const noexcept;
};

/// What the service said of an API key (transport.hpp: check_api_key).
struct KeyCheck {
  enum class Outcome { accepted, refused, unknown } outcome = Outcome::unknown;
  long http_status = 0;  ///< 0 when the service could not be reached
  std::string words;     ///< the server's own words, or the transport error
};

/// Parses a GET /status reply `{"deployments": {name: {...}}, ...}`; entries that are not objects
/// are skipped. Throws DecodeError when there is no "deployments" object.
[[nodiscard]] std::vector<Deployment> parse_deployments(std::string_view body);

/// The deployment a job runs on: the one whose `model_key` equals `model_key` when the job names
/// one, else the one whose `repo_id` equals `model` (an exact match before ndif-local's "*").
/// Throws InputError, listing what the server does serve and naming the job's keys as the fix,
/// when none matches.
[[nodiscard]] const Deployment& choose_deployment(const std::vector<Deployment>& deployments,
                                                  const std::string& model,
                                                  const std::optional<std::string>& model_key,
                                                  const std::string& base_url);

}  // namespace ndif::remote
