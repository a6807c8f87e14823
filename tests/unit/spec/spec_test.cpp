#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/spec/job_spec.hpp"
#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"

namespace ndif::spec {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

json minimal_job() {
  return json::parse(R"({
    "model": "meta-llama/Llama-3.1-8B",
    "tokenizer": "tok.json",
    "prompts": "prompts.jsonl",
    "output": "out.h5",
    "probes": [{"name": "resid", "module": "model.layers.{layer}", "layers": "0:4"}]
  })");
}

JobSpec parse(const json& job, const std::filesystem::path& file = "job.json") {
  return parse_job_spec_text(job.dump(), file);
}

std::string job_error(const std::string& text) {
  try {
    (void)parse_job_spec_text(text, "job.json");
  } catch (const InputError& error) {
    EXPECT_EQ(error.exit_code(), ExitCode::invalid_input);
    return error.what();
  }
  return "no error";
}

std::string job_error(const json& job) { return job_error(job.dump()); }

std::string prompts_error(const std::string& text) {
  try {
    (void)parse_prompts(text, "prompts.jsonl", {PositionSpec{.is_span = false, .index = -1, .span = {}}});
  } catch (const InputError& error) {
    return error.what();
  }
  return "no error";
}

TEST(JobSpec, EveryDefaultIsTheContractsDefault) {
  const JobSpec spec = parse(minimal_job());
  EXPECT_EQ(spec.model, "meta-llama/Llama-3.1-8B");
  EXPECT_FALSE(spec.revision.has_value());
  EXPECT_EQ(spec.endpoint, "local");
  EXPECT_EQ(spec.local.layers, 32);
  EXPECT_EQ(spec.local.hidden, 64);
  EXPECT_EQ(spec.local.seed, 0U);
  EXPECT_EQ(spec.local.model_dtype, "bfloat16");
  EXPECT_EQ(spec.api_key_env, "NDIF_API_KEY");
  EXPECT_TRUE(spec.add_special_tokens);
  ASSERT_EQ(spec.positions.size(), 1U);
  EXPECT_FALSE(spec.positions[0].is_span);
  EXPECT_EQ(spec.positions[0].index, -1);
  EXPECT_FALSE(spec.model_config.has_value());
  EXPECT_EQ(spec.dtype, DType::float16);
  EXPECT_EQ(spec.batch.target_mb, 32);
  EXPECT_EQ(spec.batch.max_prompts, 256);
  EXPECT_EQ(spec.batch.max_tokens, 32768);
  EXPECT_TRUE(spec.batch.sort_by_length);
  EXPECT_EQ(spec.retry.max_attempts, 6);
  EXPECT_EQ(spec.retry.initial_backoff_s, 1);
  EXPECT_EQ(spec.retry.max_backoff_s, 60);
  EXPECT_EQ(spec.timeouts.connect_s, 10);
  EXPECT_EQ(spec.timeouts.request_s, 300);
  EXPECT_EQ(spec.timeouts.job_s, 3600);
  EXPECT_EQ(spec.timeouts.poll_interval_s, 0.5);
  EXPECT_EQ(spec.max_inflight, 2);
  ASSERT_EQ(spec.probes.size(), 1U);
  EXPECT_EQ(spec.probes[0].output_index, 0);
  EXPECT_EQ(spec.probes[0].layers, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(spec.probes[0].layers_text, "0:4");
}

TEST(JobSpec, PositionsTravelAsTheJobFileWritesThem) {
  const json written = json::parse(R"([-1, 2, {"span": "the", "occurrence": -2, "token": "first"},
                                        {"span": "cat", "occurrence": 0, "token": "last"}])");
  const auto positions = positions_from_json(written, "rank 0's job: ");
  ASSERT_EQ(positions.size(), 4u);
  EXPECT_FALSE(positions[0].is_span);
  EXPECT_EQ(positions[0].index, -1);
  EXPECT_EQ(positions[1].index, 2);
  EXPECT_TRUE(positions[2].is_span);
  EXPECT_EQ(positions[2].span, "the");
  EXPECT_EQ(positions[2].occurrence, -2);
  EXPECT_FALSE(positions[2].last_token);
  EXPECT_EQ(positions[3].span, "cat");
  EXPECT_TRUE(positions[3].last_token);
  EXPECT_EQ(positions_json(positions), written);
  try {
    (void)positions_from_json(json::array(), "rank 0's job: ");
    ADD_FAILURE() << "an empty list was taken";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("rank 0's job: \"positions\" must be", 0), 0u) << e.what();
  }
}

TEST(JobSpec, EveryKeyIsRead) {
  const json job = json::parse(R"({
    "model": "org/m", "revision": "abc123", "endpoint": "https://ndif.example.org:8443/",
    "local": {"layers": 4, "hidden": 16, "seed": 7, "model_dtype": "float32"},
    "api_key_env": "MY_KEY", "tokenizer": "/abs/tok.json", "add_special_tokens": false,
    "prompts": "p.jsonl", "positions": [0, {"span": "cat", "token": "first"}, {"span": "x", "occurrence": 2}],
    "probes": [{"name": "mlp", "module": "model.layers.{layer}.mlp", "layers": [3, 1], "output_index": null},
               {"name": "attn", "module": "model.layers.{layer}.self_attn", "layers": "1:8:3"},
               {"name": "r2", "module": "model.layers.{layer}", "layers": "0:2", "output_index": 1}],
    "model_config": {"hidden_size": 8192, "num_hidden_layers": 80}, "dtype": "bfloat16",
    "batch": {"target_mb": 0.5, "max_prompts": 8, "max_tokens": 1000, "sort_by_length": false},
    "retry": {"max_attempts": 2, "initial_backoff_s": 0.25, "max_backoff_s": 4},
    "timeouts": {"connect_s": 1, "request_s": 2, "job_s": 3, "poll_interval_s": 0.1},
    "max_inflight": 5, "output": "o.h5"})");
  const JobSpec spec = parse(job, "dir/job.json");
  EXPECT_EQ(spec.revision, "abc123");
  EXPECT_EQ(spec.endpoint, "https://ndif.example.org:8443/");
  EXPECT_EQ(spec.local.seed, 7U);
  EXPECT_EQ(spec.local.model_dtype, "float32");
  EXPECT_EQ(spec.api_key_env, "MY_KEY");
  EXPECT_EQ(spec.tokenizer, "/abs/tok.json");
  EXPECT_EQ(spec.prompts, std::filesystem::path("dir/p.jsonl"));
  EXPECT_EQ(spec.output, std::filesystem::path("dir/o.h5"));
  EXPECT_FALSE(spec.add_special_tokens);
  ASSERT_EQ(spec.positions.size(), 3U);
  EXPECT_EQ(spec.positions[0].index, 0);
  EXPECT_TRUE(spec.positions[1].is_span);
  EXPECT_EQ(spec.positions[1].span, "cat");
  EXPECT_EQ(spec.positions[1].occurrence, -1);
  EXPECT_FALSE(spec.positions[1].last_token);
  EXPECT_EQ(spec.positions[2].occurrence, 2);
  EXPECT_TRUE(spec.positions[2].last_token);
  EXPECT_EQ(spec.probes[0].layers, (std::vector<int>{3, 1}));
  EXPECT_EQ(spec.probes[0].layers_text, "[3, 1]");
  EXPECT_FALSE(spec.probes[0].output_index.has_value());
  EXPECT_EQ(spec.probes[1].layers, (std::vector<int>{1, 4, 7}));
  EXPECT_EQ(spec.probes[1].output_index, 0);
  EXPECT_EQ(spec.probes[2].output_index, 1);
  EXPECT_EQ(spec.model_config->hidden_size, 8192);
  EXPECT_EQ(spec.dtype, DType::bfloat16);
  EXPECT_EQ(spec.batch.target_mb, 0.5);
  EXPECT_EQ(spec.batch.max_prompts, 8);
  EXPECT_EQ(spec.batch.max_tokens, 1000);
  EXPECT_FALSE(spec.batch.sort_by_length);
  EXPECT_EQ(spec.retry.initial_backoff_s, 0.25);
  EXPECT_EQ(spec.timeouts.poll_interval_s, 0.1);
  EXPECT_EQ(spec.max_inflight, 5);
}

TEST(JobSpec, OutputIndexDefaultsToZeroOnlyForTupleOutputs) {
  json job = minimal_job();
  job["probes"] = json::parse(R"([
    {"name": "a", "module": "model.layers.{layer}", "layers": [0]},
    {"name": "b", "module": "model.layers.{layer}.self_attn", "layers": [0]},
    {"name": "c", "module": "model.layers.{layer}.mlp", "layers": [0]},
    {"name": "d", "module": "model.layers.{layer}.input_layernorm", "layers": [0]}])");
  const JobSpec spec = parse(job);
  EXPECT_EQ(spec.probes[0].output_index, 0);
  EXPECT_EQ(spec.probes[1].output_index, 0);
  EXPECT_FALSE(spec.probes[2].output_index.has_value());
  EXPECT_FALSE(spec.probes[3].output_index.has_value());
}

TEST(JobSpec, ModuleForFillsInTheLayer) {
  Probe probe;
  probe.module = "model.layers.{layer}.mlp";
  EXPECT_EQ(probe.module_for(17), "model.layers.17.mlp");
  probe.module = "a.{layer}.b.{layer}";
  EXPECT_EQ(probe.module_for(3), "a.3.b.3");
}

TEST(JobSpec, DtypeNamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::float16), "float16");
  EXPECT_STREQ(dtype_name(DType::bfloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::float32), "float32");
  EXPECT_EQ(dtype_bytes(DType::float16), 2);
  EXPECT_EQ(dtype_bytes(DType::bfloat16), 2);
  EXPECT_EQ(dtype_bytes(DType::float32), 4);
}

TEST(JobSpec, RelativePathsResolveAgainstTheJobFilesDirectory) {
  const JobSpec spec = parse(minimal_job(), "/srv/jobs/job.json");
  EXPECT_EQ(spec.tokenizer, std::filesystem::path("/srv/jobs/tok.json"));
  EXPECT_EQ(spec.prompts, std::filesystem::path("/srv/jobs/prompts.jsonl"));
  EXPECT_EQ(spec.output, std::filesystem::path("/srv/jobs/out.h5"));
  EXPECT_EQ(parse(minimal_job(), "job.json").tokenizer, std::filesystem::path("tok.json"));
}

TEST(JobSpec, EffectiveModelConfigPrefersTheGivenShapeThenTheLocalServer) {
  json job = minimal_job();
  job["local"] = {{"layers", 6}, {"hidden", 8}};
  auto config = parse(job).effective_model_config();
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(config->hidden_size, 8);
  EXPECT_EQ(config->num_hidden_layers, 6);

  job["endpoint"] = "http://127.0.0.1:5000";
  EXPECT_FALSE(parse(job).effective_model_config().has_value());

  job["model_config"] = {{"hidden_size", 4096}, {"num_hidden_layers", 32}};
  config = parse(job).effective_model_config();
  EXPECT_EQ(config->hidden_size, 4096);
  EXPECT_EQ(config->num_hidden_layers, 32);
}

TEST(JobSpec, LayersBeyondTheKnownShapeNameTheProbe) {
  json job = minimal_job();
  job["probes"][0]["layers"] = "0:33";
  EXPECT_THAT(job_error(job),
              HasSubstr("probe \"resid\" (\"probes[0].layers\" 0:33) asks for layer 32, but the "
                        "model has 32 layers (0 to 31)"));
  job["endpoint"] = "http://host:1";
  EXPECT_NO_THROW((void)parse(job));  // shape unknown until GET /status
  const JobSpec spec = parse(job);
  EXPECT_THROW(check_layers(spec, ModelConfig{64, 32}), InputError);
  EXPECT_NO_THROW(check_layers(spec, ModelConfig{64, 33}));
}

TEST(JobSpec, CanonicalJsonFillsDefaultsAndKeepsPathsAsWritten) {
  json job = minimal_job();
  job["tokenizer"] = "../data/tok.json";
  const json canonical = parse(job, "/srv/jobs/job.json").canonical_json();
  EXPECT_EQ(canonical["tokenizer"], "../data/tok.json");
  EXPECT_EQ(canonical["prompts"], "prompts.jsonl");
  EXPECT_EQ(canonical["output"], "out.h5");
  EXPECT_FALSE(canonical.contains("job_file"));
  EXPECT_EQ(canonical["positions"], json::parse("[-1]"));
  EXPECT_EQ(canonical["batch"], json::parse(R"({"max_prompts": 256, "max_tokens": 32768,
                                               "sort_by_length": true, "target_mb": 32.0})"));
  EXPECT_EQ(canonical["probes"], json::parse(R"([{"layers": "0:4", "module": "model.layers.{layer}",
                                                  "name": "resid", "output_index": 0}])"));
  EXPECT_TRUE(canonical["model_config"].is_null());
  EXPECT_TRUE(canonical["revision"].is_null());
  EXPECT_EQ(canonical["dtype"], "float16");
  EXPECT_EQ(canonical["encoder"], "graph");
  EXPECT_EQ(canonical["protocol"], "g4");
  EXPECT_TRUE(canonical["python"].is_null());
  EXPECT_TRUE(canonical["model_key"].is_null());
  EXPECT_EQ(canonical.size(), 21U);
}

TEST(JobSpec, TheEncoderFollowsTheEndpointUnlessTheJobNamesIt) {
  EXPECT_EQ(parse(minimal_job()).encoder, EncoderKind::graph);
  json remote = minimal_job();
  remote["endpoint"] = "https://api.ndif.us";
  const JobSpec production = parse(remote);
  EXPECT_EQ(production.encoder, EncoderKind::nnsight);
  EXPECT_FALSE(production.encoder_given);
  EXPECT_EQ(production.protocol, Protocol::g4);
  remote["encoder"] = "graph";
  remote["protocol"] = "g2";
  const JobSpec old_server = parse(remote);
  EXPECT_EQ(old_server.encoder, EncoderKind::graph);
  EXPECT_TRUE(old_server.encoder_given);
  EXPECT_EQ(old_server.protocol, Protocol::g2);
}

TEST(JobSpec, PythonAndModelKeyAreKeptAsWritten) {
  json job = minimal_job();
  job["endpoint"] = "http://127.0.0.1:8000";
  job["python"] = "/opt/venv/bin/python";
  job["model_key"] = R"(nnsight.modeling.transformers.TransformersModel:{"repo_id": "x"})";
  const JobSpec spec = parse(job);
  EXPECT_EQ(spec.python, "/opt/venv/bin/python");
  EXPECT_EQ(spec.model_key, R"(nnsight.modeling.transformers.TransformersModel:{"repo_id": "x"})");
  EXPECT_EQ(spec.canonical_json()["python"], "/opt/venv/bin/python");
}

TEST(JobSpec, EncoderAndProtocolThatCannotWorkTogetherAreRejected) {
  json job = minimal_job();
  job["encoder"] = "nnsight";
  EXPECT_THAT(job_error(job), HasSubstr("cannot run against \"endpoint\": \"local\""));
  job["endpoint"] = "https://api.ndif.us";
  job["protocol"] = "g2";
  EXPECT_THAT(job_error(job), HasSubstr("\"encoder\": \"nnsight\" needs \"protocol\": \"g4\""));
  job = minimal_job();
  job["endpoint"] = "https://api.ndif.us";
  job["protocol"] = "g2";  // a remote endpoint defaults to the nnsight encoder
  EXPECT_THAT(job_error(job), HasSubstr("needs \"protocol\": \"g4\""));
  job = minimal_job();
  job["encoder"] = "pickle";
  EXPECT_THAT(job_error(job), HasSubstr("job.json: \"encoder\""));
  job = minimal_job();
  job["protocol"] = "g3";
  EXPECT_THAT(job_error(job), HasSubstr("job.json: \"protocol\""));
  job = minimal_job();
  job["python"] = "";
  EXPECT_THAT(job_error(job), HasSubstr("\"python\""));
  job = minimal_job();
  job["model_key"] = 3;
  EXPECT_THAT(job_error(job), HasSubstr("\"model_key\""));
}

TEST(JobSpec, CanonicalJsonIsTheSameWhereverTheJobFileIsNamedFrom) {
  json job = minimal_job();
  job["tokenizer"] = "../data/tok.json";
  const std::string a = parse(job, "job.json").canonical_json().dump();
  EXPECT_EQ(parse(job, "jobs/job.json").canonical_json().dump(), a);
  EXPECT_EQ(parse(job, "/a/b/job.json").canonical_json().dump(), a);
}

TEST(JobSpec, CanonicalJsonParsesBackToItself) {
  json job = minimal_job();
  job["positions"] = json::parse(R"([0, {"span": "cat"}])");
  job["probes"].push_back(
      json::parse(R"({"name": "m", "module": "model.layers.{layer}.mlp", "layers": [5, 2]})"));
  job["endpoint"] = "http://localhost:8000";
  job["model_config"] = {{"hidden_size", 16}, {"num_hidden_layers", 8}};
  const json canonical = parse(job, "jobs/job.json").canonical_json();
  EXPECT_EQ(parse(canonical, "jobs/job.json").canonical_json(), canonical);
  EXPECT_EQ(canonical["positions"],
            json::parse(R"([0, {"occurrence": -1, "span": "cat", "token": "last"}])"));
  EXPECT_EQ(canonical["probes"][1]["layers"], json::parse("[5, 2]"));
  EXPECT_TRUE(canonical["probes"][1]["output_index"].is_null());
}

TEST(JobSpec, CanonicalJsonKeysAreSorted) {
  const std::string text = parse(minimal_job()).canonical_json().dump();
  EXPECT_LT(text.find("\"add_special_tokens\""), text.find("\"api_key_env\""));
  EXPECT_LT(text.find("\"api_key_env\""), text.find("\"batch\""));
  EXPECT_LT(text.find("\"timeouts\""), text.find("\"tokenizer\""));
}

TEST(JobSpec, ReadsTheFileFromDisk) {
  const auto dir = std::filesystem::temp_directory_path() / "ndif_spec_test_dir";
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "job.json") << minimal_job().dump(2); }
  const JobSpec spec = parse_job_spec(dir / "job.json");
  EXPECT_EQ(spec.job_file, dir / "job.json");
  EXPECT_EQ(spec.tokenizer, dir / "tok.json");
  std::filesystem::remove_all(dir);
  EXPECT_THAT(job_error(std::string("")), HasSubstr("job.json:1:1: not valid JSON"));
}

TEST(JobSpec, InvalidJsonNamesLineAndColumn) {
  EXPECT_THAT(job_error(std::string("{\n  \"model\": \"x\",\n  }\n")),
              HasSubstr("job.json:3:3: not valid JSON: syntax error while parsing object key"));
  EXPECT_THAT(job_error(std::string("{\"model\": tru}")), HasSubstr("job.json:1:14: not valid JSON"));
}

struct BadJob {
  const char* patch;    // merged into the minimal job with JSON merge-patch semantics
  const char* message;  // substring of the error
};

class BadJobSpec : public ::testing::TestWithParam<BadJob> {};

TEST_P(BadJobSpec, IsAnInputErrorNamingTheKey) {
  json job = minimal_job();
  job.merge_patch(json::parse(GetParam().patch));
  EXPECT_THAT(job_error(job), HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadJobSpec,
    ::testing::Values(
        BadJob{R"({"model": null})", R"(job.json: "model" is required (the model's repo id)"},
        BadJob{R"({"tokenizer": null})", R"(job.json: "tokenizer" is required)"},
        BadJob{R"({"prompts": null})", R"(job.json: "prompts" is required)"},
        BadJob{R"({"output": null})", R"(job.json: "output" is required)"},
        BadJob{R"({"probes": null})", R"(job.json: "probes" is required)"},
        BadJob{R"({"model": 3})", R"(job.json: "model" must be a non-empty string, got 3)"},
        BadJob{R"({"model": ""})", R"("model" must be a non-empty string, got "")"},
        BadJob{R"({"modle": "x"})", R"(job.json: unknown key "modle"; allowed keys are model, revision)"},
        BadJob{R"({"batch": {"targetmb": 3}})",
               R"(unknown key "batch.targetmb"; allowed keys in "batch" are target_mb, max_prompts)"},
        BadJob{R"({"batch": {"target_mb": "32"}})",
               R"(job.json: "batch.target_mb" must be a positive number, got "32")"},
        BadJob{R"({"batch": {"target_mb": 0}})", R"("batch.target_mb" must be a positive number, got 0)"},
        BadJob{R"({"batch": {"max_prompts": 2.5}})",
               R"("batch.max_prompts" must be a positive integer, got 2.5)"},
        BadJob{R"({"batch": {"max_tokens": -1}})",
               R"("batch.max_tokens" must be a positive integer, got -1)"},
        BadJob{R"({"batch": {"sort_by_length": "yes"}})",
               R"("batch.sort_by_length" must be true or false, got "yes")"},
        BadJob{R"({"batch": 4})", R"("batch" must be an object, got 4)"},
        BadJob{R"({"retry": {"max_attempts": 0}})",
               R"("retry.max_attempts" must be a positive integer, got 0)"},
        BadJob{R"({"retry": {"initial_backoff_s": 10, "max_backoff_s": 5}})",
               R"("retry.max_backoff_s" must be at least "retry.initial_backoff_s" (10.0), got 5.0)"},
        BadJob{R"({"timeouts": {"job_s": -3}})", R"("timeouts.job_s" must be a positive number, got -3)"},
        BadJob{R"({"timeouts": {"poll": 1}})", R"(unknown key "timeouts.poll")"},
        BadJob{R"({"max_inflight": 0})", R"("max_inflight" must be a positive integer, got 0)"},
        BadJob{R"({"dtype": "fp16"})", R"("dtype" must be "float16", "bfloat16" or "float32", got "fp16")"},
        BadJob{R"({"endpoint": "ndif.example.org"})", R"("endpoint" must be "local" or a base URL)"},
        BadJob{R"({"endpoint": "https://ndif.example.org/api"})",
               R"("endpoint" must be "local" or a base URL)"},
        BadJob{R"({"endpoint": "http://host:99999"})", R"("endpoint" must be "local" or a base URL)"},
        BadJob{R"({"endpoint": "http://:80"})", R"("endpoint" must be "local" or a base URL)"},
        BadJob{
            R"({"api_key": "sk-secret"})",
            R"("api_key" must not be in a job file: put the key in an environment variable and name that variable with "api_key_env")"},
        BadJob{R"({"api_key_env": "MY-KEY"})",
               R"("api_key_env" must be the name of an environment variable)"},
        BadJob{R"({"local": {"layers": 0}})", R"("local.layers" must be a positive integer, got 0)"},
        BadJob{R"({"local": {"seed": -1}})", R"("local.seed" must be an integer >= 0, got -1)"},
        BadJob{R"({"local": {"model_dtype": "int8"}})",
               R"("local.model_dtype" must be "float16", "bfloat16" or "float32")"},
        BadJob{R"({"local": {"gpus": 1}})", R"(unknown key "local.gpus")"},
        BadJob{R"({"model_config": {"hidden_size": 64}})", R"("model_config.num_hidden_layers" is required)"},
        BadJob{R"({"model_config": {"hidden_size": 0, "num_hidden_layers": 32}})",
               R"("model_config.hidden_size" must be a positive integer, got 0)"},
        BadJob{
            R"({"model_config": {"hidden_size": 128, "num_hidden_layers": 32}})",
            R"("model_config" (hidden_size 128, num_hidden_layers 32) differs from the bundled server's shape)"},
        BadJob{R"({"positions": []})", R"("positions" must be a non-empty list of token indices)"},
        BadJob{R"({"positions": ["last"]})",
               R"("positions[0]" must be an integer token index or a {"span": ...} object, got "last")"},
        BadJob{R"({"positions": [{"span": ""}]})", R"("positions[0].span" must be a non-empty string)"},
        BadJob{R"({"positions": [{"occurrence": 1}]})", R"("positions[0].span" is required)"},
        BadJob{R"({"positions": [{"span": "a", "token": "middle"}]})",
               R"("positions[0].token" must be "first" or "last", got "middle")"},
        BadJob{R"({"positions": [{"span": "a", "which": 1}]})", R"(unknown key "positions[0].which")"},
        BadJob{R"({"add_special_tokens": 1})", R"("add_special_tokens" must be true or false, got 1)"},
        BadJob{R"({"probes": []})", R"("probes" must be a non-empty list of probe objects, got [])"},
        BadJob{
            R"({"probes": [{"name": "1x", "module": "m.{layer}", "layers": [0]}]})",
            R"("probes[0].name" must be a name of letters, digits and _ that does not start with a digit, got "1x")"},
        BadJob{R"({"probes": [{"name": "a", "module": "model.norm", "layers": [0]}]})",
               R"("probes[0].module" must be a module path containing {layer})"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}"}]})", R"("probes[0].layers" is required)"},
        BadJob{
            R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": "4:4"}]})",
            R"("probes[0].layers" must be "start:stop[:step]" with non-negative integers selecting at least one layer)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": "0:-1"}]})",
               R"("probes[0].layers" must be)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": "0:8:0"}]})",
               R"("probes[0].layers" must be)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": [1, 1]}]})",
               R"("probes[0].layers" must be)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": [-2]}]})",
               R"("probes[0].layers" must be)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": [0], "output_index": -1}]})",
               R"("probes[0].output_index" must be an integer >= 0 (element of a tuple output) or null)"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": [0], "index": 0}]})",
               R"(unknown key "probes[0].index")"},
        BadJob{R"({"probes": [{"name": "a", "module": "m.{layer}", "layers": [0]},
                              {"name": "a", "module": "n.{layer}", "layers": [1]}]})",
               R"("probes[1].name" "a" is used by another probe; names must be unique)"}));

TEST(JobSpec, NumberBeyondDoubleRangeIsAnInputError) {
  EXPECT_THAT(job_error(std::string(R"({"model": "a", "batch": {"target_mb": 1e999}})")),
              HasSubstr("job.json: a number is out of range"));
  EXPECT_THAT(prompts_error("\"a\"\n{\"prompt\": \"x\", \"meta\": {\"v\": -1e999}}\n"),
              HasSubstr("prompts.jsonl:2: a number is out of range"));
}

TEST(JobSpec, RepeatedKeyIsAnError) {
  EXPECT_THAT(job_error(std::string(R"({"model": "a", "batch": {"target_mb": 1, "target_mb": 2}})")),
              HasSubstr("job.json: key \"target_mb\" appears twice in one object; keep one"));
  EXPECT_THAT(prompts_error("\"a\"\n{\"prompt\": \"x\", \"prompt\": \"y\"}\n"),
              HasSubstr("prompts.jsonl:2: key \"prompt\" appears twice in one object"));
  // the same key in sibling objects is fine
  json job = minimal_job();
  job["probes"].push_back({{"name", "b"}, {"module", "model.layers.{layer}.mlp"}, {"layers", "0:2"}});
  EXPECT_EQ(parse(job).probes.size(), 2U);
}

TEST(JobSpec, LongValuesAreShortenedOnACharacterBoundary) {
  json job = minimal_job();
  job["dtype"] = std::string(58, 'a') + "\xC3\xA9\xC3\xA9";
  EXPECT_THAT(job_error(job), HasSubstr(", got \"" + std::string(58, 'a') + "..."));
}

TEST(JobSpec, TopLevelMustBeAnObject) {
  EXPECT_THAT(job_error(std::string("[1, 2]")),
              HasSubstr("job.json: the job spec must be a JSON object, got [1,2]"));
}

TEST(JobSpec, ApiKeyValueNeverAppearsInTheMessage) {
  json job = minimal_job();
  job["api_key"] = "sk-very-secret";
  EXPECT_THAT(job_error(job), ::testing::Not(HasSubstr("sk-very-secret")));
}

TEST(JobSpec, AcceptedEndpoints) {
  for (const char* endpoint : {"local", "http://localhost", "https://ndif.example.org",
                               "http://127.0.0.1:8000/", "http://[::1]:5001", "https://a-b.c_d.org:443"}) {
    json job = minimal_job();
    job["endpoint"] = endpoint;
    EXPECT_EQ(parse(job).endpoint, endpoint);
  }
}

TEST(Prompts, StringLinesGetDefaultsAndRowIds) {
  const std::vector<PositionSpec> defaults{PositionSpec{.is_span = false, .index = -1, .span = {}},
                                           PositionSpec{.is_span = false, .index = 0, .span = {}}};
  const auto records = parse_prompts("\"The cat\"\n\"sat \\u00e9\"\n", "p.jsonl", defaults);
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[0].line, 1U);
  EXPECT_EQ(records[0].text, "The cat");
  EXPECT_EQ(records[0].id, "0");
  EXPECT_EQ(records[0].meta_json, "{}");
  ASSERT_EQ(records[0].positions.size(), 2U);
  EXPECT_EQ(records[0].positions[0].index, -1);
  EXPECT_EQ(records[0].positions[1].index, 0);
  EXPECT_EQ(records[1].text, "sat \xC3\xA9");
  EXPECT_EQ(records[1].id, "1");
  EXPECT_EQ(records[1].line, 2U);
}

TEST(Prompts, ObjectLinesCarryIdsMetaAndPositions) {
  const auto records = parse_prompts(
      R"({"prompt": "The cat sat on the", "positions": [-1, 2], "id": "p17", "meta": {"z": 1, "condition": "control"}}
{"prompt": "b", "id": 42, "positions": [{"span": "b", "occurrence": 0, "token": "first"}]}
{"prompt": ""})",
      "p.jsonl", {});
  ASSERT_EQ(records.size(), 3U);
  EXPECT_EQ(records[0].id, "p17");
  EXPECT_EQ(records[0].meta_json, R"({"condition":"control","z":1})");
  ASSERT_EQ(records[0].positions.size(), 2U);
  EXPECT_EQ(records[0].positions[1].index, 2);
  EXPECT_EQ(records[1].id, "42");
  EXPECT_TRUE(records[1].positions[0].is_span);
  EXPECT_EQ(records[1].positions[0].occurrence, 0);
  EXPECT_FALSE(records[1].positions[0].last_token);
  EXPECT_EQ(records[2].text, "");
  EXPECT_EQ(records[2].id, "2");
  EXPECT_TRUE(records[2].positions.empty());
}

TEST(Prompts, CrlfLineEndingsAreAccepted) {
  const auto records = parse_prompts("\"a\"\r\n\"b\"\r\n", "p.jsonl", {});
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[1].text, "b");
}

std::filesystem::path write_prompts_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(PromptsFile, EveryLineReadThroughTheIndexIsTheRecordOfTheWholeParse) {
  const std::vector<PositionSpec> defaults{PositionSpec{.is_span = false, .index = -1, .span = {}}};
  for (const std::string text :
       {"\"a\"\n{\"prompt\": \"b\", \"id\": 7, \"meta\": {\"k\": 1}}\r\n\"c \\u00e9\"\n",
        "\"a\"\n{\"prompt\": \"b\", \"id\": 7, \"meta\": {\"k\": 1}}\r\n\"c \\u00e9\""}) {
    const auto path = write_prompts_file("ndif_spec_test_index.jsonl", text);
    const auto file = PromptsFile::index(path);
    const auto all = parse_prompts(text, path, defaults);
    ASSERT_EQ(file.rows(), all.size());
    EXPECT_EQ(file.sha256(), sha256_hex(text));
    EXPECT_EQ(file.bytes(), text.size());
    const auto block = file.lines(0, file.rows());
    for (std::size_t row = 0; row < all.size(); ++row) {
      const auto one = parse_prompt(file.line(row), row, path, defaults);
      EXPECT_EQ(block.line(row), file.line(row));
      EXPECT_EQ(one.line, all[row].line);
      EXPECT_EQ(one.text, all[row].text);
      EXPECT_EQ(one.id, all[row].id);
      EXPECT_EQ(one.meta_json, all[row].meta_json);
      EXPECT_EQ(one.positions.size(), all[row].positions.size());
    }
    EXPECT_EQ(file.line(1), "{\"prompt\": \"b\", \"id\": 7, \"meta\": {\"k\": 1}}\r");
    EXPECT_EQ(file.lines(1, 2).line(1), "\"c \\u00e9\"");
    EXPECT_THROW((void)file.line(3), InternalError);
    EXPECT_THROW((void)file.lines(2, 2), InternalError);
    std::filesystem::remove(path);
  }
}

TEST(PromptsFile, LinesLongerThanOneReadAreIndexedWhole) {
  // Lines of up to 3 MB, across the 1 MiB reads of the index.
  std::string text;
  std::vector<std::string> lines;
  for (std::size_t k = 0; k < 40; ++k) {
    lines.push_back("\"" +
                    std::string(k % 7 == 3 ? 3'000'000 + k : 1000 * k + 1, static_cast<char>('a' + k % 26)) +
                    "\"");
    text += lines.back() + "\n";
  }
  const auto path = write_prompts_file("ndif_spec_test_long.jsonl", text);
  const auto file = PromptsFile::index(path);
  ASSERT_EQ(file.rows(), lines.size());
  EXPECT_EQ(file.sha256(), sha256_hex(text));
  const auto block = file.lines(5, 30);
  for (std::size_t k = 0; k < 30; ++k) EXPECT_EQ(block.line(k), lines[5 + k]) << k;
  EXPECT_EQ(file.line(39), lines[39]);
  std::filesystem::remove(path);
}

TEST(PromptsFile, OneNewlineEndsTheLastLineAndAFileWithoutPromptsIsRefused) {
  for (const std::string text : {"", "\n"}) {
    const auto path = write_prompts_file("ndif_spec_test_empty.jsonl", text);
    try {
      (void)PromptsFile::index(path);
      ADD_FAILURE() << "no error for \"" << text << "\"";
    } catch (const InputError& e) {
      EXPECT_THAT(e.what(), HasSubstr("the file is empty"));
    }
  }
  // A second newline is a blank line: a row that parse_prompt refuses.
  const auto path = write_prompts_file("ndif_spec_test_empty.jsonl", "\"a\"\n\n");
  const auto file = PromptsFile::index(path);
  ASSERT_EQ(file.rows(), 2U);
  EXPECT_EQ(file.line(1), "");
  try {
    (void)parse_prompt(file.line(1), 1, path, {});
    ADD_FAILURE() << "a blank line parsed";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("ndif_spec_test_empty.jsonl:2: blank line"));
  }
  EXPECT_THROW((void)PromptsFile::index(std::filesystem::temp_directory_path()), InputError);
  EXPECT_THROW((void)PromptsFile::index("/nonexistent/prompts.jsonl"), InputError);
  std::filesystem::remove(path);
}

TEST(PromptsFile, ALineChangedInPlaceIsRefusedAndAReplacedFileIsNotRead) {
  const std::string text = "\"one\"\n\"two\"\n\"six\"\n";
  const auto path = write_prompts_file("ndif_spec_test_changed.jsonl", text);
  const auto file = PromptsFile::index(path);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(7);
    f << "T";  // "two" -> "Two", the same length
  }
  EXPECT_EQ(file.line(0), "\"one\"");
  try {
    (void)file.line(1);
    ADD_FAILURE() << "a changed line was read";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("ndif_spec_test_changed.jsonl:2: the line changed since the job read"));
  }
  std::filesystem::resize_file(path, 8);
  EXPECT_THROW((void)file.line(2), InputError);

  // Replaced under its name (as an editor saves): the indexed file is still the one read.
  const auto other = write_prompts_file("ndif_spec_test_changed2.jsonl", text);
  const auto kept = PromptsFile::index(other);
  write_prompts_file("ndif_spec_test_changed3.jsonl", "\"new\"\n");
  std::filesystem::rename(std::filesystem::temp_directory_path() / "ndif_spec_test_changed3.jsonl", other);
  EXPECT_EQ(kept.line(2), "\"six\"");
  std::filesystem::remove(path);
  std::filesystem::remove(other);
}

TEST(PromptsFile, AnotherProcessReadsTheSameLinesThroughTheIndex) {
  const std::string text = "\"one\"\n{\"prompt\": \"two\", \"id\": 2}\n\"three\"";
  const auto path = write_prompts_file("ndif_spec_test_from_index.jsonl", text);
  const auto file = PromptsFile::index(path);
  const auto index = file.index_bytes();
  const auto other = PromptsFile::from_index(path, index);
  EXPECT_EQ(other.rows(), 3U);
  EXPECT_EQ(other.sha256(), file.sha256());
  EXPECT_EQ(other.bytes(), text.size());
  for (std::size_t row = 0; row < 3; ++row) EXPECT_EQ(other.line(row), file.line(row));
  EXPECT_EQ(other.index_bytes(), index);
  // Not an index: cut short, or with line starts that do not increase.
  EXPECT_THROW((void)PromptsFile::from_index(path, std::string_view(index).substr(0, index.size() - 1)),
               InternalError);
  auto bad = index;
  bad[8 + 8 + 64 + 8] = bad[8 + 8 + 64];  // start of row 1 = start of row 0
  EXPECT_THROW((void)PromptsFile::from_index(path, bad), InternalError);
  // Another file here than the one indexed.
  const auto longer = write_prompts_file("ndif_spec_test_from_index2.jsonl", text + "\n\"four\"\n");
  try {
    (void)PromptsFile::from_index(longer, index);
    ADD_FAILURE() << "a file of another size was taken";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("every node must see the same prompts file"));
  }
  // The same size, another line: opened, but that line is refused when it is read.
  std::string changed = text;
  changed[changed.find("two")] = 'T';
  const auto same_size = write_prompts_file("ndif_spec_test_from_index3.jsonl", changed);
  const auto copy = PromptsFile::from_index(same_size, index);
  EXPECT_EQ(copy.line(0), "\"one\"");
  EXPECT_THROW((void)copy.line(1), InputError);
  std::filesystem::remove(path);
  std::filesystem::remove(longer);
  std::filesystem::remove(same_size);
}

TEST(Prompts, ReadsTheFileFromDisk) {
  const auto path = std::filesystem::temp_directory_path() / "ndif_spec_test_prompts.jsonl";
  { std::ofstream(path) << "\"x\"\n{\"prompt\": \"y\"}\n"; }
  const auto records = read_prompts(path, {});
  ASSERT_EQ(records.size(), 2U);
  EXPECT_EQ(records[1].text, "y");
  std::filesystem::remove(path);
  EXPECT_THROW((void)read_prompts(path, {}), InputError);
}

struct BadPrompts {
  const char* text;
  const char* message;
};

class BadPromptsFile : public ::testing::TestWithParam<BadPrompts> {};

TEST_P(BadPromptsFile, IsAnInputErrorNamingTheLine) {
  EXPECT_THAT(prompts_error(GetParam().text), HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadPromptsFile,
    ::testing::Values(
        BadPrompts{"", "prompts.jsonl: the file is empty; it needs one prompt per line"},
        BadPrompts{"\n", "prompts.jsonl: the file is empty"},
        BadPrompts{"\"a\"\n\n\"b\"\n", "prompts.jsonl:2: blank line; remove it"},
        BadPrompts{"\"a\"\n\n", "prompts.jsonl:2: blank line"},
        BadPrompts{"\"a\"\n   \n", "prompts.jsonl:2: blank line"},
        BadPrompts{"\"a\"\n\"b\n",
                   "prompts.jsonl:2: not valid JSON at column 3: syntax error while parsing value"},
        BadPrompts{"\"a\"\n\"ok\"\n\"b\xFF\"\n", "prompts.jsonl:3: invalid UTF-8 at byte 3 of the line"},
        BadPrompts{"\"\xC0\x80\"\n", "prompts.jsonl:1: invalid UTF-8 at byte 2"},
        BadPrompts{"\"\xED\xA0\x80\"\n", "prompts.jsonl:1: invalid UTF-8"},
        BadPrompts{"42\n",
                   "prompts.jsonl:1: a line must be a JSON string (the prompt) or an object with \"prompt\", "
                   "got 42"},
        BadPrompts{"{\"text\": \"a\"}\n",
                   "prompts.jsonl:1: unknown key \"text\"; allowed keys are prompt, positions, id, meta"},
        BadPrompts{"{\"id\": \"a\"}\n", "prompts.jsonl:1: \"prompt\" is required"},
        BadPrompts{"{\"prompt\": 5}\n", "prompts.jsonl:1: \"prompt\" must be a string, got 5"},
        BadPrompts{"\"x\"\n{\"prompt\": \"a\", \"positions\": \"last\"}\n",
                   "prompts.jsonl:2: \"positions\" must be a non-empty list of token indices or {\"span\": "
                   "...} objects, got \"last\""},
        BadPrompts{"{\"prompt\": \"a\", \"positions\": [1.5]}\n",
                   "prompts.jsonl:1: \"positions[0]\" must be an integer token index"},
        BadPrompts{"{\"prompt\": \"a\", \"positions\": [{\"span\": \"a\", \"occurrence\": \"last\"}]}\n",
                   "prompts.jsonl:1: \"positions[0].occurrence\" must be an integer (0 = first, -1 = last), "
                   "got \"last\""},
        BadPrompts{"{\"prompt\": \"a\", \"id\": 1.5}\n",
                   "prompts.jsonl:1: \"id\" must be a non-empty string or an integer, got 1.5"},
        BadPrompts{"{\"prompt\": \"a\", \"id\": \"\"}\n",
                   "prompts.jsonl:1: \"id\" must be a non-empty string or an integer"},
        BadPrompts{"\"a\"\n\"b\\u0000c\"\n",
                   "prompts.jsonl:2: the prompt holds the character U+0000 (NUL), which the output file's "
                   "strings cannot hold; remove it"},
        BadPrompts{"{\"prompt\": \"\\u0000\"}\n", "prompts.jsonl:1: \"prompt\" holds the character U+0000"},
        BadPrompts{"{\"prompt\": \"a\", \"id\": \"x\\u0000y\"}\n",
                   "prompts.jsonl:1: \"id\" holds the character U+0000 (NUL)"},
        BadPrompts{"{\"prompt\": \"a\", \"meta\": [1]}\n",
                   "prompts.jsonl:1: \"meta\" must be a JSON object, got [1]"},
        BadPrompts{"{\"prompt\": \"a\", \"id\": \"p\"}\n\"b\"\n{\"prompt\": \"c\", \"id\": \"p\"}\n",
                   "prompts.jsonl:3: id \"p\" is already the id of line 1"},
        BadPrompts{"\"a\"\n{\"prompt\": \"b\", \"id\": 0}\n",
                   "prompts.jsonl:2: id \"0\" is already the id of line 1"}));

}  // namespace
}  // namespace ndif::spec
