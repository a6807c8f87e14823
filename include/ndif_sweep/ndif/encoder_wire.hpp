#pragma once
/// \file
/// The frames exchanged with the nnsight encoder process (python/ndif_sweep/wire.py): the magic
/// "NSE1", a little-endian u32 length of a JSON object, a little-endian u64 length of a binary
/// attachment, the JSON, the attachment. Pure; what arrives is untrusted (the encoder may be
/// broken, or another program may hold the socket).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ndif::remote::wire {

inline constexpr std::size_t kHeaderBytes = 16;
inline constexpr std::size_t kMaxJsonBytes = std::size_t{16} << 20;
inline constexpr std::uint64_t kMaxAttachmentBytes = std::uint64_t{1} << 31;
/// The operations' version; the encoder's hello reply must carry it.
inline constexpr int kProtocol = 1;

/// One message.
struct Message {
  nlohmann::json body;               ///< a JSON object
  std::vector<std::byte> attachment;
};

/// The bytes of one frame. Throws InternalError when `body` is not an object or a part is over
/// its limit.
[[nodiscard]] std::vector<std::byte> frame(const nlohmann::json& body, std::span<const std::byte> attachment = {});

/// Reassembles frames from a byte stream fed in pieces of any size.
class FrameReader {
 public:
  /// Appends received bytes.
  void feed(std::span<const std::byte> bytes);
  /// The next complete message, or nullopt while more bytes are needed. Throws DecodeError on a
  /// bad magic, an over-limit length, JSON that does not parse or is not an object.
  [[nodiscard]] std::optional<Message> next();
  /// Bytes received and not yet returned as a message.
  [[nodiscard]] std::size_t pending() const noexcept { return buffer_.size() - start_; }

 private:
  std::vector<std::byte> buffer_;
  std::size_t start_ = 0;
};

}  // namespace ndif::remote::wire
