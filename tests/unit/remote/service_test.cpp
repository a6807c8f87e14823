#include "ndif_sweep/remote/service.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

using ::testing::HasSubstr;

// The shape of ndif 0.1's GET /status (controller.py status()): the config is the JSON *string*
// of a transformers config, the key names the wrapper class and the task.
constexpr const char* kNdif01Status = R"J({
  "deployments": {
    "r1:ModelActor:llama": {
      "application_state": "RUNNING", "deployment_level": "HOT",
      "model_key": "nnsight.modeling.transformers.TransformersModel:{\"repo_id\": \"meta-llama/Llama-3.1-70B\", \"revision\": null, \"task\": \"text-generation\"}",
      "repo_id": "meta-llama/Llama-3.1-70B", "task": "text-generation",
      "config": "{\n  \"hidden_size\": 8192,\n  \"num_hidden_layers\": 80\n}\n"},
    "r2:ModelActor:gpt2": {
      "application_state": "RUNNING", "deployment_level": "WARM",
      "model_key": "nnsight.modeling.transformers.TransformersModel:{\"repo_id\": \"openai-community/gpt2\", \"revision\": null, \"task\": \"text-generation\"}",
      "repo_id": "openai-community/gpt2", "config": "{\"n_embd\": 768, \"n_layer\": 12}"},
    "google/gemma-3-27b-it": {"deployment_level": "COLD", "repo_id": "google/gemma-3-27b-it"},
    "vlm": {"application_state": "RUNNING", "repo_id": "v", "model_key": "k",
            "config": {"text_config": {"hidden_size": 5376, "num_hidden_layers": 62}}},
    "broken": 7
  },
  "cluster": {"nodes": {}}
})J";

TEST(Deployments, ReadTheShapeFromAConfigStringAnObjectOrGpt2sNames) {
  const auto d = parse_deployments(kNdif01Status);
  ASSERT_EQ(d.size(), 4U);  // "broken" is not an object
  const auto& llama = choose_deployment(d, "meta-llama/Llama-3.1-70B", std::nullopt, "https://api.ndif.us");
  EXPECT_EQ(llama.config->hidden_size, 8192);
  EXPECT_EQ(llama.config->num_hidden_layers, 80);
  EXPECT_TRUE(llama.running());
  EXPECT_THAT(llama.model_key, HasSubstr("\"task\": \"text-generation\""));
  const auto& gpt2 = choose_deployment(d, "openai-community/gpt2", std::nullopt, "x");
  EXPECT_EQ(gpt2.config->hidden_size, 768);
  EXPECT_EQ(gpt2.config->num_hidden_layers, 12);
  EXPECT_FALSE(gpt2.running());  // WARM: the weights are in CPU memory
  const auto& cold = choose_deployment(d, "google/gemma-3-27b-it", std::nullopt, "x");
  EXPECT_FALSE(cold.config);
  EXPECT_FALSE(cold.running());
  EXPECT_EQ(choose_deployment(d, "v", std::nullopt, "x").config->hidden_size, 5376);
}

TEST(Deployments, AJobsModelKeyMustBeListedExactly) {
  const auto d = parse_deployments(kNdif01Status);
  const std::string key =
      R"(nnsight.modeling.transformers.TransformersModel:{"repo_id": "openai-community/gpt2", "revision": null, "task": "text-generation"})";
  EXPECT_EQ(choose_deployment(d, "anything", key, "x").repo_id, "openai-community/gpt2");
  try {
    static_cast<void>(choose_deployment(d, "openai-community/gpt2", key + " ", "https://api.ndif.us"));
    FAIL();
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("is not a deployment at https://api.ndif.us"));
    EXPECT_THAT(e.what(), HasSubstr("for openai-community/gpt2 it lists"));
  }
  try {
    static_cast<void>(choose_deployment(d, "meta-llama/Llama-3.1-405B", std::nullopt, "https://api.ndif.us"));
    FAIL();
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(),
                HasSubstr("model \"meta-llama/Llama-3.1-405B\" is not deployed at https://api.ndif.us"));
    EXPECT_THAT(e.what(), HasSubstr("\"google/gemma-3-27b-it\" (COLD)"));
  }
}

TEST(Env, ParsesNdifsShapeAndRejectsOthers) {
  const auto env =
      parse_env(R"({"python_version": "3.12.11", "packages": {"nnsight": "0.8.1", "torch": "2.13.0"}})");
  EXPECT_EQ(env.python_version, "3.12.11");
  EXPECT_EQ(env.nnsight_version, "0.8.1");
  EXPECT_FALSE(parse_env(R"({"python_version": "3.12", "packages": {}})").nnsight_version);
  EXPECT_THROW(static_cast<void>(parse_env("<html>")), DecodeError);
  EXPECT_THROW(static_cast<void>(parse_env(R"({"packages": {}})")), DecodeError);
  EXPECT_THROW(static_cast<void>(parse_deployments(R"({"deployment": {}})")), DecodeError);
}

}  // namespace
}  // namespace ndif::remote
