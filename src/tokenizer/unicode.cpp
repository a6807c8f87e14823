#include "unicode.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <utility>

#include "ndif_sweep/core/utf8.hpp"

namespace ndif::tokenizer::detail {

char32_t decode_at(std::string_view text, std::size_t at) noexcept {
  // The tokenizer checked the whole text on entry (tokenizer.cpp), so a sequence starts here.
  return next_code_point(text, at).value_or(0xFFFD);
}

namespace tables {
#include "unicode_tables.inc"
}  // namespace tables

namespace {

// One byte per code point from a two-stage table (an index of 128-character blocks).
template <std::size_t IndexSize, std::size_t BlocksSize>
std::uint8_t lookup(const std::uint16_t (&index)[IndexSize], const std::uint8_t (&blocks)[BlocksSize],
                    char32_t c) noexcept {
  if (c >= 0x110000) return 0;
  const std::size_t block = index[c >> tables::kBlockShift];
  return blocks[(block << tables::kBlockShift) | (c & ((1U << tables::kBlockShift) - 1))];
}

std::uint8_t normalization_flags(char32_t c) noexcept {
  return lookup(tables::kNormalizationFlagsIndex, tables::kNormalizationFlagsBlocks, c);
}

// Hangul syllables decompose and compose by arithmetic (Unicode chapter 3.12).
constexpr char32_t kSyllableBase = 0xAC00, kLeadBase = 0x1100, kVowelBase = 0x1161, kTrailBase = 0x11A7;
constexpr char32_t kLeadCount = 19, kVowelCount = 21, kTrailCount = 28;
constexpr char32_t kSyllableCount = kLeadCount * kVowelCount * kTrailCount;

bool is_syllable(char32_t c) noexcept { return c >= kSyllableBase && c < kSyllableBase + kSyllableCount; }
// Jamo that a preceding lead or LV syllable absorbs.
bool is_vowel_or_trail(char32_t c) noexcept {
  return (c >= kVowelBase && c < kVowelBase + kVowelCount) ||
         (c > kTrailBase && c < kTrailBase + kTrailCount);
}

// Full (recursive) decomposition of one character, Hangul included.
void decompose_char(char32_t c, bool compatible, std::vector<char32_t>& out) {
  if (is_syllable(c)) {
    const char32_t index = c - kSyllableBase;
    out.push_back(kLeadBase + index / (kVowelCount * kTrailCount));
    out.push_back(kVowelBase + (index % (kVowelCount * kTrailCount)) / kTrailCount);
    if (const char32_t trail = index % kTrailCount; trail != 0) out.push_back(kTrailBase + trail);
    return;
  }
  const std::uint8_t flags = normalization_flags(c);
  if ((flags & (compatible ? tables::kHasCanonical | tables::kHasCompat : tables::kHasCanonical)) == 0) {
    out.push_back(c);
    return;
  }
  const auto* entries = std::begin(tables::kDecompositions);
  const auto* end = std::end(tables::kDecompositions);
  const auto* entry = std::lower_bound(entries, end, c, [](const auto& e, char32_t v) { return e.code < v; });
  if (entry == end || entry->code != c) {  // unreachable: the flags come from the same table
    out.push_back(c);
    return;
  }
  const auto at = compatible ? entry->compat_at : entry->canonical_at;
  const auto length = compatible ? entry->compat_length : entry->canonical_length;
  out.insert(out.end(), tables::kDecompositionPool + at, tables::kDecompositionPool + at + length);
}

// The primary composite of `first` and `second`, or 0 when they do not compose.
char32_t compose_pair(char32_t first, char32_t second) noexcept {
  if (first >= kLeadBase && first < kLeadBase + kLeadCount && second >= kVowelBase &&
      second < kVowelBase + kVowelCount) {
    return kSyllableBase + ((first - kLeadBase) * kVowelCount + (second - kVowelBase)) * kTrailCount;
  }
  if (is_syllable(first) && (first - kSyllableBase) % kTrailCount == 0 && second > kTrailBase &&
      second < kTrailBase + kTrailCount) {
    return first + (second - kTrailBase);
  }
  if ((normalization_flags(second) & tables::kComposesSecond) == 0) return 0;
  const auto* end = std::end(tables::kCompositions);
  const auto* entry = std::lower_bound(std::begin(tables::kCompositions), end, std::pair{first, second},
                                       [](const auto& e, const std::pair<char32_t, char32_t>& v) {
                                         return e.first != v.first ? e.first < v.first : e.second < v.second;
                                       });
  return entry != end && entry->first == first && entry->second == second ? entry->composite : 0;
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

GeneralCategory general_category(char32_t c) noexcept {
  return static_cast<GeneralCategory>(lookup(tables::kCategoryIndex, tables::kCategoryBlocks, c));
}

int combining_class(char32_t c) noexcept {
  return lookup(tables::kCombiningClassIndex, tables::kCombiningClassBlocks, c);
}

bool is_normalization_stable(std::string_view text, NormalForm form) noexcept {
  const bool compatible = form == NormalForm::nfkc || form == NormalForm::nfkd;
  const bool composed = form == NormalForm::nfc || form == NormalForm::nfkc;
  // A character is left alone when it has no decomposition of the form and combining class 0 and,
  // for the composed forms, never merges with what precedes it (the quick check of UAX #15, from
  // the same tables as the normalization itself).
  const auto unstable =
      static_cast<std::uint8_t>(tables::kHasCanonical | (compatible ? tables::kHasCompat : 0) |
                                (composed ? tables::kComposesSecond : 0));
  for (std::size_t at = 0; at < text.size();) {
    const auto lead = static_cast<unsigned char>(text[at]);
    if (lead < 0x80) {
      ++at;
      continue;
    }
    const char32_t c = decode_at(text, at);
    at += utf8_length(lead);
    if ((normalization_flags(c) & unstable) != 0 || combining_class(c) != 0) return false;
    if (composed ? is_vowel_or_trail(c) : is_syllable(c)) return false;
  }
  return true;
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
  switch (general_category(c)) {
    case GeneralCategory::Lu:
    case GeneralCategory::Ll:
    case GeneralCategory::Lt:
    case GeneralCategory::Lm:
    case GeneralCategory::Lo:
    case GeneralCategory::Nd:
    case GeneralCategory::Nl:
    case GeneralCategory::No:
      return true;
    default:
      return false;
  }
}

}  // namespace ndif::tokenizer::detail
