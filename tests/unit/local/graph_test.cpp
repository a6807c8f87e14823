#include "ndif_sweep/local/graph.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "ndif_sweep/core/error.hpp"
#include "request_builder.hpp"

namespace ndif::local {
namespace {

using json = nlohmann::json;
using testing::RequestBuilder;

const SyntheticModel kModel({4, 8, 0, DType::bfloat16});
const std::vector<std::vector<std::int64_t>> kPrompts = {{5, 6, 7}, {1, 2, 3, 4, 9}, {42, 43}};

/// The single saved tensor of a result dict, with its node index.
std::pair<std::int64_t, torchsave::Tensor> only_saved(const torchsave::Value& result) {
  const auto& dict = std::get<torchsave::Dict>(result.v);
  EXPECT_EQ(dict.items.size(), 1U);
  return {std::get<std::int64_t>(dict.items.at(0).first.v),
          std::get<torchsave::Tensor>(dict.items.at(0).second.v)};
}

std::vector<std::uint16_t> bits16(const torchsave::Tensor& tensor) {
  const auto bytes = tensor.contiguous_bytes();
  std::vector<std::uint16_t> out(bytes.size() / 2);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

std::vector<float> floats(const torchsave::Tensor& tensor) {
  const auto bytes = tensor.contiguous_bytes();
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

float expected(const std::vector<std::int64_t>& prompt, const std::string& module, std::int64_t p, int j) {
  return kModel.value(prefix_states(prompt, 0)[static_cast<std::size_t>(p)], module_code(module),
                      static_cast<std::uint64_t>(j));
}

TEST(Graph, SweepRequestReturnsPaddingAdjustedHalfValues) {
  const std::vector<int> layers = {1, 3};
  const std::vector<std::int64_t> positions = {0, 1};  // unpadded token indices
  const auto [request, saved] = testing::sweep_request(kPrompts, layers, positions, "half");
  const auto [key, tensor] = only_saved(run_request(parse_request(request), kModel));
  EXPECT_EQ(key, static_cast<std::int64_t>(saved));
  ASSERT_EQ(tensor.dtype(), DType::float16);
  ASSERT_EQ(tensor.shape, (std::vector<std::int64_t>{3, 2, 2, 8}));
  const auto bits = bits16(tensor);
  std::size_t n = 0;
  for (const auto& prompt : kPrompts) {
    for (const int layer : layers) {
      for (const auto p : positions) {
        for (int j = 0; j < 8; ++j) {
          EXPECT_EQ(bits[n++],
                    float_to_half_bits(expected(prompt, "model.layers." + std::to_string(layer), p, j)));
        }
      }
    }
  }
}

TEST(Graph, PaddingPositionsAreZeroAndModuleOutputsKeepThePaddedLength) {
  RequestBuilder b;
  auto mlp = b.module("model.layers.2.mlp", 2);  // the 2-token prompt, left-padded to 5
  auto converted = b.convert(mlp, "float");
  b.save(converted);
  const auto [key, tensor] = only_saved(run_request(parse_request(b.finish(kPrompts)), kModel));
  ASSERT_EQ(tensor.shape, (std::vector<std::int64_t>{1, 5, 8}));
  const auto values = floats(tensor);
  for (int s = 0; s < 5; ++s) {
    for (int j = 0; j < 8; ++j) {
      const float want = s < 3 ? 0.0F : expected(kPrompts[2], "model.layers.2.mlp", s - 3, j);
      EXPECT_EQ(values[static_cast<std::size_t>(s * 8 + j)], want) << "s=" << s << " j=" << j;
    }
  }
}

TEST(Graph, GetitemFollowsNumpyRules) {
  RequestBuilder b;
  auto x = b.module("model.norm", 1);  // (1, 5, 8), prompt 1 is the longest: no padding
  // x[:, -1] -> (1, 8)
  auto last = b.getitem(x, RequestBuilder::tuple({b.slice(), -1}));
  // x[0, [1, -1], 2:6:2] -> int and list adjacent: (2, 2)
  auto picked = b.getitem(x, RequestBuilder::tuple({0, RequestBuilder::list({1, -1}), b.slice(2, 6, 2)}));
  // x[[0, 0], 1:3, 3] -> list and int apart: the list's dimension goes first, (2, 2)
  auto apart = b.getitem(x, RequestBuilder::tuple({RequestBuilder::list({0, 0}), b.slice(1, 3), 3}));
  // x[..., 7] -> (1, 5)
  auto ellipsis = b.getitem(x, RequestBuilder::tuple({b.ref({{"type_name", "ELLIPSIS"}}), 7}));
  for (const auto& v : {last, picked, apart, ellipsis}) {
    b.save(b.convert(v, "float"));
  }
  const auto result = run_request(parse_request(b.finish(kPrompts)), kModel);
  const auto& dict = std::get<torchsave::Dict>(result.v);
  ASSERT_EQ(dict.items.size(), 4U);
  const auto& prompt = kPrompts[1];
  auto tensor = [&](std::size_t i) { return std::get<torchsave::Tensor>(dict.items[i].second.v); };

  EXPECT_EQ(tensor(0).shape, (std::vector<std::int64_t>{1, 8}));
  EXPECT_EQ(floats(tensor(0))[5], expected(prompt, "model.norm", 4, 5));

  EXPECT_EQ(tensor(1).shape, (std::vector<std::int64_t>{2, 2}));
  const auto p = floats(tensor(1));
  EXPECT_EQ(p[0], expected(prompt, "model.norm", 1, 2));
  EXPECT_EQ(p[1], expected(prompt, "model.norm", 1, 4));
  EXPECT_EQ(p[2], expected(prompt, "model.norm", 4, 2));
  EXPECT_EQ(p[3], expected(prompt, "model.norm", 4, 4));

  EXPECT_EQ(tensor(2).shape, (std::vector<std::int64_t>{2, 2}));
  const auto a = floats(tensor(2));
  EXPECT_EQ(a[0], expected(prompt, "model.norm", 1, 3));
  EXPECT_EQ(a[1], expected(prompt, "model.norm", 2, 3));
  EXPECT_EQ(a[2], a[0]);

  EXPECT_EQ(tensor(3).shape, (std::vector<std::int64_t>{1, 5}));
  EXPECT_EQ(floats(tensor(3))[2], expected(prompt, "model.norm", 2, 7));
}

TEST(Graph, StackAndCatPlaceTheNewDimension) {
  RequestBuilder b;
  auto x0 = b.getitem(b.module("model.embed_tokens", 0), 0);  // (5, 8)
  auto x1 = b.getitem(b.module("model.embed_tokens", 1), 0);
  b.save(b.stack({x0, x1}, -1));                                                             // (5, 8, 2)
  b.save(b.node("torch.cat", json::array({RequestBuilder::list({x0, x1})}), {{"dim", 0}}));  // (10, 8)
  const auto result = run_request(parse_request(b.finish(kPrompts)), kModel);
  const auto& dict = std::get<torchsave::Dict>(result.v);
  ASSERT_EQ(dict.items.size(), 2U);
  const auto stacked = std::get<torchsave::Tensor>(dict.items[0].second.v);
  const auto joined = std::get<torchsave::Tensor>(dict.items[1].second.v);
  EXPECT_EQ(stacked.shape, (std::vector<std::int64_t>{5, 8, 2}));
  EXPECT_EQ(joined.shape, (std::vector<std::int64_t>{10, 8}));
  EXPECT_EQ(stacked.dtype(), DType::bfloat16);
  const auto s = bits16(stacked);
  // element [4, 3, 1]: invoke 1, position 4 (no padding), hidden 3
  EXPECT_EQ(s[(4 * 8 + 3) * 2 + 1],
            float_to_bfloat16_bits(expected(kPrompts[1], "model.embed_tokens", 4, 3)));
  // element [4, 3, 0]: invoke 0 is padded by 2, so position 4 is its token 2
  EXPECT_EQ(s[(4 * 8 + 3) * 2 + 0],
            float_to_bfloat16_bits(expected(kPrompts[0], "model.embed_tokens", 2, 3)));
  const auto c = bits16(joined);
  EXPECT_EQ(c[(5 + 4) * 8 + 3], s[(4 * 8 + 3) * 2 + 1]);
}

/// The InvalidRequest message of running a graph with one module access and a getitem key.
std::string run_error(const std::string& path, const json& key = 0,
                      const std::string& function = "_operator.getitem") {
  RequestBuilder b;
  auto out =
      b.node("nnsight.intervention.protocols.intervention.InterventionProtocol", json::array({path, 0, 0}));
  b.save(b.node(function, json::array({out, key})));
  try {
    (void)run_request(parse_request(b.finish(kPrompts)), kModel);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Graph, RequestsThatCannotRunSayWhyWithTheInvalidRequestPrefix) {
  EXPECT_EQ(
      run_error(".model.layerz.3.output").rfind("InvalidRequest: unknown module path \"model.layerz.3\"", 0),
      0U);
  EXPECT_NE(run_error(".model.layers.4.output").find("unknown module path \"model.layers.4\""),
            std::string::npos);
  EXPECT_NE(run_error(".model.layers.1.input").find("module inputs are not supported"), std::string::npos);
  EXPECT_NE(run_error(".model.layers.1.output", 1).find("tuple index 1 out of range"), std::string::npos);
  EXPECT_NE(run_error(".model.layers.1.mlp.output", RequestBuilder::tuple({0, 9}))
                .find("index 9 is out of range for dimension 1 of size 5"),
            std::string::npos);
  EXPECT_NE(
      run_error(".model.norm.output", 0, "torch.frobnicate").find("unknown function \"torch.frobnicate\""),
      std::string::npos);
  for (const auto& message :
       {run_error(".model.layers.4.output"), run_error(".model.norm.output", 0, "x.y")}) {
    EXPECT_EQ(message.rfind(kInvalidRequestPrefix, 0), 0U) << message;
  }
}

TEST(Graph, StackOfDifferentShapesIsInvalid) {
  RequestBuilder b;
  auto x = b.module("model.norm", 0);
  auto a = b.getitem(x, RequestBuilder::tuple({0, b.slice(0, 2)}));
  auto c = b.getitem(x, RequestBuilder::tuple({0, b.slice(0, 3)}));
  b.save(b.stack({a, c}, 0));
  try {
    (void)run_request(parse_request(b.finish(kPrompts)), kModel);
    FAIL() << "stack of (2, 8) and (3, 8) ran";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "InvalidRequest: torch.stack: tensor 1 has shape (3, 8) but tensor 0 has shape (2, 8)");
  }
}

TEST(Graph, ParseRejectsBodiesWithoutTheG2Shape) {
  EXPECT_THROW((void)parse_request(json::array()), InputError);
  EXPECT_THROW((void)parse_request(json{{"graph", {{"type_name", "GRAPH"}, {"nodes", json::array()}}}}),
               InputError);
  EXPECT_THROW(
      (void)parse_request(json{{"graph", {{"type_name", "REFERENCE"}, {"id", 3}}}, {"memo", json::object()}}),
      InputError);
  EXPECT_THROW((void)parse_request(json{{"graph", {{"type_name", "GRAPH"}, {"nodes", json::array({1})}}},
                                        {"memo", json::object()}}),
               InputError);
}

}  // namespace
}  // namespace ndif::local
