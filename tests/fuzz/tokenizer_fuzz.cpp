// libFuzzer target: loads a tokenizer.json from the first part of the input and encodes the rest.
// The input is split at the first NUL byte: bytes before it are the tokenizer.json text, bytes
// after it the string to encode (with and without special tokens). Only InputError may escape
// the library; anything else (a crash, a sanitizer report, another exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto split = input.find('\0');
  const std::string_view json = input.substr(0, split);
  const std::string_view text =
      split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  try {
    const auto tokenizer = ndif::tokenizer::Tokenizer::from_json(json, "fuzz.json");
    try {
      const auto plain = tokenizer.encode(text, false);
      const auto special = tokenizer.encode(text, true);
      if (plain.ids.size() != plain.offsets.size() || special.ids.size() != special.offsets.size())
        __builtin_trap();
    } catch (const ndif::InputError&) {
      // invalid UTF-8 text
    }
  } catch (const ndif::InputError&) {
    // a tokenizer.json that is malformed or uses an unsupported feature
  }
  return 0;
}
