#include "ndif_sweep/run/messages.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "ndif_sweep/core/error.hpp"

namespace ndif::run {
namespace {

using json = nlohmann::json;

json journal_json(const std::optional<store::JournalEntry>& entry) {
  if (!entry) return nullptr;
  return {{"job_id", entry->job_id},
          {"attempt", entry->attempt},
          {"submitted_unix", entry->submitted_unix},
          {"request_hash", entry->request_hash}};
}

std::optional<store::JournalEntry> journal_from(const json& j) {
  if (j.is_null()) return std::nullopt;
  return store::JournalEntry{j.at("job_id"), j.at("attempt"), j.at("submitted_unix"), j.at("request_hash")};
}

json assignment_json(const Assignment& a) {
  return {{"batch", a.batch},
          {"rows", a.rows},
          {"padded_len", a.padded_len},
          {"journaled", journal_json(a.journaled)}};
}

Assignment assignment_from(const json& j) {
  Assignment a;
  a.batch = j.at("batch");
  a.rows = j.at("rows").get<std::vector<std::int64_t>>();
  a.padded_len = j.at("padded_len");
  a.journaled = journal_from(j.at("journaled"));
  return a;
}

struct Encoder {
  json operator()(const msg::RequestWork& m) const { return {{"type", "request_work"}, {"slots", m.slots}}; }
  json operator()(const msg::Done& m) const {
    const auto& r = m.report;
    return {{"type", "done"},   {"batch", r.batch},       {"rows", r.rows},
            {"bytes", r.bytes}, {"attempts", r.attempts}, {"seconds", r.seconds}};
  }
  json operator()(const msg::Failed& m) const {
    return {{"type", "failed"}, {"batch", m.batch}, {"error", m.error}, {"invalid", m.invalid}};
  }
  json operator()(const msg::Refused& m) const { return {{"type", "refused"}, {"error", m.error}}; }
  json operator()(const msg::SignalSeen& m) const {
    return {{"type", "signal_seen"}, {"abandon", m.abandon}};
  }
  json operator()(const msg::States& m) const { return {{"type", "states"}, {"counts", m.counts}}; }
  json operator()(const msg::Idle&) const { return {{"type", "idle"}}; }
  json operator()(const msg::Assign& m) const {
    json batches = json::array();
    for (const auto& a : m.batches) batches.push_back(assignment_json(a));
    return {{"type", "assign"}, {"batches", batches}};
  }
  json operator()(const msg::Drain& m) const { return {{"type", "drain"}, {"abandon", m.abandon}}; }
  json operator()(const msg::Finish&) const { return {{"type", "finish"}}; }
  json operator()(const msg::Outcome& m) const { return {{"type", "outcome"}, {"exit_code", m.exit_code}}; }
};

struct Direction {
  bool operator()(const msg::RequestWork&) const { return true; }
  bool operator()(const msg::Done&) const { return true; }
  bool operator()(const msg::Failed&) const { return true; }
  bool operator()(const msg::Refused&) const { return true; }
  bool operator()(const msg::SignalSeen&) const { return true; }
  bool operator()(const msg::States&) const { return true; }
  bool operator()(const msg::Idle&) const { return true; }
  bool operator()(const msg::Assign&) const { return false; }
  bool operator()(const msg::Drain&) const { return false; }
  bool operator()(const msg::Finish&) const { return false; }
  bool operator()(const msg::Outcome&) const { return false; }
};

}  // namespace

bool to_coordinator(const Message& message) noexcept { return std::visit(Direction{}, message); }

std::string encode_message(const Message& message) { return std::visit(Encoder{}, message).dump(); }

Message decode_message(std::string_view text) {
  try {
    const json j = json::parse(text);
    const std::string type = j.at("type");
    if (type == "request_work") return msg::RequestWork{j.at("slots")};
    if (type == "done")
      return msg::Done{
          BatchReport{j.at("batch"), j.at("rows"), j.at("bytes"), j.at("attempts"), j.at("seconds")}};
    if (type == "failed") return msg::Failed{j.at("batch"), j.at("error"), j.at("invalid")};
    if (type == "refused") return msg::Refused{j.at("error")};
    if (type == "signal_seen") return msg::SignalSeen{j.at("abandon")};
    if (type == "states") return msg::States{j.at("counts").get<std::map<std::string, int>>()};
    if (type == "idle") return msg::Idle{};
    if (type == "assign") {
      msg::Assign assign;
      for (const auto& a : j.at("batches")) assign.batches.push_back(assignment_from(a));
      return assign;
    }
    if (type == "drain") return msg::Drain{j.at("abandon")};
    if (type == "finish") return msg::Finish{};
    if (type == "outcome") return msg::Outcome{j.at("exit_code")};
    throw InternalError(fmt::format("run loop: unknown message type \"{}\"", type));
  } catch (const nlohmann::json::exception& e) {
    throw InternalError(fmt::format("run loop: a message that does not parse ({}): {}", e.what(),
                                    std::string(text.substr(0, 120))));
  }
}

}  // namespace ndif::run
