// libFuzzer target: a job spec from untrusted bytes. Only InputError may escape; a crash, a
// sanitizer report or any other exception is a finding. A spec that parses must also produce
// canonical JSON that parses back to a spec with the same canonical JSON (the job hash relies on it).
#include <cstddef>
#include <cstdint>
#include <string>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto spec = ndif::spec::parse_job_spec_text(text, "/fuzz/job.json");
    const auto canonical = spec.canonical_json();
    const auto again = ndif::spec::parse_job_spec_text(canonical.dump(), "/fuzz/job.json");
    if (again.canonical_json() != canonical) __builtin_trap();
  } catch (const ndif::InputError&) {
  }
  return 0;
}
