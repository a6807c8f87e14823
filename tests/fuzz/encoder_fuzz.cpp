// libFuzzer target for what the nnsight encoder process sends back over its socket: frames fed
// to the reassembler in pieces, each message read as an encode answer for a small batch. Only
// DecodeError, InputError and EncoderFailure may escape; a crash, a sanitizer report or any other
// exception is a finding. An answer that passes must carry exactly what was checked.
// Good seeds: corpus/encoder_fuzz/ (frames of hello, open, encode and error answers).
#include <cstddef>
#include <cstdint>
#include <span>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/encoder_wire.hpp"

namespace {

ndif::remote::BatchRequest batch() {
  ndif::remote::BatchRequest r;
  r.model = "m";
  r.model_key = "k";
  r.prompts = {ndif::plan::EncodedPrompt{{1, 2, 3}, {2}}};
  r.padded_len = 3;
  ndif::spec::Probe p;
  p.name = "resid";
  p.module = "model.layers.{layer}";
  p.layers = {0};
  r.probes = {p};
  r.hidden = 4;
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  // The first byte picks the piece size, so frames split anywhere are exercised.
  const std::size_t piece = size > 0 ? 1 + static_cast<std::size_t>(data[0]) % 64 : 1;
  ndif::remote::wire::FrameReader reader;
  try {
    for (std::size_t at = 0; at < bytes.size(); at += piece) {
      reader.feed(bytes.subspan(at, std::min(piece, bytes.size() - at)));
      while (auto message = reader.next()) {
        if (!message->body.is_object()) __builtin_trap();
        try {
          const auto encoded = ndif::remote::wire::encode_reply(std::move(*message), "k", batch());
          if (!encoded.multipart() || encoded.body.empty() ||
              encoded.expected.saved_name != ndif::remote::kSaveName)
            __builtin_trap();
          for (const auto& [name, value] : encoded.headers) {
            for (char c : name + value)
              if (c == '\r' || c == '\n' || c == '\0') __builtin_trap();
          }
        } catch (const ndif::InputError&) {
        } catch (const ndif::remote::EncoderFailure&) {
        }
      }
    }
  } catch (const ndif::DecodeError&) {
    // not a frame
  }
  return 0;
}
