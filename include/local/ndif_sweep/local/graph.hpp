#pragma once
/// \file
/// The G2 intervention-graph interpreter of ndif-local (docs/protocol.md, G2): parses the
/// `{"graph", "memo"}` request JSON, runs its nodes against the synthetic model and returns the
/// saved values. Module outputs are lazy: only the elements that indexing selects are computed.
/// Pure: no I/O.

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "ndif_sweep/core/wire.hpp"
#include "ndif_sweep/local/synthetic_model.hpp"
#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::local {

/// A request whose JSON has the G2 shape: the graph's nodes in execution order and the memo.
struct RequestGraph {
  nlohmann::json memo;                ///< memo id (decimal string) -> memoized value
  std::vector<nlohmann::json> nodes;  ///< the NODE objects, a node's index is its position
  std::unordered_map<std::string, std::size_t> node_index;  ///< memo id -> node index
};

/// Checks the G2 shape of a request (`graph` is a GRAPH, possibly through a REFERENCE, whose
/// nodes are NODE objects with a FUNCTION target; `memo` is an object) and indexes its nodes.
/// Throws InputError naming what is wrong (the server answers 422 with it).
[[nodiscard]] RequestGraph parse_request(const nlohmann::json& request);

/// Runs the graph: reads the invokes' token ids from the last node (the InterleavingTracer),
/// left-pads them to the longest, runs every other node in order and returns the G2 result dict
/// `{node_index: value}` for the nodes that LockProtocol nodes reference, in node order.
/// Throws InputError whose message starts with kInvalidRequestPrefix when the request cannot run
/// (unknown function or module path, layer or index out of range, `.input`, shape mismatch).
[[nodiscard]] torchsave::Value run_request(const RequestGraph& request, const SyntheticModel& model);

}  // namespace ndif::local
