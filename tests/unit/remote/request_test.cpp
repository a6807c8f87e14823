#include "ndif_sweep/remote/request.hpp"

#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

using nlohmann::json;

// Two prompts of different lengths, a tuple-output probe over two layers and a tensor-output
// probe over one: every kind of node the graph has.
BatchRequest two_prompt_batch() {
  BatchRequest r;
  r.model = "meta-llama/Llama-3.1-70B";
  r.prompts = {plan::EncodedPrompt{{10, 11, 12, 13, 14}, {4, 1}}, plan::EncodedPrompt{{20, 21}, {1, 0}}};
  r.padded_len = 5;
  spec::Probe resid;
  resid.name = "resid";
  resid.module = "model.layers.{layer}";
  resid.output_index = 0;
  resid.layers = {0, 2};
  spec::Probe mlp;
  mlp.name = "mlp";
  mlp.module = "model.layers.{layer}.mlp";
  mlp.layers = {1};
  r.probes = {resid, mlp};
  r.dtype = DType::bfloat16;
  r.hidden = 8;
  return r;
}

std::string inflate(const std::vector<std::byte>& body) {
  std::string out(1 << 20, '\0');
  uLongf size = out.size();
  EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(out.data()), &size,
                       reinterpret_cast<const Bytef*>(body.data()), static_cast<uLong>(body.size())),
            Z_OK);
  out.resize(size);
  return out;
}

// The graph with every node reference resolved through the memo.
struct Graph {
  json doc;
  std::vector<json> nodes;

  explicit Graph(const std::string& text) : doc(json::parse(text)) {
    for (const auto& ref : doc["graph"]["nodes"]) nodes.push_back(memo(ref));
  }
  [[nodiscard]] json memo(const json& ref) const {
    EXPECT_EQ(ref["type_name"], "REFERENCE");
    return doc["memo"][std::to_string(ref["id"].get<std::int64_t>())];
  }
  // Index of the node a reference points to, or -1.
  [[nodiscard]] int node_index(const json& ref) const {
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (doc["graph"]["nodes"][i]["id"] == ref["id"]) return static_cast<int>(i);
    }
    return -1;
  }
  [[nodiscard]] std::string target(int i) const {
    return nodes[static_cast<std::size_t>(i)]["target"]["function_name"];
  }
  [[nodiscard]] const json& args(int i) const { return nodes[static_cast<std::size_t>(i)]["args"]; }
};

TEST(RequestEncoder, TwoPromptBatchHasOneNodePerOperationInInvokeProbeLayerOrder) {
  const Graph g(GraphRequestEncoder{}.graph_json(two_prompt_batch()));
  // Per invoke: 2 resid layers x (module, getitem 0, positions) + 1 mlp layer x (module, positions) + stack.
  ASSERT_EQ(g.nodes.size(), 2 * 9 + 5);
  const std::vector<std::string> invoke_targets = {
      "nnsight.intervention.protocols.intervention.InterventionProtocol",
      "_operator.getitem",
      "_operator.getitem",
      "nnsight.intervention.protocols.intervention.InterventionProtocol",
      "_operator.getitem",
      "_operator.getitem",
      "nnsight.intervention.protocols.intervention.InterventionProtocol",
      "_operator.getitem",
      "torch.stack"};
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < 9; ++i)
      EXPECT_EQ(g.target(k * 9 + i), invoke_targets[static_cast<std::size_t>(i)]) << k << " " << i;
  }
  EXPECT_EQ(g.target(18), "torch.stack");
  EXPECT_EQ(g.target(19), "nnsight.util.fetch_attr");
  EXPECT_EQ(g.target(20), "nnsight.tracing.graph.proxy.Proxy.call");
  EXPECT_EQ(g.target(21), "nnsight.tracing.protocols.lock.LockProtocol");
  EXPECT_EQ(g.target(22), "nnsight.intervention.contexts.interleaving.InterleavingTracer");

  EXPECT_EQ(g.args(0), json::array({".model.layers.0.output", 0, 0}));
  EXPECT_EQ(g.args(3), json::array({".model.layers.2.output", 0, 0}));
  EXPECT_EQ(g.args(6), json::array({".model.layers.1.mlp.output", 0, 0}));
  EXPECT_EQ(g.args(9), json::array({".model.layers.0.output", 1, 0}));
  EXPECT_EQ(g.args(15), json::array({".model.layers.1.mlp.output", 1, 0}));
  EXPECT_EQ(g.node_index(g.args(1)[0]), 0);
  EXPECT_EQ(g.args(1)[1], 0);                // output_index
  EXPECT_EQ(g.node_index(g.args(7)[0]), 6);  // the tensor-output probe is sliced directly
}

TEST(RequestEncoder, PositionsAreShiftedByEachPromptsLeftPadding) {
  const Graph g(GraphRequestEncoder{}.graph_json(two_prompt_batch()));
  const auto key = [&](int node) { return g.args(node)[1]; };
  // Prompt 0 fills the batch (no padding); prompt 1 has 2 of 5 tokens, so 3 pad tokens precede it.
  for (int node : {2, 5, 7}) {
    EXPECT_EQ(key(node)["type_name"], "TUPLE");
    EXPECT_EQ(key(node)["values"][0], 0);
    EXPECT_EQ(key(node)["values"][1], (json{{"type_name", "LIST"}, {"values", {4, 1}}}));
    EXPECT_EQ(g.memo(key(node)["values"][2]),
              (json{{"type_name", "SLICE"}, {"start", nullptr}, {"stop", nullptr}, {"step", nullptr}}));
  }
  for (int node : {11, 14, 16}) EXPECT_EQ(key(node)["values"][1]["values"], json::array({4, 3}));
}

TEST(RequestEncoder, StacksLayersThenInvokesConvertsAndSavesExactlyOnce) {
  const Graph g(GraphRequestEncoder{}.graph_json(two_prompt_batch()));
  const auto refs = [&](int node) {
    std::vector<int> out;
    for (const auto& r : g.args(node)[0]["values"]) out.push_back(g.node_index(r));
    return out;
  };
  EXPECT_EQ(refs(8), (std::vector<int>{2, 5, 7}));
  EXPECT_EQ(refs(17), (std::vector<int>{11, 14, 16}));
  EXPECT_EQ(refs(18), (std::vector<int>{8, 17}));
  EXPECT_EQ(g.nodes[18]["kwargs"], (json{{"dim", 0}}));
  EXPECT_EQ(g.node_index(g.args(19)[0]), 18);
  EXPECT_EQ(g.args(19)[1], "bfloat16");
  EXPECT_EQ(g.node_index(g.args(20)[0]), 19);
  int locks = 0;
  for (std::size_t i = 0; i < g.nodes.size(); ++i)
    locks += g.target(static_cast<int>(i)) == "nnsight.tracing.protocols.lock.LockProtocol";
  EXPECT_EQ(locks, 1);
  EXPECT_EQ(g.node_index(g.args(21)[0]), 20);
  EXPECT_FALSE(g.nodes[21].contains("kwargs"));  // empty kwargs are omitted, as nnsight does
}

TEST(RequestEncoder, TracerIsLastAndCarriesEveryOtherNodeAndTheTokenIds) {
  const Graph g(GraphRequestEncoder{}.graph_json(two_prompt_batch()));
  const auto& args = g.args(22);
  ASSERT_EQ(args.size(), 4);
  EXPECT_EQ(args[0]["type_name"], "INTERVENTIONGRAPH");
  json subset = json::array();
  for (int i = 0; i < 22; ++i) subset.push_back(i);
  EXPECT_EQ(args[0]["subset"], subset);
  EXPECT_TRUE(args[1].is_null());
  const auto inputs = [&](int k) -> const json& { return args[static_cast<std::size_t>(2 + k)]; };
  EXPECT_EQ(inputs(0)["type_name"], "TUPLE");
  EXPECT_EQ(inputs(0)["values"][1], (json{{"type_name", "DICT"}, {"values", {{"labels", nullptr}}}}));
  const auto& dict = inputs(1)["values"][0]["values"][0];
  EXPECT_EQ(dict["type_name"], "DICT");
  EXPECT_EQ(
      g.memo(dict["values"]["input_ids"]),
      (json{{"type_name", "TENSOR"}, {"values", json::array({json::array({20, 21})})}, {"dtype", "int64"}}));
  EXPECT_EQ(g.memo(dict["values"]["attention_mask"])["values"], json::array({json::array({1, 1})}));
  EXPECT_EQ(g.memo(inputs(0)["values"][0]["values"][0]["values"]["input_ids"])["values"][0],
            json::array({10, 11, 12, 13, 14}));
}

TEST(RequestEncoder, BodyIsTheZlibCompressedGraphAndHeadersFollowNnsight0411) {
  const auto request = two_prompt_batch();
  const auto encoded = GraphRequestEncoder{}.encode(request);
  EXPECT_EQ(inflate(encoded.body), GraphRequestEncoder{}.graph_json(request));
  std::map<std::string, std::string> headers(encoded.headers.begin(), encoded.headers.end());
  EXPECT_EQ(headers.size(), 7);
  EXPECT_EQ(headers["Content-Type"], "application/octet-stream");
  EXPECT_EQ(headers["model_key"],
            R"(nnsight.modeling.language.LanguageModel:{"repo_id": "meta-llama/Llama-3.1-70B"})");
  EXPECT_EQ(headers["format"], "json");
  EXPECT_EQ(headers["zlib"], "True");
  EXPECT_EQ(headers["nnsight-version"], "0.4.11");
  EXPECT_EQ(headers["callback"], "");
  EXPECT_GT(std::stod(headers["sent-timestamp"]), 1.7e9);
  EXPECT_EQ(headers.count("ndif-api-key"), 0);  // the secret is added by the transport only
}

TEST(RequestEncoder, ExpectedResultDescribesTheSavedNodeAndShape) {
  const auto expected = GraphRequestEncoder{}.encode(two_prompt_batch()).expected;
  EXPECT_EQ(expected.saved_node, 20);
  EXPECT_EQ(expected.batch, 2);
  EXPECT_EQ(expected.probe_layers, (std::vector<std::int64_t>{2, 1}));
  EXPECT_EQ(expected.total_layers(), 3);
  EXPECT_EQ(expected.positions, 2);
  EXPECT_EQ(expected.hidden, 8);
  EXPECT_EQ(expected.data_bytes(), 2 * 3 * 2 * 8 * 2);
}

TEST(RequestEncoder, ConversionMethodFollowsTheDtype) {
  auto request = two_prompt_batch();
  request.dtype = DType::float16;
  EXPECT_EQ(Graph(GraphRequestEncoder{}.graph_json(request)).args(19)[1], "half");
  request.dtype = DType::float32;
  EXPECT_EQ(Graph(GraphRequestEncoder{}.graph_json(request)).args(19)[1], "float");
}

TEST(RequestEncoder, RejectsABatchItCannotExpress) {
  auto request = two_prompt_batch();
  request.prompts[1].positions = {2, 0};  // token 2 of a 2-token prompt
  EXPECT_THROW(static_cast<void>(GraphRequestEncoder{}.encode(request)), InputError);
  request = two_prompt_batch();
  request.padded_len = 4;  // shorter than prompt 0
  EXPECT_THROW(static_cast<void>(GraphRequestEncoder{}.encode(request)), InputError);
  request = two_prompt_batch();
  request.prompts[1].positions = {1};
  EXPECT_THROW(static_cast<void>(GraphRequestEncoder{}.encode(request)), InputError);
  request.prompts.clear();
  EXPECT_THROW(static_cast<void>(GraphRequestEncoder{}.encode(request)), InputError);
}

std::string unzstd(const std::vector<std::byte>& body) {
  std::string out(1 << 20, '\0');
  const std::size_t size = ZSTD_decompress(out.data(), out.size(), body.data(), body.size());
  EXPECT_EQ(ZSTD_isError(size), 0U);
  out.resize(ZSTD_isError(size) ? 0 : size);
  return out;
}

TEST(RequestEncoder, G4FramingSendsTheNamedGraphAsAZstdBlobWithAnEnvelope) {
  auto request = two_prompt_batch();
  request.model_key = R"(nnsight.modeling.language.LanguageModel:{"repo_id": "*"})";
  GraphRequestEncoder encoder(spec::Protocol::g4);
  const auto encoded = encoder.encode(request);
  ASSERT_TRUE(encoded.multipart());
  EXPECT_EQ(json::parse(encoded.envelope), (json{{"model_key", request.model_key},
                                                 {"session_id", ""},
                                                 {"compress", true},
                                                 {"env", json::object()}}));
  const auto graph = json::parse(unzstd(encoded.body));
  EXPECT_EQ(graph, json::parse(encoder.graph_json(request)));
  // The converted batch (node 20) is the one the LockProtocol saves; G4 keys it by name.
  EXPECT_EQ(graph["saved"], (json{{"20", kSaveName}}));
  EXPECT_EQ(graph["graph"], json::parse(GraphRequestEncoder{}.graph_json(request))["graph"]);
  EXPECT_EQ(encoded.expected.saved_name, kSaveName);
  EXPECT_EQ(encoded.expected.saved_node, 20);
  std::map<std::string, std::string> headers(encoded.headers.begin(), encoded.headers.end());
  EXPECT_EQ(headers, (std::map<std::string, std::string>{{"nnsight-version", "0.4.11"}}));
  EXPECT_FALSE(GraphRequestEncoder{}.encode(request).multipart());
}

TEST(PaddedBatch, LeftPadsWithThePadIdAndShiftsEveryPositionByItsPadding) {
  const auto padded = pad_batch(two_prompt_batch(), 99);
  EXPECT_EQ(padded.batch, 2);
  EXPECT_EQ(padded.seq, 5);
  EXPECT_EQ(padded.positions, 2);
  EXPECT_EQ(padded.input_ids, (std::vector<std::int32_t>{10, 11, 12, 13, 14, 99, 99, 99, 20, 21}));
  EXPECT_EQ(padded.attention_mask, (std::vector<std::uint8_t>{1, 1, 1, 1, 1, 0, 0, 0, 1, 1}));
  // prompt 0 is unpadded: {4, 1}; prompt 1 has 3 tokens of padding: {1, 0} -> {4, 3}.
  EXPECT_EQ(padded.positions_padded, (std::vector<std::int32_t>{4, 1, 4, 3}));
  auto bad = two_prompt_batch();
  bad.prompts[0].positions = {5, 0};
  EXPECT_THROW(static_cast<void>(pad_batch(bad, 0)), InputError);
  const auto expected = expected_g4_result(two_prompt_batch());
  EXPECT_EQ(expected.saved_name, kSaveName);
  EXPECT_EQ(expected.probe_layers, (std::vector<std::int64_t>{2, 1}));
  EXPECT_EQ(expected.data_bytes(), 2 * 3 * 2 * 8 * 2);
}

TEST(ModelKey, EscapesLikePythonJsonDumpsWithEnsureAscii) {
  EXPECT_EQ(python_json_string("a\"b\\c\n\t\x01"), R"("a\"b\\c\n\t\u0001")");
  EXPECT_EQ(python_json_string("caf\xc3\xa9 \xf0\x9f\x98\x80"), R"("caf\u00e9 \ud83d\ude00")");
  EXPECT_EQ(model_key("gpt2"), R"(nnsight.modeling.language.LanguageModel:{"repo_id": "gpt2"})");
  EXPECT_THROW(static_cast<void>(model_key("bad\xc3")), InputError);
  EXPECT_THROW(static_cast<void>(model_key("bad\xed\xa0\x80")), InputError);  // a lone surrogate
}

}  // namespace
}  // namespace ndif::remote
