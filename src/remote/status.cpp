#include "ndif_sweep/remote/status.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

[[noreturn]] void malformed(std::string_view body, const std::string& problem) {
  throw DecodeError(
      fmt::format("job status reply is malformed: {} (reply: \"{}\")", problem, reply_excerpt(body)));
}

constexpr std::pair<JobState, const char*> kStates[] = {
    {JobState::received, "RECEIVED"},
    {JobState::queued, "QUEUED"},
    {JobState::provisioning, "PROVISIONING"},
    {JobState::deploying, "DEPLOYING"},
    {JobState::dispatched, "DISPATCHED"},
    {JobState::running, "RUNNING"},
    {JobState::log, "LOG"},
    {JobState::completed, "COMPLETED"},
    {JobState::error, "ERROR"},
    {JobState::nnsight_error, "NNSIGHT_ERROR"},
};

JobState state_of(const std::string& status) {
  for (const auto& [state, name] : kStates)
    if (status == name) return state;
  return JobState::unknown;
}

}  // namespace

const char* state_name(JobState state) noexcept {
  for (const auto& [s, name] : kStates)
    if (s == state) return name;
  return "UNKNOWN";
}

JobStatus parse_status(std::string_view body) {
  const auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) malformed(body, "not JSON");
  if (!json.is_object()) malformed(body, "not a JSON object");
  const auto id = json.find("id");
  const auto status = json.find("status");
  if (id == json.end() || !id->is_string() || id->get_ref<const std::string&>().empty()) {
    malformed(body, "\"id\" must be a non-empty string");
  }
  if (status == json.end() || !status->is_string()) malformed(body, "\"status\" must be a string");

  JobStatus out;
  out.id = id->get<std::string>();
  out.status = status->get<std::string>();
  out.state = state_of(out.status);
  if (const auto d = json.find("description"); d != json.end() && !d->is_null()) {
    if (!d->is_string()) malformed(body, "\"description\" must be a string or null");
    out.description = d->get<std::string>();
  }
  const auto data = json.find("data");
  const bool has_data = data != json.end() && !data->is_null();
  if (out.state == JobState::completed && has_data) {
    if (data->is_string()) {
      out.result_url = data->get<std::string>();
    } else if (data->is_array() && data->size() == 2 && (*data)[0].is_string() &&
               (*data)[1].is_number_integer() && (*data)[1].get<std::int64_t>() >= 0) {
      out.result_url = (*data)[0].get<std::string>();
      out.result_size = (*data)[1].get<std::int64_t>();
    } else {
      malformed(body, "COMPLETED \"data\" must be null, a URL string or [url, size]");
    }
    if (out.result_url->empty()) malformed(body, "COMPLETED result URL is empty");
  }
  if (out.state == JobState::nnsight_error && out.description.empty() && has_data && data->is_object()) {
    if (const auto m = data->find("err_message"); m != data->end() && m->is_string())
      out.description = m->get<std::string>();
  }
  return out;
}

}  // namespace ndif::remote
