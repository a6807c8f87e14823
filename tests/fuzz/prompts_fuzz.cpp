// libFuzzer target: a prompts file (JSON Lines) from untrusted bytes. Only InputError may escape.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/prompts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<ndif::spec::PositionSpec> defaults{ndif::spec::PositionSpec{}};
  try {
    const auto prompts = ndif::spec::parse_prompts(text, "prompts.jsonl", defaults);
    for (const auto& p : prompts)
      if (p.positions.empty() || p.line == 0) __builtin_trap();
  } catch (const ndif::InputError&) {
  }
  return 0;
}
