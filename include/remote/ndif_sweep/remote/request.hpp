#pragma once
/// \file
/// The request that asks an NDIF service for one batch's activations. Pure: builds bytes and
/// headers, talks to no network (docs/protocol.md).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/spec/job_spec.hpp"

namespace ndif::remote {

/// What one batch asks for: its prompts in send order (one invoke each), the padded length S of
/// the batch, the probes and the dtype the server converts to.
struct BatchRequest {
  std::string model;                         ///< repo id, e.g. "meta-llama/Llama-3.1-70B"
  std::string model_key;                     ///< G4 envelope: the key as the server lists it
  std::vector<plan::EncodedPrompt> prompts;  ///< in send order; every prompt has P positions
  std::int32_t padded_len = 0;               ///< S: the longest prompt of the batch, in tokens
  std::vector<spec::Probe> probes;
  DType dtype = DType::float16;
  std::int64_t hidden = 0;  ///< H, the model's hidden size: sizes the expected result
};

/// The one tensor a batch's result holds: (B, Ltot, P, H) in `dtype`, Ltot the sum of the probes'
/// layer counts, probes stacked in order along dim 1.
struct ExpectedResult {
  std::int64_t saved_node = 0;             ///< G2: node index whose value the result holds
  std::string saved_name;                  ///< G4: the variable the result is keyed by ("" for G2)
  std::int64_t batch = 0;                  ///< B
  std::vector<std::int64_t> probe_layers;  ///< L_p per probe, in probe order
  std::int64_t positions = 0;              ///< P
  std::int64_t hidden = 0;                 ///< H
  DType dtype = DType::float16;

  /// Sum of `probe_layers`.
  [[nodiscard]] std::int64_t total_layers() const noexcept;
  /// Bytes of the saved tensor's data: B * Ltot * P * H * dtype size.
  [[nodiscard]] std::int64_t data_bytes() const noexcept;
};

/// The variable a batch's request saves its one tensor as; G4 results are keyed by it.
inline constexpr const char* kSaveName = "ndif_sweep_acts";

/// An encoded request and what its result must look like. `headers` never hold `ndif-api-key`
/// (the transport adds it, so a request never holds a secret).
/// - G2: `body` is POSTed as it is, settings in `headers` (docs/protocol.md, G2);
///   `envelope` is empty.
/// - G4: a multipart POST (docs/protocol.md, G4) with the form field `data` = `envelope` (the
///   request's JSON) and the file `blob` = `body`.
struct EncodedRequest {
  std::string envelope;
  std::vector<std::byte> body;
  std::vector<std::pair<std::string, std::string>> headers;
  ExpectedResult expected;

  /// True for a G4 request (a multipart POST).
  [[nodiscard]] bool multipart() const noexcept { return !envelope.empty(); }
};

/// XXH3-64 of what a batch's request asks for (model, model key, padded length, every prompt's
/// token ids and positions, probes, dtype, hidden size): what the journal records to recognise the
/// request of a job it polls after a restart. Not a hash of the body: nnsight's pickle of one and
/// the same trace differs byte for byte from one encode to the next.
[[nodiscard]] std::uint64_t request_hash(const BatchRequest& request);

/// Builds request bodies. The transport and the run loop see only this interface: it is the one
/// place where the graph and the nnsight bodies differ.
class RequestEncoder {
 public:
  virtual ~RequestEncoder() = default;
  /// Encodes one batch. Throws InputError if the batch cannot be expressed (no prompts, no
  /// probes, a position outside its prompt, a prompt longer than `padded_len`); other errors are
  /// the encoder's own (see the implementations).
  [[nodiscard]] virtual EncodedRequest encode(const BatchRequest& request) = 0;
};

/// ndif-sweep's own encoder: a JSON intervention graph `{"graph", "memo"}` in nnsight 0.4.11's
/// format with one invoke per prompt, the padding-adjusted positions sliced on the server, every
/// probe and layer stacked into one (B, Ltot, P, H) tensor, converted with a Tensor method and
/// saved once. `framing` g2 sends it zlib-compressed as a G2 body; g4 sends it as the blob of a
/// multipart request (zstd-compressed, envelope `compress: true`), with the saved node named
/// `kSaveName` so that the result is keyed by name as G4 results are (ndif-local serves both).
class GraphRequestEncoder final : public RequestEncoder {
 public:
  explicit GraphRequestEncoder(spec::Protocol framing = spec::Protocol::g2) noexcept : framing_(framing) {}

  [[nodiscard]] EncodedRequest encode(const BatchRequest& request) override;

  /// The uncompressed JSON text of the graph (the same graph `encode` sends); for tests and for
  /// debugging a request by eye.
  [[nodiscard]] std::string graph_json(const BatchRequest& request) const;

 private:
  spec::Protocol framing_;
};

/// A batch as the tensors nnsight's forward takes: left-padded to S with the tokenizer's pad id.
struct PaddedBatch {
  std::int64_t batch = 0;                      ///< B
  std::int64_t seq = 0;                        ///< S
  std::int64_t positions = 0;                  ///< P
  std::vector<std::int32_t> input_ids;         ///< B x S, row-major
  std::vector<std::uint8_t> attention_mask;    ///< B x S: 0 over the left padding, else 1
  std::vector<std::int32_t> positions_padded;  ///< B x P: each position shifted by its padding
};

/// Lays out a batch for the nnsight encoder. Throws InputError like `RequestEncoder::encode`.
[[nodiscard]] PaddedBatch pad_batch(const BatchRequest& request, std::int32_t pad_token_id);

/// What a G4 result must look like for `request`: `kSaveName`, (B, Ltot, P, H) in its dtype.
[[nodiscard]] ExpectedResult expected_g4_result(const BatchRequest& request);

/// The nnsight model key of a language model:
/// `nnsight.modeling.language.LanguageModel:{"repo_id": "<model>"}` with Python `json.dumps`
/// spacing and escaping. Throws InputError if `model` is not valid UTF-8.
[[nodiscard]] std::string model_key(std::string_view model);

/// `text` as Python's `json.dumps` writes a string with `ensure_ascii=True` (quotes included).
/// Throws InputError if `text` is not valid UTF-8.
[[nodiscard]] std::string python_json_string(std::string_view text);

}  // namespace ndif::remote
