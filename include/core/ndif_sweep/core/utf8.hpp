#pragma once
/// \file
/// UTF-8, decoded and checked in one place (through utf8proc) for the prompts file, the tokenizer
/// and the model key.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace ndif {

/// Byte offset of the first invalid UTF-8 sequence in `text` (a bad lead or continuation byte, an
/// overlong form, a surrogate, a code point beyond U+10FFFF, a truncated sequence), or nullopt.
[[nodiscard]] std::optional<std::size_t> first_invalid_utf8(std::string_view text) noexcept;

/// The code point that starts at byte `at` of `text`, with `at` moved past it; nullopt (and `at`
/// unchanged) when no valid sequence starts there.
[[nodiscard]] std::optional<char32_t> next_code_point(std::string_view text, std::size_t& at) noexcept;

/// Appends the UTF-8 encoding of the valid code point `c`.
void append_utf8(std::string& out, char32_t c);

}  // namespace ndif
