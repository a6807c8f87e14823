#include "ndif_sweep/remote/transport.hpp"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "../../../src/remote/curl_handles.hpp"
#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

// libcurl's global state is set up once per process, as main() does in the binaries.
class CurlGlobal : public ::testing::Environment {
 public:
  void SetUp() override { ASSERT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK); }
  void TearDown() override { curl_global_cleanup(); }
};
[[maybe_unused]] const auto* const kCurlGlobal = ::testing::AddGlobalTestEnvironment(new CurlGlobal);

constexpr const char* kKey = "s3cr3t-key";

// An NDIF service on 127.0.0.1 whose replies each test scripts. It records what it was sent.
class FakeService {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  FakeService() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::yield();  // stop() is a no-op before listening starts
  }
  ~FakeService() {
    server_.stop();
    thread_.join();
  }
  FakeService(const FakeService&) = delete;
  FakeService& operator=(const FakeService&) = delete;

  [[nodiscard]] std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }

  void post(const std::string& path, Handler h) { server_.Post(path, record(std::move(h))); }
  void get(const std::string& path, Handler h) { server_.Get(path, record(std::move(h))); }

  [[nodiscard]] int count(const std::string& path) {
    std::lock_guard lock(mutex_);
    return static_cast<int>(std::count(paths_.begin(), paths_.end(), path));
  }
  [[nodiscard]] std::vector<httplib::Request> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  Handler record(Handler h) {
    return [this, h = std::move(h)](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lock(mutex_);
        paths_.push_back(req.path);
        requests_.push_back(req);
      }
      h(req, res);
    };
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::string> paths_;
  std::vector<httplib::Request> requests_;
};

void reply_status(httplib::Response& res, const std::string& status, const std::string& data = "null",
                  const std::string& description = "") {
  res.set_content(R"({"id": "job-1", "status": ")" + status + R"(", "description": ")" + description +
                      R"(", "data": )" + data + R"(, "session_id": null})",
                  "application/json");
}

EncodedRequest small_request() {
  EncodedRequest r;
  const std::string body = "compressed graph bytes";
  for (char c : body) r.body.push_back(static_cast<std::byte>(c));
  r.headers = {{"Content-Type", "application/octet-stream"},
               {"model_key", R"(nnsight.modeling.language.LanguageModel:{"repo_id": "gpt2"})"},
               {"format", "json"},
               {"zlib", "True"},
               {"sent-timestamp", "1.0"},
               {"nnsight-version", "0.4.11"},
               {"callback", ""}};
  r.expected.saved_node = 3;
  r.expected.batch = 1;
  r.expected.probe_layers = {1};
  r.expected.positions = 1;
  r.expected.hidden = 16;
  return r;
}

TransportOptions options_for(const FakeService& service) {
  TransportOptions o;
  o.base_url = service.base() + "/";
  o.api_key = kKey;
  o.timeouts = spec::Timeouts{2, 5, 20, 0.05};
  return o;
}

// Drives the transport until one attempt ends; the iteration bound only keeps a broken transport
// from hanging the test run.
FinishedJob run_one(JobTransport& transport) {
  for (int i = 0; i < 400; ++i) {
    auto done = transport.run(std::chrono::milliseconds(100)).finished;
    if (!done.empty()) {
      EXPECT_EQ(done.size(), 1U);
      return std::move(done.front());
    }
  }
  ADD_FAILURE() << "no attempt finished";
  return {};
}

std::string text(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

TEST(JobTransport, SubmitsPollsAndDownloadsWithEveryProtocolHeader) {
  FakeService service;
  std::atomic<int> polls{0};
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1",
              [&](const auto&, auto& res) { reply_status(res, ++polls < 3 ? "RUNNING" : "COMPLETED"); });
  service.get("/result/job-1", [](const auto&, auto& res) {
    res.set_content("torch-save-bytes", "application/octet-stream");
  });

  JobTransport transport(options_for(service));
  transport.submit(JobTicket{7, 2}, small_request());
  EXPECT_EQ(transport.in_flight(), 1U);
  const auto done = run_one(transport);
  EXPECT_FALSE(done.failure) << done.failure->message;
  EXPECT_EQ(done.ticket.batch, 7);
  EXPECT_EQ(done.ticket.attempt, 2);
  EXPECT_EQ(done.job_id, "job-1");
  EXPECT_EQ(text(done.result), "torch-save-bytes");
  EXPECT_EQ(done.bytes_received, 16);
  EXPECT_EQ(transport.in_flight(), 0U);
  EXPECT_EQ(service.count("/response/job-1"), 3);
  EXPECT_EQ(service.count("/result/job-1"), 1);

  const auto requests = service.requests();
  const auto& post = requests.front();
  EXPECT_EQ(post.method, "POST");
  EXPECT_EQ(post.body, "compressed graph bytes");
  EXPECT_EQ(post.get_header_value("Content-Type"), "application/octet-stream");
  EXPECT_EQ(post.get_header_value("ndif-api-key"), kKey);
  EXPECT_EQ(post.get_header_value("model_key"),
            R"(nnsight.modeling.language.LanguageModel:{"repo_id": "gpt2"})");
  EXPECT_EQ(post.get_header_value("format"), "json");
  EXPECT_EQ(post.get_header_value("zlib"), "True");
  EXPECT_EQ(post.get_header_value("nnsight-version"), "0.4.11");
  // curl sends the empty `callback:` header (see CurlHeaders below); cpp-httplib drops empty
  // header values when it parses, so here it can only be checked as not carrying a value.
  EXPECT_EQ(post.get_header_value("callback"), "");
  EXPECT_GT(std::stod(post.get_header_value("sent-timestamp")), 1.7e9);  // stamped when sent
  for (const auto& r : requests) EXPECT_EQ(r.get_header_value("ndif-api-key"), kKey) << r.path;
}

TEST(JobTransport, ServerErrorOnSubmitIsRetryableAndTheNextAttemptSucceeds) {
  FakeService service;
  std::atomic<int> posts{0};
  service.post("/request", [&](const auto&, auto& res) {
    if (++posts == 1) {
      res.status = 500;
      res.set_content(R"({"detail": "backend down"})", "application/json");
      return;
    }
    reply_status(res, "COMPLETED");
  });
  service.get("/result/job-1",
              [](const auto&, auto& res) { res.set_content("ok", "application/octet-stream"); });

  JobTransport transport(options_for(service));
  transport.submit(JobTicket{1, 1}, small_request());
  const auto first = run_one(transport);
  ASSERT_TRUE(first.failure);
  EXPECT_EQ(first.failure->verdict, Verdict::retry);
  EXPECT_EQ(first.failure->cause, FailureCause::http_status);
  EXPECT_EQ(first.failure->stage, Stage::submit);
  EXPECT_EQ(first.failure->http_status, 500);
  EXPECT_NE(first.failure->message.find("backend down"), std::string::npos) << first.failure->message;

  transport.submit(JobTicket{1, 2}, small_request());
  const auto second = run_one(transport);
  EXPECT_FALSE(second.failure);
  EXPECT_EQ(text(second.result), "ok");
}

TEST(JobTransport, TransientPollFailuresAreRepolledNotFatal) {
  FakeService service;
  std::atomic<int> polls{0};
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "QUEUED"); });
  service.get("/response/job-1", [&](const auto&, auto& res) {
    const int n = ++polls;
    if (n == 1)
      res.status = 503;
    else if (n == 2)
      res.set_content("<html>bad gateway</html>", "text/html");
    else
      reply_status(res, "COMPLETED");
  });
  service.get("/result/job-1",
              [](const auto&, auto& res) { res.set_content("ok", "application/octet-stream"); });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{1, 1}, small_request());
  const auto done = run_one(transport);
  EXPECT_FALSE(done.failure) << done.failure->message;
  EXPECT_EQ(polls.load(), 3);
}

TEST(JobTransport, UnauthorizedIsRefusedAndTheKeyNeverAppearsInTheMessage) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) {
    res.status = 401;
    res.set_content(
        R"({"detail": "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."})",
        "application/json");
  });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::refused);
  EXPECT_EQ(done.failure->http_status, 401);
  EXPECT_NE(done.failure->message.find("Missing or invalid API key"), std::string::npos);
  EXPECT_EQ(done.failure->message.find(kKey), std::string::npos);
}

TEST(JobTransport, InvalidRequestErrorStatusIsJobInvalid) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [](const auto&, auto& res) {
    reply_status(res, "ERROR", "null", "InvalidRequest: unknown module .model.layers.99");
  });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::job_invalid);
  EXPECT_EQ(done.failure->cause, FailureCause::job_error);
  EXPECT_NE(done.failure->message.find("unknown module .model.layers.99"), std::string::npos);
}

TEST(JobTransport, DownloadsFromThePresignedUrlWithoutTheApiKey) {
  FakeService service;
  const std::string url = service.base() + "/bucket/result.pt?sig=abc";
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1",
              [&](const auto&, auto& res) { reply_status(res, "COMPLETED", "[\"" + url + "\", 9]"); });
  service.get("/bucket/result.pt",
              [](const auto&, auto& res) { res.set_content("presigned", "application/octet-stream"); });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  EXPECT_FALSE(done.failure);
  EXPECT_EQ(text(done.result), "presigned");
  const auto requests = service.requests();
  ASSERT_EQ(requests.back().path, "/bucket/result.pt");
  EXPECT_EQ(requests.back().get_param_value("sig"), "abc");
  EXPECT_FALSE(requests.back().has_header("ndif-api-key"));
  EXPECT_EQ(service.count("/result/job-1"), 0);
}

TEST(JobTransport, ExpiredPresignedUrlIsRetryable) {
  FakeService service;
  const std::string url = service.base() + "/bucket/old.pt";
  service.post("/request",
               [&](const auto&, auto& res) { reply_status(res, "COMPLETED", "\"" + url + "\""); });
  service.get("/bucket/old.pt", [](const auto&, auto& res) { res.status = 403; });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
  EXPECT_EQ(done.failure->stage, Stage::download);
  EXPECT_EQ(done.failure->http_status, 403);
}

TEST(JobTransport, TruncatedDownloadIsRetryable) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "COMPLETED"); });
  service.get("/result/job-1", [](const auto&, auto& res) {
    // Announces 1000 bytes, sends 10 and drops the connection.
    res.set_content_provider(1000, "application/octet-stream",
                             [](std::size_t offset, std::size_t, httplib::DataSink& sink) {
                               if (offset > 0) return false;
                               sink.write("0123456789", 10);
                               return true;
                             });
  });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
  EXPECT_EQ(done.failure->cause, FailureCause::truncated);
}

TEST(JobTransport, DownloadShorterThanTheAnnouncedSizeIsTruncated) {
  FakeService service;
  const std::string url = service.base() + "/bucket/r.pt";
  service.post("/request",
               [&](const auto&, auto& res) { reply_status(res, "COMPLETED", "[\"" + url + "\", 500]"); });
  service.get("/bucket/r.pt",
              [](const auto&, auto& res) { res.set_content("short", "application/octet-stream"); });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->cause, FailureCause::truncated);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
}

TEST(JobTransport, ResultLargerThanTheLimitIsStoppedAsOversized) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "COMPLETED"); });
  service.get("/result/job-1", [](const auto&, auto& res) {
    res.set_content(std::string(4096, 'x'), "application/octet-stream");
  });
  auto options = options_for(service);
  options.max_result_bytes = 1000;
  JobTransport transport(options);
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->cause, FailureCause::oversized);
  EXPECT_EQ(done.failure->verdict, Verdict::fatal);
}

TEST(JobTransport, AttemptLongerThanJobTimeoutFailsAsRetryableTimeout) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [](const auto&, auto& res) { reply_status(res, "RUNNING"); });
  auto options = options_for(service);
  options.timeouts.job_s = 0.3;
  JobTransport transport(options);
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->cause, FailureCause::timeout);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
  EXPECT_NE(done.failure->message.find("job_s"), std::string::npos);
  EXPECT_GE(service.count("/response/job-1"), 1);
}

TEST(JobTransport, PollsFollowTheBackoffAndNeverExceedThePollInterval) {
  // 6 RUNNING replies then COMPLETED: exactly 7 polls, whatever the timing.
  FakeService service;
  std::atomic<int> polls{0};
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1",
              [&](const auto&, auto& res) { reply_status(res, ++polls <= 6 ? "RUNNING" : "COMPLETED"); });
  service.get("/result/job-1",
              [](const auto&, auto& res) { res.set_content("ok", "application/octet-stream"); });
  auto options = options_for(service);
  options.timeouts.poll_interval_s = 0.1;
  JobTransport transport(options);
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  EXPECT_FALSE(done.failure);
  EXPECT_EQ(service.count("/response/job-1"), 7);
  // The schedule the transport follows (tested exactly in PollDelay) is capped at 100 ms, so
  // six waits add up to at most 50 + 100 * 5 ms.
  std::int64_t total = 0;
  for (int p = 0; p < 6; ++p) total += poll_delay(p, 0.1).count();
  EXPECT_EQ(total, 550);
}

TEST(JobTransport, ConnectionRefusedIsRetryable) {
  std::string base;
  {
    FakeService service;  // a port that was just free again
    base = service.base();
  }
  TransportOptions options;
  options.base_url = base;
  options.api_key = kKey;
  options.timeouts = spec::Timeouts{1, 2, 10, 0.05};
  JobTransport transport(options);
  transport.submit(JobTicket{0, 1}, small_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->cause, FailureCause::connection);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
}

TEST(JobTransport, SeveralAttemptsRunAtOnceAndCancelAllDropsThem) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [](const auto&, auto& res) { reply_status(res, "QUEUED"); });
  JobTransport transport(options_for(service));
  for (int b = 0; b < 3; ++b) transport.submit(JobTicket{b, 1}, small_request());
  EXPECT_EQ(transport.in_flight(), 3U);
  std::vector<SubmittedJob> learnt;
  for (int i = 0; i < 20 && learnt.size() < 3; ++i) {
    auto events = transport.run(std::chrono::milliseconds(100));
    EXPECT_TRUE(events.finished.empty());
    learnt.insert(learnt.end(), events.submitted.begin(), events.submitted.end());
  }
  ASSERT_EQ(learnt.size(), 3U);  // each submit's job id, reported once, before any poll ends
  for (const auto& s : learnt) EXPECT_EQ(s.job_id, "job-1");
  transport.cancel_all();
  EXPECT_EQ(transport.in_flight(), 0U);
  EXPECT_TRUE(transport.run(std::chrono::milliseconds(10)).empty());
}

TEST(JobTransport, WithNothingInFlightRunWaitsItsTimeOutInsteadOfReturningAtOnce) {
  FakeService service;
  JobTransport transport(options_for(service));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(transport.run(std::chrono::milliseconds(150)).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(140));
}

TEST(JobTransport, WakeFromAnotherThreadEndsARunThatWaitsWithOrWithoutAttempts) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [](const auto&, auto& res) { reply_status(res, "QUEUED"); });
  for (const bool busy : {false, true}) {
    JobTransport transport(options_for(service));
    if (busy) {
      transport.submit(JobTicket{0, 1}, small_request());
      // The submit's job id comes back first; after it the job only waits in its queue.
      for (int i = 0; i < 40 && transport.run(std::chrono::milliseconds(50)).submitted.empty(); ++i) {
      }
    }
    const auto start = std::chrono::steady_clock::now();
    std::thread waker([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      transport.wake();
    });
    const auto events = transport.run(std::chrono::seconds(10));
    const auto took = std::chrono::steady_clock::now() - start;
    waker.join();
    EXPECT_TRUE(events.finished.empty());
    EXPECT_GE(took, std::chrono::milliseconds(90)) << "busy " << busy;
    EXPECT_LT(took, std::chrono::seconds(3)) << "busy " << busy;
    // A wake before the run ends it too, instead of being lost.
    transport.wake();
    const auto again = std::chrono::steady_clock::now();
    (void)transport.run(std::chrono::seconds(10));
    EXPECT_LT(std::chrono::steady_clock::now() - again, std::chrono::seconds(3)) << "busy " << busy;
    EXPECT_EQ(transport.in_flight(), busy ? 1U : 0U);
  }
}

TEST(JobTransport, AResumedJobIsPolledAndDownloadedWithoutASubmit) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/old-job", [](const auto&, auto& res) { reply_status(res, "COMPLETED"); });
  service.get("/result/old-job",
              [](const auto&, auto& res) { res.set_content("kept", "application/octet-stream"); });
  JobTransport transport(options_for(service));
  transport.resume(JobTicket{4, 2}, "old-job", small_request());
  const auto done = run_one(transport);
  ASSERT_FALSE(done.failure) << done.failure->message;
  EXPECT_EQ(done.ticket.attempt, 2);
  EXPECT_EQ(done.job_id, "old-job");
  EXPECT_EQ(text(done.result), "kept");
  EXPECT_EQ(service.count("/request"), 0);
}

EncodedRequest g4_request() {
  EncodedRequest r = small_request();
  r.envelope =
      R"({"model_key":"nnsight.modeling.transformers.TransformersModel:{}","session_id":"","compress":true,"env":{}})";
  r.headers = {{"nnsight-version", "0.8.1"}, {"python-version", "3.11.7 (main)"}};
  r.expected.saved_name = kSaveName;
  return r;
}

TEST(G4Transport, PostsTheEnvelopeAndBlobAsMultipartWithNnsightsHeaders) {
  FakeService service;
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [&](const auto&, auto& res) {
    reply_status(res, "COMPLETED", "\"" + service.base() + "/blob/job-1?expires=9&signature=x\"");
  });
  service.get("/blob/job-1",
              [](const auto&, auto& res) { res.set_content("result-bytes", "application/octet-stream"); });

  JobTransport transport(options_for(service));
  const double before =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  transport.submit(JobTicket{1, 1}, g4_request());
  const auto done = run_one(transport);
  ASSERT_FALSE(done.failure) << done.failure->message;
  EXPECT_EQ(text(done.result), "result-bytes");

  const auto requests = service.requests();
  const auto& post = requests.front();
  ASSERT_TRUE(post.is_multipart_form_data()) << post.get_header_value("Content-Type");
  ASSERT_TRUE(post.has_file("data"));
  ASSERT_TRUE(post.has_file("blob"));
  EXPECT_EQ(post.get_file_value("data").content, g4_request().envelope);
  EXPECT_EQ(post.get_file_value("data").filename, "");
  EXPECT_EQ(post.get_file_value("blob").content, "compressed graph bytes");
  EXPECT_EQ(post.get_file_value("blob").filename, "request");
  EXPECT_EQ(post.get_file_value("blob").content_type, "application/octet-stream");
  EXPECT_EQ(post.get_header_value("ndif-api-key"), kKey);
  EXPECT_EQ(post.get_header_value("nnsight-version"), "0.8.1");
  EXPECT_EQ(post.get_header_value("python-version"), "3.11.7 (main)");
  const double stamped = std::stod(post.get_header_value("ndif-timestamp"));
  EXPECT_GE(stamped, before - 1);
  EXPECT_LE(stamped, before + 60);
  EXPECT_FALSE(post.has_header("model_key"));
  // The presigned download carries no NDIF header at all.
  const auto& download = requests.back();
  EXPECT_EQ(download.path, "/blob/job-1");
  EXPECT_FALSE(download.has_header("ndif-api-key"));
  EXPECT_FALSE(download.has_header("nnsight-version"));
  EXPECT_FALSE(download.has_header("ndif-timestamp"));
}

TEST(G4Transport, A404BeforeTheFirstStoredStatusMeansNotYetAndTheStatesAreReported) {
  FakeService service;
  std::atomic<int> polls{0};
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [&](const auto&, auto& res) {
    const int n = ++polls;
    if (n <= 3) {
      res.status = 404;
      res.set_content(R"({"detail": "No response for request job-1."})", "application/json");
    } else if (n == 4) {
      reply_status(res, "QUEUED", "null", "Added to Queue at position 1.");
    } else if (n == 5) {
      reply_status(res, "PROVISIONING", "null", "Model Provisioning...");
    } else if (n == 6) {
      reply_status(res, "SOMETHING_NEW");
    } else {
      reply_status(res, "COMPLETED", "\"" + service.base() + "/blob/job-1\"");
    }
  });
  service.get("/blob/job-1",
              [](const auto&, auto& res) { res.set_content("r", "application/octet-stream"); });

  JobTransport transport(options_for(service));
  transport.submit(JobTicket{1, 1}, g4_request());
  std::vector<std::string> seen;
  std::optional<FinishedJob> done;
  for (int i = 0; i < 400 && !done; ++i) {
    for (auto& f : transport.run(std::chrono::milliseconds(20)).finished) done = std::move(f);
    for (auto state : transport.in_flight_states())
      if (seen.empty() || seen.back() != state_name(state)) seen.emplace_back(state_name(state));
  }
  ASSERT_TRUE(done);
  ASSERT_FALSE(done->failure) << done->failure->message;
  EXPECT_EQ(polls.load(), 7);
  const std::vector<std::string> expected{"RECEIVED", "QUEUED", "PROVISIONING", "UNKNOWN", "COMPLETED"};
  EXPECT_EQ(seen, expected);
}

TEST(G4Transport, A404AfterAStoredStatusMeansTheJobIsGoneAndIsRetried) {
  FakeService service;
  std::atomic<int> polls{0};
  service.post("/request", [](const auto&, auto& res) { reply_status(res, "RECEIVED"); });
  service.get("/response/job-1", [&](const auto&, auto& res) {
    if (++polls == 1) {
      reply_status(res, "QUEUED");
    } else {
      res.status = 404;
      res.set_content(R"({"detail": "No response for request job-1."})", "application/json");
    }
  });
  auto options = options_for(service);
  options.poll_failures_allowed = 1;
  JobTransport transport(options);
  transport.submit(JobTicket{1, 1}, g4_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
  EXPECT_EQ(done.failure->stage, Stage::poll);
  EXPECT_EQ(done.failure->http_status, 404);
}

TEST(G4Transport, AResumedJobThatStaysUnknownIsGoneAfterTheGraceAndRetried) {
  FakeService service;
  service.get("/response/lost", [](const auto&, auto& res) {
    res.status = 404;
    res.set_content(R"({"detail": "No response for request lost."})", "application/json");
  });
  auto options = options_for(service);
  options.resumed_not_stored = std::chrono::milliseconds(300);
  options.poll_failures_allowed = 0;
  JobTransport transport(options);
  transport.resume(JobTicket{1, 3}, "lost", g4_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->verdict, Verdict::retry);
  EXPECT_EQ(done.failure->http_status, 404);
  EXPECT_GE(service.count("/response/lost"), 2);
}

TEST(G4Transport, AResumedJobSubmittedLongAgoIsGoneAtItsFirst404) {
  FakeService service;
  service.get("/response/expired", [](const auto&, auto& res) {
    res.status = 404;
    res.set_content(R"({"detail": "No response for request expired."})", "application/json");
  });
  auto options = options_for(service);
  options.poll_failures_allowed = 0;
  JobTransport transport(options);
  const auto start = std::chrono::steady_clock::now();
  transport.resume(JobTicket{2, 1}, "expired", g4_request(), std::chrono::hours(1));
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->http_status, 404);
  EXPECT_EQ(service.count("/response/expired"), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(G4Transport, IngressRefusalsCarryTheServersWordsAndAHint) {
  for (const auto& [status, detail, verdict, hint] :
       std::vector<std::tuple<int, std::string, Verdict, std::string>>{
           {401, "Missing or invalid API key.", Verdict::refused, "needs an API key"},
           {403, "Invalid API key.", Verdict::refused, "does not know this API key"},
           {400, "Client nnsight version 0.7.0 is below the minimum supported 0.8.0.", Verdict::refused,
            "rejected the client"},
           {422, "Field required", Verdict::refused, "could not read the request"},
           {503, "Service temporarily unavailable: compute backend is reconnecting.", Verdict::retry,
            "temporarily unavailable"}}) {
    FakeService service;
    service.post("/request", [&, status = status, detail = detail](const auto&, auto& res) {
      res.status = status;
      res.set_content(R"({"detail": ")" + detail + R"("})", "application/json");
    });
    JobTransport transport(options_for(service));
    transport.submit(JobTicket{1, 1}, g4_request());
    const auto done = run_one(transport);
    ASSERT_TRUE(done.failure);
    EXPECT_EQ(done.failure->verdict, verdict) << status;
    EXPECT_EQ(done.failure->http_status, status);
    EXPECT_NE(done.failure->message.find(detail), std::string::npos) << done.failure->message;
    EXPECT_NE(done.failure->message.find(hint), std::string::npos) << done.failure->message;
    EXPECT_EQ(done.failure->message.find(kKey), std::string::npos) << done.failure->message;
  }
}

TEST(G4Transport, AServerThatQuotesTheKeyNeverGetsItIntoAMessage) {
  FakeService service;
  service.post("/request", [](const auto& req, auto& res) {
    res.status = 400;
    res.set_content(R"({"detail": "Invalid API key format: ')" + req.get_header_value("ndif-api-key") +
                        R"('. API keys must be in the format: xxxxxxxx-xxxx."})",
                    "application/json");
  });
  JobTransport transport(options_for(service));
  transport.submit(JobTicket{1, 1}, g4_request());
  const auto done = run_one(transport);
  ASSERT_TRUE(done.failure);
  EXPECT_EQ(done.failure->message.find(kKey), std::string::npos) << done.failure->message;
  EXPECT_NE(done.failure->message.find("Invalid API key format: '<the API key>'"), std::string::npos)
      << done.failure->message;
  const auto check = check_api_key(service.base(), kKey, "{}", spec::Timeouts{2, 5, 20, 0.05});
  EXPECT_EQ(check.words.find(kKey), std::string::npos) << check.words;
}

TEST(KeyCheck, AnEnvelopeWithoutBlobTellsAcceptedFromRefusedWithoutMakingAJob) {
  FakeService service;
  service.post("/request", [](const auto& req, auto& res) {
    EXPECT_TRUE(req.has_file("data"));
    EXPECT_FALSE(req.has_file("blob"));
    const auto key = req.get_header_value("ndif-api-key");
    res.status = key == kKey ? 422 : key == "not-a-uuid" ? 400 : 403;
    res.set_content(R"({"detail": "x"})", "application/json");
  });
  const spec::Timeouts t{2, 5, 20, 0.05};
  EXPECT_EQ(check_api_key(service.base(), kKey, "{}", t).outcome, KeyCheck::Outcome::accepted);
  const auto refused = check_api_key(service.base(), "other", "{}", t);
  EXPECT_EQ(refused.outcome, KeyCheck::Outcome::refused);
  EXPECT_EQ(refused.http_status, 403);
  EXPECT_EQ(check_api_key(service.base(), "not-a-uuid", "{}", t).outcome, KeyCheck::Outcome::refused);
  EXPECT_EQ(check_api_key("http://127.0.0.1:1", kKey, "{}", spec::Timeouts{1, 2, 5, 0.05}).outcome,
            KeyCheck::Outcome::unknown);
}

TEST(CurlHeaders, EmptyValuesUseCurlsSemicolonFormSoTheyAreSentNotDropped) {
  curl::Slist list;
  curl::append_header(list, "callback", "");
  curl::append_header(list, "format", "json");
  ASSERT_NE(list, nullptr);
  EXPECT_STREQ(list->data, "callback;");
  ASSERT_NE(list->next, nullptr);
  EXPECT_STREQ(list->next->data, "format: json");
  EXPECT_EQ(list->next->next, nullptr);
}

TEST(Deployments, ComeFromGetStatusWithTheKeyAndPickTheModelOrAWildcard) {
  FakeService service;
  service.get("/status", [](const auto& req, auto& res) {
    if (req.get_header_value("ndif-api-key") != kKey) {
      res.status = 401;
      return;
    }
    res.set_content(R"({"deployments": {
      "a": {"application_state": "RUNNING", "repo_id": "other/model", "config": {"hidden_size": 1, "num_hidden_layers": 1}},
      "b": {"application_state": "RUNNING", "repo_id": "meta-llama/Llama-3.1-8B", "config": {"hidden_size": 4096, "num_hidden_layers": 32}},
      "*": {"application_state": "RUNNING", "repo_id": "*", "config": {"hidden_size": 64, "num_hidden_layers": 8}}}})",
                    "application/json");
  });
  const spec::Timeouts t{2, 5, 20, 0.05};
  const auto deployments = fetch_deployments(service.base(), kKey, t);
  ASSERT_EQ(deployments.size(), 3U);
  const auto& exact = choose_deployment(deployments, "meta-llama/Llama-3.1-8B", std::nullopt, service.base());
  EXPECT_EQ(exact.config->hidden_size, 4096);
  EXPECT_EQ(exact.config->num_hidden_layers, 32);
  const auto& wildcard = choose_deployment(deployments, "gpt2", std::nullopt, service.base());
  EXPECT_EQ(wildcard.config->hidden_size, 64);
  EXPECT_EQ(wildcard.config->num_hidden_layers, 8);
  EXPECT_THROW(static_cast<void>(fetch_deployments(service.base(), "wrong", t)), ServiceRefused);
}

TEST(Deployments, AModelThatIsNotDeployedIsAnInputErrorNamingTheDeployments) {
  FakeService service;
  service.get("/status", [](const auto&, auto& res) {
    res.set_content(R"({"deployments": {"a": {"repo_id": "other/model"}}})", "application/json");
  });
  const auto deployments = fetch_deployments(service.base(), kKey, spec::Timeouts{2, 5, 20, 0.05});
  try {
    static_cast<void>(choose_deployment(deployments, "gpt2", std::nullopt, service.base()));
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("deployments: \"other/model\""), std::string::npos) << e.what();
  }
}

TEST(Env, IsReadWithoutAKey) {
  FakeService service;
  service.get("/env", [](const auto& req, auto& res) {
    EXPECT_FALSE(req.has_header("ndif-api-key"));
    res.set_content(
        R"J({"python_version": "3.12.3 (main)", "packages": {"nnsight": "0.8.1", "torch": "2.13.0"}})J",
        "application/json");
  });
  const auto env = fetch_env(service.base(), spec::Timeouts{2, 5, 20, 0.05});
  EXPECT_EQ(env.python_version, "3.12.3 (main)");
  EXPECT_EQ(env.nnsight_version, "0.8.1");
}

TEST(Ping, AnswersTrueOnlyForALiveService) {
  std::string base;
  {
    FakeService service;
    service.get("/ping", [](const auto&, auto& res) { res.set_content("\"pong\"", "application/json"); });
    EXPECT_TRUE(ping(service.base(), spec::Timeouts{2, 5, 20, 0.05}));
    base = service.base();
  }
  EXPECT_FALSE(ping(base, spec::Timeouts{1, 2, 20, 0.05}));
}

}  // namespace
}  // namespace ndif::remote
