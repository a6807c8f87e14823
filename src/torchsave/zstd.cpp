#include <fmt/format.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <memory>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::torchsave {
namespace {

struct DStreamDeleter {
  void operator()(ZSTD_DStream* s) const noexcept { ZSTD_freeDStream(s); }
};
using DStream = std::unique_ptr<ZSTD_DStream, DStreamDeleter>;
struct DCtxDeleter {
  void operator()(ZSTD_DCtx* c) const noexcept { ZSTD_freeDCtx(c); }
};
using DCtx = std::unique_ptr<ZSTD_DCtx, DCtxDeleter>;

constexpr std::array<std::byte, 4> kZstdMagic{std::byte{0x28}, std::byte{0xB5}, std::byte{0x2F},
                                              std::byte{0xFD}};

std::size_t check(std::size_t ret, const char* what) {
  if (ZSTD_isError(ret) != 0) throw DecodeError(fmt::format("zstd: {}: {}", what, ZSTD_getErrorName(ret)));
  return ret;
}

}  // namespace

std::vector<std::byte> maybe_decompress_zstd(std::vector<std::byte> bytes, std::size_t max_bytes) {
  if (!is_zstd(bytes)) return bytes;
  const auto out = decompress_zstd(bytes, max_bytes);
  return {out.begin(), out.end()};
}

bool is_zstd(std::span<const std::byte> bytes) noexcept {
  return bytes.size() >= kZstdMagic.size() && std::equal(kZstdMagic.begin(), kZstdMagic.end(), bytes.begin());
}

ByteBuffer zstd_room(std::span<const std::byte> bytes, std::size_t max_bytes) {
  ByteBuffer room;
  if (!is_zstd(bytes)) return room;
  const auto announced = ZSTD_getFrameContentSize(bytes.data(), bytes.size());
  if (announced == ZSTD_CONTENTSIZE_UNKNOWN)
    room.reserve(max_bytes);
  else if (announced != ZSTD_CONTENTSIZE_ERROR && announced <= max_bytes)
    room.reserve(static_cast<std::size_t>(announced));
  return room;
}

ByteBuffer decompress_zstd(std::span<const std::byte> bytes, std::size_t max_bytes, ByteBuffer room) {
  const auto announced = ZSTD_getFrameContentSize(bytes.data(), bytes.size());
  if (announced != ZSTD_CONTENTSIZE_UNKNOWN && announced != ZSTD_CONTENTSIZE_ERROR &&
      announced <= max_bytes) {
    // One pass straight into room of the announced size: the streaming API below decodes into its
    // own window and copies out, 128 KiB at a time (bench/write_bench.cpp, G4: 0.46-0.50 -> 0.50-0.52
    // GB/s). The
    // room bounds what zstd may write, so a header that understates the size fails here and the
    // bounded stream below says what is wrong, as it does for damaged data.
    DCtx context{ZSTD_createDCtx()};
    if (!context) throw InternalError("zstd: cannot allocate a decompression context");
    // Within the room's capacity this allocates nothing and touches no byte (ByteBuffer).
    ByteBuffer out = std::move(room);
    out.resize(static_cast<std::size_t>(announced));
    const std::size_t got =
        ZSTD_decompressDCtx(context.get(), out.data(), out.size(), bytes.data(), bytes.size());
    if (ZSTD_isError(got) == 0) {
      out.resize(got);
      return out;
    }
    room = std::move(out);  // the stream below, in the same memory
  }
  DStream stream{ZSTD_createDStream()};
  if (!stream) throw InternalError("zstd: cannot allocate a decompression stream");
  check(ZSTD_initDStream(stream.get()), "initialise decompression");

  // The frame header's content size may be absent or wrong, so the output grows in chunks as
  // zstd produces it and stops at max_bytes instead of trusting the header.
  // The room made for it when there is one (a frame without a size: zstd_room), else room for what
  // the (first) frame header announces, never more than the limit: growing a batch's 40 MB by
  // doubling copied it about once more (bench/write_bench.cpp).
  ByteBuffer out = std::move(room);
  out.clear();
  if (announced != ZSTD_CONTENTSIZE_UNKNOWN && announced != ZSTD_CONTENTSIZE_ERROR)
    out.reserve(static_cast<std::size_t>(std::min<unsigned long long>(announced, max_bytes)));
  const std::size_t chunk = ZSTD_DStreamOutSize();
  ZSTD_inBuffer in{bytes.data(), bytes.size(), 0};
  std::size_t pending = 1;  // non-zero while a frame is incomplete
  while (in.pos < in.size || pending != 0) {
    // Once max_bytes are out, decompress into a one-byte probe: only output beyond the limit
    // is an error, a frame that ends exactly there is fine.
    const bool full = out.size() >= max_bytes;
    const std::size_t old = out.size();
    std::byte probe{};
    ZSTD_outBuffer buf{&probe, 1, 0};
    if (!full) {
      const std::size_t step = std::min(chunk, max_bytes - old);
      out.resize(old + step);
      buf = {out.data() + old, step, 0};
    }
    const std::size_t consumed_before = in.pos;
    pending = check(ZSTD_decompressStream(stream.get(), &buf, &in), "decompress");
    if (full && buf.pos != 0)
      throw DecodeError(fmt::format("zstd: decompressed result exceeds the limit of {} bytes", max_bytes));
    if (!full) out.resize(old + buf.pos);
    if (buf.pos == 0 && in.pos == consumed_before && pending != 0)
      throw DecodeError("zstd: compressed data ends in the middle of a frame (truncated download?)");
  }
  return out;
}

}  // namespace ndif::torchsave
