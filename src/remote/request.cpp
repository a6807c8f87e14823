#include "ndif_sweep/remote/request.hpp"

#include <fmt/format.h>
#include <zlib.h>
#include <zstd.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/core/utf8.hpp"
#include "ndif_sweep/core/version.hpp"

namespace ndif::remote {
namespace {

// Key order matters to nobody but a human comparing our bodies with nnsight's, so keep nnsight's.
using Json = nlohmann::ordered_json;

constexpr const char* kInterventionProtocol =
    "nnsight.intervention.protocols.intervention.InterventionProtocol";
constexpr const char* kGetItem = "_operator.getitem";
constexpr const char* kStack = "torch.stack";
constexpr const char* kFetchAttr = "nnsight.util.fetch_attr";
constexpr const char* kProxyCall = "nnsight.tracing.graph.proxy.Proxy.call";
constexpr const char* kLockProtocol = "nnsight.tracing.protocols.lock.LockProtocol";
constexpr const char* kInterleavingTracer = "nnsight.intervention.contexts.interleaving.InterleavingTracer";

// G2 cannot serialize torch dtypes, so the conversion is the Tensor method of the same name.
const char* conversion_method(DType dtype) {
  switch (dtype) {
    case DType::float16:
      return "half";
    case DType::bfloat16:
      return "bfloat16";
    case DType::float32:
      return "float";
    default:
      break;
  }
  throw InternalError(fmt::format("the request cannot convert to {}", dtype_name(dtype)));
}

Json reference(std::int64_t memo_id) { return Json{{"type_name", "REFERENCE"}, {"id", memo_id}}; }
Json function(const char* name) { return Json{{"type_name", "FUNCTION"}, {"function_name", name}}; }
Json list(Json values) { return Json{{"type_name", "LIST"}, {"values", std::move(values)}}; }
Json tuple(Json values) { return Json{{"type_name", "TUPLE"}, {"values", std::move(values)}}; }
Json dict(Json values) { return Json{{"type_name", "DICT"}, {"values", std::move(values)}}; }

// The graph and its memo as nnsight 0.4.11's RequestModel dumps them: nodes, tensors and slices
// live in the memo under an integer id and are referenced from everywhere else; a node's index
// is its position in the graph's node list.
class GraphBuilder {
 public:
  struct Node {
    std::int64_t index;
    std::int64_t memo_id;
  };

  Json memoize(Json value) {
    const std::int64_t id = next_id_++;
    memo_[std::to_string(id)] = std::move(value);
    return reference(id);
  }

  Node add(const char* target, Json args, Json kwargs = Json::object()) {
    Json node{{"type_name", "NODE"}, {"target", function(target)}};
    if (!args.empty()) node["args"] = std::move(args);
    if (!kwargs.empty()) node["kwargs"] = std::move(kwargs);
    Json ref = memoize(std::move(node));
    const Node added{static_cast<std::int64_t>(nodes_.size()), ref["id"].get<std::int64_t>()};
    nodes_.push_back(std::move(ref));
    return added;
  }

  [[nodiscard]] std::int64_t node_count() const { return static_cast<std::int64_t>(nodes_.size()); }

  Json finish() && {
    Json graph{{"type_name", "GRAPH"}, {"nodes", std::move(nodes_)}};
    return Json{{"graph", std::move(graph)}, {"memo", std::move(memo_)}};
  }

 private:
  std::int64_t next_id_ = 0;
  Json nodes_ = Json::array();
  Json memo_ = Json::object();
};

Json int64_tensor_row(const std::vector<std::int32_t>& values) {
  Json row = Json::array();
  for (auto v : values) row.push_back(static_cast<std::int64_t>(v));
  return Json{{"type_name", "TENSOR"}, {"values", Json::array({std::move(row)})}, {"dtype", "int64"}};
}

void check_request(const BatchRequest& request) {
  if (request.prompts.empty())
    throw InputError("batch request has no prompts; every batch needs at least one");
  if (request.probes.empty())
    throw InputError("batch request has no probes; the job spec must list at least one");
  const auto positions = request.prompts.front().positions.size();
  for (std::size_t k = 0; k < request.prompts.size(); ++k) {
    const auto& prompt = request.prompts[k];
    const auto n = static_cast<std::int64_t>(prompt.ids.size());
    if (n == 0 || n > request.padded_len) {
      throw InputError(
          fmt::format("batch request: prompt {} has {} tokens, expected 1 to the padded length {}", k, n,
                      request.padded_len));
    }
    if (prompt.positions.size() != positions || positions == 0) {
      throw InputError(
          fmt::format("batch request: prompt {} has {} positions, expected {} (and at least one)", k,
                      prompt.positions.size(), positions));
    }
    for (auto p : prompt.positions) {
      if (p < 0 || p >= n) {
        throw InputError(
            fmt::format("batch request: prompt {} position {} is outside its {} tokens", k, p, n));
      }
    }
  }
  for (const auto& probe : request.probes) {
    if (probe.layers.empty()) throw InputError(fmt::format("probe \"{}\" has no layers", probe.name));
  }
}

ExpectedResult expected_result(const BatchRequest& request, std::int64_t saved_node) {
  ExpectedResult expected;
  expected.saved_node = saved_node;
  expected.saved_name.clear();
  expected.batch = static_cast<std::int64_t>(request.prompts.size());
  for (const auto& probe : request.probes)
    expected.probe_layers.push_back(static_cast<std::int64_t>(probe.layers.size()));
  expected.positions = static_cast<std::int64_t>(request.prompts.front().positions.size());
  expected.hidden = request.hidden;
  expected.dtype = request.dtype;
  return expected;
}

struct BuiltGraph {
  Json json;
  std::int64_t saved_node = 0;
};

BuiltGraph build_graph(const BatchRequest& request, bool named) {
  check_request(request);
  GraphBuilder graph;
  const auto slice_all =
      graph.memoize(Json{{"type_name", "SLICE"}, {"start", nullptr}, {"stop", nullptr}, {"step", nullptr}});

  Json per_invoke = Json::array();
  for (std::size_t k = 0; k < request.prompts.size(); ++k) {
    const auto& prompt = request.prompts[k];
    const auto offset =
        plan::PaddingOffset::for_prompt(request.padded_len, static_cast<std::int32_t>(prompt.ids.size()));
    Json adjusted = Json::array();
    for (auto p : prompt.positions) adjusted.push_back(offset.apply(p));

    Json layers = Json::array();
    for (const auto& probe : request.probes) {
      for (int layer : probe.layers) {
        auto value = graph.add(kInterventionProtocol, Json::array({"." + probe.module_for(layer) + ".output",
                                                                   static_cast<std::int64_t>(k), 0}));
        if (probe.output_index) {
          value = graph.add(kGetItem, Json::array({reference(value.memo_id), *probe.output_index}));
        }
        // x[0, [positions], :]: dim 0 of an invoke's narrowed output is its one prompt.
        const auto rows = graph.add(
            kGetItem,
            Json::array({reference(value.memo_id), tuple(Json::array({0, list(adjusted), slice_all}))}));
        layers.push_back(reference(rows.memo_id));
      }
    }
    const auto stacked = graph.add(kStack, Json::array({list(std::move(layers))}), Json{{"dim", 0}});
    per_invoke.push_back(reference(stacked.memo_id));
  }
  const auto batch = graph.add(kStack, Json::array({list(std::move(per_invoke))}), Json{{"dim", 0}});
  const auto method =
      graph.add(kFetchAttr, Json::array({reference(batch.memo_id), conversion_method(request.dtype)}));
  const auto converted = graph.add(kProxyCall, Json::array({reference(method.memo_id)}));
  graph.add(kLockProtocol, Json::array({reference(converted.memo_id)}));

  Json subset = Json::array();
  for (std::int64_t i = 0; i < graph.node_count(); ++i) subset.push_back(i);
  Json tracer_args =
      Json::array({Json{{"type_name", "INTERVENTIONGRAPH"}, {"subset", std::move(subset)}}, nullptr});
  for (const auto& prompt : request.prompts) {
    const std::vector<std::int32_t> ones(prompt.ids.size(), 1);
    Json inputs = dict(Json{{"input_ids", graph.memoize(int64_tensor_row(prompt.ids))},
                            {"attention_mask", graph.memoize(int64_tensor_row(ones))}});
    tracer_args.push_back(
        tuple(Json::array({tuple(Json::array({std::move(inputs)})), dict(Json{{"labels", nullptr}})})));
  }
  graph.add(kInterleavingTracer, std::move(tracer_args));
  auto json = std::move(graph).finish();
  // G4 results are keyed by the saved variable's name; the graph has no variables, so it names them.
  if (named) json["saved"] = Json{{std::to_string(converted.index), kSaveName}};
  return BuiltGraph{std::move(json), converted.index};
}

// zstd level 6, as nnsight's RequestModel.serialize compresses a G4 blob.
std::vector<std::byte> zstd_compress(const std::string& text) {
  std::vector<std::byte> out(ZSTD_compressBound(text.size()));
  const std::size_t size = ZSTD_compress(out.data(), out.size(), text.data(), text.size(), 6);
  if (ZSTD_isError(size) != 0U)
    throw InternalError(fmt::format("zstd compression of a {}-byte request failed: {}", text.size(),
                                    ZSTD_getErrorName(size)));
  out.resize(size);
  return out;
}

std::vector<std::byte> zlib_compress(const std::string& text) {
  uLongf size = compressBound(static_cast<uLong>(text.size()));
  std::vector<std::byte> out(size);
  const int rc =
      compress2(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(text.data()),
                static_cast<uLong>(text.size()), Z_DEFAULT_COMPRESSION);
  if (rc != Z_OK)
    throw InternalError(
        fmt::format("zlib compress2 of a {}-byte request failed with code {}", text.size(), rc));
  out.resize(size);
  return out;
}

}  // namespace

std::int64_t ExpectedResult::total_layers() const noexcept {
  return std::accumulate(probe_layers.begin(), probe_layers.end(), std::int64_t{0});
}

std::int64_t ExpectedResult::data_bytes() const noexcept {
  return batch * total_layers() * positions * hidden * spec::dtype_bytes(dtype);
}

std::string python_json_string(std::string_view text) {
  std::string out = "\"";
  std::size_t i = 0;
  while (i < text.size()) {
    const auto decoded = next_code_point(text, i);
    if (!decoded) throw InputError(fmt::format("model name is not valid UTF-8 (byte {})", i));
    const char32_t cp = *decoded;
    switch (cp) {
      case U'"':
        out += "\\\"";
        break;
      case U'\\':
        out += "\\\\";
        break;
      case U'\n':
        out += "\\n";
        break;
      case U'\r':
        out += "\\r";
        break;
      case U'\t':
        out += "\\t";
        break;
      case U'\b':
        out += "\\b";
        break;
      case U'\f':
        out += "\\f";
        break;
      default:
        if (cp < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(cp));
        } else if (cp < 0x80) {
          out += static_cast<char>(cp);
        } else if (cp < 0x10000) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(cp));
        } else {
          const auto v = static_cast<unsigned>(cp - 0x10000);
          out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
        }
    }
  }
  out += '"';
  return out;
}

std::string model_key(std::string_view model) {
  return "nnsight.modeling.language.LanguageModel:{\"repo_id\": " + python_json_string(model) + "}";
}

std::string GraphRequestEncoder::graph_json(const BatchRequest& request) const {
  return build_graph(request, framing_ == spec::Protocol::g4).json.dump();
}

EncodedRequest GraphRequestEncoder::encode(const BatchRequest& request) {
  auto built = build_graph(request, framing_ == spec::Protocol::g4);
  EncodedRequest encoded;
  if (framing_ == spec::Protocol::g4) {
    encoded.envelope = Json{
        {"model_key", request.model_key.empty() ? model_key(request.model) : request.model_key},
        {"session_id", ""},
        {"compress", true},
        {"env",
         Json::object()}}.dump();
    encoded.body = zstd_compress(built.json.dump());
    encoded.headers = {{"nnsight-version", kNnsightVersion}};
    encoded.expected = expected_result(request, built.saved_node);
    encoded.expected.saved_name = kSaveName;
    return encoded;
  }
  encoded.body = zlib_compress(built.json.dump());
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  encoded.headers = {
      {"Content-Type", "application/octet-stream"},
      {"model_key", model_key(request.model)},
      {"format", "json"},
      {"zlib", "True"},
      {"sent-timestamp", fmt::format("{}", now)},
      {"nnsight-version", kNnsightVersion},
      {"callback", ""},
  };
  encoded.expected = expected_result(request, built.saved_node);
  return encoded;
}

std::uint64_t request_hash(const BatchRequest& request) {
  // A canonical byte string of the request's fields: every variable-length part is preceded by
  // its length, so that two different requests never serialise alike.
  std::string bytes;
  const auto put_int = [&](std::int64_t v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof v); };
  const auto put_text = [&](std::string_view text) {
    put_int(static_cast<std::int64_t>(text.size()));
    bytes.append(text);
  };
  const auto put_ints = [&](const auto& values) {
    put_int(static_cast<std::int64_t>(values.size()));
    for (const auto v : values) put_int(v);
  };
  put_text(request.model);
  put_text(request.model_key);
  put_int(request.padded_len);
  put_int(static_cast<std::int64_t>(request.prompts.size()));
  for (const auto& p : request.prompts) {
    put_ints(p.ids);
    put_ints(p.positions);
  }
  put_int(static_cast<std::int64_t>(request.probes.size()));
  for (const auto& p : request.probes) {
    put_text(p.module);
    put_int(p.output_index ? *p.output_index : -1);
    put_ints(p.layers);
  }
  put_text(dtype_name(request.dtype));
  put_int(request.hidden);
  return xxh3_64(std::as_bytes(std::span(bytes.data(), bytes.size())));
}

PaddedBatch pad_batch(const BatchRequest& request, std::int32_t pad_token_id) {
  check_request(request);
  PaddedBatch out;
  out.batch = static_cast<std::int64_t>(request.prompts.size());
  out.seq = request.padded_len;
  out.positions = static_cast<std::int64_t>(request.prompts.front().positions.size());
  const auto seq = static_cast<std::size_t>(out.seq);
  out.input_ids.assign(static_cast<std::size_t>(out.batch) * seq, pad_token_id);
  out.attention_mask.assign(static_cast<std::size_t>(out.batch) * seq, 0);
  out.positions_padded.reserve(static_cast<std::size_t>(out.batch * out.positions));
  for (std::size_t b = 0; b < request.prompts.size(); ++b) {
    const auto& prompt = request.prompts[b];
    const auto offset =
        plan::PaddingOffset::for_prompt(request.padded_len, static_cast<std::int32_t>(prompt.ids.size()));
    const std::size_t start = b * seq + (seq - prompt.ids.size());
    std::copy(prompt.ids.begin(), prompt.ids.end(),
              out.input_ids.begin() + static_cast<std::ptrdiff_t>(start));
    std::fill_n(out.attention_mask.begin() + static_cast<std::ptrdiff_t>(start), prompt.ids.size(),
                std::uint8_t{1});
    for (auto p : prompt.positions) out.positions_padded.push_back(offset.apply(p));
  }
  return out;
}

ExpectedResult expected_g4_result(const BatchRequest& request) {
  check_request(request);
  auto expected = expected_result(request, 0);
  expected.saved_name = kSaveName;
  return expected;
}

}  // namespace ndif::remote
