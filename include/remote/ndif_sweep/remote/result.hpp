#pragma once
/// \file
/// Decoding of a batch's result file (docs/protocol.md). Pure; the input is untrusted
/// bytes from the network.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "ndif_sweep/core/memory.hpp"
#include "ndif_sweep/remote/request.hpp"

namespace ndif::remote {

/// One probe's rows of a batch: a contiguous row-major (B, L_p, P, H) buffer in the requested dtype.
struct ProbeBlock {
  std::vector<std::int64_t> shape;   ///< {B, L_p, P, H}
  std::span<const std::byte> bytes;  ///< into the DecodedResult that holds this block
};

/// A decoded batch result, split per probe in probe order. Move-only in effect: the blocks view
/// memory it owns (the result's own storage when one probe's rows are already contiguous, which
/// saves a copy of the whole batch; copies otherwise).
struct DecodedResult {
  std::vector<ProbeBlock> probes;
  std::int64_t nonfinite = 0;                  ///< NaN and infinite values among all probes' elements
  std::shared_ptr<const void> storage;         ///< keeps the decoded storage alive
  std::vector<std::vector<std::byte>> copies;  ///< a row-major copy of a tensor that was not
  std::vector<ByteBuffer> probe_rows;          ///< each probe's rows, when there are several
};

/// Memory for a result's decoded forms, made before it is decoded (result_room). Capacity only:
/// nothing is written until the decoding fills it.
struct ResultRoom {
  ByteBuffer inflated;             ///< the decompressed file of a zstd result
  std::vector<ByteBuffer> probes;  ///< each probe's rows, for a job of several probes
};

/// The most bytes a result for `expected` may take, compressed or not: its data plus room for the
/// torch.save container. Bounds downloads and zstd decompression.
[[nodiscard]] std::size_t max_result_bytes(const ExpectedResult& expected) noexcept;

/// Decodes a downloaded result: zstd (if it carries the magic number), then torch.save, then
/// the saved tensor: G4 `{saved_name: tensor}` when `expected.saved_name` is set, else
/// `result[saved_node]` (G2: `{"id", "result": {node: tensor}}`; G3: keyed by name, accepted when it
/// holds exactly one tensor). Checks dtype and shape (B, Ltot, P, H) exactly, splits per probe and
/// counts non-finite values. Throws DecodeError stating what was expected and what came.
/// Takes the downloaded bytes (move them in: the result's blocks may view them where they lie).
/// A zstd result is decompressed into `room.inflated`, and several probes' rows are copied into
/// `room.probes`, as far as their capacity goes (result_room); memory is allocated here otherwise.
[[nodiscard]] DecodedResult decode_result(std::vector<std::byte> bytes, const ExpectedResult& expected,
                                          ResultRoom room = {});

/// Room for the decoded forms of a downloaded result, allocated on the calling thread: the
/// decompressed file of a zstd result (torchsave::zstd_room, bounded by max_result_bytes) and, for
/// several probes, each probe's rows. For a caller that decodes on another thread (DecodePool):
/// memory of the main heap stays mapped once freed, a thread arena's does not (core/memory.hpp).
[[nodiscard]] ResultRoom result_room(std::span<const std::byte> bytes, const ExpectedResult& expected);

}  // namespace ndif::remote
