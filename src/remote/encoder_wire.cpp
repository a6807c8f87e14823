#include "ndif_sweep/remote/encoder_wire.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cstring>
#include <limits>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote::wire {
namespace {

constexpr char kMagic[4] = {'N', 'S', 'E', '1'};

void put_le(std::vector<std::byte>& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::byte>((value >> (8 * i)) & 0xFF));
}

std::uint64_t get_le(const std::byte* in, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return value;
}

}  // namespace

std::vector<std::byte> frame(const nlohmann::json& body, std::span<const std::byte> attachment) {
  if (!body.is_object()) throw InternalError("encoder message body must be a JSON object");
  const std::string text = body.dump();
  if (text.size() > kMaxJsonBytes || attachment.size() > kMaxAttachmentBytes)
    throw InternalError(
        fmt::format("encoder message too large ({} + {} bytes)", text.size(), attachment.size()));
  std::vector<std::byte> out;
  out.reserve(kHeaderBytes + text.size() + attachment.size());
  for (char c : kMagic) out.push_back(static_cast<std::byte>(c));
  put_le(out, text.size(), 4);
  put_le(out, attachment.size(), 8);
  const auto* bytes = reinterpret_cast<const std::byte*>(text.data());
  out.insert(out.end(), bytes, bytes + text.size());
  out.insert(out.end(), attachment.begin(), attachment.end());
  return out;
}

void FrameReader::feed(std::span<const std::byte> bytes) {
  if (start_ > 0 && start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

std::optional<Message> FrameReader::next() {
  if (pending() < kHeaderBytes) return std::nullopt;
  const std::byte* head = buffer_.data() + start_;
  if (std::memcmp(head, kMagic, sizeof kMagic) != 0)
    throw DecodeError("the encoder sent bytes that are not a frame (bad magic)");
  const std::uint64_t json_len = get_le(head + 4, 4);
  const std::uint64_t bin_len = get_le(head + 8, 8);
  if (json_len > kMaxJsonBytes || bin_len > kMaxAttachmentBytes)
    throw DecodeError(
        fmt::format("the encoder announced a frame of {} + {} bytes, over the limits", json_len, bin_len));
  const std::uint64_t total = kHeaderBytes + json_len + bin_len;
  if (pending() < total) return std::nullopt;
  const char* text = reinterpret_cast<const char*>(head + kHeaderBytes);
  Message message;
  message.body = nlohmann::json::parse(text, text + json_len, nullptr, /*allow_exceptions=*/false);
  if (message.body.is_discarded() || !message.body.is_object())
    throw DecodeError("the encoder sent a frame whose JSON part is not a JSON object");
  const std::byte* attachment = head + kHeaderBytes + json_len;
  message.attachment.assign(attachment, attachment + bin_len);
  start_ += static_cast<std::size_t>(total);
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  return message;
}

namespace {

std::string text_of(const nlohmann::json& body, const char* key) {
  const auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A header that curl would send as one line: a token name, a value without control characters.
bool header_safe(const std::string& text, bool name) {
  if (text.empty() || text.size() > 1024) return false;
  for (unsigned char c : text) {
    if (name ? !(std::isalnum(c) != 0 || c == '-') : (c < 0x20 || c == 0x7f)) return false;
  }
  return true;
}

}  // namespace

void check_reply(const nlohmann::json& body, const char* op) {
  const auto ok = body.find("ok");
  if (ok != body.end() && ok->is_boolean() && ok->get<bool>()) return;
  const std::string kind = text_of(body, "kind");
  const std::string message = text_of(body, "message");
  if (kind == "no_nnsight" || kind == "bad_probe" || kind == "model_files")
    throw InputError(fmt::format("nnsight encoder: {}", message));
  throw EncoderFailure(fmt::format("the nnsight encoder failed its {} ({}): {}", op,
                                   kind.empty() ? "?" : kind,
                                   message.empty() ? body.dump().substr(0, 300) : message));
}

EncoderHello hello_reply(const nlohmann::json& body, const std::string& where) {
  check_reply(body, "hello");
  const auto protocol = body.find("protocol");
  if (protocol == body.end() || *protocol != kProtocol) {
    throw InputError(
        fmt::format("the program at {} is not an ndif-sweep encoder of protocol {} (it answered {})", where,
                    kProtocol, body.dump().substr(0, 200)));
  }
  EncoderHello hello;
  hello.nnsight_version = text_of(body, "nnsight");
  hello.python_version = text_of(body, "python");
  hello.executable = text_of(body, "executable");
  if (const auto packages = body.find("packages"); packages != body.end() && packages->is_object())
    hello.packages = *packages;
  if (const auto pid = body.find("pid"); pid != body.end() && pid->is_number_integer())
    hello.pid = pid->get<long>();
  return hello;
}

EncoderModel open_reply(const nlohmann::json& body) {
  check_reply(body, "open");
  const auto integer = [&](const char* key) {
    const auto it = body.find(key);
    if (it == body.end() || !it->is_number_integer() || it->get<std::int64_t>() < 0 ||
        it->get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
      throw EncoderFailure(
          fmt::format("the encoder's open answer has no valid \"{}\": {}", key, body.dump().substr(0, 200)));
    return it->get<std::int32_t>();
  };
  EncoderModel model;
  model.pad_token_id = integer("pad_token_id");
  model.hidden_size = integer("hidden_size");
  model.num_hidden_layers = integer("num_hidden_layers");
  model.vocab_size = integer("vocab_size");
  const auto position_ids = body.find("position_ids");
  if (position_ids == body.end() || !position_ids->is_boolean())
    throw EncoderFailure("the encoder's open answer has no boolean \"position_ids\"");
  model.position_ids = position_ids->get<bool>();
  if (const auto order = body.find("read_order"); order != body.end() && order->is_array())
    for (const auto& name : *order)
      if (name.is_string()) model.read_order.push_back(name.get<std::string>());
  return model;
}

EncodedRequest encode_reply(Message reply, const std::string& model_key, const BatchRequest& request) {
  check_reply(reply.body, "encode");
  const auto& b = reply.body;
  EncodedRequest encoded;
  encoded.envelope = text_of(b, "envelope");
  const auto envelope = nlohmann::json::parse(encoded.envelope, nullptr, false);
  const auto key = envelope.is_object() ? envelope.find("model_key") : envelope.end();
  if (!envelope.is_object() || key == envelope.end() || !key->is_string() ||
      key->get<std::string>() != model_key) {
    throw EncoderFailure(fmt::format("the encoder's envelope is not a request for {}: {}", model_key,
                                     encoded.envelope.substr(0, 200)));
  }
  if (text_of(b, "save_name") != kSaveName)
    throw EncoderFailure(
        fmt::format("the encoder saves \"{}\", not \"{}\"", text_of(b, "save_name"), kSaveName));
  const auto headers = b.find("headers");
  if (headers == b.end() || !headers->is_object())
    throw EncoderFailure("the encoder's encode reply has no headers object");
  for (const auto& [name, value] : headers->items()) {
    if (!value.is_string() || !header_safe(name, true) || !header_safe(value.get<std::string>(), false))
      throw EncoderFailure(
          fmt::format("the encoder sent a header that cannot be sent: {}", name.substr(0, 64)));
    encoded.headers.emplace_back(name, value.get<std::string>());
  }
  if (reply.attachment.empty()) throw EncoderFailure("the encoder sent an empty blob");
  encoded.body = std::move(reply.attachment);
  encoded.expected = expected_g4_result(request);
  return encoded;
}

}  // namespace ndif::remote::wire
