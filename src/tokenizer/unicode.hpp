#pragma once
/// \file
/// UTF-8 and Unicode helpers of the tokenizer: decoding, character classes, and the normalization
/// forms with the per-character change counts that offset alignment needs.
///
/// The Unicode data are the reference's, not the system's: general categories of Unicode 16.0 (its
/// pre-tokenizer regexes) and normalization data of Unicode 9.0 (its normalizers), from tables
/// generated into unicode_tables.inc (scripts/gen_unicode_tables.py; docs/tokenizer-unicode.md).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/core/utf8.hpp"

namespace ndif::tokenizer::detail {

/// A code point of a normalization result with its alignment change: 0 replaces one input
/// character, 1 is inserted after the previous one, -n replaces one and removes n more.
struct ChangedChar {
  char32_t c;
  int change;
};

/// Byte length of the UTF-8 sequence that starts with `lead` (valid input assumed).
[[nodiscard]] inline std::size_t utf8_length(unsigned char lead) noexcept {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

/// Decodes the character at `at` of valid UTF-8 `text`.
[[nodiscard]] char32_t decode_at(std::string_view text, std::size_t at) noexcept;

using ndif::append_utf8;

enum class NormalForm { nfc, nfd, nfkc, nfkd };

/// Normalizes `text` the way the reference does (decompose, order marks, recompose), reporting
/// for each output character how it relates to the input characters.
[[nodiscard]] std::vector<ChangedChar> normalize(std::string_view text, NormalForm form);

/// Whether `text` is certainly unchanged by `form` (a fast path for ASCII and other stable text).
[[nodiscard]] bool is_normalization_stable(std::string_view text, NormalForm form) noexcept;

/// Unicode general categories, in the order of the generated tables.
enum class GeneralCategory : std::uint8_t {
  Cn,
  Lu,
  Ll,
  Lt,
  Lm,
  Lo,
  Mn,
  Mc,
  Me,
  Nd,
  Nl,
  No,
  Pc,
  Pd,
  Ps,
  Pe,
  Pi,
  Pf,
  Po,
  Sm,
  Sc,
  Sk,
  So,
  Zs,
  Zl,
  Zp,
  Cc,
  Cf,
  Cs,
  Co
};
/// Number of GeneralCategory values.
inline constexpr int kGeneralCategoryCount = 30;

/// General category of `c` in Unicode 16.0 (Cn for unassigned and out-of-range values).
[[nodiscard]] GeneralCategory general_category(char32_t c) noexcept;

/// Canonical combining class of `c` in the reference's normalization data (Unicode 9.0).
[[nodiscard]] int combining_class(char32_t c) noexcept;

/// Unicode White_Space, as Rust's char::is_whitespace.
[[nodiscard]] bool is_whitespace(char32_t c) noexcept;

/// Letters and numbers, as Rust's char::is_alphanumeric.
[[nodiscard]] bool is_alphanumeric(char32_t c) noexcept;

}  // namespace ndif::tokenizer::detail
