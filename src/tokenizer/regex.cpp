#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.hpp"

#include <pcre2.h>

#include <array>
#include <optional>

#include "ndif_sweep/core/error.hpp"
#include "split_scanner.hpp"
#include "unicode.hpp"

namespace ndif::tokenizer::detail {

struct CodeDeleter {
  void operator()(pcre2_code* code) const noexcept { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const noexcept { pcre2_match_data_free(data); }
};

struct Regex::Code {
  std::optional<SplitScanner> scanner;  // set: the pattern is matched by its scanner, not PCRE2
  std::unique_ptr<pcre2_code, CodeDeleter> code;
  bool jit = false;
};

namespace {

std::string pcre2_message(int error_code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  pcre2_get_error_message(error_code, buffer.data(), buffer.size());
  return std::string(reinterpret_cast<const char*>(buffer.data()));
}

pcre2_code* compile(const std::string& pattern, int& error_code, PCRE2_SIZE& error_offset) {
  // The reference's regexes are Unicode-aware: \s, \p{L} and (?i) cover all scripts. A pattern
  // comes from a user's file, so PCRE2 checks its UTF-8 (invalid UTF-8 is a compile error, not a
  // read past the pattern); subjects were checked on entry to the tokenizer and are matched unchecked.
  return pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                       &error_code, &error_offset, nullptr);
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where, Kind kind)
    : code_(std::make_unique<Code>()) {
  const bool literal = kind == Kind::literal;
  if (kind == Kind::automatic) code_->scanner = scanner_for(pattern);
  if (code_->scanner) return;
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // Property escapes become explicit ranges of the reference's Unicode version (split_scanner.hpp).
  code_->code.reset(compile(literal ? pattern : expand_unicode_classes(pattern), error_code, error_offset));
  if (!code_->code) {
    // Report the error against the pattern as written.
    int original_code = 0;
    PCRE2_SIZE original_offset = 0;
    if (pcre2_code* original = compile(pattern, original_code, original_offset); original == nullptr) {
      error_code = original_code;
      error_offset = original_offset;
    } else {
      pcre2_code_free(original);
    }
    throw InputError(where + ": regex " + pattern + " does not compile at offset " +
                     std::to_string(error_offset) + ": " + pcre2_message(error_code));
  }
  // Without JIT support the interpreter gives the same matches, only slower.
  code_->jit = pcre2_jit_compile(code_->code.get(), PCRE2_JIT_COMPLETE) == 0;
}

Regex Regex::literal(std::string_view literal, const std::string& where) {
  std::string quoted;
  quoted.reserve(literal.size() * 2);
  for (const char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-#/ ").find(c) != std::string_view::npos) quoted.push_back('\\');
    quoted.push_back(c);
  }
  // An empty literal never matches, as in the reference.
  return Regex(literal.empty() ? std::string("(*FAIL)") : quoted, where, Kind::literal);
}

Regex Regex::without_scanner(const std::string& pattern, const std::string& where) {
  return Regex(pattern, where, Kind::pcre2);
}

bool Regex::scanned() const noexcept { return code_->scanner.has_value(); }

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

std::vector<ByteRange> Regex::find_all(std::string_view subject) const {
  if (code_->scanner) return scan(*code_->scanner, subject);
  std::vector<ByteRange> matches;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create_from_pattern(code_->code.get(), nullptr));
  if (!data) throw std::bad_alloc();
  const auto* bytes = reinterpret_cast<PCRE2_SPTR>(subject.data());
  std::size_t start = 0;
  while (start <= subject.size()) {
    const int rc =
        code_->jit ? pcre2_jit_match(code_->code.get(), bytes, subject.size(), start, 0, data.get(), nullptr)
                   : pcre2_match(code_->code.get(), bytes, subject.size(), start, PCRE2_NO_UTF_CHECK,
                                 data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw InputError("tokenizer regex failed while matching: " + pcre2_message(rc));
    const PCRE2_SIZE* vector = pcre2_get_ovector_pointer(data.get());
    const std::size_t first = vector[0];
    const std::size_t last = vector[1];
    if (last == first) {
      if (first >= subject.size()) break;
      start = first + utf8_length(static_cast<unsigned char>(subject[first]));
      continue;
    }
    matches.emplace_back(first, last);
    start = last;
  }
  return matches;
}

}  // namespace ndif::tokenizer::detail
