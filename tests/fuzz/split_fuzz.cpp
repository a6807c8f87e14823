// Fuzzes the split scanners and the property-escape rewriting with arbitrary bytes: text that is
// valid UTF-8 must split the same through every scanner and through PCRE2 on the same pattern
// (a difference aborts), and any pattern text must either compile after rewriting or be refused
// with an InputError, never crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/utf8.hpp"
#include "regex.hpp"
#include "split_scanner.hpp"

namespace {

using ndif::tokenizer::detail::Regex;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (!input.empty() && input.front() == '#') {  // the rest is a pattern
    try {
      const Regex pattern(std::string(input.substr(1)), "fuzz");
      (void)pattern.find_all("a\xC3\xA9 1 \xE4\xB8\xAD!");
    } catch (const ndif::InputError&) {
    }
    return 0;
  }
  if (ndif::first_invalid_utf8(input)) return 0;  // the tokenizer checks its input before splitting
  static const auto pairs = [] {
    std::vector<std::pair<Regex, Regex>> p;
    for (const auto& known : ndif::tokenizer::detail::known_split_patterns()) {
      const std::string pattern(known.pattern);
      p.emplace_back(Regex(pattern, "fuzz"), Regex::without_scanner(pattern, "fuzz"));
    }
    return p;
  }();
  for (const auto& [scanned, engine] : pairs) {
    if (!scanned.scanned() || scanned.find_all(input) != engine.find_all(input)) std::abort();
  }
  return 0;
}
