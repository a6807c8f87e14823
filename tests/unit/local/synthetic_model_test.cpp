#include "ndif_sweep/local/synthetic_model.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ndif::local {
namespace {

const std::vector<std::int64_t> kTokens = {128000, 791, 8415};

TEST(SyntheticModel, MixIsTheSplitMix64Finaliser) {
  // SplitMix64's first output for seed 0 is mix(golden gamma), a published constant.
  EXPECT_EQ(mix(0x9E3779B97F4A7C15ULL), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(mix(1), 0x5692161D100B05E5ULL);
}

TEST(SyntheticModel, ModuleCodeIsFnv1a64) {
  EXPECT_EQ(module_code(""), 0xCBF29CE484222325ULL);
  EXPECT_EQ(module_code("a"), 0xAF63DC4C8601EC8CULL);
  EXPECT_EQ(module_code("model.layers.3"), 0x8E7FA9867FE77DB9ULL);
}

TEST(SyntheticModel, PrefixStatesMatchTheReferenceImplementation) {
  const auto states = prefix_states(kTokens, 0);
  ASSERT_EQ(states.size(), 3U);
  EXPECT_EQ(states[0], 0x8A0FB19D67AF989DULL);
  EXPECT_EQ(states[1], 0x0C8FAC50F5AE182BULL);
  EXPECT_EQ(states[2], 0xCDDB340E9470778FULL);
}

TEST(SyntheticModel, ValuesMatchConstantsFromTheNumpyImplementation) {
  const auto states = prefix_states(kTokens, 0);
  const auto code = module_code("model.layers.3");
  EXPECT_EQ(std::bit_cast<std::uint32_t>(raw_value(states[0], code, 0)), 0xBF608C40U);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(raw_value(states[2], code, 5)), 0x3F61A6F4U);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(raw_value(states[2], code, 63)), 0xBEECFFB4U);

  const SyntheticModel bf16_model({32, 64, 0, DType::bfloat16});
  EXPECT_EQ(float_to_bfloat16_bits(bf16_model.value(states[0], code, 0)), 0xBF61U);
  EXPECT_EQ(float_to_bfloat16_bits(bf16_model.value(states[2], code, 5)), 0x3F62U);
  EXPECT_EQ(float_to_half_bits(bf16_model.value(states[0], code, 0)), 0xBB08U);
  EXPECT_EQ(float_to_half_bits(bf16_model.value(states[2], code, 63)), 0xB768U);

  const SyntheticModel f32_model({4, 64, 7, DType::float32});
  const auto states7 = prefix_states(kTokens, 7);
  EXPECT_EQ(float_to_half_bits(f32_model.value(states7[1], module_code("model.norm"), 1)), 0xB90CU);
  EXPECT_EQ(float_to_half_bits(f32_model.value(states7[2], module_code("model.norm"), 40)), 0xB41CU);
}

TEST(SyntheticModel, HalfConversionRoundsToNearestEvenWithSubnormals) {
  EXPECT_EQ(float_to_half_bits(0x1p-24F), 0x0001U);         // smallest subnormal
  EXPECT_EQ(float_to_half_bits(0x1p-25F), 0x0000U);         // tie to even: zero
  EXPECT_EQ(float_to_half_bits(0x1.8p-25F), 0x0001U);       // above the tie
  EXPECT_EQ(float_to_half_bits(0x3p-25F), 0x0002U);         // 1.5 units: tie to even 2
  EXPECT_EQ(float_to_half_bits(-0x1p-23F), 0x8002U);        // -2^-23, the value next to -0
  EXPECT_EQ(float_to_half_bits(0x1.ffcp-15F), 0x0400U);     // rounds up into the first normal
  EXPECT_EQ(float_to_half_bits(1.0F + 0x1p-11F), 0x3C00U);  // tie to even, down
  EXPECT_EQ(float_to_half_bits(1.0F + 0x3p-11F), 0x3C02U);  // tie to even, up
  EXPECT_EQ(float_to_half_bits(65504.0F), 0x7BFFU);
  EXPECT_EQ(float_to_half_bits(65520.0F), 0x7C00U);
  EXPECT_EQ(half_bits_to_float(0x0001U), 0x1p-24F);
  EXPECT_EQ(half_bits_to_float(0xBB08U), -0x1.c2p-1F);
}

TEST(SyntheticModel, BFloat16ConversionRoundsToNearestEven) {
  EXPECT_EQ(float_to_bfloat16_bits(1.0F + 0x1p-8F), 0x3F80U);
  EXPECT_EQ(float_to_bfloat16_bits(1.0F + 0x3p-8F), 0x3F82U);
  EXPECT_EQ(float_to_bfloat16_bits(-0x1p-23F), 0xB400U);
  EXPECT_EQ(bfloat16_bits_to_float(0x3F82U), 1.015625F);
}

TEST(SyntheticModel, ModuleTreeOfALlamaStyleDecoder) {
  const SyntheticModel model({4, 8, 0, DType::bfloat16});
  EXPECT_EQ(model.output_kind("model.embed_tokens"), OutputKind::tensor);
  EXPECT_EQ(model.output_kind("model.norm"), OutputKind::tensor);
  EXPECT_EQ(model.output_kind("model.layers.0"), OutputKind::tuple);
  EXPECT_EQ(model.output_kind("model.layers.3.self_attn"), OutputKind::tuple);
  EXPECT_EQ(model.output_kind("model.layers.3.mlp"), OutputKind::tensor);
  EXPECT_EQ(model.output_kind("model.layers.4"), std::nullopt);
  EXPECT_EQ(model.output_kind("model.layers.03"), std::nullopt);
  EXPECT_EQ(model.output_kind("model.layerz.3"), std::nullopt);
  EXPECT_EQ(model.output_kind("model.layers.1.attn"), std::nullopt);
}

/// Runs the independent NumPy implementation on `queries` and returns one bit matrix per query.
std::vector<std::vector<std::vector<std::uint32_t>>> run_python(const nlohmann::json& queries) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto in = dir / ("ndif_local_synthetic_" + std::to_string(::getpid()) + ".jsonl");
  {
    std::ofstream out(in);
    for (const auto& query : queries) {
      out << query.dump() << '\n';
    }
  }
  const std::string command =
      "/usr/bin/python3 " NDIF_SOURCE_DIR "/tests/tools/synthetic_model.py < " + in.string();
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  for (std::size_t n = 0; pipe && (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) {
    output.append(buffer, n);
  }
  EXPECT_EQ(pipe ? ::pclose(pipe) : -1, 0) << command;
  std::filesystem::remove(in);
  std::vector<std::vector<std::vector<std::uint32_t>>> results;
  std::size_t start = 0;
  for (std::size_t end; (end = output.find('\n', start)) != std::string::npos; start = end + 1) {
    results.push_back(nlohmann::json::parse(output.substr(start, end - start))
                          .at("bits")
                          .get<std::vector<std::vector<std::uint32_t>>>());
  }
  return results;
}

TEST(SyntheticModel, AgreesBitForBitWithTheNumpyImplementation) {
  nlohmann::json queries = nlohmann::json::array();
  std::vector<std::int64_t> long_prompt;
  for (int i = 0; i < 300; ++i) {
    long_prompt.push_back((i * 7919) % 128256);
  }
  const std::vector<std::string> dtypes = {"float32", "bfloat16", "float16"};
  const std::vector<std::pair<std::string, std::uint64_t>> cases = {
      {"model.layers.3", 0}, {"model.mlp", 0}, {"model.layers.31.self_attn", 12345}, {"model.norm", 7}};
  for (const auto& [module, seed] : cases) {
    for (const auto& held : dtypes) {
      for (const auto& target : dtypes) {
        queries.push_back({{"tokens", long_prompt},
                           {"module", module},
                           {"seed", seed},
                           {"hidden", 64},
                           {"model_dtype", held},
                           {"target_dtype", target}});
      }
    }
  }
  const auto expected = run_python(queries);
  ASSERT_EQ(expected.size(), queries.size());
  auto dtype_of = [](const std::string& name) {
    return name == "float32" ? DType::float32 : name == "float16" ? DType::float16 : DType::bfloat16;
  };
  std::size_t compared = 0;
  for (std::size_t q = 0; q < queries.size(); ++q) {
    const auto& query = queries[q];
    const SyntheticModel model(
        {32, 64, query["seed"].get<std::uint64_t>(), dtype_of(query["model_dtype"].get<std::string>())});
    const auto target = dtype_of(query["target_dtype"].get<std::string>());
    const auto states = prefix_states(long_prompt, query["seed"].get<std::uint64_t>());
    const auto code = module_code(query["module"].get<std::string>());
    for (std::size_t i = 0; i < states.size(); ++i) {
      for (std::uint64_t j = 0; j < 64; ++j) {
        const float held = model.value(states[i], code, j);
        const std::uint32_t bits = target == DType::float32   ? std::bit_cast<std::uint32_t>(held)
                                   : target == DType::float16 ? float_to_half_bits(held)
                                                              : float_to_bfloat16_bits(held);
        ASSERT_EQ(bits, expected[q][i][j]) << query.dump() << " i=" << i << " j=" << j;
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, queries.size() * 300 * 64);
}

}  // namespace
}  // namespace ndif::local
