#pragma once
/// \file
/// The frames exchanged with the nnsight encoder process (python/ndif_sweep/wire.py): the magic
/// "NSE1", a little-endian u32 length of a JSON object, a little-endian u64 length of a binary
/// attachment, the JSON, the attachment. Pure; what arrives is untrusted (the encoder may be
/// broken, or another program may hold the socket).

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/request.hpp"

namespace ndif::remote {

/// The encoder process failed (died, hung past its timeout, or sent bytes that are not an answer)
/// after being restarted; exit code 1. Answers it gives (a bad probe, no nnsight) are InputError.
class EncoderFailure : public Error {
 public:
  explicit EncoderFailure(const std::string& what) : Error(ExitCode::failure, what) {}
};

/// The encoder's interpreter and packages (its hello).
struct EncoderHello {
  std::string nnsight_version;  ///< what nnsight's own client reports in its nnsight-version header
  std::string python_version;   ///< sys.version
  std::string executable;       ///< sys.executable
  nlohmann::json packages;      ///< {"nnsight": ..., "torch": ..., "transformers": ..., "tokenizers": ...}
  long pid = 0;
};

/// What the encoder learnt from the model's meta skeleton (its open).
struct EncoderModel {
  std::int32_t pad_token_id = 0;  ///< the tokenizer's pad id (nnsight pads with EOS when it has none)
  bool position_ids = false;      ///< the forward takes position_ids: they are sent from the mask
  int hidden_size = 0;
  int num_hidden_layers = 0;
  std::int64_t vocab_size = 0;
  std::vector<std::string> read_order;  ///< the probed modules in the order the forward runs them
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
  nlohmann::json body;  ///< a JSON object
  std::vector<std::byte> attachment;
};

/// The bytes of one frame. Throws InternalError when `body` is not an object or a part is over
/// its limit.
[[nodiscard]] std::vector<std::byte> frame(const nlohmann::json& body,
                                           std::span<const std::byte> attachment = {});

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

/// The hello answer: the encoder's versions. Throws as check_reply, and InputError when the peer
/// is not an encoder of protocol kProtocol.
[[nodiscard]] EncoderHello hello_reply(const nlohmann::json& body, const std::string& where);

/// The open answer: what the encoder learnt from the model's skeleton. Throws as check_reply, and
/// EncoderFailure when a field is missing.
[[nodiscard]] EncoderModel open_reply(const nlohmann::json& body);

/// The request of an encode answer for `request`, whose envelope must name `model_key`, save
/// `kSaveName` and carry sendable headers and a non-empty blob. Throws EncoderFailure for an answer
/// of another shape, and as check_reply.
[[nodiscard]] EncodedRequest encode_reply(Message reply, const std::string& model_key,
                                          const BatchRequest& request);

}  // namespace ndif::remote::wire
