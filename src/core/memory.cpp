#include "ndif_sweep/core/memory.hpp"

#include <malloc.h>

namespace ndif {

void keep_large_buffers() noexcept {
  // Blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap top stays mapped.
  constexpr int kOneGiB = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kOneGiB);
  mallopt(M_TRIM_THRESHOLD, kOneGiB);
  // Every thread allocates from the main heap, the one the settings above keep. A thread's own
  // arena grows in heaps of at most 64 MiB that are unmapped once empty, whatever the thresholds:
  // the decoding thread's result buffer (tens of MB) was faulted in afresh for every batch, which
  // cost more than decoding beside the writes gained (bench/write_bench.cpp: G4 0.55 GB/s with
  // arenas, 1.10 with one). Small blocks still come from each thread's cache without the lock.
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace ndif
