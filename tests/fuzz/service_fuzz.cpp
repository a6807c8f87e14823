// libFuzzer target for what an NDIF service says about itself: GET /status (deployments, keys,
// configs as objects or JSON strings) and GET /env. Only DecodeError and InputError (no such
// deployment) may escape; a crash, a sanitizer report or any other exception is a finding.
// Good seeds: corpus/service_fuzz/ (ndif 0.1 and ndif-local replies).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/service.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto deployments = ndif::remote::parse_deployments(text);
    for (const auto& d : deployments) {
      if (d.config && (d.config->hidden_size <= 0 || d.config->num_hidden_layers <= 0)) __builtin_trap();
      static_cast<void>(d.running());
    }
    try {
      static_cast<void>(
          ndif::remote::choose_deployment(deployments, "meta-llama/Llama-3.1-70B", std::nullopt, "x"));
      if (!deployments.empty())
        static_cast<void>(
            ndif::remote::choose_deployment(deployments, "m", deployments.front().model_key, "x"));
    } catch (const ndif::InputError&) {
    }
  } catch (const ndif::DecodeError&) {
  }
  try {
    static_cast<void>(ndif::remote::parse_env(text));
  } catch (const ndif::DecodeError&) {
  }
  return 0;
}
