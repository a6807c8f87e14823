#pragma once
/// \file
/// How the process's allocator treats the large buffers of the receiving path.

namespace ndif {

/// Keeps freed large buffers in the process instead of returning them to the kernel. A batch's
/// result, its decoded rows and HDF5's staging buffers are tens of MB each; glibc serves blocks
/// above its mmap threshold (at most 32 MB by default) with fresh mappings, so every batch paid
/// for its pages again in page faults (most of a rank's CPU in bench/write_bench.cpp). With the
/// threshold raised and trimming bounded, the next batch reuses the same memory; a rank's footprint
/// stays at its peak of results in flight. Call once, first thing in main; not thread-safe.
void keep_large_buffers() noexcept;

}  // namespace ndif
