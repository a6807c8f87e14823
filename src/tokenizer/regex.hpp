#pragma once
/// \file
/// A pre-tokenizer or normalizer pattern that lists its non-overlapping matches: one of the known
/// split patterns through its scanner (split_scanner.hpp), any other through PCRE2 (UTF, Unicode
/// property escapes rewritten to the reference's Unicode version, JIT-compiled when available).

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ndif::tokenizer::detail {

/// Byte range [first, second) of a match.
using ByteRange = std::pair<std::size_t, std::size_t>;

class Regex {
 public:
  /// Compiles `pattern`. Throws InputError naming `where` (file and key) and PCRE2's message.
  Regex(const std::string& pattern, const std::string& where) : Regex(pattern, where, Kind::automatic) {}
  /// `pattern` through PCRE2 even when a scanner knows it (for tests and benchmarks of the scanners).
  [[nodiscard]] static Regex without_scanner(const std::string& pattern, const std::string& where);
  /// Whether a scanner matches this pattern.
  [[nodiscard]] bool scanned() const noexcept;
  /// A pattern that matches `literal` exactly.
  [[nodiscard]] static Regex literal(std::string_view literal, const std::string& where);

  /// All non-overlapping matches, left to right; an empty match advances by one character.
  [[nodiscard]] std::vector<ByteRange> find_all(std::string_view subject) const;

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

 private:
  enum class Kind { automatic, pcre2, literal };
  Regex(const std::string& pattern, const std::string& where, Kind kind);
  struct Code;
  std::unique_ptr<Code> code_;
};

}  // namespace ndif::tokenizer::detail
