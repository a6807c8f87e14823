#include "ndif_sweep/remote/transport.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <list>
#include <nlohmann/json.hpp>

#include "curl_handles.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/result.hpp"
#include "ndif_sweep/remote/status.hpp"

namespace ndif::remote {
namespace {

using Clock = std::chrono::steady_clock;

// Status replies are a few hundred bytes; anything much larger is not a status reply.
constexpr std::size_t kMaxStatusBytes = std::size_t{1} << 20;

std::string trim_slash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

long to_ms(double seconds) { return static_cast<long>(std::max(1.0, seconds * 1000.0)); }

std::string unix_timestamp() {
  return fmt::format(
      "{}", std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
}

// The server's own words from a FastAPI error body ({"detail": ...}) or the start of the body.
std::string server_words(std::string_view body) {
  const std::string text(body.substr(0, 300));
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_object() && json.contains("detail")) {
    const auto& detail = json["detail"];
    return detail.is_string() ? detail.get<std::string>() : detail.dump();
  }
  std::string out;
  for (char c : text) out += (static_cast<unsigned char>(c) < 0x20) ? ' ' : c;
  return out;
}

// A server may quote what it was sent (ndif 0.1 answers a malformed key with "Invalid API key
// format: '<key>'"); the key must never reach a message, so every copy of it is masked.
std::string redact(std::string text, const std::string& secret) {
  if (secret.empty()) return text;
  for (auto at = text.find(secret); at != std::string::npos; at = text.find(secret, at))
    text.replace(at, secret.size(), "<the API key>");
  return text;
}

FailureCause cause_of(CURLcode rc, bool oversized) {
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
      return FailureCause::timeout;
    case CURLE_PARTIAL_FILE:
      return FailureCause::truncated;
    case CURLE_FILESIZE_EXCEEDED:
      return FailureCause::oversized;
    case CURLE_WRITE_ERROR:
      return oversized ? FailureCause::oversized : FailureCause::connection;
    default:
      return FailureCause::connection;
  }
}

// What an HTTP error at POST /request means for the user (ndif 0.1 services/api: auth.py,
// versioning.py, app.py), added to the server's own words.
const char* ingress_hint(long status) {
  switch (status) {
    case 400:
      return " (the service rejected the client or the key's format; see its words)";
    case 401:
      return " (the service needs an API key: export yours in the variable the job's \"api_key_env\" names)";
    case 403:
      return " (the service does not know this API key: check it, or create one at https://login.ndif.us)";
    case 422:
      return " (the service could not read the request; an nnsight version it does not speak?)";
    case 503:
      return " (the service is temporarily unavailable; retrying)";
    default:
      return "";
  }
}

// One HTTP transfer with its own handle, headers and received bytes.
struct Transfer {
  curl::Mime mime;  // before `easy`: destroyed after the handle that uses it
  curl::Easy easy;
  curl::Slist headers;
  std::vector<std::byte> received;
  std::size_t limit = kMaxStatusBytes;
  bool oversized = false;
  std::array<char, CURL_ERROR_SIZE> error{};

  static std::size_t on_data(char* data, std::size_t size, std::size_t count, void* self) {
    auto* transfer = static_cast<Transfer*>(self);
    const std::size_t n = size * count;
    if (transfer->received.size() + n > transfer->limit) {
      transfer->oversized = true;
      return 0;  // makes curl stop with CURLE_WRITE_ERROR
    }
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    transfer->received.insert(transfer->received.end(), bytes, bytes + n);
    return n;
  }

  [[nodiscard]] std::string text() const {
    return std::string(reinterpret_cast<const char*>(received.data()), received.size());
  }
};

enum class Phase { submitting, waiting_to_poll, polling, downloading };

Transfer make_transfer(const std::string& url, const spec::Timeouts& timeouts, std::size_t limit) {
  Transfer t;
  t.easy = curl::make_easy();
  t.limit = limit;
  CURL* e = t.easy.get();
  curl::set(e, CURLOPT_URL, url.c_str(), "URL");
  curl::set(e, CURLOPT_NOSIGNAL, 1L, "NOSIGNAL");
  curl::set(e, CURLOPT_CONNECTTIMEOUT_MS, to_ms(timeouts.connect_s), "CONNECTTIMEOUT_MS");
  curl::set(e, CURLOPT_TIMEOUT_MS, to_ms(timeouts.request_s), "TIMEOUT_MS");
  curl::set(e, CURLOPT_WRITEFUNCTION, &Transfer::on_data, "WRITEFUNCTION");
  curl::set(e, CURLOPT_PROTOCOLS_STR, "http,https", "PROTOCOLS_STR");
  return t;
}

// The pointers curl keeps (write target, error buffer) must follow the Transfer to where it lives.
void bind(Transfer& t) {
  curl::set(t.easy.get(), CURLOPT_WRITEDATA, static_cast<void*>(&t), "WRITEDATA");
  curl::set(t.easy.get(), CURLOPT_ERRORBUFFER, t.error.data(), "ERRORBUFFER");
  if (t.headers) curl::set(t.easy.get(), CURLOPT_HTTPHEADER, t.headers.get(), "HTTPHEADER");
}

long http_status(CURL* easy) {
  long status = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

}  // namespace

struct JobTransport::Impl {
  struct Attempt {
    JobTicket ticket;
    EncodedRequest request;
    Phase phase = Phase::submitting;
    std::string job_id;
    Clock::time_point started;
    Clock::time_point deadline;
    Clock::time_point next_poll;
    int polls = 0;
    int poll_failures = 0;
    bool presigned = false;
    bool stored = false;  // a poll has read a stored status (G4: before that, 404 means "not yet")
    // A job resumed from the journal that still answers 404 after this is gone, not late.
    Clock::time_point not_stored_until = Clock::time_point::max();
    JobState state = JobState::received;
    std::optional<std::int64_t> announced_size;
    std::optional<Transfer> transfer;
  };

  TransportOptions options;
  std::string base;
  curl::Multi multi = curl::make_multi();
  std::list<Attempt> attempts;        // stable addresses: curl holds pointers into them
  std::vector<SubmittedJob> learned;  // job ids the submit replies gave, not yet returned by run
  std::atomic<bool> woken{false};     // wake() was called: run returns

  explicit Impl(TransportOptions o) : options(std::move(o)), base(trim_slash(options.base_url)) {}
  ~Impl() { cancel_all(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void cancel_all() noexcept {
    for (auto& a : attempts) {
      if (a.transfer) curl_multi_remove_handle(multi.get(), a.transfer->easy.get());
    }
    attempts.clear();
    learned.clear();
  }

  void add_key(Transfer& t) const { curl::append_header(t.headers, "ndif-api-key", options.api_key); }

  void launch(Attempt& a, Transfer t, Phase phase) {
    a.transfer.emplace(std::move(t));
    bind(*a.transfer);
    curl::set(a.transfer->easy.get(), CURLOPT_PRIVATE, static_cast<void*>(&a), "PRIVATE");
    curl::check_multi(curl_multi_add_handle(multi.get(), a.transfer->easy.get()), "curl_multi_add_handle");
    a.phase = phase;
  }

  void start_submit(Attempt& a) {
    auto t = make_transfer(base + "/request", options.timeouts, kMaxStatusBytes);
    for (const auto& [name, value] : a.request.headers) {
      curl::append_header(t.headers, name, name == "sent-timestamp" ? unix_timestamp() : value);
    }
    add_key(t);
    curl::append_header(t.headers, "Expect", "");  // no 100-continue round trip for large bodies
    CURL* e = t.easy.get();
    if (a.request.multipart()) {
      // G4 (nnsight 0.8 RemoteBackend._post): the envelope as form field "data", the serialized
      // request as file "blob", and the send time, stamped now, as nnsight stamps it.
      curl::append_header(t.headers, "ndif-timestamp", unix_timestamp());
      t.mime = curl::make_mime(e);
      curl::add_field(t.mime.get(), "data", a.request.envelope);
      curl::add_file(t.mime.get(), "blob", "request", "application/octet-stream", a.request.body.data(),
                     a.request.body.size());
      curl::set(e, CURLOPT_MIMEPOST, static_cast<const curl_mime*>(t.mime.get()), "MIMEPOST");
    } else {
      curl::set(e, CURLOPT_POST, 1L, "POST");
      curl::set(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(a.request.body.size()),
                "POSTFIELDSIZE_LARGE");
      curl::set(e, CURLOPT_POSTFIELDS, static_cast<const void*>(a.request.body.data()), "POSTFIELDS");
    }
    launch(a, std::move(t), Phase::submitting);
  }

  void start_poll(Attempt& a) {
    auto t = make_transfer(base + "/response/" + a.job_id, options.timeouts, kMaxStatusBytes);
    add_key(t);
    launch(a, std::move(t), Phase::polling);
  }

  void start_download(Attempt& a, const JobStatus& status) {
    const std::size_t limit = std::min(options.max_result_bytes, max_result_bytes(a.request.expected));
    a.presigned = status.result_url.has_value();
    a.announced_size = status.result_size;
    auto t = make_transfer(a.presigned ? *status.result_url : base + "/result/" + a.job_id, options.timeouts,
                           limit);
    if (a.presigned) {
      // A presigned URL may redirect to storage; it gets no API key, so following is safe.
      curl::set(t.easy.get(), CURLOPT_FOLLOWLOCATION, 1L, "FOLLOWLOCATION");
      curl::set(t.easy.get(), CURLOPT_MAXREDIRS, 5L, "MAXREDIRS");
    } else {
      add_key(t);
    }
    curl::set(t.easy.get(), CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(limit), "MAXFILESIZE_LARGE");
    launch(a, std::move(t), Phase::downloading);
  }

  const char* path_of(const Attempt& a, Stage stage) const {
    switch (stage) {
      case Stage::submit:
        return "POST /request";
      case Stage::poll:
        return "GET /response/{id}";
      case Stage::download:
        return a.presigned ? "GET result URL" : "GET /result/{id}";
    }
    return "";
  }

  FinishedJob failed(Attempt& a, Verdict verdict, FailureCause cause, Stage stage, long status,
                     std::string message) {
    FinishedJob f;
    f.ticket = a.ticket;
    f.job_id = a.job_id;
    f.seconds = std::chrono::duration<double>(Clock::now() - a.started).count();
    f.failure = TransportFailure{verdict, cause, stage, status,
                                 redact(fmt::format("batch {} attempt {}: {}: {}", a.ticket.batch,
                                                    a.ticket.attempt, path_of(a, stage), message),
                                        options.api_key)};
    return f;
  }

  void schedule_poll(Attempt& a) {
    a.phase = Phase::waiting_to_poll;
    a.next_poll = Clock::now() + poll_delay(a.polls, options.timeouts.poll_interval_s);
    ++a.polls;
  }

  // Acts on a status reply (from the submit or a poll); returns a finished job or nothing.
  std::optional<FinishedJob> on_status(Attempt& a, const JobStatus& status, Stage stage) {
    if (a.job_id.empty()) {
      a.job_id = status.id;
      learned.push_back(SubmittedJob{a.ticket, a.job_id});
    }
    if (status.state != JobState::log) a.state = status.state;
    if (status.state == JobState::completed) {
      start_download(a, status);
      return std::nullopt;
    }
    if (status.state == JobState::error || status.state == JobState::nnsight_error) {
      return failed(a, classify_job_error(status.status, status.description), FailureCause::job_error, stage,
                    0, fmt::format("job {} ended with {}: {}", a.job_id, status.status, status.description));
    }
    schedule_poll(a);
    return std::nullopt;
  }

  // A failed single poll is tried again a few times before it fails the attempt.
  std::optional<FinishedJob> on_poll_failure(Attempt& a, Verdict verdict, FailureCause cause, long status,
                                             std::string message) {
    if (verdict == Verdict::retry || cause == FailureCause::bad_reply) {
      if (++a.poll_failures <= options.poll_failures_allowed) {
        a.phase = Phase::waiting_to_poll;
        a.next_poll = Clock::now() + poll_delay(a.polls, options.timeouts.poll_interval_s);
        return std::nullopt;
      }
    }
    return failed(a, verdict, cause, Stage::poll, status, std::move(message));
  }

  std::optional<FinishedJob> on_done(Attempt& a, CURLcode rc) {
    Transfer t = std::move(*a.transfer);
    a.transfer.reset();
    curl_multi_remove_handle(multi.get(), t.easy.get());
    const Stage stage = a.phase == Phase::submitting ? Stage::submit
                        : a.phase == Phase::polling  ? Stage::poll
                                                     : Stage::download;
    if (rc != CURLE_OK) {
      const auto cause = cause_of(rc, t.oversized);
      const auto verdict = cause == FailureCause::oversized ? Verdict::fatal : Verdict::retry;
      std::string message = cause == FailureCause::oversized
                                ? fmt::format("reply exceeds the limit of {} bytes", t.limit)
                                : fmt::format("{} ({})", curl_easy_strerror(rc), t.error.data());
      if (stage == Stage::poll) return on_poll_failure(a, verdict, cause, 0, std::move(message));
      return failed(a, verdict, cause, stage, 0, std::move(message));
    }
    const long status = http_status(t.easy.get());
    // G4 stores a job's status only once the server has queued it: a 404 before the first stored
    // status means "not yet"; after one, the record is gone and the attempt fails (below).
    if (stage == Stage::poll && status == 404 && a.request.multipart() && !a.stored &&
        Clock::now() < a.not_stored_until) {
      schedule_poll(a);
      return std::nullopt;
    }
    if (status != 200) {
      const auto verdict = classify_http(stage, status, a.presigned);
      auto message = fmt::format("HTTP {}: {}{}", status, server_words(t.text()),
                                 stage == Stage::submit ? ingress_hint(status) : "");
      if (stage == Stage::poll)
        return on_poll_failure(a, verdict, FailureCause::http_status, status, std::move(message));
      return failed(a, verdict, FailureCause::http_status, stage, status, std::move(message));
    }
    if (stage == Stage::download) {
      const auto received = static_cast<std::int64_t>(t.received.size());
      if (a.announced_size && received != *a.announced_size) {
        return failed(a, Verdict::retry, FailureCause::truncated, stage, status,
                      fmt::format("received {} bytes, the status announced {}", received, *a.announced_size));
      }
      FinishedJob f;
      f.ticket = a.ticket;
      f.job_id = a.job_id;
      f.bytes_received = received;
      f.result = std::move(t.received);
      f.seconds = std::chrono::duration<double>(Clock::now() - a.started).count();
      return f;
    }
    JobStatus parsed;
    try {
      parsed = parse_status(t.text());
    } catch (const DecodeError& e) {
      if (stage == Stage::poll)
        return on_poll_failure(a, classify_decode(true), FailureCause::bad_reply, status, e.what());
      return failed(a, classify_decode(true), FailureCause::bad_reply, stage, status, e.what());
    }
    if (stage == Stage::poll) {
      a.poll_failures = 0;
      a.stored = true;
    }
    return on_status(a, parsed, stage);
  }

  TransportEvents run(std::chrono::milliseconds max_wait) {
    const auto until = Clock::now() + max_wait;
    TransportEvents events;
    auto& finished = events.finished;
    if (attempts.empty()) {
      // Nothing to drive: wait the time out here rather than let the caller spin.
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(max_wait).count();
      curl::check_multi(curl_multi_poll(multi.get(), nullptr, 0,
                                        static_cast<int>(std::clamp<long long>(wait, 0, 1000)), nullptr),
                        "curl_multi_poll");
      woken.store(false);
      return events;
    }
    auto finish = [&](std::list<Attempt>::iterator it, FinishedJob job) {
      if (it->transfer) curl_multi_remove_handle(multi.get(), it->transfer->easy.get());
      finished.push_back(std::move(job));
      return attempts.erase(it);
    };
    while (!attempts.empty()) {
      const auto now = Clock::now();
      for (auto it = attempts.begin(); it != attempts.end();) {
        if (now >= it->deadline) {
          it = finish(
              it,
              failed(*it, Verdict::retry, FailureCause::timeout,
                     it->phase == Phase::submitting    ? Stage::submit
                     : it->phase == Phase::downloading ? Stage::download
                                                       : Stage::poll,
                     0, fmt::format("the attempt took longer than job_s = {} s", options.timeouts.job_s)));
          continue;
        }
        if (it->phase == Phase::waiting_to_poll && now >= it->next_poll) start_poll(*it);
        ++it;
      }
      int running = 0;
      curl::check_multi(curl_multi_perform(multi.get(), &running), "curl_multi_perform");
      int queued = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi.get(), &queued)) {
        if (msg->msg != CURLMSG_DONE) continue;
        void* owner = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &owner);
        const CURLcode rc = msg->data.result;  // msg is invalid once its handle is removed
        auto it =
            std::find_if(attempts.begin(), attempts.end(), [&](const Attempt& a) { return &a == owner; });
        if (it == attempts.end()) continue;
        if (auto job = on_done(*it, rc)) finish(it, std::move(*job));
      }
      const auto after = Clock::now();
      if (!finished.empty() || !learned.empty() || after >= until || woken.exchange(false)) break;
      auto wake = until;
      for (const auto& a : attempts) {
        wake = std::min(wake, a.deadline);
        if (a.phase == Phase::waiting_to_poll) wake = std::min(wake, a.next_poll);
      }
      // Rounded up: a wake-up less than 1 ms away must not become a run of zero-time polls.
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake - after).count();
      curl::check_multi(curl_multi_poll(multi.get(), nullptr, 0,
                                        static_cast<int>(std::clamp<long long>(wait, 0, 1000)), nullptr),
                        "curl_multi_poll");
    }
    events.submitted = std::exchange(learned, {});
    return events;
  }
};

JobTransport::JobTransport(TransportOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
JobTransport::~JobTransport() = default;

void JobTransport::wake() noexcept {
  impl_->woken.store(true);
  // Fails only for a multi handle that is gone or broken; the flag still ends the next run.
  curl_multi_wakeup(impl_->multi.get());
}

void JobTransport::submit(JobTicket ticket, EncodedRequest request) {
  auto& a = impl_->attempts.emplace_back();
  a.ticket = ticket;
  a.request = std::move(request);
  a.started = Clock::now();
  a.deadline = a.started + std::chrono::milliseconds(to_ms(impl_->options.timeouts.job_s));
  try {
    impl_->start_submit(a);
  } catch (...) {
    impl_->attempts.pop_back();
    throw;
  }
}

void JobTransport::resume(JobTicket ticket, const std::string& job_id, EncodedRequest request,
                          std::chrono::milliseconds since_submit) {
  auto& a = impl_->attempts.emplace_back();
  a.ticket = ticket;
  a.request = std::move(request);
  a.job_id = job_id;
  a.started = Clock::now();
  a.deadline = a.started + std::chrono::milliseconds(to_ms(impl_->options.timeouts.job_s));
  const auto grace = std::min(std::chrono::milliseconds(to_ms(impl_->options.timeouts.job_s)),
                              impl_->options.resumed_not_stored) -
                     std::max(since_submit, std::chrono::milliseconds(0));
  a.not_stored_until = a.started + std::max(grace, std::chrono::milliseconds(0));
  a.phase = Phase::waiting_to_poll;
  a.next_poll = a.started;
}

TransportEvents JobTransport::run(std::chrono::milliseconds max_wait) { return impl_->run(max_wait); }

std::size_t JobTransport::in_flight() const noexcept { return impl_->attempts.size(); }

std::vector<JobState> JobTransport::in_flight_states() const {
  std::vector<JobState> states;
  states.reserve(impl_->attempts.size());
  for (const auto& a : impl_->attempts)
    states.push_back(a.phase == Phase::downloading ? JobState::completed : a.state);
  return states;
}

void JobTransport::cancel_all() noexcept { impl_->cancel_all(); }

namespace {

struct Reply {
  CURLcode rc = CURLE_OK;
  long status = 0;
  std::string body;
  std::string error;
};

Reply blocking_get(const std::string& url, const std::string* api_key, const spec::Timeouts& timeouts) {
  Transfer t = make_transfer(url, timeouts, kMaxStatusBytes * 16);
  if (api_key != nullptr) curl::append_header(t.headers, "ndif-api-key", *api_key);
  bind(t);
  Reply reply;
  reply.rc = curl_easy_perform(t.easy.get());
  reply.status = http_status(t.easy.get());
  reply.body = t.text();
  reply.error = t.error.data();
  return reply;
}

[[noreturn]] void unreachable(const std::string& url, const Reply& reply) {
  throw Error(ExitCode::failure,
              fmt::format("GET {} failed: {} ({}); check the endpoint and that the service is up", url,
                          curl_easy_strerror(reply.rc), reply.error));
}

}  // namespace

ServerEnv fetch_env(const std::string& base_url, const spec::Timeouts& timeouts) {
  const std::string url = trim_slash(base_url) + "/env";
  const Reply reply = blocking_get(url, nullptr, timeouts);
  if (reply.rc != CURLE_OK) unreachable(url, reply);
  if (reply.status != 200)
    throw Error(ExitCode::failure,
                fmt::format("GET {} answered HTTP {}: {}", url, reply.status, server_words(reply.body)));
  return parse_env(reply.body);
}

std::vector<Deployment> fetch_deployments(const std::string& base_url, const std::string& api_key,
                                          const spec::Timeouts& timeouts) {
  const std::string url = trim_slash(base_url) + "/status";
  const Reply reply = blocking_get(url, &api_key, timeouts);
  if (reply.rc != CURLE_OK) unreachable(url, reply);
  if (reply.status == 401 || reply.status == 403) {
    throw ServiceRefused(
        fmt::format("GET {} was refused with HTTP {}: check the API key in the job's api_key_env variable",
                    url, reply.status));
  }
  if (reply.status != 200)
    throw Error(ExitCode::failure, fmt::format("GET {} answered HTTP {}", url, reply.status));
  return parse_deployments(reply.body);
}

KeyCheck check_api_key(const std::string& base_url, const std::string& api_key, const std::string& envelope,
                       const spec::Timeouts& timeouts) {
  Transfer t = make_transfer(trim_slash(base_url) + "/request", timeouts, kMaxStatusBytes);
  curl::append_header(t.headers, "ndif-api-key", api_key);
  curl::append_header(t.headers, "Expect", "");
  t.mime = curl::make_mime(t.easy.get());
  curl::add_field(t.mime.get(), "data", envelope);
  curl::set(t.easy.get(), CURLOPT_MIMEPOST, static_cast<const curl_mime*>(t.mime.get()), "MIMEPOST");
  bind(t);
  KeyCheck check;
  const CURLcode rc = curl_easy_perform(t.easy.get());
  if (rc != CURLE_OK) {
    check.words = fmt::format("{} ({})", curl_easy_strerror(rc), t.error.data());
    return check;
  }
  check.http_status = http_status(t.easy.get());
  check.words = redact(server_words(t.text()), api_key);
  // The key is checked before the missing blob is noticed (ndif 0.1 services/api: validate_request
  // runs as a dependency of the endpoint), so 422 says the key passed and no job was made.
  if (check.http_status == 422) check.outcome = KeyCheck::Outcome::accepted;
  if (check.http_status == 400 || check.http_status == 401 || check.http_status == 403)
    check.outcome = KeyCheck::Outcome::refused;
  return check;
}

bool ping(const std::string& base_url, const spec::Timeouts& timeouts) {
  const Reply reply = blocking_get(trim_slash(base_url) + "/ping", nullptr, timeouts);
  return reply.rc == CURLE_OK && reply.status == 200;
}

}  // namespace ndif::remote
