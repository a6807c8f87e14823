#pragma once
/// \file
/// The deterministic synthetic model that ndif-local serves (docs/protocol.md, a contract).
/// Every activation is a pure function of the prompt's own token ids, the module path, the token
/// position and the hidden index, so a client can check every value it receives bit for bit.
/// Pure: no I/O, no allocation beyond the returned vectors.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::local {

/// SplitMix64's finaliser, the mixing step of the model (all arithmetic modulo 2^64).
[[nodiscard]] constexpr std::uint64_t mix(std::uint64_t x) noexcept { return mix64(x); }

/// FNV-1a 64 of the UTF-8 bytes of a module path without leading dot, e.g. "model.layers.3".
[[nodiscard]] constexpr std::uint64_t module_code(std::string_view path) noexcept {
  std::uint64_t code = 0xCBF29CE484222325ULL;
  for (const char c : path) {
    code ^= static_cast<unsigned char>(c);
    code *= 0x100000001B3ULL;
  }
  return code;
}

/// The causal token-prefix states h(0) ... h(n-1) of one unpadded prompt:
/// h(-1) = seed XOR 0x9E3779B97F4A7C15, h(i) = mix(h(i-1) XOR (t_i + 1)).
[[nodiscard]] std::vector<std::uint64_t> prefix_states(std::span<const std::int64_t> tokens,
                                                       std::uint64_t seed);

/// The exact float32 value `u * 2^-23 - 1` with u = mix(h_i XOR mix(code + j)) >> 40, in [-1, 1).
[[nodiscard]] float raw_value(std::uint64_t h_i, std::uint64_t code, std::uint64_t j) noexcept;

/// float32 -> bfloat16 bit pattern, round to nearest even (NaN stays NaN), as torch converts.
[[nodiscard]] std::uint16_t float_to_bfloat16_bits(float value) noexcept;
/// float32 -> IEEE binary16 bit pattern, round to nearest even, subnormals and overflow to inf
/// included, as torch converts.
[[nodiscard]] std::uint16_t float_to_half_bits(float value) noexcept;
/// Exact widening of a bfloat16 bit pattern to float32.
[[nodiscard]] float bfloat16_bits_to_float(std::uint16_t bits) noexcept;
/// Exact widening of a binary16 bit pattern to float32.
[[nodiscard]] float half_bits_to_float(std::uint16_t bits) noexcept;

/// Rounds a float32 to `dtype` (float16, bfloat16 or float32) and widens it back, exactly as a
/// torch dtype conversion followed by `.float()`. Other dtypes are an InternalError.
[[nodiscard]] float round_to(DType dtype, float value);

/// Whether a module's output is a plain tensor or a tuple whose element 0 is the hidden state.
enum class OutputKind { tensor, tuple };

/// Shape and identity of the synthetic model a server runs.
struct SyntheticModelConfig {
  int layers = 32;                ///< num_hidden_layers
  int hidden = 64;                ///< hidden_size H
  std::uint64_t seed = 0;         ///< the model's seed
  DType dtype = DType::bfloat16;  ///< the dtype the model holds values in
};

/// The synthetic Llama-style decoder: module tree and activations.
class SyntheticModel {
 public:
  /// Throws InputError when layers or hidden is not positive or dtype is not a float dtype.
  explicit SyntheticModel(SyntheticModelConfig config);

  [[nodiscard]] const SyntheticModelConfig& config() const noexcept { return config_; }

  /// The output kind of a module path without leading dot (`model.embed_tokens`,
  /// `model.layers.{l}`, `model.layers.{l}.self_attn`, `model.layers.{l}.mlp`, `model.norm`, l
  /// below the layer count), or nullopt when the model has no such module.
  [[nodiscard]] std::optional<OutputKind> output_kind(std::string_view path) const;

  /// The activation of module `code` at prefix state `h_i` and hidden index `j`, held in the
  /// model dtype (returned widened to float32, exactly).
  [[nodiscard]] float value(std::uint64_t h_i, std::uint64_t code, std::uint64_t j) const;

 private:
  SyntheticModelConfig config_;
};

}  // namespace ndif::local
