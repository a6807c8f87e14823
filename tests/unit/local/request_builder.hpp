#pragma once
// Builds G2 request JSON for the ndif-local tests, the way the nnsight 0.4 client lays it out:
// every node memoized and referenced by id, the InterleavingTracer last.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ndif::local::testing {

class RequestBuilder {
 public:
  using json = nlohmann::json;

  /// Memoizes `value` and returns a REFERENCE to it.
  json ref(const json& value) {
    const int id = next_id_++;
    memo_[std::to_string(id)] = value;
    return {{"type_name", "REFERENCE"}, {"id", id}};
  }

  /// Appends a node calling `function` and returns its REFERENCE.
  json node(const std::string& function, const json& args, const json& kwargs = json::object()) {
    json n = {{"type_name", "NODE"},
              {"target", {{"type_name", "FUNCTION"}, {"function_name", function}}},
              {"args", args}};
    if (!kwargs.empty()) {
      n["kwargs"] = kwargs;
    }
    auto reference = ref(n);
    nodes_.push_back(reference);
    return reference;
  }
  /// The index of the node that `reference` names.
  [[nodiscard]] std::size_t index_of(const json& reference) const {
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (nodes_[i] == reference) {
        return i;
      }
    }
    return nodes_.size();
  }

  json module(const std::string& path, int invoke) {
    return node("nnsight.intervention.protocols.intervention.InterventionProtocol",
                json::array({"." + path + ".output", invoke, 0}));
  }
  json getitem(const json& value, const json& key) {
    return node("_operator.getitem", json::array({value, key}));
  }
  json stack(const std::vector<json>& items, int dim) {
    return node("torch.stack", json::array({list(items)}), {{"dim", dim}});
  }
  json convert(const json& value, const std::string& method) {
    auto attr = node("nnsight.util.fetch_attr", json::array({value, method}));
    return node("nnsight.tracing.graph.proxy.Proxy.call", json::array({attr}));
  }
  json save(const json& value) {
    return node("nnsight.tracing.protocols.lock.LockProtocol", json::array({value}));
  }

  static json list(const std::vector<json>& items) { return {{"type_name", "LIST"}, {"values", items}}; }
  static json tuple(const std::vector<json>& items) { return {{"type_name", "TUPLE"}, {"values", items}}; }
  json slice(const json& start = nullptr, const json& stop = nullptr, const json& step = nullptr) {
    return ref({{"type_name", "SLICE"}, {"start", start}, {"stop", stop}, {"step", step}});
  }

  /// Adds the tracer with one invoke per prompt and returns the whole request.
  json finish(const std::vector<std::vector<std::int64_t>>& prompts) {
    std::vector<int> subset(nodes_.size());
    for (std::size_t i = 0; i < subset.size(); ++i) {
      subset[i] = static_cast<int>(i);
    }
    json args = json::array({{{"type_name", "INTERVENTIONGRAPH"}, {"subset", subset}}, nullptr});
    for (const auto& tokens : prompts) {
      const json ids = ref({{"type_name", "TENSOR"}, {"values", json::array({tokens})}, {"dtype", "int64"}});
      const json mask = ref({{"type_name", "TENSOR"},
                             {"values", json::array({std::vector<std::int64_t>(tokens.size(), 1)})},
                             {"dtype", "int64"}});
      json inputs = {{"type_name", "DICT"}, {"values", {{"input_ids", ids}, {"attention_mask", mask}}}};
      args.push_back(tuple({tuple({inputs}), {{"type_name", "DICT"}, {"values", {{"labels", nullptr}}}}}));
    }
    node("nnsight.intervention.contexts.interleaving.InterleavingTracer", args);
    return {{"graph", {{"type_name", "GRAPH"}, {"nodes", nodes_}}}, {"memo", memo_}};
  }

 private:
  json memo_ = json::object();
  json nodes_ = json::array();
  int next_id_ = 140000000;
};

/// The sweep's request: per invoke and layer, getitem(getitem(out, 0), (0, [positions + pad], :)),
/// layers then invokes stacked, converted with `method`, saved once. Returns the request and the
/// index of the saved node.
inline std::pair<nlohmann::json, std::size_t> sweep_request(
    const std::vector<std::vector<std::int64_t>>& prompts, const std::vector<int>& layers,
    const std::vector<std::int64_t>& positions, const std::string& method) {
  RequestBuilder b;
  std::size_t longest = 0;
  for (const auto& p : prompts) {
    longest = std::max(longest, p.size());
  }
  std::vector<nlohmann::json> per_invoke;
  for (std::size_t k = 0; k < prompts.size(); ++k) {
    const auto pad = static_cast<std::int64_t>(longest - prompts[k].size());
    std::vector<nlohmann::json> adjusted;
    for (const auto p : positions) {
      adjusted.push_back(p + pad);
    }
    std::vector<nlohmann::json> per_layer;
    for (const int layer : layers) {
      auto out = b.module("model.layers." + std::to_string(layer), static_cast<int>(k));
      auto hidden = b.getitem(out, 0);
      per_layer.push_back(
          b.getitem(hidden, RequestBuilder::tuple({0, RequestBuilder::list(adjusted), b.slice()})));
    }
    per_invoke.push_back(b.stack(per_layer, 0));
  }
  auto converted = b.convert(b.stack(per_invoke, 0), method);
  const std::size_t saved = b.index_of(converted);
  b.save(converted);
  return {b.finish(prompts), saved};
}

}  // namespace ndif::local::testing
