#pragma once
// The JSON description of a torch.save value that tests/tools/make_torch_golden.py writes for
// what torch loaded, so C++ results and torch's own view compare as plain JSON.

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "ndif_sweep/torchsave/value.hpp"

namespace ndif::torchsave::testing {

inline nlohmann::json describe_number(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return x;
}

inline std::string hex_of(const std::vector<std::byte>& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (auto b : bytes) {
    out.push_back(kHex[std::to_integer<unsigned>(b) >> 4]);
    out.push_back(kHex[std::to_integer<unsigned>(b) & 0xF]);
  }
  return out;
}

/// Describes `value`; `storages` numbers distinct storages in order of first appearance.
inline nlohmann::json describe(const Value& value, std::map<const Storage*, int>& storages) {
  using nlohmann::json;
  return std::visit(
      [&](const auto& x) -> json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, None>) {
          return {{"none", nullptr}};
        } else if constexpr (std::is_same_v<T, bool>) {
          return {{"bool", x}};
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          return {{"int", x}};
        } else if constexpr (std::is_same_v<T, double>) {
          return {{"float", describe_number(x)}};
        } else if constexpr (std::is_same_v<T, std::string>) {
          return {{"str", x}};
        } else if constexpr (std::is_same_v<T, Tensor>) {
          const auto id =
              storages.try_emplace(x.storage.get(), static_cast<int>(storages.size())).first->second;
          return {{"tensor",
                   {{"dtype", dtype_name(x.dtype())},
                    {"shape", x.shape},
                    {"stride", x.stride},
                    {"offset", x.offset},
                    {"storage_numel", x.storage->data().size() / element_size(x.dtype())},
                    {"storage", id},
                    {"hex", hex_of(x.contiguous_bytes())}}}};
        } else if constexpr (std::is_same_v<T, List>) {
          json items = json::array();
          for (const auto& v : x) items.push_back(describe(v, storages));
          return {{"list", items}};
        } else if constexpr (std::is_same_v<T, Tuple>) {
          json items = json::array();
          for (const auto& v : x.items) items.push_back(describe(v, storages));
          return {{"tuple", items}};
        } else {
          json items = json::array();
          for (const auto& [k, v] : x.items)
            items.push_back(json::array({describe(k, storages), describe(v, storages)}));
          return {{"dict", items}};
        }
      },
      value.v);
}

inline nlohmann::json describe(const Value& value) {
  std::map<const Storage*, int> storages;
  return describe(value, storages);
}

/// Removes the human-readable "values" of every tensor (the exact bytes are in "hex").
inline void drop_tensor_values(nlohmann::json& j) {
  if (j.is_object()) {
    if (j.contains("tensor")) j["tensor"].erase("values");
    for (auto& [k, v] : j.items()) drop_tensor_values(v);
  } else if (j.is_array()) {
    for (auto& v : j) drop_tensor_values(v);
  }
}

}  // namespace ndif::torchsave::testing
