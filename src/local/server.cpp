#include "ndif_sweep/local/server.hpp"

#include <httplib.h>
#include <pthread.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/version.hpp"
#include "ndif_sweep/local/graph.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::local {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::pair<FaultKind, const char*> kFaultNames[] = {
    {FaultKind::http500, "http500"},
    {FaultKind::http503, "http503"},
    {FaultKind::reset, "reset"},
    {FaultKind::truncate, "truncate"},
    {FaultKind::error_status, "error_status"},
    {FaultKind::expired_url, "expired_url"},
    {FaultKind::slow, "slow"},
    {FaultKind::bad_zstd, "bad_zstd"},
};

constexpr const char* kBadKey =
    "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one.";
constexpr const char* kCancelled = "Your job was cancelled or preempted by the server.";
/// How long a finished job's state is kept: after its result was downloaded, after it ended in
/// ERROR, and when nobody ever downloads it. Bounded memory for long soak runs.
constexpr auto kKeepDownloaded = std::chrono::seconds(60);
constexpr auto kKeepError = std::chrono::minutes(10);
constexpr auto kKeepUndelivered = std::chrono::hours(1);
/// The cap on an inflated request body, far above any sweep batch.
constexpr std::size_t kMaxRequestBytes = std::size_t{1} << 30;
/// Connections served at once (cpp-httplib: one thread each, while kept alive).
constexpr std::size_t kHttpThreads = 128;
/// Downloads are written in chunks of this size; the bandwidth cap is shared per chunk.
constexpr std::size_t kChunk = 16 * 1024;

std::string detail(const std::string& text) { return json{{"detail", text}}.dump(); }

std::string new_job_id() {
  static std::mutex mutex;
  static std::mt19937_64 random{std::random_device{}()};
  std::lock_guard lock(mutex);
  const std::uint64_t a = random();
  const std::uint64_t b = random();
  char text[37];
  std::snprintf(text, sizeof text, "%08x-%04x-4%03x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xFFFF), static_cast<unsigned>(a & 0xFFF),
                static_cast<unsigned>(0x8000 | ((b >> 48) & 0x3FFF)),
                static_cast<unsigned long long>(b & 0xFFFFFFFFFFFFULL));
  return text;
}

/// zlib-inflates a request body, bounded by kMaxRequestBytes. Throws InputError on bad data.
std::string inflate_body(const std::string& body) {
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) {
    throw InternalError("inflateInit failed");
  }
  std::unique_ptr<z_stream, decltype(&inflateEnd)> owner(&stream, &inflateEnd);
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(body.data()));
  stream.avail_in = static_cast<uInt>(body.size());
  std::string out;
  int status = Z_OK;
  while (status != Z_STREAM_END) {
    if (out.size() > kMaxRequestBytes) {
      throw InputError("the inflated request body exceeds " + std::to_string(kMaxRequestBytes) + " bytes");
    }
    const std::size_t used = out.size();
    out.resize(used + 256 * 1024);
    stream.next_out = reinterpret_cast<Bytef*>(out.data() + used);
    stream.avail_out = 256 * 1024;
    status = inflate(&stream, Z_NO_FLUSH);
    out.resize(out.size() - stream.avail_out);
    if (status != Z_OK && status != Z_STREAM_END) {
      throw InputError("the body is not valid zlib data (header \"zlib: True\"): " +
                       std::string(stream.msg ? stream.msg : "truncated stream"));
    }
  }
  return out;
}

/// zstd-decompresses a G4 blob, bounded by kMaxRequestBytes. Throws InputError on bad data.
std::string zstd_decompress(const std::string& blob) {
  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> context(ZSTD_createDCtx(), &ZSTD_freeDCtx);
  if (!context) throw InternalError("ZSTD_createDCtx failed");
  ZSTD_inBuffer in{blob.data(), blob.size(), 0};
  std::string out;
  std::size_t rc = 1;
  while (rc != 0) {
    if (out.size() > kMaxRequestBytes)
      throw InputError("the decompressed blob exceeds " + std::to_string(kMaxRequestBytes) + " bytes");
    const std::size_t used = out.size();
    out.resize(used + 256 * 1024);
    ZSTD_outBuffer buffer{out.data() + used, 256 * 1024, 0};
    rc = ZSTD_decompressStream(context.get(), &buffer, &in);
    out.resize(used + buffer.pos);
    if (ZSTD_isError(rc) != 0U)
      throw InputError(std::string("the blob is not valid zstd data (envelope \"compress\": true): ") +
                       ZSTD_getErrorName(rc));
    if (rc != 0 && in.pos == in.size && buffer.pos < buffer.size)
      throw InputError("the blob's zstd frame is truncated (envelope \"compress\": true)");
  }
  return out;
}

/// An HMAC-like tag of a result URL: the URL is only good for its job and until it expires.
std::string url_signature(const std::string& id, long long expires, std::uint64_t secret) {
  std::uint64_t h = secret;
  for (char c : id + ":" + std::to_string(expires)) h = mix(h ^ static_cast<unsigned char>(c));
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

long long unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<std::byte> zstd_compress(const std::vector<std::byte>& bytes, int level) {
  std::vector<std::byte> out(ZSTD_compressBound(bytes.size()));
  const std::size_t size = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), level);
  if (ZSTD_isError(size) != 0U) {
    throw InternalError(std::string("ZSTD_compress of a result failed: ") + ZSTD_getErrorName(size));
  }
  out.resize(size);
  return out;
}

/// Parses "major.minor[.patch]" and tells whether it is at least 0.4.
bool version_supported(const std::string& version) {
  int major = 0;
  int minor = 0;
  if (std::sscanf(version.c_str(), "%d.%d", &major, &minor) != 2) {
    return false;
  }
  return major > 0 || minor >= 4;
}

/// Shares the download bandwidth: every chunk reserves its slot in one timeline, so concurrent
/// downloads interleave chunk by chunk at the total rate.
class TokenBucket {
 public:
  explicit TokenBucket(double bytes_per_second) : rate_(bytes_per_second) {}
  /// Blocks until `bytes` may be sent; returns at once when there is no cap.
  void acquire(std::size_t bytes) {
    if (rate_ <= 0) {
      return;
    }
    Clock::time_point due;
    {
      std::lock_guard lock(mutex_);
      const auto now = Clock::now();
      next_ = std::max(next_, now);
      next_ += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(static_cast<double>(bytes) / rate_));
      due = next_;
    }
    std::this_thread::sleep_until(due);
  }

 private:
  double rate_;
  std::mutex mutex_;
  Clock::time_point next_{};
};

enum class JobStage { received, delayed, queued, running, completed, error };

struct Job {
  std::string id;
  std::optional<FaultKind> fault;
  RequestGraph graph;
  /// G4 (a multipart request): its status is stored for polling only after the first poll found
  /// none, COMPLETED carries an expiring URL, and the result is keyed by the saved names.
  bool g4 = false;
  bool compress = false;                           ///< G4 envelope "compress": zstd blob and result
  std::map<std::string, std::string> saved_names;  ///< G4: node index -> variable name
  bool stored = false;
  JobStage stage = JobStage::received;
  std::string description;
  std::shared_ptr<const std::vector<std::byte>> result;  ///< the file to download
  bool downloading = false;
  bool first_poll_done = false;
  bool first_download_done = false;
  Clock::time_point forget_at = Clock::time_point::max();
};

}  // namespace

FaultKind parse_fault_kind(std::string_view name) {
  for (const auto& [kind, text] : kFaultNames) {
    if (name == text) {
      return kind;
    }
  }
  std::string valid;
  for (const auto& [kind, text] : kFaultNames) {
    valid += (valid.empty() ? "" : ", ") + std::string(text);
  }
  throw InputError("--fail-kinds: unknown fault \"" + std::string(name) + "\"; valid: " + valid);
}

const char* fault_name(FaultKind kind) noexcept {
  for (const auto& [k, text] : kFaultNames) {
    if (k == kind) {
      return text;
    }
  }
  return "unknown";
}

std::optional<FaultKind> draw_fault(const ServerOptions& options, std::uint64_t sequence) noexcept {
  if (options.fail_rate <= 0) {
    return std::nullopt;
  }
  const std::uint64_t draw = mix(options.fail_seed ^ mix(sequence + 0x51ED270B27D3A5ULL));
  const double uniform = static_cast<double>(draw >> 11) * 0x1p-53;
  if (uniform >= options.fail_rate) {
    return std::nullopt;
  }
  const std::uint64_t pick = mix(draw);
  if (options.fail_kinds.empty()) {
    return kFaultNames[pick % std::size(kFaultNames)].first;
  }
  return options.fail_kinds[pick % options.fail_kinds.size()];
}

struct LocalServer::Impl {
  explicit Impl(ServerOptions o)
      : options(std::move(o)), model(options.model), bucket(options.bandwidth_mbps * 1e6) {}

  ServerOptions options;
  SyntheticModel model;
  TokenBucket bucket;
  const std::uint64_t secret = std::random_device{}() * 0x9E3779B97F4A7C15ULL ^ std::random_device{}();
  httplib::Server http;
  int port = 0;
  std::thread http_thread;
  std::vector<std::thread> workers;
  std::thread admission;

  std::mutex mutex;
  std::condition_variable changed;
  bool stopping = false;
  std::uint64_t sequence = 0;
  // Counts for GET /stats: what a client made this server do (jobs accepted, finished, fetched).
  std::uint64_t submitted = 0;
  std::uint64_t completed_jobs = 0;
  std::uint64_t failed_jobs = 0;
  std::uint64_t downloads = 0;
  /// Result bytes written to clients, also of downloads that failed: the wire side of the bench's
  /// useful-versus-received figure. Atomic: the download threads add to it outside the mutex.
  std::atomic<std::uint64_t> bytes_sent{0};
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::multimap<Clock::time_point, std::shared_ptr<Job>> delayed;
  std::deque<std::shared_ptr<Job>> queue;

  // --- status JSON ------------------------------------------------------------------------

  std::string base_url() const { return "http://" + options.host + ":" + std::to_string(port); }

  json status_json(const Job& job) const {
    static constexpr const char* names[] = {"RECEIVED", "RECEIVED",  "QUEUED",
                                            "RUNNING",  "COMPLETED", "ERROR"};
    // ndif 0.1 stores no RECEIVED status: a queued job is QUEUED from its first stored status.
    static constexpr const char* g4_names[] = {"QUEUED", "QUEUED", "QUEUED", "RUNNING", "COMPLETED", "ERROR"};
    json data = nullptr;
    if (job.stage == JobStage::completed && job.g4) {
      const long long expires =
          job.fault == FaultKind::expired_url ? unix_now() - 1 : unix_now() + options.url_ttl_s;
      data = base_url() + "/download/" + job.id + "?expires=" + std::to_string(expires) +
             "&signature=" + url_signature(job.id, expires, secret);
    } else if (job.stage == JobStage::completed &&
               (options.delivery == Delivery::url || job.fault == FaultKind::expired_url)) {
      std::string url = base_url() + "/download/" + job.id + "?X-Amz-Expires=7200&X-Amz-Signature=" +
                        (job.fault == FaultKind::expired_url ? "expired" : "local");
      data = json::array({url, job.result ? job.result->size() : 0});
    }
    return json{{"id", job.id},
                {"status", (job.g4 ? g4_names : names)[static_cast<int>(job.stage)]},
                {"description", job.description},
                {"data", data},
                {"session_id", nullptr}};
  }

  /// Renumbers the queue positions; called with the mutex held.
  void renumber_queue() {
    std::size_t position = 1;
    for (const auto& job : queue) {
      job->description = "Moved to position " + std::to_string(position++) + " in Queue.";
    }
  }

  // --- job lifecycle ------------------------------------------------------------------------

  void admit_loop() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      const auto now = Clock::now();
      while (!delayed.empty() && delayed.begin()->first <= now) {
        auto job = delayed.begin()->second;
        delayed.erase(delayed.begin());
        job->stage = JobStage::queued;
        queue.push_back(std::move(job));
        renumber_queue();
        changed.notify_all();
      }
      for (auto it = jobs.begin(); it != jobs.end();) {
        it = it->second->forget_at <= now ? jobs.erase(it) : std::next(it);
      }
      auto wake = now + std::chrono::seconds(1);
      if (!delayed.empty()) {
        wake = std::min(wake, delayed.begin()->first);
      }
      changed.wait_until(lock, wake);
    }
  }

  void work_loop() {
    std::unique_lock lock(mutex);
    while (true) {
      changed.wait(lock, [&] { return stopping || !queue.empty(); });
      if (stopping) {
        return;
      }
      auto job = queue.front();
      queue.pop_front();
      renumber_queue();
      job->stage = JobStage::running;
      job->description = "Your job has started running.";
      lock.unlock();
      finish(*job);
      lock.lock();
    }
  }

  /// Runs the job's graph (without the mutex) and publishes its outcome.
  void finish(Job& job) {
    JobStage stage = JobStage::completed;
    std::string description = "Your job has been completed.";
    std::shared_ptr<const std::vector<std::byte>> file;
    if (job.fault == FaultKind::error_status) {
      stage = JobStage::error;
      description = kCancelled;
    } else {
      try {
        torchsave::Dict top;
        if (job.g4) {
          // nnsight 0.8: the saved locals of the trace, by variable name.
          auto saved = run_request(job.graph, model);
          for (auto& [key, value] : std::get<torchsave::Dict>(saved.v).items) {
            const std::string node = std::to_string(std::get<std::int64_t>(key.v));
            const auto name = job.saved_names.find(node);
            top.items.emplace_back(torchsave::Value{name != job.saved_names.end() ? name->second : node},
                                   std::move(value));
          }
        } else {
          top.items.emplace_back(torchsave::Value{std::string("id")}, torchsave::Value{job.id});
          top.items.emplace_back(torchsave::Value{std::string("result")}, run_request(job.graph, model));
        }
        auto bytes = torchsave::save(torchsave::Value{std::move(top)});
        if (options.zstd || job.compress || job.fault == FaultKind::bad_zstd) {
          bytes = zstd_compress(bytes, job.g4 ? 3 : 1);
        }
        if (job.fault == FaultKind::bad_zstd) {
          // Keep the magic number and frame header, lose the rest of the frame.
          bytes.resize(std::max<std::size_t>(8, bytes.size() / 2));
          std::fill(bytes.begin() + 6, bytes.end(), std::byte{0xA5});
        }
        file = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
      } catch (const Error& e) {
        stage = JobStage::error;
        description = e.what();
      } catch (const std::exception& e) {
        stage = JobStage::error;
        description = std::string("InternalError: ") + e.what();
      }
    }
    std::lock_guard lock(mutex);
    ++(stage == JobStage::error ? failed_jobs : completed_jobs);
    job.stage = stage;
    job.description = std::move(description);
    job.result = std::move(file);
    job.graph = RequestGraph{};  // the request is no longer needed; free it early
    job.forget_at = Clock::now() + (stage == JobStage::error ? kKeepError : kKeepUndelivered);
  }

  // --- HTTP handlers ------------------------------------------------------------------------

  /// Checks the API key; on failure fills a 401 and returns false.
  bool authorised(const httplib::Request& req, httplib::Response& res) const {
    const std::string key = req.get_header_value("ndif-api-key");
    const bool known = options.api_keys.empty() || std::find(options.api_keys.begin(), options.api_keys.end(),
                                                             key) != options.api_keys.end();
    if (key.empty() || !known) {
      res.status = 401;
      res.set_content(detail(kBadKey), "application/json");
      return false;
    }
    return true;
  }

  std::shared_ptr<Job> find_job(const std::string& id) {
    std::lock_guard lock(mutex);
    const auto it = jobs.find(id);
    return it == jobs.end() ? nullptr : it->second;
  }

  /// The G4 envelope and blob of a multipart request, in the order ndif 0.1 checks them: the
  /// envelope (422), the key (401), the blob (422). Returns false with the reply filled in.
  bool read_multipart(const httplib::Request& req, httplib::Response& res, Job& job, std::string& text) {
    if (!req.has_file("data")) {
      res.status = 422;
      res.set_content(
          json{{"detail",
                json::array({{{"type", "missing"}, {"loc", {"body", "data"}}, {"msg", "Field required"}}})}}
              .dump(),
          "application/json");
      return false;
    }
    const auto envelope = json::parse(req.get_file_value("data").content, nullptr, false);
    if (!envelope.is_object() || !envelope.contains("model_key") || !envelope["model_key"].is_string()) {
      res.status = 422;
      res.set_content(detail("Invalid envelope: \"data\" must be a JSON object with a string \"model_key\""),
                      "application/json");
      return false;
    }
    if (!authorised(req, res)) {
      return false;
    }
    if (!req.has_file("blob")) {
      res.status = 422;
      res.set_content(
          json{{"detail",
                json::array({{{"type", "missing"}, {"loc", {"body", "blob"}}, {"msg", "Field required"}}})}}
              .dump(),
          "application/json");
      return false;
    }
    job.g4 = true;
    job.compress = envelope.value("compress", false);
    const std::string& blob = req.get_file_value("blob").content;
    text = job.compress ? zstd_decompress(blob) : blob;
    return true;
  }

  void post_request(const httplib::Request& req, httplib::Response& res) {
    auto job = std::make_shared<Job>();
    std::string text;
    const bool multipart = req.is_multipart_form_data();
    try {
      if (multipart) {
        if (!read_multipart(req, res, *job, text)) {
          return;
        }
      } else if (!authorised(req, res)) {
        return;
      }
    } catch (const InputError& e) {
      res.status = 422;
      res.set_content(detail(e.what()), "application/json");
      return;
    }
    const std::string version = req.get_header_value("nnsight-version");
    if (!version_supported(version)) {
      res.status = 400;
      res.set_content(detail("Client version " +
                             (version.empty() ? std::string("(missing header nnsight-version)") : version) +
                             " is below the minimum 0.4.0 that this server supports. Please update nnsight."),
                      "application/json");
      return;
    }
    std::uint64_t number = 0;
    {
      std::lock_guard lock(mutex);
      number = sequence++;
      ++submitted;
    }
    const auto fault = draw_fault(options, number);
    if (fault == FaultKind::http500 || fault == FaultKind::http503) {
      res.status = fault == FaultKind::http500 ? 500 : 503;
      res.set_content(detail(fault == FaultKind::http500 ? "Internal Server Error" : "Service Unavailable"),
                      "application/json");
      return;
    }
    try {
      if (!multipart) {
        const std::string format = req.get_header_value("format");
        if (!format.empty() && format != "json") {
          throw InputError("header \"format: " + format + "\" is not supported; send \"format: json\"");
        }
        const std::string zlib = req.get_header_value("zlib");
        if (!zlib.empty() && zlib != "True" && zlib != "False") {
          throw InputError("header \"zlib\" must be True or False, got \"" + zlib + "\"");
        }
        text = zlib == "True" ? inflate_body(req.body) : req.body;
      }
      json parsed;
      try {
        parsed = json::parse(text);
      } catch (const json::exception& e) {
        throw InputError(std::string(multipart ? "the blob is not JSON" : "the body is not JSON") +
                         (multipart || req.get_header_value("zlib") == "True"
                              ? ""
                              : " (compressed bodies need the header \"zlib: True\")") +
                         ": " + e.what());
      }
      job->graph = parse_request(parsed);
      if (multipart && parsed.contains("saved") && parsed["saved"].is_object()) {
        for (const auto& [node, name] : parsed["saved"].items()) {
          if (name.is_string()) job->saved_names[node] = name.get<std::string>();
        }
      }
    } catch (const InputError& e) {
      res.status = 422;
      res.set_content(detail(e.what()), "application/json");
      return;
    }
    job->id = new_job_id();
    job->fault = fault;
    job->description = multipart ? "Your job has been received and is waiting to be queued."
                                 : "Your job has been received and is waiting approval.";
    json status;
    {
      std::lock_guard lock(mutex);
      status = status_json(*job);
      if (multipart) {
        status["status"] = "RECEIVED";
      }
      jobs.emplace(job->id, job);
      if (options.latency_ms > 0) {
        job->stage = JobStage::delayed;
        delayed.emplace(Clock::now() + std::chrono::milliseconds(options.latency_ms), job);
      } else {
        job->stage = JobStage::queued;
        queue.push_back(job);
        renumber_queue();
      }
    }
    changed.notify_all();
    res.set_content(status.dump(), "application/json");
  }

  void get_response(const httplib::Request& req, httplib::Response& res) {
    if (!authorised(req, res)) {
      return;
    }
    const auto job = find_job(req.matches[1]);
    if (!job) {
      res.status = 404;
      res.set_content(detail("No job with id " + std::string(req.matches[1]) + " (unknown or expired)."),
                      "application/json");
      return;
    }
    std::string body;
    bool drop = false;
    {
      std::lock_guard lock(mutex);
      if (job->g4 && !job->stored) {
        // ndif 0.1 answers 404 until the dispatcher has stored a first status; here, once per job.
        job->stored = true;
        res.status = 404;
        res.set_content(detail("No response for request " + job->id + "."), "application/json");
        return;
      }
      body = status_json(*job).dump();
      drop = job->fault == FaultKind::reset && !job->first_poll_done;
      job->first_poll_done = true;
    }
    if (drop) {
      // The promised body never comes: the client sees the connection drop mid-reply.
      res.set_content_provider(body.size(), "application/json",
                               [](std::size_t, std::size_t, httplib::DataSink&) { return false; });
      return;
    }
    res.set_content(body, "application/json");
  }

  /// Serves a job's result file once; `presigned` for the URL delivery path.
  void serve_result(const httplib::Request& req, httplib::Response& res, bool presigned) {
    if (!presigned && !authorised(req, res)) {
      return;
    }
    const auto job = find_job(req.matches[1]);
    std::shared_ptr<const std::vector<std::byte>> file;
    bool truncated = false;
    bool slow = false;
    if (presigned && req.has_header("ndif-api-key")) {
      // A client must not hand its key to the storage a presigned URL points at.
      res.status = 400;
      res.set_content(detail("presigned result URLs take no ndif-api-key header"), "application/json");
      return;
    }
    {
      std::lock_guard lock(mutex);
      bool expired = job && presigned && job->fault == FaultKind::expired_url;
      if (job && presigned && job->g4) {
        const long long expires = std::atoll(req.get_param_value("expires").c_str());
        expired = expires < unix_now() ||
                  req.get_param_value("signature") != url_signature(job->id, expires, secret);
      }
      if (expired) {
        res.status = 403;
        res.set_content(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
            "<Message>Request has expired</Message></Error>",
            "application/xml");
        return;
      }
      if (!job || job->stage != JobStage::completed || !job->result || job->downloading) {
        res.status = 404;
        res.set_content(detail("No result for job " + std::string(req.matches[1]) +
                               ": it is unknown, not completed, already downloaded or being downloaded."),
                        "application/json");
        return;
      }
      file = job->result;
      job->downloading = true;
      truncated = job->fault == FaultKind::truncate && !job->first_download_done;
      slow = job->fault == FaultKind::slow;
      job->first_download_done = true;
    }
    const std::size_t cut = truncated ? file->size() / 2 : file->size();
    res.set_content_provider(
        file->size(), "application/octet-stream",
        [this, file, cut, slow](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
          if (offset >= cut) {
            return false;
          }
          const std::size_t n = std::min({length, kChunk, cut - offset});
          bucket.acquire(n);
          if (slow) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
          }
          const std::size_t sent = slow ? std::min<std::size_t>(n, 2048) : n;
          bytes_sent += sent;
          return sink.write(reinterpret_cast<const char*>(file->data()) + offset, sent);
        },
        [this, job](bool success) {
          std::lock_guard lock(mutex);
          job->downloading = false;
          if (success) {
            ++downloads;
            job->result.reset();
            job->forget_at = Clock::now() + kKeepDownloaded;
          }
        });
  }

  void get_stats(httplib::Response& res) {
    std::lock_guard lock(mutex);
    const json stats{{"submitted", submitted},          {"completed", completed_jobs},
                     {"errored", failed_jobs},          {"downloaded", downloads},
                     {"bytes_sent", bytes_sent.load()}, {"queued", queue.size() + delayed.size()}};
    res.set_content(stats.dump(), "application/json");
  }

  void get_env(httplib::Response& res) const {
    // What runs the requests here: ndif-local's graph interpreter, not a Python nnsight.
    const json env{{"python_version", std::string("ndif-local ") + kToolVersion},
                   {"packages", {{"ndif-local", kToolVersion}}}};
    res.set_content(env.dump(), "application/json");
  }

  void get_status(httplib::Response& res) const {
    const json status = {
        {"deployments",
         {{"ndif-local",
           {{"application_state", "RUNNING"},
            {"deployment_level", "HOT"},
            {"repo_id", "*"},
            {"model_key", "nnsight.modeling.language.LanguageModel:{\"repo_id\": \"*\"}"},
            {"config",
             {{"hidden_size", options.model.hidden}, {"num_hidden_layers", options.model.layers}}}}}}}};
    res.set_content(status.dump(), "application/json");
  }

  void route() {
    // cpp-httplib keeps a thread per open connection, kept-alive ones included, and every job of
    // every rank may download on its own connection: 16 threads stalled polls and new downloads
    // behind idle kept-alive connections with 8 ranks (bench/link_bench.py). Idle threads cost
    // only their stacks' address space.
    http.new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
    http.Post("/request",
              [this](const httplib::Request& req, httplib::Response& res) { post_request(req, res); });
    http.Get(R"(/response/([^/]+))",
             [this](const httplib::Request& req, httplib::Response& res) { get_response(req, res); });
    http.Get(R"(/result/([^/]+))",
             [this](const httplib::Request& req, httplib::Response& res) { serve_result(req, res, false); });
    http.Get(R"(/download/([^/]+))",
             [this](const httplib::Request& req, httplib::Response& res) { serve_result(req, res, true); });
    http.Get("/ping", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("\"pong\"", "application/json");
    });
    http.Get("/status", [this](const httplib::Request&, httplib::Response& res) { get_status(res); });
    http.Get("/env", [this](const httplib::Request&, httplib::Response& res) { get_env(res); });
    http.Get("/stats", [this](const httplib::Request&, httplib::Response& res) { get_stats(res); });
  }
};

LocalServer::LocalServer(ServerOptions options) {
  if (options.workers < 1) {
    throw InputError("--workers must be at least 1, got " + std::to_string(options.workers));
  }
  if (options.latency_ms < 0 || options.bandwidth_mbps < 0) {
    throw InputError("--latency-ms and --bandwidth-mbps cannot be negative");
  }
  if (options.fail_rate < 0 || options.fail_rate > 1) {
    throw InputError("--fail-rate must be between 0 and 1, got " + std::to_string(options.fail_rate));
  }
  if (options.port < 0 || options.port > 65535) {
    throw InputError("--port must be between 0 and 65535, got " + std::to_string(options.port));
  }
  impl_ = std::make_unique<Impl>(std::move(options));
  impl_->route();
}

LocalServer::~LocalServer() { stop(); }

int LocalServer::start() {
  Impl& s = *impl_;
  if (s.options.port == 0) {
    s.port = s.http.bind_to_any_port(s.options.host);
  } else {
    s.port = s.http.bind_to_port(s.options.host, s.options.port) ? s.options.port : -1;
  }
  if (s.port <= 0) {
    throw InputError("cannot listen on " + s.options.host + ":" + std::to_string(s.options.port) +
                     " (address in use or not local); choose another --host/--port");
  }
  s.admission = std::thread([&s] { s.admit_loop(); });
  for (int i = 0; i < s.options.workers; ++i) {
    s.workers.emplace_back([&s] { s.work_loop(); });
  }
  s.http_thread = std::thread([&s] { s.http.listen_after_bind(); });
  while (!s.http.is_running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return s.port;
}

void LocalServer::stop() {
  if (!impl_) {
    return;
  }
  Impl& s = *impl_;
  if (s.http_thread.joinable()) {
    s.http.stop();
    s.http_thread.join();
  }
  {
    std::lock_guard lock(s.mutex);
    s.stopping = true;
  }
  s.changed.notify_all();
  for (auto& worker : s.workers) {
    worker.join();
  }
  s.workers.clear();
  if (s.admission.joinable()) {
    s.admission.join();
  }
}

int LocalServer::port() const noexcept { return impl_->port; }

void run_local_server(const ServerOptions& options, const std::optional<std::filesystem::path>& port_file) {
  // Block the stop signals in every thread so that only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  LocalServer server(options);
  const int port = server.start();
  if (port_file) {
    const auto temporary = port_file->string() + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << port << '\n';
      if (!out.flush()) {
        throw InputError("--port-file: cannot write " + temporary);
      }
    }
    std::error_code error;
    std::filesystem::rename(temporary, *port_file, error);
    if (error) {
      throw InputError("--port-file: cannot rename " + temporary + " to " + port_file->string() + ": " +
                       error.message());
    }
  }
  std::cout << "listening on http://" << options.host << ":" << port << std::endl;
  int received = 0;
  sigwait(&stop_signals, &received);
  server.stop();
}

}  // namespace ndif::local
