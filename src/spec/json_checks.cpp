#include "json_checks.hpp"

#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "ndif_sweep/core/error.hpp"

namespace ndif::spec::detail {

void fail(const std::string& prefix, const std::string& message) { throw InputError(prefix + message); }

std::string describe(const json& value) {
  constexpr std::size_t kMaxShown = 60;
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > kMaxShown) {
    std::size_t cut = kMaxShown;
    // Never split a UTF-8 sequence: the message itself must stay valid UTF-8.
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    text.resize(cut);
    text += "...";
  }
  return text;
}

TextLocation locate_byte(std::string_view text, std::size_t byte) noexcept {
  // nlohmann reports the 1-based index of the last byte it read; byte n+1 means end of input.
  const std::size_t end = std::min(byte == 0 ? 0 : byte - 1, text.size());
  TextLocation location;
  for (std::size_t i = 0; i < end; ++i) {
    if (text[i] == '\n') {
      ++location.line;
      location.column = 1;
    } else {
      ++location.column;
    }
  }
  return location;
}

namespace {

// nlohmann's messages start "[json.exception.<kind>.<id>] <where>: "; keep what follows.
std::string parse_error_reason_text(const std::string& message) {
  const auto colon = message.find(": ");
  return colon == std::string::npos ? message : message.substr(colon + 2);
}

}  // namespace

json parse_unique_keys(std::string_view text, const std::string& prefix) {
  std::vector<std::set<std::string>> open_objects;
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key &&
               !open_objects.back().insert(parsed.get<std::string>()).second) {
      fail(prefix, "key \"" + parsed.get<std::string>() + "\" appears twice in one object; keep one");
    }
    return true;
  };
  try {
    return json::parse(text, check);
  } catch (const json::out_of_range& error) {
    // A number literal beyond double's range (e.g. 1e999) is valid JSON text that nlohmann cannot hold.
    fail(prefix,
         "a number is out of range (" + parse_error_reason_text(error.what()) + "); use a smaller value");
  }
}

std::string parse_error_reason(const json::parse_error& error) {
  return parse_error_reason_text(error.what());
}

ObjectReader::ObjectReader(const json& value, std::string prefix, std::string path,
                           std::initializer_list<const char*> allowed)
    : value_(value), prefix_(std::move(prefix)), path_(std::move(path)) {
  if (!value_.is_object()) {
    wrong_type(prefix_, path_, "an object", value_);
  }
  for (const auto& [key, item] : value_.items()) {
    bool known = false;
    std::string allowed_list;
    for (const char* name : allowed) {
      known = known || key == name;
      allowed_list += allowed_list.empty() ? "" : ", ";
      allowed_list += name;
    }
    if (!known) {
      const std::string where = path_.empty() ? key : path_ + "." + key;
      fail(prefix_, "unknown key \"" + where + "\"; allowed keys" +
                        (path_.empty() ? "" : " in \"" + path_ + "\"") + " are " + allowed_list);
    }
  }
}

const json* ObjectReader::find(const char* key) const {
  const auto it = value_.find(key);
  return it == value_.end() ? nullptr : &*it;
}

std::string ObjectReader::path(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

void ObjectReader::missing(const char* key, const std::string& hint) const {
  fail(prefix_, "\"" + path(key) + "\" is required" + (hint.empty() ? "" : " (" + hint + ")"));
}

void ObjectReader::wrong(const char* key, const std::string& expected) const {
  wrong_type(prefix_, path(key), expected, *find(key));
}

std::string ObjectReader::string(const char* key, const std::string& fallback) const {
  const json* value = find(key);
  if (value == nullptr) return fallback;
  if (!value->is_string() || value->get_ref<const std::string&>().empty()) wrong(key, "a non-empty string");
  return value->get<std::string>();
}

std::string ObjectReader::required_string(const char* key, const std::string& hint) const {
  if (find(key) == nullptr) missing(key, hint);
  return string(key, "");
}

bool ObjectReader::boolean(const char* key, bool fallback) const {
  const json* value = find(key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) wrong(key, "true or false");
  return value->get<bool>();
}

int ObjectReader::positive_int(const char* key, int fallback) const {
  const json* value = find(key);
  if (value == nullptr) return fallback;
  if (!value->is_number_integer() || value->get<std::int64_t>() <= 0 ||
      (value->is_number_unsigned() && value->get<std::uint64_t>() > std::numeric_limits<int>::max()) ||
      value->get<std::int64_t>() > std::numeric_limits<int>::max()) {
    wrong(key, "a positive integer");
  }
  return value->get<int>();
}

double ObjectReader::positive_number(const char* key, double fallback) const {
  const json* value = find(key);
  if (value == nullptr) return fallback;
  if (!value->is_number() || !(value->get<double>() > 0) || !std::isfinite(value->get<double>())) {
    wrong(key, "a positive number");
  }
  return value->get<double>();
}

void wrong_type(const std::string& prefix, const std::string& key, const std::string& expected,
                const json& value) {
  fail(prefix, "\"" + key + "\" must be " + expected + ", got " + describe(value));
}

namespace {

std::int64_t integer_value(const json& value, const std::string& prefix, const std::string& key,
                           const std::string& expected) {
  if (!value.is_number_integer() ||
      (value.is_number_unsigned() && value.get<std::uint64_t>() > std::numeric_limits<std::int32_t>::max())) {
    wrong_type(prefix, key, expected, value);
  }
  const auto number = value.get<std::int64_t>();
  // Token indices are int32 in the output file; anything beyond cannot index a prompt.
  if (number > std::numeric_limits<std::int32_t>::max() ||
      number < -std::numeric_limits<std::int32_t>::max()) {
    wrong_type(prefix, key, expected, value);
  }
  return number;
}

PositionSpec parse_span(const json& value, const std::string& prefix, const std::string& key) {
  const ObjectReader reader(value, prefix, key, {"span", "occurrence", "token"});
  PositionSpec position;
  position.is_span = true;
  position.span = reader.required_string("span", "the substring whose token to take");
  position.occurrence = -1;
  if (const json* occurrence = reader.find("occurrence")) {
    position.occurrence =
        integer_value(*occurrence, prefix, reader.path("occurrence"), "an integer (0 = first, -1 = last)");
  }
  if (const json* token = reader.find("token")) {
    if (*token == "last") {
      position.last_token = true;
    } else if (*token == "first") {
      position.last_token = false;
    } else {
      reader.wrong("token", "\"first\" or \"last\"");
    }
  }
  return position;
}

}  // namespace

std::vector<PositionSpec> parse_positions(const json& value, const std::string& prefix,
                                          const std::string& key) {
  constexpr const char* kExpected = "a non-empty list of token indices or {\"span\": ...} objects";
  if (!value.is_array() || value.empty()) wrong_type(prefix, key, kExpected, value);
  std::vector<PositionSpec> positions;
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string item_key = key + "[" + std::to_string(i) + "]";
    const json& item = value[i];
    if (item.is_object()) {
      positions.push_back(parse_span(item, prefix, item_key));
    } else {
      PositionSpec position;
      position.index =
          integer_value(item, prefix, item_key, "an integer token index or a {\"span\": ...} object");
      positions.push_back(position);
    }
  }
  return positions;
}

json position_json(const PositionSpec& position) {
  if (!position.is_span) return position.index;
  return json{{"span", position.span},
              {"occurrence", position.occurrence},
              {"token", position.last_token ? "last" : "first"}};
}

}  // namespace ndif::spec::detail
