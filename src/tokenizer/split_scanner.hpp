#pragma once
/// \file
/// Hand-written scanners for the pre-tokenizer split patterns of the tokenizer families in use
/// (GPT-2's byte-level words, Llama-3, Qwen2/3, o200k), and the rewriting of Unicode property
/// escapes in any other pattern into explicit code point ranges.
///
/// Both exist so that splits follow the reference's Unicode version (16.0, unicode.hpp), not the
/// tables of whichever PCRE2 the system has. A scanner returns exactly the matches of its pattern
/// under leftmost-first alternation with greedy, backtracking quantifiers; it also skips the
/// regex engine, which was the largest share of encoding time.

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "regex.hpp"

namespace ndif::tokenizer::detail {

/// The split patterns that have a scanner.
enum class SplitScanner {
  gpt2,    ///< 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  llama3,  ///< (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  qwen2,   ///< as llama3 with \p{N} one digit at a time
  o200k,   ///< cased word pieces with marks, contractions, \p{N}{1,3}, [\r\n/]*
};

/// A scanner's pattern as tokenizer.json files spell it.
struct KnownSplitPattern {
  SplitScanner scanner;
  std::string_view name;     ///< the family: "gpt2", "llama3", "qwen2", "o200k"
  std::string_view pattern;  ///< the regex, character for character
};

/// Every pattern that has a scanner.
[[nodiscard]] std::span<const KnownSplitPattern> known_split_patterns() noexcept;

/// The pattern of `scanner`, character for character.
[[nodiscard]] std::string_view split_pattern(SplitScanner scanner) noexcept;

/// The scanner for `pattern` when it is one of the known patterns, character for character.
[[nodiscard]] std::optional<SplitScanner> scanner_for(std::string_view pattern) noexcept;

/// All non-overlapping matches of the scanner's pattern in valid UTF-8 `subject`, left to right.
[[nodiscard]] std::vector<ByteRange> scan(SplitScanner scanner, std::string_view subject);

/// `pattern` with every \p{..}, \P{..}, \pX, \s, \S, \d, \D, \w and \W of a general category
/// or White_Space replaced by explicit code point ranges of Unicode 16.0 (inside a character
/// class, or as one of its own), so that PCRE2 never consults its own Unicode tables for them.
/// Other escapes and property names (scripts, binary properties) are left to PCRE2.
[[nodiscard]] std::string expand_unicode_classes(std::string_view pattern);

}  // namespace ndif::tokenizer::detail
