#include "unicode.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <array>

#include "ndif_sweep/core/utf8.hpp"

namespace ndif::tokenizer::detail {

char32_t decode_at(std::string_view text, std::size_t at) noexcept {
  // The tokenizer checked the whole text on entry (tokenizer.cpp), so a sequence starts here.
  return next_code_point(text, at).value_or(0xFFFD);
}

namespace {

int combining_class(char32_t c) noexcept {
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->combining_class;
}

// Full (recursive) decomposition of one character, Hangul included.
void decompose_char(char32_t c, bool compatible, std::vector<char32_t>& out) {
  std::array<utf8proc_int32_t, 32> buffer{};
  int last_boundclass = 0;
  const auto options =
      static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | (compatible ? UTF8PROC_COMPAT : 0));
  const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buffer.data(), buffer.size(),
                                         options, &last_boundclass);
  if (n <= 0 || static_cast<std::size_t>(n) > buffer.size()) {
    out.push_back(c);
    return;
  }
  for (utf8proc_ssize_t k = 0; k < n; ++k)
    out.push_back(static_cast<char32_t>(buffer[static_cast<std::size_t>(k)]));
}

// The primary composite of `first` and `second`, or 0 when they do not compose.
char32_t compose_pair(char32_t first, char32_t second) {
  // Every second element of a canonical composition lies at or above U+0300.
  if (second < 0x300) return 0;
  std::array<utf8proc_int32_t, 2> pair{static_cast<utf8proc_int32_t>(first),
                                       static_cast<utf8proc_int32_t>(second)};
  const auto n = utf8proc_normalize_utf32(pair.data(), 2, UTF8PROC_COMPOSE);
  return n == 1 ? static_cast<char32_t>(pair[0]) : 0;
}

struct Pending {
  int ccc;
  char32_t c;
  int change;
};

// Decomposition with canonical ordering of combining marks; each character of an input
// character's decomposition after the first counts as inserted.
std::vector<ChangedChar> decompose(std::string_view text, bool compatible) {
  std::vector<ChangedChar> out;
  out.reserve(text.size());
  std::vector<Pending> pending;
  std::vector<char32_t> parts;
  auto flush = [&] {
    std::stable_sort(pending.begin(), pending.end(),
                     [](const Pending& a, const Pending& b) { return a.ccc < b.ccc; });
    for (const auto& p : pending) out.push_back({p.c, p.change});
    pending.clear();
  };
  for (std::size_t at = 0; at < text.size(); at += utf8_length(static_cast<unsigned char>(text[at]))) {
    parts.clear();
    decompose_char(decode_at(text, at), compatible, parts);
    bool first = true;
    for (const char32_t part : parts) {
      const int ccc = combining_class(part);
      if (ccc == 0) flush();
      pending.push_back({ccc, part, first ? 0 : 1});
      first = false;
    }
  }
  flush();
  return out;
}

// Canonical composition over a decomposed sequence, adding up the changes of merged characters.
std::vector<ChangedChar> recompose(const std::vector<ChangedChar>& decomposed) {
  std::vector<ChangedChar> out;
  out.reserve(decomposed.size());
  std::vector<ChangedChar> blocked;  // marks after the starter that did not compose with it
  bool has_starter = false;
  ChangedChar starter{};
  int last_ccc = -1;  // -1: nothing between the starter and the current character
  auto emit_starter = [&] {
    out.push_back(starter);
    out.insert(out.end(), blocked.begin(), blocked.end());
    blocked.clear();
  };
  for (const ChangedChar& ch : decomposed) {
    const int ccc = combining_class(ch.c);
    if (!has_starter) {
      if (ccc != 0) {
        out.push_back(ch);
        continue;
      }
      starter = ch;
      has_starter = true;
      continue;
    }
    if (last_ccc < 0) {
      if (const char32_t composed = compose_pair(starter.c, ch.c); composed != 0) {
        starter = {composed, starter.change + ch.change - 1};
        continue;
      }
      if (ccc == 0) {
        emit_starter();
        starter = ch;
        continue;
      }
      blocked.push_back(ch);
      last_ccc = ccc;
      continue;
    }
    if (last_ccc >= ccc) {
      if (ccc == 0) {
        emit_starter();
        starter = ch;
        last_ccc = -1;
        continue;
      }
      blocked.push_back(ch);
      last_ccc = ccc;
      continue;
    }
    if (const char32_t composed = compose_pair(starter.c, ch.c); composed != 0) {
      starter = {composed, starter.change + ch.change - 1};
      continue;
    }
    blocked.push_back(ch);
    last_ccc = ccc;
  }
  if (has_starter) emit_starter();
  return out;
}

}  // namespace

std::vector<ChangedChar> normalize(std::string_view text, NormalForm form) {
  const bool compatible = form == NormalForm::nfkc || form == NormalForm::nfkd;
  auto decomposed = decompose(text, compatible);
  if (form == NormalForm::nfd || form == NormalForm::nfkd) return decomposed;
  return recompose(decomposed);
}

bool is_normalization_stable(std::string_view text, NormalForm) noexcept {
  return std::all_of(text.begin(), text.end(), [](char b) { return static_cast<unsigned char>(b) < 0x80; });
}

bool is_whitespace(char32_t c) noexcept {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool is_alphanumeric(char32_t c) noexcept {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

}  // namespace ndif::tokenizer::detail
