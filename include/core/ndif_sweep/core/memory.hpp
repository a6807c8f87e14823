#pragma once
/// \file
/// How the process's allocator treats the large buffers of the receiving path.

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace ndif {

/// An allocator whose new elements are left uninitialised (`resize` does not zero them). For room
/// that is written whole right after it is made: zeroing a batch's decompressed result first was
/// one more pass over its bytes (bench/write_bench.cpp).
template <class T>
struct UninitializedAllocator : std::allocator<T> {
  using std::allocator<T>::allocator;
  template <class U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

/// Bytes whose room is not zeroed when it grows.
using ByteBuffer = std::vector<std::byte, UninitializedAllocator<std::byte>>;

/// Keeps freed large buffers in the process instead of returning them to the kernel. A batch's
/// result, its decoded rows and HDF5's staging buffers are tens of MB each; glibc serves blocks
/// above its mmap threshold (at most 32 MB by default) with fresh mappings, so every batch paid
/// for its pages again in page faults (most of a rank's CPU in bench/write_bench.cpp). With the
/// threshold raised and trimming bounded, the next batch reuses the same memory; a rank's footprint
/// stays at its peak of results in flight. This holds for the main heap only: a thread's own arena
/// unmaps its heaps (64 MiB at most) once empty whatever the settings, so buffers that must stay are
/// allocated on the main thread (remote::DecodePool::submit). Call once, first thing in main; not
/// thread-safe.
void keep_large_buffers() noexcept;

}  // namespace ndif
