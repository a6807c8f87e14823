#include "split_scanner.hpp"

#include <fmt/format.h>

#include <array>
#include <compare>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>

#include "unicode.hpp"

namespace ndif::tokenizer::detail {

namespace {

constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kO200k =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// What the patterns ask of one character.
enum : std::uint16_t {
  kLetter = 1U << 0,     // \p{L}
  kNumber = 1U << 1,     // \p{N}
  kSpace = 1U << 2,      // \s: White_Space
  kLineBreak = 1U << 3,  // \r or \n
  kBlank = 1U << 4,      // U+0020, the optional space before a word
  kUpper = 1U << 5,      // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] of o200k
  kLower = 1U << 6,      // [\p{Ll}\p{Lm}\p{Lo}\p{M}] of o200k
  kSlash = 1U << 7,      // '/', which o200k keeps after punctuation
};
// [^\s\p{L}\p{N}]: punctuation, symbols, marks, controls and the like.
constexpr std::uint16_t kOtherMask = kSpace | kLetter | kNumber;
// [^\r\n\p{L}\p{N}]: the one character allowed before a word.
constexpr std::uint16_t kPrefixMask = kLineBreak | kLetter | kNumber;

std::uint16_t bits_of(char32_t c) noexcept {
  std::uint16_t bits = 0;
  switch (general_category(c)) {
    case GeneralCategory::Lu:
    case GeneralCategory::Lt:
      bits = kLetter | kUpper;
      break;
    case GeneralCategory::Ll:
      bits = kLetter | kLower;
      break;
    case GeneralCategory::Lm:
    case GeneralCategory::Lo:
      bits = kLetter | kUpper | kLower;
      break;
    case GeneralCategory::Mn:
    case GeneralCategory::Mc:
    case GeneralCategory::Me:
      bits = kUpper | kLower;
      break;
    case GeneralCategory::Nd:
    case GeneralCategory::Nl:
    case GeneralCategory::No:
      bits = kNumber;
      break;
    default:
      break;
  }
  if (is_whitespace(c)) bits |= kSpace;
  if (c == '\r' || c == '\n') bits |= kLineBreak;
  if (c == ' ') bits |= kBlank;
  if (c == '/') bits |= kSlash;
  return bits;
}

const std::array<std::uint16_t, 128>& ascii_bits() noexcept {
  static const std::array<std::uint16_t, 128> table = [] {
    std::array<std::uint16_t, 128> t{};
    for (char32_t c = 0; c < 128; ++c) t[c] = bits_of(c);
    return t;
  }();
  return table;
}

struct Unit {
  std::uint32_t at;  // byte offset of the character
  std::uint16_t bits;
  char32_t c;
};

// The characters of `subject` with their classes, and one sentinel unit (no bits) at its end.
void decode_units(std::string_view subject, std::vector<Unit>& units) {
  units.clear();
  units.reserve(subject.size() + 1);
  const auto& ascii = ascii_bits();
  for (std::size_t at = 0; at < subject.size();) {
    const auto lead = static_cast<unsigned char>(subject[at]);
    if (lead < 0x80) {
      units.push_back({static_cast<std::uint32_t>(at), ascii[lead], lead});
      ++at;
      continue;
    }
    const char32_t c = decode_at(subject, at);
    units.push_back({static_cast<std::uint32_t>(at), bits_of(c), c});
    at += utf8_length(lead);
  }
  units.push_back({static_cast<std::uint32_t>(subject.size()), 0, 0});
}

class Scan {
 public:
  explicit Scan(const std::vector<Unit>& units) : u_(units), n_(units.size() - 1) {}

  [[nodiscard]] std::size_t size() const noexcept { return n_; }
  [[nodiscard]] bool has(std::size_t i, std::uint16_t mask) const noexcept {
    return (u_[i].bits & mask) != 0;
  }
  // Outside every bit of `mask` (the sentinel is outside nothing: it ends every run).
  [[nodiscard]] bool outside(std::size_t i, std::uint16_t mask) const noexcept {
    return i < n_ && (u_[i].bits & mask) == 0;
  }
  // End of the run of characters with a bit of `mask` from `i`.
  [[nodiscard]] std::size_t run(std::size_t i, std::uint16_t mask) const noexcept {
    while (i < n_ && (u_[i].bits & mask) != 0) ++i;
    return i;
  }
  [[nodiscard]] std::size_t run_outside(std::size_t i, std::uint16_t mask) const noexcept {
    while (outside(i, mask)) ++i;
    return i;
  }

  // Length of 's|'t|'re|'ve|'m|'ll|'d at `i` (0 when none), with (?i) or not. Under (?i) the
  // reference folds case by Unicode: 's' also matches 'S' and U+017F LATIN SMALL LETTER LONG S.
  [[nodiscard]] std::size_t contraction(std::size_t i, bool caseless) const noexcept {
    if (i + 1 >= n_ || u_[i].c != '\'') return 0;
    auto is = [&](std::size_t k, char lower) {
      const char32_t c = u_[k].c;
      if (c == static_cast<char32_t>(lower)) return true;
      if (!caseless) return false;
      return c == static_cast<char32_t>(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
    };
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return 2;
    if (i + 2 < n_ && ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
                       (is(i + 1, 'l') && is(i + 2, 'l')))) {
      return 3;
    }
    return 0;
  }

  // (\s*[\r\n]+ with `line_breaks`) | \s+(?!\S) | \s+ at `i`: the end of the match, or `i`
  // when `i` is no space.
  [[nodiscard]] std::size_t spaces(std::size_t i, bool line_breaks) const noexcept {
    if (!has(i, kSpace)) return i;
    const std::size_t end = run(i, kSpace);
    // \s* gives back characters until [\r\n]+ can start: at the last line break of the run,
    // which then matches alone (nothing after it in the run is a line break).
    for (std::size_t k = end; line_breaks && k > i; --k) {
      if (has(k - 1, kLineBreak)) return k;
    }
    // \s+(?!\S): the whole run at the end of the text, else all but its last character, which
    // stays to join the word after it; \s+ takes a single space before a word.
    if (end == n_) return end;
    return end - i >= 2 ? end - 1 : end;
  }

  // ` ?[^\s\p{L}\p{N}]+` then a run of `trailing` (0: none) at `i`; `i` when it does not match.
  [[nodiscard]] std::size_t punctuation(std::size_t i, std::uint16_t trailing) const noexcept {
    std::size_t start = i;
    if (has(i, kBlank) && outside(i + 1, kOtherMask)) start = i + 1;
    if (!outside(start, kOtherMask)) return i;
    const std::size_t end = run_outside(start, kOtherMask);
    return trailing != 0 ? run(end, trailing) : end;
  }

  [[nodiscard]] std::uint32_t at(std::size_t i) const noexcept { return u_[i].at; }

 private:
  const std::vector<Unit>& u_;
  std::size_t n_;
};

// Each function returns the end of the match at `i`, or `i` when no alternative matches there.

std::size_t match_gpt2(const Scan& s, std::size_t i) {
  if (const auto k = s.contraction(i, false); k != 0) return i + k;
  for (const std::uint16_t word : {kLetter, kNumber}) {  // ' ?\p{L}+' and ' ?\p{N}+'
    const std::size_t start = s.has(i, kBlank) && s.has(i + 1, word) ? i + 1 : i;
    if (s.has(start, word)) return s.run(start, word);
  }
  if (const auto end = s.punctuation(i, 0); end != i) return end;
  return s.spaces(i, false);
}

std::size_t match_llama3(const Scan& s, std::size_t i, std::size_t max_digits) {
  if (const auto k = s.contraction(i, true); k != 0) return i + k;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (s.outside(i, kPrefixMask) && s.has(i + 1, kLetter)) return s.run(i + 1, kLetter);
  if (s.has(i, kLetter)) return s.run(i, kLetter);
  if (s.has(i, kNumber)) return std::min(s.run(i, kNumber), i + max_digits);
  if (const auto end = s.punctuation(i, kLineBreak); end != i) return end;
  return s.spaces(i, true);
}

// [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+ from `start`: the end, or `start`.
std::size_t cased_lower(const Scan& s, std::size_t start) {
  const std::size_t upper_end = s.run(start, kUpper);
  // The first run is greedy and gives back characters until the second can start; the second
  // then runs as far as it can.
  for (std::size_t q = upper_end + 1; q > start; --q) {
    if (s.has(q - 1, kLower)) return s.run(q - 1, kLower);
  }
  return start;
}

std::size_t match_o200k(const Scan& s, std::size_t i) {
  const bool prefix = s.outside(i, kPrefixMask);
  // [^\r\n\p{L}\p{N}]?[upper]*[lower]+(?i:'s|...)? : with the prefix character first, then without.
  for (const std::size_t start : {prefix ? i + 1 : i, i}) {
    if (const std::size_t end = cased_lower(s, start); end != start) return end + s.contraction(end, true);
    if (!prefix) break;
  }
  // [^\r\n\p{L}\p{N}]?[upper]+[lower]*(?i:'s|...)?
  for (const std::size_t start : {prefix ? i + 1 : i, i}) {
    if (s.has(start, kUpper)) {
      const std::size_t end = s.run(s.run(start, kUpper), kLower);
      return end + s.contraction(end, true);
    }
    if (!prefix) break;
  }
  if (s.has(i, kNumber)) return std::min(s.run(i, kNumber), i + 3);
  if (const auto end = s.punctuation(i, kLineBreak | kSlash); end != i) return end;
  return s.spaces(i, true);
}

std::size_t match(SplitScanner scanner, const Scan& s, std::size_t i) {
  switch (scanner) {
    case SplitScanner::gpt2:
      return match_gpt2(s, i);
    case SplitScanner::llama3:
      return match_llama3(s, i, 3);
    case SplitScanner::qwen2:
      return match_llama3(s, i, 1);
    case SplitScanner::o200k:
      return match_o200k(s, i);
  }
  return i;
}

}  // namespace

std::span<const KnownSplitPattern> known_split_patterns() noexcept {
  static constexpr KnownSplitPattern patterns[] = {{SplitScanner::gpt2, "gpt2", kGpt2},
                                                   {SplitScanner::llama3, "llama3", kLlama3},
                                                   {SplitScanner::qwen2, "qwen2", kQwen2},
                                                   {SplitScanner::o200k, "o200k", kO200k}};
  return patterns;
}

std::string_view split_pattern(SplitScanner scanner) noexcept {
  for (const auto& known : known_split_patterns()) {
    if (known.scanner == scanner) return known.pattern;
  }
  return {};
}

std::optional<SplitScanner> scanner_for(std::string_view pattern) noexcept {
  for (const auto& known : known_split_patterns()) {
    if (pattern == known.pattern) return known.scanner;
  }
  return std::nullopt;
}

std::vector<ByteRange> scan(SplitScanner scanner, std::string_view subject) {
  thread_local std::vector<Unit> units;
  decode_units(subject, units);
  const Scan s(units);
  std::vector<ByteRange> matches;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t end = match(scanner, s, i);
    if (end == i) {  // no alternative matches here: the search moves on by one character
      ++i;
      continue;
    }
    matches.emplace_back(s.at(i), s.at(end));
    i = end;
  }
  return matches;
}

// ---- Rewriting property escapes for PCRE2 ----

namespace {

using CategoryMask = std::uint32_t;

constexpr CategoryMask bit(GeneralCategory c) { return CategoryMask{1} << static_cast<int>(c); }

CategoryMask letters() {
  using G = GeneralCategory;
  return bit(G::Lu) | bit(G::Ll) | bit(G::Lt) | bit(G::Lm) | bit(G::Lo);
}

// General category (or group) names as Oniguruma and PCRE2 spell them, with the long aliases.
std::optional<CategoryMask> category_mask(std::string_view name) {
  using G = GeneralCategory;
  static const std::map<std::string_view, CategoryMask, std::less<>> names = [] {
    std::map<std::string_view, CategoryMask, std::less<>> m;
    const char* two[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                         "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm",
                         "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
    for (int k = 0; k < kGeneralCategoryCount; ++k) m[two[k]] = CategoryMask{1} << k;
    const char* long_names[] = {"Unassigned",
                                "Uppercase_Letter",
                                "Lowercase_Letter",
                                "Titlecase_Letter",
                                "Modifier_Letter",
                                "Other_Letter",
                                "Nonspacing_Mark",
                                "Spacing_Mark",
                                "Enclosing_Mark",
                                "Decimal_Number",
                                "Letter_Number",
                                "Other_Number",
                                "Connector_Punctuation",
                                "Dash_Punctuation",
                                "Open_Punctuation",
                                "Close_Punctuation",
                                "Initial_Punctuation",
                                "Final_Punctuation",
                                "Other_Punctuation",
                                "Math_Symbol",
                                "Currency_Symbol",
                                "Modifier_Symbol",
                                "Other_Symbol",
                                "Space_Separator",
                                "Line_Separator",
                                "Paragraph_Separator",
                                "Control",
                                "Format",
                                "Surrogate",
                                "Private_Use"};
    for (int k = 0; k < kGeneralCategoryCount; ++k) m[long_names[k]] = CategoryMask{1} << k;
    const CategoryMask marks = bit(G::Mn) | bit(G::Mc) | bit(G::Me);
    const CategoryMask numbers = bit(G::Nd) | bit(G::Nl) | bit(G::No);
    const CategoryMask punctuation =
        bit(G::Pc) | bit(G::Pd) | bit(G::Ps) | bit(G::Pe) | bit(G::Pi) | bit(G::Pf) | bit(G::Po);
    const CategoryMask symbols = bit(G::Sm) | bit(G::Sc) | bit(G::Sk) | bit(G::So);
    const CategoryMask separators = bit(G::Zs) | bit(G::Zl) | bit(G::Zp);
    const CategoryMask others = bit(G::Cn) | bit(G::Cc) | bit(G::Cf) | bit(G::Cs) | bit(G::Co);
    for (const auto& [group, mask] : std::initializer_list<std::pair<const char*, CategoryMask>>{
             {"L", letters()},
             {"Letter", letters()},
             {"M", marks},
             {"Mark", marks},
             {"N", numbers},
             {"Number", numbers},
             {"P", punctuation},
             {"Punctuation", punctuation},
             {"S", symbols},
             {"Symbol", symbols},
             {"Z", separators},
             {"Separator", separators},
             {"C", others},
             {"Other", others},
             {"LC", bit(G::Lu) | bit(G::Ll) | bit(G::Lt)},
             {"L&", bit(G::Lu) | bit(G::Ll) | bit(G::Lt)}}) {
      m[group] = mask;
    }
    return m;
  }();
  const auto it = names.find(name);
  if (it == names.end()) return std::nullopt;
  return it->second;
}

using Ranges = std::vector<std::pair<char32_t, char32_t>>;  // inclusive, ascending

// What one escape stands for: White_Space or a set of categories, possibly negated.
struct EscapeClass {
  bool white_space;
  CategoryMask mask;
  bool negated;
  auto operator<=>(const EscapeClass&) const = default;
};

// The code points of `escape` as ranges, without surrogates (which cannot occur in valid UTF-8 and
// which PCRE2 refuses in a class of a UTF pattern). Cached: a class of Unicode 16.0 never changes.
const Ranges& ranges_of(const EscapeClass& escape) {
  static std::mutex mutex;
  static std::map<EscapeClass, Ranges> cache;
  const std::lock_guard lock(mutex);
  if (const auto it = cache.find(escape); it != cache.end()) return it->second;
  Ranges ranges;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    const bool member = escape.white_space ? is_whitespace(c) : (escape.mask & bit(general_category(c))) != 0;
    if (member == escape.negated) continue;
    if (!ranges.empty() && ranges.back().second + 1 == c) {
      ranges.back().second = c;
    } else {
      ranges.emplace_back(c, c);
    }
  }
  return cache.emplace(escape, std::move(ranges)).first->second;
}

std::string class_body(const Ranges& ranges) {
  std::string out;
  for (const auto& [first, last] : ranges) {
    if (last == first) {
      fmt::format_to(std::back_inserter(out), "\\x{{{:x}}}", static_cast<std::uint32_t>(first));
    } else {
      fmt::format_to(std::back_inserter(out), "\\x{{{:x}}}-\\x{{{:x}}}", static_cast<std::uint32_t>(first),
                     static_cast<std::uint32_t>(last));
    }
  }
  return out;
}

}  // namespace

std::string expand_unicode_classes(std::string_view pattern) {
  using G = GeneralCategory;
  std::string out;
  out.reserve(pattern.size());
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != '\\' || i + 1 >= pattern.size()) {
      if (!in_class && c == '[') {
        in_class = true;
        out += c;
        // A ']' right after '[' or '[^' is a literal member.
        if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
        if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
        continue;
      }
      if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // [:alpha:]
        const auto close = pattern.find(":]", i + 2);
        if (close != std::string_view::npos) {
          out.append(pattern.substr(i, close + 2 - i));
          i = close + 1;
          continue;
        }
      }
      if (in_class && c == ']') in_class = false;
      out += c;
      continue;
    }
    const char e = pattern[i + 1];
    std::optional<CategoryMask> mask;
    bool white_space = false;
    bool negated = false;
    std::size_t consumed = 2;
    if (e == 'p' || e == 'P') {
      negated = e == 'P';
      std::string_view name;
      if (i + 2 < pattern.size() && pattern[i + 2] == '{') {
        const auto close = pattern.find('}', i + 3);
        if (close != std::string_view::npos) {
          name = pattern.substr(i + 3, close - i - 3);
          consumed = close + 1 - i;
        }
      } else if (i + 2 < pattern.size()) {
        name = pattern.substr(i + 2, 1);
        consumed = 3;
      }
      if (!name.empty() && name.front() == '^') {
        negated = !negated;
        name.remove_prefix(1);
      }
      mask = category_mask(name);
    } else if (e == 's' || e == 'S') {
      white_space = true;
      negated = e == 'S';
    } else if (e == 'd' || e == 'D') {
      mask = bit(G::Nd);
      negated = e == 'D';
    } else if (e == 'w' || e == 'W') {  // Oniguruma's word characters: letters, marks, Nd, Pc
      mask = letters() | bit(G::Mn) | bit(G::Mc) | bit(G::Me) | bit(G::Nd) | bit(G::Pc);
      negated = e == 'W';
    } else if (e == 'Q') {  // \Q...\E quotes everything up to \E
      const auto close = pattern.find("\\E", i + 2);
      const std::size_t stop = close == std::string_view::npos ? pattern.size() : close + 2;
      out.append(pattern.substr(i, stop - i));
      i = stop - 1;
      continue;
    }
    if (!white_space && !mask) {  // an escape of another kind: PCRE2's to read
      out.append(pattern.substr(i, 2));
      ++i;
      continue;
    }
    // Inside a class a negated escape becomes its complement's ranges; outside, a class of its own.
    const auto& ranges = ranges_of({white_space, mask.value_or(0), negated && in_class});
    if (in_class) {
      out += class_body(ranges);
    } else {
      out += negated ? "[^" : "[";
      out += class_body(ranges);
      out += ']';
    }
    i += consumed - 1;
  }
  return out;
}

}  // namespace ndif::tokenizer::detail
