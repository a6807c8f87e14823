#pragma once
/// \file
/// Reader and writer of torch.save files (ZIP archive + pickle protocol 2 + raw storages).
/// The reader handles untrusted bytes from the network: anything it does not understand is a
/// DecodeError with a clear message, never a crash or an unbounded allocation.

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/core/memory.hpp"
#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::torchsave {

/// Decodes a torch.save file; every storage is a copy of its bytes. Throws DecodeError on anything
/// malformed or unsupported.
[[nodiscard]] Value load(std::span<const std::byte> bytes);

/// As load(), but every storage views its bytes where they lie in `bytes` and shares `owner`, which
/// must own them (a batch's result is not copied out of its archive). `owner` must not be null.
[[nodiscard]] Value load_in_place(std::span<const std::byte> bytes, std::shared_ptr<const void> owner);

/// Encodes `value` as torch.save (zipfile format, pickle protocol 2) so that real `torch.load`
/// reads it. `archive` is the top folder name inside the ZIP.
[[nodiscard]] std::vector<std::byte> save(const Value& value, const std::string& archive = "archive");

/// If `bytes` starts with the zstd magic number, decompresses it (bounded by `max_bytes`),
/// otherwise returns it unchanged. Throws DecodeError on a damaged or oversized frame. For small
/// inputs (it copies what decompress_zstd made).
[[nodiscard]] std::vector<std::byte> maybe_decompress_zstd(std::vector<std::byte> bytes,
                                                           std::size_t max_bytes);

/// Whether `bytes` starts with the zstd magic number.
[[nodiscard]] bool is_zstd(std::span<const std::byte> bytes) noexcept;

/// Decompresses the zstd frames `bytes` (read where they lie, not copied), bounded by
/// `max_bytes`, into `room` as far as its capacity goes (see zstd_room), then into memory
/// allocated here. Throws DecodeError on a damaged or oversized frame
/// or on bytes that are not zstd.
[[nodiscard]] ByteBuffer decompress_zstd(std::span<const std::byte> bytes, std::size_t max_bytes,
                                         ByteBuffer room = {});

/// Room (capacity, nothing written) for the decompressed form of `bytes`: what the zstd frame
/// header announces when that is within `max_bytes`, `max_bytes` when the header announces no size
/// (untouched capacity costs address space, not memory), none when the announced size is beyond
/// the limit or `bytes` are not zstd. For a caller that decompresses on another thread: memory
/// allocated on the calling thread comes from its allocator's heap, which keeps large freed blocks
/// (core/memory.hpp), where a thread's own arena returns them to the kernel.
[[nodiscard]] ByteBuffer zstd_room(std::span<const std::byte> bytes, std::size_t max_bytes);

}  // namespace ndif::torchsave
