#pragma once
// Validation helpers shared by the job spec and the prompts file. Internal to the spec module.
// Every failure is an InputError whose message starts with `prefix` ("job.json: " or
// "prompts.jsonl:17: ") and names the key path.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::spec::detail {

using nlohmann::json;

/// Throws InputError(prefix + message).
[[noreturn]] void fail(const std::string& prefix, const std::string& message);

/// A value as the user wrote it, shortened for messages: `"32"`, `[1,2]`, `{"a":...`.
[[nodiscard]] std::string describe(const json& value);

/// Byte index of the first invalid UTF-8 sequence in `text`, or nullopt when it is valid
/// (strict: no overlong forms, no surrogates, nothing above U+10FFFF).

/// The "(line L, column C)" location of a 1-based byte index reported by nlohmann's parse_error.
struct TextLocation {
  std::size_t line = 1;
  std::size_t column = 1;
};
[[nodiscard]] TextLocation locate_byte(std::string_view text, std::size_t byte) noexcept;

/// Parses JSON text like json::parse, but a key that appears twice in one object is an
/// InputError(prefix + ...) naming the key: nlohmann would silently keep the last value.
/// Throws json::parse_error for text that is not JSON.
[[nodiscard]] json parse_unique_keys(std::string_view text, const std::string& prefix);

/// nlohmann's parse_error message without its "[json.exception...] parse error at ...: " prefix.
[[nodiscard]] std::string parse_error_reason(const json::parse_error& error);

/// An object whose keys are checked against an allowed list on construction.
class ObjectReader {
 public:
  /// Throws when `value` is not an object or holds a key outside `allowed`.
  ObjectReader(const json& value, std::string prefix, std::string path,
               std::initializer_list<const char*> allowed);

  /// The value of `key`, or nullptr when absent.
  [[nodiscard]] const json* find(const char* key) const;
  /// The full key path for messages, e.g. "batch.target_mb" or "probes[0].name".
  [[nodiscard]] std::string path(const char* key) const;
  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }

  /// Throws "<path> is required" with `hint` appended.
  [[noreturn]] void missing(const char* key, const std::string& hint) const;
  /// Throws `"<path>" must be <expected>, got <value>`.
  [[noreturn]] void wrong(const char* key, const std::string& expected) const;

  [[nodiscard]] std::string string(const char* key, const std::string& fallback) const;
  [[nodiscard]] std::string required_string(const char* key, const std::string& hint) const;
  [[nodiscard]] bool boolean(const char* key, bool fallback) const;
  [[nodiscard]] int positive_int(const char* key, int fallback) const;
  [[nodiscard]] double positive_number(const char* key, double fallback) const;

 private:
  const json& value_;
  std::string prefix_;
  std::string path_;
};

/// Throws `"<key>" must be <expected>, got <value>`.
[[noreturn]] void wrong_type(const std::string& prefix, const std::string& key, const std::string& expected,
                             const json& value);

/// Parses a non-empty "positions" list: integers and {"span", "occurrence", "token"} objects.
[[nodiscard]] std::vector<PositionSpec> parse_positions(const json& value, const std::string& prefix,
                                                        const std::string& key);

/// The JSON form of one position, as parse_positions accepts it.
[[nodiscard]] json position_json(const PositionSpec& position);

}  // namespace ndif::spec::detail
