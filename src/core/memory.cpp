#include "ndif_sweep/core/memory.hpp"

#include <malloc.h>

namespace ndif {

void keep_large_buffers() noexcept {
  // Blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap top stays mapped.
  constexpr int kOneGiB = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kOneGiB);
  mallopt(M_TRIM_THRESHOLD, kOneGiB);
}

}  // namespace ndif
