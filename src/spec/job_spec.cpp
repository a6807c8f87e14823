#include "ndif_sweep/spec/job_spec.hpp"

#include <algorithm>
#include <cctype>
#include <set>
#include <string_view>

#include "json_checks.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"

namespace ndif::spec {

using detail::fail;
using detail::ObjectReader;
using nlohmann::json;

const char* encoder_name(EncoderKind kind) noexcept {
  return kind == EncoderKind::nnsight ? "nnsight" : "graph";
}

const char* protocol_name(Protocol protocol) noexcept { return protocol == Protocol::g2 ? "g2" : "g4"; }

std::string Probe::module_for(int layer) const {
  static constexpr std::string_view kPlaceholder = "{layer}";
  const std::string number = std::to_string(layer);
  std::string path = module;
  for (auto at = path.find(kPlaceholder); at != std::string::npos;
       at = path.find(kPlaceholder, at + number.size())) {
    path.replace(at, kPlaceholder.size(), number);
  }
  return path;
}

std::optional<ModelConfig> JobSpec::effective_model_config() const {
  if (model_config) return model_config;
  if (endpoint == "local") return ModelConfig{local.hidden, local.layers};
  return std::nullopt;
}

namespace {

// Layer numbers beyond this are a typo, and a range up to them would allocate gigabytes before
// the model's shape is known.
constexpr int kMaxLayer = 1 << 16;

bool is_identifier(std::string_view text) {
  if (text.empty() || std::isdigit(static_cast<unsigned char>(text.front())) != 0) return false;
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; });
}

bool is_digits(std::string_view text) {
  return !text.empty() && text.size() <= 9 &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "local" or http(s)://host[:port] with at most a trailing slash: the protocol's paths are
// appended to it, so any other path would silently change every request.
bool is_endpoint(std::string_view text) {
  if (text == "local") return true;
  std::string_view rest;
  if (text.starts_with("http://")) {
    rest = text.substr(7);
  } else if (text.starts_with("https://")) {
    rest = text.substr(8);
  } else {
    return false;
  }
  if (rest.ends_with('/')) rest.remove_suffix(1);
  std::string_view host = rest;
  std::string_view port;
  if (rest.starts_with('[')) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    host = rest.substr(0, close + 1);
    const std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(':')) return false;
      port = after.substr(1);
      if (port.empty()) return false;
    }
    const std::string_view inside = host.substr(1, host.size() - 2);
    if (!std::all_of(inside.begin(), inside.end(), [](char c) {
          return std::isxdigit(static_cast<unsigned char>(c)) != 0 || c == ':' || c == '.';
        })) {
      return false;
    }
  } else {
    const auto colon = rest.find(':');
    if (colon != std::string_view::npos) {
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      if (port.empty()) return false;
    }
    if (host.empty() || !std::all_of(host.begin(), host.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '-' || c == '_';
        })) {
      return false;
    }
  }
  if (!port.empty()) {
    if (!is_digits(port)) return false;
    const int number = std::stoi(std::string(port));
    if (number < 1 || number > 65535) return false;
  }
  return true;
}

// Activations are stored as float16, bfloat16 or float32 only.
std::optional<DType> activation_dtype(const std::string& name) {
  const auto dtype = dtype_from_name(name);
  return dtype && is_activation_dtype(*dtype) ? dtype : std::nullopt;
}

// "start:stop[:step]" with Python's range semantics, restricted to non-negative numbers.
std::optional<std::vector<int>> parse_layer_range(std::string_view text) {
  std::vector<std::string_view> parts;
  for (std::size_t begin = 0;;) {
    const auto colon = text.find(':', begin);
    parts.push_back(
        text.substr(begin, colon == std::string_view::npos ? std::string_view::npos : colon - begin));
    if (colon == std::string_view::npos) break;
    begin = colon + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) return std::nullopt;
  for (std::string_view part : parts) {
    if (!is_digits(part)) return std::nullopt;
  }
  const int start = std::stoi(std::string(parts[0]));
  const int stop = std::stoi(std::string(parts[1]));
  const int step = parts.size() == 3 ? std::stoi(std::string(parts[2])) : 1;
  if (step <= 0 || stop > kMaxLayer + 1) return std::nullopt;
  std::vector<int> layers;
  for (int layer = start; layer < stop; layer += step) layers.push_back(layer);
  return layers;
}

// Tuple outputs of a Llama-style decoder (docs/protocol.md, the synthetic model): a decoder layer and its
// self_attn; their element 0 is the hidden state. Every other module returns a tensor.
std::optional<int> default_output_index(std::string_view module) {
  if (module.ends_with("{layer}") || module.ends_with(".self_attn")) return 0;
  return std::nullopt;
}

Probe parse_probe(const json& value, const std::string& prefix, const std::string& key) {
  const ObjectReader reader(value, prefix, key, {"name", "module", "output_index", "layers"});
  Probe probe;
  probe.name = reader.required_string("name", "the dataset name under /acts, e.g. \"resid\"");
  if (!is_identifier(probe.name)) {
    reader.wrong("name", "a name of letters, digits and _ that does not start with a digit");
  }
  probe.module = reader.required_string("module", "e.g. \"model.layers.{layer}\"");
  if (probe.module.find("{layer}") == std::string::npos) {
    reader.wrong("module", "a module path containing {layer}, e.g. \"model.layers.{layer}.mlp\"");
  }
  probe.output_index = default_output_index(probe.module);
  if (const json* index = reader.find("output_index")) {
    if (index->is_null()) {
      probe.output_index.reset();
    } else if (index->is_number_integer() && index->get<std::int64_t>() >= 0 &&
               index->get<std::int64_t>() < 1024) {
      probe.output_index = index->get<int>();
    } else {
      reader.wrong("output_index", "an integer >= 0 (element of a tuple output) or null (a tensor output)");
    }
  }
  const json* layers = reader.find("layers");
  if (layers == nullptr)
    reader.missing("layers", "\"start:stop[:step]\" like \"0:32\", or a list like [8, 16]");
  constexpr const char* kLayersExpected =
      "\"start:stop[:step]\" with non-negative integers selecting at least one layer, or a non-empty list of "
      "distinct non-negative integers";
  if (layers->is_string()) {
    probe.layers_text = layers->get<std::string>();
    auto range = parse_layer_range(probe.layers_text);
    if (!range || range->empty()) reader.wrong("layers", kLayersExpected);
    probe.layers = std::move(*range);
  } else if (layers->is_array() && !layers->empty()) {
    std::set<int> seen;
    for (const json& layer : *layers) {
      if (!layer.is_number_integer() || layer.get<std::int64_t>() < 0 ||
          layer.get<std::int64_t>() > kMaxLayer || !seen.insert(layer.get<int>()).second) {
        reader.wrong("layers", kLayersExpected);
      }
      probe.layers.push_back(layer.get<int>());
    }
    probe.layers_text = json(probe.layers).dump();
    std::string spaced;
    for (char c : probe.layers_text) {
      spaced += c;
      if (c == ',') spaced += ' ';
    }
    probe.layers_text = spaced;
  } else {
    reader.wrong("layers", kLayersExpected);
  }
  return probe;
}

std::filesystem::path resolve_path(const std::filesystem::path& job_file, const std::string& written) {
  const std::filesystem::path path(written);
  // Normalised so that messages and the output path read "out/demo.h5", not "jobs/../out/demo.h5".
  return (path.is_relative() ? job_file.parent_path() / path : path).lexically_normal();
}

std::string as_written(const std::filesystem::path& job_file, const std::filesystem::path& resolved) {
  const std::filesystem::path base = job_file.parent_path();
  if (base.empty()) return resolved.generic_string();
  const std::filesystem::path relative = resolved.lexically_relative(base);
  return relative.empty() ? resolved.generic_string() : relative.generic_string();
}

JobSpec parse_job(const json& root, const std::filesystem::path& job_file) {
  const std::string prefix = job_file.string() + ": ";
  if (!root.is_object()) fail(prefix, "the job spec must be a JSON object, got " + detail::describe(root));
  if (root.contains("api_key")) {
    fail(prefix,
         "\"api_key\" must not be in a job file: put the key in an environment variable and name that "
         "variable "
         "with \"api_key_env\" (default NDIF_API_KEY)");
  }
  const ObjectReader reader(root, prefix, "",
                            {"model",       "revision",  "endpoint",           "local",
                             "api_key_env", "tokenizer", "add_special_tokens", "prompts",
                             "positions",   "probes",    "model_config",       "dtype",
                             "batch",       "retry",     "timeouts",           "max_inflight",
                             "output",      "encoder",   "protocol",           "python",
                             "model_key"});
  JobSpec spec;
  spec.job_file = job_file;
  spec.model = reader.required_string("model", "the model's repo id, e.g. \"meta-llama/Llama-3.1-8B\"");
  if (const json* revision = reader.find("revision"); revision != nullptr && !revision->is_null()) {
    spec.revision = reader.string("revision", "");
  }
  spec.endpoint = reader.string("endpoint", spec.endpoint);
  if (!is_endpoint(spec.endpoint)) {
    reader.wrong("endpoint", "\"local\" or a base URL http(s)://host[:port] without a path");
  }
  if (const json* local = reader.find("local")) {
    const ObjectReader local_reader(*local, prefix, "local", {"layers", "hidden", "seed", "model_dtype"});
    spec.local.layers = local_reader.positive_int("layers", spec.local.layers);
    spec.local.hidden = local_reader.positive_int("hidden", spec.local.hidden);
    if (const json* seed = local_reader.find("seed")) {
      if (!seed->is_number_integer() || (!seed->is_number_unsigned() && seed->get<std::int64_t>() < 0)) {
        local_reader.wrong("seed", "an integer >= 0");
      }
      spec.local.seed = seed->get<std::uint64_t>();
    }
    spec.local.model_dtype = local_reader.string("model_dtype", spec.local.model_dtype);
    if (!activation_dtype(spec.local.model_dtype)) {
      local_reader.wrong("model_dtype", "\"float16\", \"bfloat16\" or \"float32\"");
    }
  }
  spec.api_key_env = reader.string("api_key_env", spec.api_key_env);
  if (!is_identifier(spec.api_key_env)) {
    reader.wrong("api_key_env",
                 "the name of an environment variable (letters, digits and _), e.g. \"NDIF_API_KEY\"");
  }
  spec.tokenizer =
      resolve_path(job_file, reader.required_string("tokenizer", "the path of the model's tokenizer.json"));
  spec.add_special_tokens = reader.boolean("add_special_tokens", spec.add_special_tokens);
  spec.prompts =
      resolve_path(job_file, reader.required_string("prompts", "the path of a JSON Lines prompts file"));
  if (const json* positions = reader.find("positions")) {
    spec.positions = detail::parse_positions(*positions, prefix, "positions");
  } else {
    PositionSpec last_token;
    last_token.index = -1;
    spec.positions = {last_token};
  }

  const json* probes = reader.find("probes");
  if (probes == nullptr) {
    reader.missing(
        "probes",
        "a list like [{\"name\": \"resid\", \"module\": \"model.layers.{layer}\", \"layers\": \"0:32\"}]");
  }
  if (!probes->is_array() || probes->empty()) reader.wrong("probes", "a non-empty list of probe objects");
  for (std::size_t i = 0; i < probes->size(); ++i) {
    const std::string key = "probes[" + std::to_string(i) + "]";
    Probe probe = parse_probe((*probes)[i], prefix, key);
    for (const Probe& earlier : spec.probes) {
      if (earlier.name == probe.name) {
        fail(prefix,
             "\"" + key + ".name\" \"" + probe.name + "\" is used by another probe; names must be unique");
      }
    }
    spec.probes.push_back(std::move(probe));
  }

  if (const json* config = reader.find("model_config"); config != nullptr && !config->is_null()) {
    const ObjectReader config_reader(*config, prefix, "model_config", {"hidden_size", "num_hidden_layers"});
    if (config_reader.find("hidden_size") == nullptr)
      config_reader.missing("hidden_size", "the model's hidden size");
    if (config_reader.find("num_hidden_layers") == nullptr) {
      config_reader.missing("num_hidden_layers", "the model's number of decoder layers");
    }
    spec.model_config = ModelConfig{config_reader.positive_int("hidden_size", 0),
                                    config_reader.positive_int("num_hidden_layers", 0)};
    if (spec.endpoint == "local" && (spec.model_config->hidden_size != spec.local.hidden ||
                                     spec.model_config->num_hidden_layers != spec.local.layers)) {
      fail(prefix, "\"model_config\" (hidden_size " + std::to_string(spec.model_config->hidden_size) +
                       ", num_hidden_layers " + std::to_string(spec.model_config->num_hidden_layers) +
                       ") differs from the bundled server's shape \"local\" (hidden " +
                       std::to_string(spec.local.hidden) + ", layers " + std::to_string(spec.local.layers) +
                       "); with endpoint \"local\" make them equal or drop \"model_config\"");
    }
  }
  if (const json* dtype = reader.find("dtype")) {
    const auto parsed = dtype->is_string() ? activation_dtype(dtype->get<std::string>()) : std::nullopt;
    if (!parsed) reader.wrong("dtype", "\"float16\", \"bfloat16\" or \"float32\"");
    spec.dtype = *parsed;
  }
  if (const json* batch = reader.find("batch")) {
    const ObjectReader batch_reader(*batch, prefix, "batch",
                                    {"target_mb", "max_prompts", "max_tokens", "sort_by_length"});
    spec.batch.target_mb = batch_reader.positive_number("target_mb", spec.batch.target_mb);
    spec.batch.max_prompts = batch_reader.positive_int("max_prompts", spec.batch.max_prompts);
    spec.batch.max_tokens = batch_reader.positive_int("max_tokens", spec.batch.max_tokens);
    spec.batch.sort_by_length = batch_reader.boolean("sort_by_length", spec.batch.sort_by_length);
  }
  if (const json* retry = reader.find("retry")) {
    const ObjectReader retry_reader(*retry, prefix, "retry",
                                    {"max_attempts", "initial_backoff_s", "max_backoff_s"});
    spec.retry.max_attempts = retry_reader.positive_int("max_attempts", spec.retry.max_attempts);
    spec.retry.initial_backoff_s =
        retry_reader.positive_number("initial_backoff_s", spec.retry.initial_backoff_s);
    spec.retry.max_backoff_s = retry_reader.positive_number("max_backoff_s", spec.retry.max_backoff_s);
    if (spec.retry.max_backoff_s < spec.retry.initial_backoff_s) {
      fail(prefix, "\"retry.max_backoff_s\" must be at least \"retry.initial_backoff_s\" (" +
                       json(spec.retry.initial_backoff_s).dump() + "), got " +
                       json(spec.retry.max_backoff_s).dump());
    }
  }
  if (const json* timeouts = reader.find("timeouts")) {
    const ObjectReader timeout_reader(*timeouts, prefix, "timeouts",
                                      {"connect_s", "request_s", "job_s", "poll_interval_s"});
    spec.timeouts.connect_s = timeout_reader.positive_number("connect_s", spec.timeouts.connect_s);
    spec.timeouts.request_s = timeout_reader.positive_number("request_s", spec.timeouts.request_s);
    spec.timeouts.job_s = timeout_reader.positive_number("job_s", spec.timeouts.job_s);
    spec.timeouts.poll_interval_s =
        timeout_reader.positive_number("poll_interval_s", spec.timeouts.poll_interval_s);
  }
  spec.max_inflight = reader.positive_int("max_inflight", spec.max_inflight);
  spec.output =
      resolve_path(job_file, reader.required_string("output", "the HDF5 file to write, e.g. \"out/run.h5\""));

  spec.encoder = spec.endpoint == "local" ? EncoderKind::graph : EncoderKind::nnsight;
  if (reader.find("encoder") != nullptr) {
    spec.encoder_given = true;
    const std::string encoder = reader.string("encoder", "");
    if (encoder == "graph") {
      spec.encoder = EncoderKind::graph;
    } else if (encoder == "nnsight") {
      spec.encoder = EncoderKind::nnsight;
    } else {
      reader.wrong("encoder",
                   "\"nnsight\" (your nnsight builds each request: production NDIF) or \"graph\" "
                   "(ndif-sweep's JSON graph: ndif-local and nnsight-0.4 servers)");
    }
  }
  if (reader.find("protocol") != nullptr) {
    const std::string protocol = reader.string("protocol", "");
    if (protocol == "g4") {
      spec.protocol = Protocol::g4;
    } else if (protocol == "g2") {
      spec.protocol = Protocol::g2;
    } else {
      reader.wrong("protocol",
                   "\"g4\" (nnsight >= 0.8 servers and ndif-local) or \"g2\" (nnsight 0.4 servers)");
    }
  }
  if (spec.encoder == EncoderKind::nnsight && spec.endpoint == "local") {
    fail(prefix,
         "\"encoder\": \"nnsight\" cannot run against \"endpoint\": \"local\": the bundled ndif-local "
         "executes "
         "ndif-sweep's graph, so drop \"encoder\" (or set it to \"graph\") for a local rehearsal");
  }
  if (spec.encoder == EncoderKind::nnsight && spec.protocol == Protocol::g2) {
    fail(prefix,
         "\"encoder\": \"nnsight\" needs \"protocol\": \"g4\"; nnsight-0.4 servers (g2) take only "
         "ndif-sweep's graph, so use \"encoder\": \"graph\" with them");
  }
  if (const json* python = reader.find("python"); python != nullptr && !python->is_null()) {
    spec.python = reader.string("python", "");
    if (spec.python.empty() || spec.python.find('\0') != std::string::npos) {
      reader.wrong("python", "the path or name of a Python interpreter that has nnsight, e.g. \"python3\"");
    }
  }
  if (const json* key = reader.find("model_key"); key != nullptr && !key->is_null()) {
    spec.model_key = reader.string("model_key", "");
    if (spec.model_key->empty()) {
      reader.wrong("model_key", "the model key exactly as the server's GET /status lists it, or null");
    }
  }

  if (const auto config = spec.effective_model_config()) check_layers(spec, *config);
  return spec;
}

}  // namespace

json JobSpec::canonical_json() const {
  json probe_list = json::array();
  for (const Probe& probe : probes) {
    json layers_value = probe.layers_text;
    if (probe.layers_text.starts_with('[')) layers_value = probe.layers;
    probe_list.push_back({{"name", probe.name},
                          {"module", probe.module},
                          {"output_index", probe.output_index ? json(*probe.output_index) : json(nullptr)},
                          {"layers", layers_value}});
  }
  const json position_list = positions_json(positions);
  return json{
      {"model", model},
      {"revision", revision ? json(*revision) : json(nullptr)},
      {"endpoint", endpoint},
      {"local",
       {{"layers", local.layers},
        {"hidden", local.hidden},
        {"seed", local.seed},
        {"model_dtype", local.model_dtype}}},
      {"api_key_env", api_key_env},
      {"tokenizer", as_written(job_file, tokenizer)},
      {"add_special_tokens", add_special_tokens},
      {"prompts", as_written(job_file, prompts)},
      {"positions", position_list},
      {"probes", probe_list},
      {"model_config", model_config ? json{{"hidden_size", model_config->hidden_size},
                                           {"num_hidden_layers", model_config->num_hidden_layers}}
                                    : json(nullptr)},
      {"dtype", dtype_name(dtype)},
      {"batch",
       {{"target_mb", batch.target_mb},
        {"max_prompts", batch.max_prompts},
        {"max_tokens", batch.max_tokens},
        {"sort_by_length", batch.sort_by_length}}},
      {"retry",
       {{"max_attempts", retry.max_attempts},
        {"initial_backoff_s", retry.initial_backoff_s},
        {"max_backoff_s", retry.max_backoff_s}}},
      {"timeouts",
       {{"connect_s", timeouts.connect_s},
        {"request_s", timeouts.request_s},
        {"job_s", timeouts.job_s},
        {"poll_interval_s", timeouts.poll_interval_s}}},
      {"max_inflight", max_inflight},
      {"output", as_written(job_file, output)},
      {"encoder", encoder_name(encoder)},
      {"protocol", protocol_name(protocol)},
      {"python", python.empty() ? json(nullptr) : json(python)},
      {"model_key", model_key ? json(*model_key) : json(nullptr)},
  };
}

void check_layers(const JobSpec& spec, const ModelConfig& config) {
  for (std::size_t i = 0; i < spec.probes.size(); ++i) {
    const Probe& probe = spec.probes[i];
    for (int layer : probe.layers) {
      if (layer >= config.num_hidden_layers) {
        fail(spec.job_file.string() + ": ", "probe \"" + probe.name + "\" (\"probes[" + std::to_string(i) +
                                                "].layers\" " + probe.layers_text + ") asks for layer " +
                                                std::to_string(layer) + ", but the model has " +
                                                std::to_string(config.num_hidden_layers) + " layers (0 to " +
                                                std::to_string(config.num_hidden_layers - 1) + ")");
      }
    }
  }
}

JobSpec parse_job_spec_text(const std::string& text, const std::filesystem::path& job_file) {
  json root;
  try {
    root = detail::parse_unique_keys(text, job_file.string() + ": ");
  } catch (const json::parse_error& error) {
    const auto location = detail::locate_byte(text, error.byte);
    fail(job_file.string() + ":" + std::to_string(location.line) + ":" + std::to_string(location.column) +
             ": ",
         "not valid JSON: " + detail::parse_error_reason(error));
  }
  return parse_job(root, job_file);
}

JobSpec parse_job_spec(const std::filesystem::path& job_file) {
  return parse_job_spec_text(read_file(job_file, "job spec"), job_file);
}

json positions_json(const std::vector<PositionSpec>& positions) {
  json list = json::array();
  for (const PositionSpec& position : positions) list.push_back(detail::position_json(position));
  return list;
}

std::vector<PositionSpec> positions_from_json(const json& value, const std::string& prefix) {
  return detail::parse_positions(value, prefix, "positions");
}

}  // namespace ndif::spec
