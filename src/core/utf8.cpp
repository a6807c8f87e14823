#include "ndif_sweep/core/utf8.hpp"

#include <utf8proc.h>

namespace ndif {

std::optional<char32_t> next_code_point(std::string_view text, std::size_t& at) noexcept {
  if (at >= text.size()) return std::nullopt;
  utf8proc_int32_t code = 0;
  const auto used = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + at),
                                     static_cast<utf8proc_ssize_t>(text.size() - at), &code);
  if (used <= 0 || code < 0) return std::nullopt;
  at += static_cast<std::size_t>(used);
  return static_cast<char32_t>(code);
}

std::optional<std::size_t> first_invalid_utf8(std::string_view text) noexcept {
  std::size_t at = 0;
  while (at < text.size()) {
    // ASCII needs no decoding; most prompt text is mostly ASCII.
    if (static_cast<unsigned char>(text[at]) < 0x80) {
      ++at;
      continue;
    }
    const std::size_t start = at;
    if (!next_code_point(text, at)) return start;
  }
  return std::nullopt;
}

void append_utf8(std::string& out, char32_t c) {
  utf8proc_uint8_t bytes[4];
  const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), bytes);
  out.append(reinterpret_cast<const char*>(bytes), static_cast<std::size_t>(n));
}

}  // namespace ndif
