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
  /// Compiles `pattern` (taken as it is, without scanner or rewriting, when `literal`). Throws
  /// InputError naming `where` (file and key) and PCRE2's message.
  Regex(const std::string& pattern, const std::string& where, bool literal = false);
  /// A pattern that matches `literal` exactly.
  [[nodiscard]] static Regex literal(std::string_view literal, const std::string& where);

  /// All non-overlapping matches, left to right; an empty match advances by one character.
  [[nodiscard]] std::vector<ByteRange> find_all(std::string_view subject) const;

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

 private:
  struct Code;
  std::unique_ptr<Code> code_;
};

}  // namespace ndif::tokenizer::detail
