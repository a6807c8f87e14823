#pragma once
/// \file
/// The request that asks an NDIF service for one batch's activations. Pure: builds bytes and
/// headers, talks to no network (ndif-protocol.md sections 3 and 4).

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
  std::vector<plan::EncodedPrompt> prompts;  ///< in send order; every prompt has P positions
  std::int32_t padded_len = 0;               ///< S: the longest prompt of the batch, in tokens
  std::vector<spec::Probe> probes;
  spec::DType dtype = spec::DType::float16;
  std::int64_t hidden = 0;  ///< H, the model's hidden size: sizes the expected result
};

/// The one tensor a batch's result holds: (B, Ltot, P, H) in `dtype`, Ltot the sum of the probes'
/// layer counts, probes stacked in order along dim 1.
struct ExpectedResult {
  std::int64_t saved_node = 0;             ///< node index whose value the result holds
  std::int64_t batch = 0;                  ///< B
  std::vector<std::int64_t> probe_layers;  ///< L_p per probe, in probe order
  std::int64_t positions = 0;              ///< P
  std::int64_t hidden = 0;                 ///< H
  spec::DType dtype = spec::DType::float16;

  /// Sum of `probe_layers`.
  [[nodiscard]] std::int64_t total_layers() const noexcept;
  /// Bytes of the saved tensor's data: B * Ltot * P * H * dtype size.
  [[nodiscard]] std::int64_t data_bytes() const noexcept;
};

/// An encoded request: the body to POST to `/request`, the headers of ndif-protocol.md section 3
/// except `ndif-api-key` (the transport adds it, so a request never holds a secret), and what the
/// result must look like.
struct EncodedRequest {
  std::vector<std::byte> body;
  std::vector<std::pair<std::string, std::string>> headers;
  ExpectedResult expected;
};

/// Builds request bodies of one protocol generation. The transport and the run loop see only this
/// interface, so an encoder for another generation can be added beside the G2 one.
class RequestEncoder {
 public:
  virtual ~RequestEncoder() = default;
  /// Encodes one batch. Throws InputError if the batch cannot be expressed (no prompts, no
  /// probes, a position outside its prompt, a prompt longer than `padded_len`).
  [[nodiscard]] virtual EncodedRequest encode(const BatchRequest& request) const = 0;
};

/// The G2 encoder (nnsight 0.4.11): a zlib-compressed JSON intervention graph `{"graph", "memo"}`
/// with one invoke per prompt, the padding-adjusted positions sliced on the server, every probe
/// and layer stacked into one (B, Ltot, P, H) tensor, converted with a Tensor method and saved once.
class G2RequestEncoder final : public RequestEncoder {
 public:
  [[nodiscard]] EncodedRequest encode(const BatchRequest& request) const override;

  /// The uncompressed JSON text of the body (the same graph `encode` compresses); for tests and
  /// for debugging a request by eye.
  [[nodiscard]] std::string graph_json(const BatchRequest& request) const;
};

/// The nnsight model key of a language model:
/// `nnsight.modeling.language.LanguageModel:{"repo_id": "<model>"}` with Python `json.dumps`
/// spacing and escaping. Throws InputError if `model` is not valid UTF-8.
[[nodiscard]] std::string model_key(std::string_view model);

/// `text` as Python's `json.dumps` writes a string with `ensure_ascii=True` (quotes included).
/// Throws InputError if `text` is not valid UTF-8.
[[nodiscard]] std::string python_json_string(std::string_view text);

}  // namespace ndif::remote
