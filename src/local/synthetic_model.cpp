#include "ndif_sweep/local/synthetic_model.hpp"

#include <bit>
#include <charconv>
#include <cmath>

#include "ndif_sweep/core/error.hpp"

namespace ndif::local {

std::vector<std::uint64_t> prefix_states(std::span<const std::int64_t> tokens, std::uint64_t seed) {
  std::vector<std::uint64_t> states;
  states.reserve(tokens.size());
  std::uint64_t h = seed ^ 0x9E3779B97F4A7C15ULL;
  for (const std::int64_t token : tokens) {
    h = mix(h ^ (static_cast<std::uint64_t>(token) + 1));
    states.push_back(h);
  }
  return states;
}

float raw_value(std::uint64_t h_i, std::uint64_t code, std::uint64_t j) noexcept {
  const std::uint64_t u = mix(h_i ^ mix(code + j)) >> 40;
  // u < 2^24, so both the product and the difference are exact in float32.
  return static_cast<float>(static_cast<double>(u) * 0x1p-23 - 1.0);
}

std::uint16_t float_to_bfloat16_bits(float value) noexcept {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040U);
  }
  const std::uint32_t rounding_bias = 0x7FFFU + ((bits >> 16) & 1U);
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

std::uint16_t float_to_half_bits(float value) noexcept {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000U);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFU;
  if (magnitude >= 0x7F800000U) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7C00U | (magnitude > 0x7F800000U ? 0x0200U : 0U));
  }
  if (magnitude >= 0x477FF000U) {  // 65520 and above round to infinity
    return static_cast<std::uint16_t>(sign | 0x7C00U);
  }
  if (magnitude >= 0x38800000U) {  // normal in binary16: rebias the exponent from 127 to 15
    const std::uint32_t rebased = magnitude - 0x38000000U;
    std::uint32_t result = rebased >> 13;
    const std::uint32_t rest = rebased & 0x1FFFU;
    if (rest > 0x1000U || (rest == 0x1000U && (result & 1U) != 0)) {
      ++result;  // a carry into the exponent is the correct next binade
    }
    return static_cast<std::uint16_t>(sign | result);
  }
  if (magnitude <= 0x33000000U) {  // at most half the smallest subnormal: ties to even give 0
    return sign;
  }
  // Subnormal: the value is mantissa * 2^(exponent - 150); the binary16 unit is 2^-24.
  const std::uint32_t exponent = magnitude >> 23;
  const std::uint32_t mantissa = (magnitude & 0x7FFFFFU) | 0x800000U;
  const std::uint32_t shift = 126U - exponent;
  std::uint32_t result = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1U << shift) - 1U);
  const std::uint32_t half = 1U << (shift - 1U);
  if (rest > half || (rest == half && (result & 1U) != 0)) {
    ++result;
  }
  return static_cast<std::uint16_t>(sign | result);
}

float bfloat16_bits_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

float half_bits_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t sign = (static_cast<std::uint32_t>(bits) & 0x8000U) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1FU;
  const std::uint32_t mantissa = bits & 0x3FFU;
  if (exponent == 0x1FU) {
    return std::bit_cast<float>(sign | 0x7F800000U | (mantissa << 13));
  }
  if (exponent == 0) {
    // Subnormal or zero: mantissa * 2^-24 is exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24F;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112U) << 23) | (mantissa << 13));
}

float round_to(DType dtype, float value) {
  switch (dtype) {
    case DType::float32:
      return value;
    case DType::float16:
      return half_bits_to_float(float_to_half_bits(value));
    case DType::bfloat16:
      return bfloat16_bits_to_float(float_to_bfloat16_bits(value));
    default:
      throw InternalError("round_to: the synthetic model holds only float16, bfloat16 or float32 values");
  }
}

SyntheticModel::SyntheticModel(SyntheticModelConfig config) : config_(config) {
  if (config_.layers <= 0) {
    throw InputError("--layers must be a positive number of decoder layers, got " +
                     std::to_string(config_.layers));
  }
  if (config_.hidden <= 0) {
    throw InputError("--hidden must be a positive hidden size, got " + std::to_string(config_.hidden));
  }
  if (config_.dtype != DType::bfloat16 && config_.dtype != DType::float16 &&
      config_.dtype != DType::float32) {
    throw InputError("--model-dtype must be bfloat16, float16 or float32");
  }
}

namespace {

/// Parses a decimal layer number that makes up the whole of `digits` (no sign, no leading '+').
std::optional<int> parse_layer(std::string_view digits) {
  if (digits.empty() || (digits.size() > 1 && digits.front() == '0')) {
    return std::nullopt;
  }
  int layer = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), layer);
  if (ec != std::errc{} || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return layer;
}

}  // namespace

std::optional<OutputKind> SyntheticModel::output_kind(std::string_view path) const {
  if (path == "model.embed_tokens" || path == "model.norm") {
    return OutputKind::tensor;
  }
  constexpr std::string_view layers_prefix = "model.layers.";
  if (!path.starts_with(layers_prefix)) {
    return std::nullopt;
  }
  std::string_view rest = path.substr(layers_prefix.size());
  const auto dot = rest.find('.');
  const auto layer = parse_layer(rest.substr(0, dot));
  if (!layer || *layer >= config_.layers) {
    return std::nullopt;
  }
  if (dot == std::string_view::npos) {
    return OutputKind::tuple;
  }
  const std::string_view child = rest.substr(dot + 1);
  if (child == "self_attn") {
    return OutputKind::tuple;
  }
  if (child == "mlp") {
    return OutputKind::tensor;
  }
  return std::nullopt;
}

float SyntheticModel::value(std::uint64_t h_i, std::uint64_t code, std::uint64_t j) const {
  return round_to(config_.dtype, raw_value(h_i, code, j));
}

}  // namespace ndif::local
