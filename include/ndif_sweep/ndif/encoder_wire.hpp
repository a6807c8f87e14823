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

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/ndif/request.hpp"

namespace ndif::remote {

/// The encoder process failed (died, hung past its timeout, or sent bytes that are not an answer)
/// after being restarted; exit code 1. Answers it gives (a bad probe, no nnsight) are InputError.
class EncoderFailure : public Error {
 public:
  explicit EncoderFailure(const std::string& what) : Error(ExitCode::failure, what) {}
};

}  // namespace ndif::remote

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

/// Checks an answer's "ok". A refusal the user must fix (kind no_nnsight, bad_probe,
/// model_files) is InputError quoting the encoder; any other (its own faults, a reply without
/// "ok") is EncoderFailure naming `op`.
void check_reply(const nlohmann::json& body, const char* op);

/// The request of an encode answer for `request`, whose envelope must name `model_key`, save
/// `kSaveName` and carry sendable headers and a non-empty blob. Throws EncoderFailure for an answer
/// of another shape, and as check_reply.
[[nodiscard]] EncodedRequest encode_reply(Message reply, const std::string& model_key, const BatchRequest& request);

}  // namespace ndif::remote::wire
