// libFuzzer target for what rank 0 reads from the other ranks while planning: the bytes of a
// ScanPart (plan::decode_scan_part). Only InternalError may escape; a part that decodes must hold
// arrays of the sizes its rows say (and no positions: they stay with the rank), and merging it where it
// belongs must not read outside them. Good seeds: parts made by plan::encode_scan_part.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t p = data[0] % 5;  // P of the job the part is decoded for
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    auto part = ndif::plan::decode_scan_part(bytes, p);
    const std::size_t n = part.end - part.first;
    if (part.n_tokens.size() != n || !part.positions.empty() || part.id_hashes.size() != n) __builtin_trap();
    if (part.end > (std::size_t{1} << 20)) return 0;  // a merge of that many rows is too large to try
    ndif::plan::ScanMerge merge(part.end, p);
    if (part.first == 0) merge.add(std::move(part));
  } catch (const ndif::InternalError&) {
    // bytes that are no part of this job
  }
  return 0;
}
