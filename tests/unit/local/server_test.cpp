#include "ndif_sweep/local/server.hpp"

#include <gtest/gtest.h>
#include <httplib.h>
#include <zlib.h>
#include <zstd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"
#include "request_builder.hpp"

namespace ndif::local {
namespace {

using json = nlohmann::json;

const std::vector<std::vector<std::int64_t>> kPrompts = {{11, 12, 13, 14}, {7}, {3, 1, 4, 1, 5, 9, 2}};
const std::vector<int> kLayers = {0, 2};
const std::vector<std::int64_t> kPositions = {0, 0};  // the one-token prompt allows only token 0

std::string zlib_compress(const std::string& text) {
  uLongf size = compressBound(text.size());
  std::string out(size, '\0');
  EXPECT_EQ(compress2(reinterpret_cast<Bytef*>(out.data()), &size,
                      reinterpret_cast<const Bytef*>(text.data()), text.size(), 6),
            Z_OK);
  out.resize(size);
  return out;
}

httplib::Headers headers(const std::string& key = "secret") {
  return {{"ndif-api-key", key},
          {"model_key", "nnsight.modeling.language.LanguageModel:{\"repo_id\": \"test/model\"}"},
          {"format", "json"},
          {"zlib", "True"},
          {"nnsight-version", "0.4.11"}};
}

ServerOptions options_with(std::optional<FaultKind> fault = std::nullopt) {
  ServerOptions options;
  options.model = SyntheticModelConfig{4, 8, 3, DType::bfloat16};
  options.api_keys = {"secret"};
  if (fault) {
    options.fail_rate = 1.0;
    options.fail_kinds = {*fault};
  }
  return options;
}

class Server : public ::testing::Test {
 protected:
  void start(ServerOptions options) {
    server_ = std::make_unique<LocalServer>(std::move(options));
    const int port = server_->start();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port);
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
  }

  /// Submits a request body; returns the HTTP result.
  httplib::Result submit(const json& request, const httplib::Headers& h = headers()) {
    return client_->Post("/request", h, zlib_compress(request.dump()), "application/octet-stream");
  }
  std::string submit_sweep(const std::string& method = "half") {
    const auto res = submit(testing::sweep_request(kPrompts, kLayers, kPositions, method).first);
    EXPECT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    const auto status = json::parse(res->body);
    EXPECT_EQ(status["status"], "RECEIVED");
    EXPECT_EQ(status["description"], "Your job has been received and is waiting approval.");
    EXPECT_TRUE(status["data"].is_null());
    EXPECT_TRUE(status["session_id"].is_null());
    return status["id"].get<std::string>();
  }
  /// Polls until COMPLETED or ERROR (bounded in count, not in time); failed polls are retried.
  json wait(const std::string& id) {
    for (int attempt = 0; attempt < 20000; ++attempt) {
      if (const auto res = client_->Get(("/response/" + id).c_str(), headers())) {
        // A G4 job's first poll is a 404 whose body has no "status".
        const auto status = json::parse(res->body);
        const auto state = status.value("status", std::string());
        if (state == "COMPLETED" || state == "ERROR") {
          return status;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ADD_FAILURE() << "job " << id << " never finished";
    return {};
  }

  std::unique_ptr<LocalServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

/// Checks every element of a sweep result tensor against the model's formula.
void expect_sweep_tensor(const torchsave::Tensor& tensor, const SyntheticModel& model) {
  ASSERT_EQ(tensor.dtype(), DType::float16);
  ASSERT_EQ(tensor.shape, (std::vector<std::int64_t>{3, 2, 2, 8}));
  const auto raw = tensor.contiguous_bytes();
  std::vector<std::uint16_t> bits(raw.size() / 2);
  std::memcpy(bits.data(), raw.data(), raw.size());
  std::size_t n = 0;
  for (const auto& prompt : kPrompts) {
    const auto states = prefix_states(prompt, model.config().seed);
    for (const int layer : kLayers) {
      for (const auto p : kPositions) {
        for (std::uint64_t j = 0; j < 8; ++j) {
          const float held = model.value(states[static_cast<std::size_t>(p)],
                                         module_code("model.layers." + std::to_string(layer)), j);
          EXPECT_EQ(bits[n++], float_to_half_bits(held));
        }
      }
    }
  }
}

/// Checks every element of a downloaded G2 sweep result against the model's formula.
void expect_sweep_values(const std::string& body, const std::string& id, const SyntheticModel& model) {
  const std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(body.data()),
                                     reinterpret_cast<const std::byte*>(body.data()) + body.size());
  const auto file = torchsave::load(bytes);
  const auto& top = std::get<torchsave::Dict>(file.v);
  ASSERT_EQ(top.items.size(), 2U);
  EXPECT_EQ(std::get<std::string>(top.items[0].first.v), "id");
  EXPECT_EQ(std::get<std::string>(top.items[0].second.v), id);
  const auto& result = std::get<torchsave::Dict>(top.items[1].second.v);
  ASSERT_EQ(result.items.size(), 1U);
  expect_sweep_tensor(std::get<torchsave::Tensor>(result.items[0].second.v), model);
}

TEST_F(Server, SweepJobCompletesAndItsResultMatchesTheFormulaOnce) {
  start(options_with());
  const auto id = submit_sweep();
  const auto done = wait(id);
  EXPECT_EQ(done["status"], "COMPLETED");
  EXPECT_TRUE(done["data"].is_null());
  const auto res = client_->Get(("/result/" + id).c_str(), headers());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Length"), std::to_string(res->body.size()));
  expect_sweep_values(res->body, id, SyntheticModel(options_with().model));
  const auto again = client_->Get(("/result/" + id).c_str(), headers());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 404);
}

std::string zstd_bytes(const std::string& text) {
  std::string out(ZSTD_compressBound(text.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), text.data(), text.size(), 6));
  return out;
}

/// A G4 request: the envelope and the graph (named, zstd) as multipart fields.
httplib::MultipartFormDataItems g4_items(bool with_blob = true, bool compress = true) {
  auto [graph, saved] = testing::sweep_request(kPrompts, kLayers, kPositions, "half");
  graph["saved"] = {{std::to_string(saved), "ndif_sweep_acts"}};
  httplib::MultipartFormDataItems items{
      {"data",
       json{{"model_key", "k"}, {"session_id", ""}, {"compress", compress}, {"env", json::object()}}.dump(),
       "", ""}};
  if (with_blob)
    items.push_back(
        {"blob", compress ? zstd_bytes(graph.dump()) : graph.dump(), "request", "application/octet-stream"});
  return items;
}

httplib::Headers g4_headers(const std::string& key = "secret") {
  return {{"ndif-api-key", key}, {"nnsight-version", "0.4.11"}, {"ndif-timestamp", "1.0"}};
}

TEST_F(Server, G4JobIsStoredAfterA404AndCompletesWithAnExpiringUrlToAResultKeyedByName) {
  start(options_with());
  const auto posted = client_->Post("/request", g4_headers(), g4_items());
  ASSERT_TRUE(posted);
  ASSERT_EQ(posted->status, 200) << posted->body;
  const auto received = json::parse(posted->body);
  EXPECT_EQ(received["status"], "RECEIVED");
  const std::string id = received["id"];
  const auto first = client_->Get(("/response/" + id).c_str(), g4_headers());
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 404);
  EXPECT_EQ(json::parse(first->body)["detail"], "No response for request " + id + ".");
  const auto done = wait(id);
  ASSERT_EQ(done["status"], "COMPLETED");
  ASSERT_TRUE(done["data"].is_string());
  const std::string url = done["data"];
  const std::string path = url.substr(url.find("/download/"));
  EXPECT_NE(path.find("expires="), std::string::npos);
  const auto with_key = client_->Get(path.c_str(), g4_headers());
  ASSERT_TRUE(with_key);
  EXPECT_EQ(with_key->status, 400);
  const auto tampered = client_->Get((path.substr(0, path.find("&signature=")) + "&signature=0").c_str());
  ASSERT_TRUE(tampered);
  EXPECT_EQ(tampered->status, 403);
  const auto result = client_->Get(path.c_str());
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200);
  ASSERT_EQ(std::memcmp(result->body.data(), "\x28\xb5\x2f\xfd", 4), 0);  // zstd, as the envelope asked
  std::string file(ZSTD_getFrameContentSize(result->body.data(), result->body.size()), '\0');
  file.resize(ZSTD_decompress(file.data(), file.size(), result->body.data(), result->body.size()));
  const auto loaded =
      torchsave::load(std::vector<std::byte>(reinterpret_cast<const std::byte*>(file.data()),
                                             reinterpret_cast<const std::byte*>(file.data()) + file.size()));
  const auto& top = std::get<torchsave::Dict>(loaded.v);
  ASSERT_EQ(top.items.size(), 1U);
  EXPECT_EQ(std::get<std::string>(top.items[0].first.v), "ndif_sweep_acts");
  expect_sweep_tensor(std::get<torchsave::Tensor>(top.items[0].second.v),
                      SyntheticModel(options_with().model));

  // The server counts a download when its response has been handed to the socket whole, which can
  // be just after this client has read the last byte: wait for the count, within a bound.
  json stats;
  for (int attempt = 0; attempt < 5000; ++attempt) {
    if (const auto res = client_->Get("/stats")) {
      stats = json::parse(res->body);
      if (stats["downloaded"] != 0) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(stats["submitted"], 1);
  EXPECT_EQ(stats["completed"], 1);
  EXPECT_EQ(stats["downloaded"], 1);
}

TEST_F(Server, G4IngressChecksTheEnvelopeThenTheKeyThenTheBlob) {
  start(options_with());
  const auto no_data =
      client_->Post("/request", g4_headers(), httplib::MultipartFormDataItems{{"blob", "x", "request", ""}});
  ASSERT_TRUE(no_data);
  EXPECT_EQ(no_data->status, 422);
  const auto bad_key = client_->Post("/request", g4_headers("wrong"), g4_items(false));
  ASSERT_TRUE(bad_key);
  EXPECT_EQ(bad_key->status, 401);
  const auto no_blob = client_->Post("/request", g4_headers(), g4_items(false));
  ASSERT_TRUE(no_blob);
  EXPECT_EQ(no_blob->status, 422);
  EXPECT_EQ(json::parse(client_->Get("/stats")->body)["submitted"], 0);  // none of these made a job
  const auto plain = client_->Post("/request", g4_headers(), g4_items(true, false));
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200);
  const auto env = json::parse(client_->Get("/env")->body);
  EXPECT_TRUE(env["python_version"].is_string());
  EXPECT_TRUE(env["packages"].is_object());
}

TEST_F(Server, G4ExpiredUrlFaultAnswers403) {
  start(options_with(FaultKind::expired_url));
  const auto posted = client_->Post("/request", g4_headers(), g4_items());
  ASSERT_TRUE(posted);
  const auto done = wait(json::parse(posted->body)["id"].get<std::string>());
  const std::string url = done["data"];
  const auto result = client_->Get(url.substr(url.find("/download/")).c_str());
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 403);
  EXPECT_NE(result->body.find("Request has expired"), std::string::npos);
}

TEST_F(Server, PingAndStatusDescribeTheDeployment) {
  start(options_with());
  const auto ping = client_->Get("/ping");
  ASSERT_TRUE(ping);
  EXPECT_EQ(json::parse(ping->body), "pong");
  const auto status = client_->Get("/status");
  ASSERT_TRUE(status);
  const auto deployment = json::parse(status->body)["deployments"]["ndif-local"];
  EXPECT_EQ(deployment["application_state"], "RUNNING");
  EXPECT_EQ(deployment["repo_id"], "*");
  EXPECT_EQ(deployment["config"], (json{{"hidden_size", 8}, {"num_hidden_layers", 4}}));
}

TEST_F(Server, IngressRejectsMissingKeysOldClientsAndBadBodies) {
  start(options_with());
  const auto request = testing::sweep_request(kPrompts, kLayers, kPositions, "half").first;
  for (const std::string key : {"", "wrong"}) {
    const auto res = submit(request, headers(key));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401);
    EXPECT_EQ(json::parse(res->body)["detail"].get<std::string>().rfind("Missing or invalid API key.", 0),
              0U);
  }
  auto old = headers();
  old.erase("nnsight-version");
  old.emplace("nnsight-version", "0.3.7");
  const auto too_old = submit(request, old);
  ASSERT_TRUE(too_old);
  EXPECT_EQ(too_old->status, 400);
  const auto not_zlib = client_->Post("/request", headers(), "{\"graph\": 1}", "application/octet-stream");
  ASSERT_TRUE(not_zlib);
  EXPECT_EQ(not_zlib->status, 422);
  EXPECT_NE(json::parse(not_zlib->body)["detail"].get<std::string>().find("zlib"), std::string::npos);
  const auto not_g2 = submit(json{{"graph", 1}});
  ASSERT_TRUE(not_g2);
  EXPECT_EQ(not_g2->status, 422);
  EXPECT_NE(json::parse(not_g2->body)["detail"].get<std::string>().find("memo"), std::string::npos);
}

TEST_F(Server, UnknownModuleEndsInAnInvalidRequestError) {
  start(options_with());
  testing::RequestBuilder b;
  b.save(b.module("model.layerz.3", 0));
  const auto res = submit(b.finish(kPrompts));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const auto done = wait(json::parse(res->body)["id"].get<std::string>());
  EXPECT_EQ(done["status"], "ERROR");
  EXPECT_EQ(done["description"].get<std::string>().rfind(
                "InvalidRequest: unknown module path \"model.layerz.3\"", 0),
            0U);
}

TEST_F(Server, UrlDeliveryAndZstdResults) {
  auto options = options_with();
  options.delivery = Delivery::url;
  options.zstd = true;
  start(options);
  const auto id = submit_sweep();
  const auto done = wait(id);
  ASSERT_EQ(done["status"], "COMPLETED");
  ASSERT_TRUE(done["data"].is_array());
  const std::string url = done["data"][0];
  const std::string prefix = "http://127.0.0.1:" + std::to_string(server_->port());
  ASSERT_EQ(url.rfind(prefix, 0), 0U);
  const auto res = client_->Get(url.substr(prefix.size()).c_str());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(done["data"][1].get<std::size_t>(), res->body.size());
  std::vector<std::byte> bytes(res->body.size());
  std::memcpy(bytes.data(), res->body.data(), bytes.size());
  EXPECT_EQ(bytes[0], std::byte{0x28});  // zstd magic 28 B5 2F FD
  const auto plain = torchsave::maybe_decompress_zstd(std::move(bytes), std::size_t{1} << 30);
  expect_sweep_values(std::string(reinterpret_cast<const char*>(plain.data()), plain.size()), id,
                      SyntheticModel(options.model));
}

TEST_F(Server, FaultHttp500And503RejectThePost) {
  for (const auto kind : {FaultKind::http500, FaultKind::http503}) {
    start(options_with(kind));
    const auto res = submit(testing::sweep_request(kPrompts, kLayers, kPositions, "half").first);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, kind == FaultKind::http500 ? 500 : 503);
    TearDown();
  }
}

TEST_F(Server, FaultResetDropsTheFirstStatusPoll) {
  start(options_with(FaultKind::reset));
  const auto id = submit_sweep();
  const auto first = client_->Get(("/response/" + id).c_str(), headers());
  EXPECT_FALSE(first && first->status == 200 && json::parse(first->body, nullptr, false).is_object());
  EXPECT_EQ(wait(id)["status"], "COMPLETED");
}

TEST_F(Server, FaultTruncateCutsTheFirstDownloadOnly) {
  start(options_with(FaultKind::truncate));
  const auto id = submit_sweep();
  ASSERT_EQ(wait(id)["status"], "COMPLETED");
  const auto cut = client_->Get(("/result/" + id).c_str(), headers());
  EXPECT_FALSE(cut && cut->status == 200);
  const auto whole = client_->Get(("/result/" + id).c_str(), headers());
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200);
  expect_sweep_values(whole->body, id, SyntheticModel(options_with().model));
}

TEST_F(Server, FaultErrorStatusCancelsTheJob) {
  start(options_with(FaultKind::error_status));
  const auto done = wait(submit_sweep());
  EXPECT_EQ(done["status"], "ERROR");
  EXPECT_EQ(done["description"], "Your job was cancelled or preempted by the server.");
}

TEST_F(Server, FaultExpiredUrlAnswers403) {
  start(options_with(FaultKind::expired_url));
  const auto done = wait(submit_sweep());
  ASSERT_EQ(done["status"], "COMPLETED");
  const std::string url = done["data"][0];
  const auto res = client_->Get(url.substr(url.find("/download/")).c_str());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 403);
  EXPECT_NE(res->body.find("Request has expired"), std::string::npos);
}

TEST_F(Server, FaultSlowStillDeliversTheWholeResult) {
  start(options_with(FaultKind::slow));
  const auto id = submit_sweep();
  ASSERT_EQ(wait(id)["status"], "COMPLETED");
  const auto res = client_->Get(("/result/" + id).c_str(), headers());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  expect_sweep_values(res->body, id, SyntheticModel(options_with().model));
}

TEST_F(Server, FaultBadZstdIsADamagedFrame) {
  start(options_with(FaultKind::bad_zstd));
  const auto id = submit_sweep();
  ASSERT_EQ(wait(id)["status"], "COMPLETED");
  const auto res = client_->Get(("/result/" + id).c_str(), headers());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  std::vector<std::byte> bytes(res->body.size());
  std::memcpy(bytes.data(), res->body.data(), bytes.size());
  ASSERT_GE(bytes.size(), 4U);
  EXPECT_EQ(bytes[1], std::byte{0xB5});
  EXPECT_THROW((void)torchsave::maybe_decompress_zstd(std::move(bytes), std::size_t{1} << 30), DecodeError);
}

TEST(Faults, DrawsAreReproducibleAndFollowTheRate) {
  ServerOptions options;
  options.fail_rate = 0.25;
  options.fail_seed = 9;
  options.fail_kinds = {FaultKind::reset, FaultKind::slow};
  int faults = 0;
  for (std::uint64_t sequence = 0; sequence < 4000; ++sequence) {
    const auto fault = draw_fault(options, sequence);
    EXPECT_EQ(fault, draw_fault(options, sequence));
    if (fault) {
      ++faults;
      EXPECT_TRUE(*fault == FaultKind::reset || *fault == FaultKind::slow);
    }
  }
  EXPECT_GT(faults, 850);
  EXPECT_LT(faults, 1150);
  EXPECT_EQ(parse_fault_kind("bad_zstd"), FaultKind::bad_zstd);
  EXPECT_THROW((void)parse_fault_kind("meteor"), InputError);
}

}  // namespace
}  // namespace ndif::local
