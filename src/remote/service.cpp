#include "ndif_sweep/remote/service.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

using json = nlohmann::json;

std::string string_or_empty(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::optional<int> positive(const json& object, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const auto it = object.find(key);
    if (it != object.end() && it->is_number_integer() && it->get<std::int64_t>() > 0 &&
        it->get<std::int64_t>() <= 1'000'000'000) {
      return it->get<int>();
    }
  }
  return std::nullopt;
}

// A transformers config: hidden_size / num_hidden_layers, or the names of models that predate them
// (GPT-2's n_embd / n_layer; T5's d_model / num_layers), at the top or in a multimodal text_config.
std::optional<spec::ModelConfig> model_shape(const json& config) {
  for (const json* level : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
    if (level == nullptr || !level->is_object()) continue;
    const auto hidden = positive(*level, {"hidden_size", "n_embd", "d_model"});
    const auto layers = positive(*level, {"num_hidden_layers", "n_layer", "num_layers"});
    if (hidden && layers) return spec::ModelConfig{*hidden, *layers};
  }
  return std::nullopt;
}

}  // namespace

ServerEnv parse_env(std::string_view body) {
  const auto root = json::parse(body, nullptr, false);
  if (!root.is_object() || !root.contains("python_version") || !root["python_version"].is_string()) {
    throw DecodeError(fmt::format("GET /env: expected {{\"python_version\", \"packages\"}}, got \"{}\"",
                                  reply_excerpt(body)));
  }
  ServerEnv env;
  env.python_version = root["python_version"].get<std::string>();
  if (const auto packages = root.find("packages"); packages != root.end() && packages->is_object()) {
    const std::string version = string_or_empty(*packages, "nnsight");
    if (!version.empty()) env.nnsight_version = version;
  }
  return env;
}

bool Deployment::running() const noexcept {
  if (!deployment_level.empty()) return deployment_level == "HOT" && application_state != "UNHEALTHY";
  return application_state == "RUNNING";
}

std::vector<Deployment> parse_deployments(std::string_view body) {
  const auto root = json::parse(body, nullptr, false);
  if (!root.is_object() || !root.contains("deployments") || !root["deployments"].is_object()) {
    throw DecodeError(
        fmt::format("GET /status: the reply has no \"deployments\" object (\"{}\")", reply_excerpt(body)));
  }
  std::vector<Deployment> out;
  for (const auto& [name, entry] : root["deployments"].items()) {
    if (!entry.is_object()) continue;
    Deployment d;
    d.name = name;
    d.model_key = string_or_empty(entry, "model_key");
    d.repo_id = string_or_empty(entry, "repo_id");
    d.application_state = string_or_empty(entry, "application_state");
    d.deployment_level = string_or_empty(entry, "deployment_level");
    if (const auto config = entry.find("config"); config != entry.end()) {
      if (config->is_object()) {
        d.config = model_shape(*config);
      } else if (config->is_string()) {
        const auto parsed = json::parse(config->get<std::string>(), nullptr, false);
        if (parsed.is_object()) d.config = model_shape(parsed);
      }
    }
    out.push_back(std::move(d));
  }
  return out;
}

const Deployment& choose_deployment(const std::vector<Deployment>& deployments, const std::string& model,
                                    const std::optional<std::string>& model_key,
                                    const std::string& base_url) {
  std::vector<std::string> listed;
  for (const auto& d : deployments) {
    listed.push_back(fmt::format("\"{}\"{}", d.repo_id.empty() ? d.name : d.repo_id,
                                 d.deployment_level.empty() ? "" : " (" + d.deployment_level + ")"));
  }
  const std::string served = listed.empty() ? "none" : fmt::format("{}", fmt::join(listed, ", "));
  if (model_key) {
    for (const auto& d : deployments)
      if (d.model_key == *model_key) return d;
    std::vector<std::string> keys;
    for (const auto& d : deployments)
      if (!d.model_key.empty() && (d.repo_id == model || d.repo_id == "*")) keys.push_back(d.model_key);
    throw InputError(fmt::format(
        "the job's \"model_key\" {} is not a deployment at {}{}; use the key exactly as GET /status lists "
        "it, "
        "or drop \"model_key\" to take it from there (deployments: {})",
        json(*model_key).dump(), base_url,
        keys.empty() ? std::string() : fmt::format(" (for {} it lists {})", model, json(keys).dump()),
        served));
  }
  const Deployment* wildcard = nullptr;
  for (const auto& d : deployments) {
    if (d.repo_id == model) return d;
    if (wildcard == nullptr && (d.repo_id == "*" || d.name == "*")) wildcard = &d;
  }
  if (wildcard != nullptr) return *wildcard;
  throw InputError(
      fmt::format("model \"{}\" is not deployed at {} (deployments: {}); check \"model\" in the job", model,
                  base_url, served));
}

}  // namespace ndif::remote
