#pragma once
// Result files as a server sends them, for the tests of remote::decode_result, remote::DecodePool
// and the run loop's fakes (every element's 16-bit pattern says where it came from), and for
// bench/write_bench.

#include <zstd.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "ndif_sweep/remote/request.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::remote::testing {

namespace ts = torchsave;

/// B=2 prompts, probes of 2 and 1 layers (Ltot=3), P=2, H=4, float16: a (2, 3, 2, 4) tensor.
inline ExpectedResult expected_f16() {
  ExpectedResult e;
  e.saved_node = 20;
  e.batch = 2;
  e.probe_layers = {2, 1};
  e.positions = 2;
  e.hidden = 4;
  e.dtype = DType::float16;
  return e;
}

/// `count` float16 elements, element i holding the 16-bit pattern first + i.
inline std::vector<std::byte> pattern16(std::size_t count, std::uint16_t first = 0) {
  std::vector<std::byte> bytes(count * 2);
  for (std::size_t i = 0; i < count; ++i) {
    const auto v = static_cast<std::uint16_t>(first + i);
    std::memcpy(bytes.data() + 2 * i, &v, 2);
  }
  return bytes;
}

inline std::uint16_t at16(std::span<const std::byte> bytes, std::size_t i) {
  std::uint16_t v = 0;
  std::memcpy(&v, bytes.data() + 2 * i, 2);
  return v;
}

/// G2's result file content: {"id": "job-1", "result": {node: saved}}.
inline ts::Value g2_result(ts::Value saved, std::int64_t node = 20) {
  ts::Dict results;
  results.items.emplace_back(ts::Value{node}, std::move(saved));
  ts::Dict root;
  root.items.emplace_back(ts::Value{std::string("id")}, ts::Value{std::string("job-1")});
  root.items.emplace_back(ts::Value{std::string("result")}, ts::Value{std::move(results)});
  return ts::Value{std::move(root)};
}

inline ts::Value tensor(DType dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes) {
  return ts::Value{ts::Tensor::from_bytes(dtype, std::move(shape), std::move(bytes))};
}

inline std::vector<std::byte> file_of(const ts::Value& value) { return ts::save(value); }

/// The G2 result file a server sends for `expected`: its (B, Ltot, P, H) tensor holding `bytes`.
inline std::vector<std::byte> g2_file_for(const ExpectedResult& expected, std::vector<std::byte> bytes) {
  return file_of(g2_result(
      tensor(expected.dtype, {expected.batch, expected.total_layers(), expected.positions, expected.hidden},
             std::move(bytes)),
      expected.saved_node));
}

/// `file` as one zstd frame of level 3 that announces its size (what ndif-local and NDIF send).
inline std::vector<std::byte> zstd_of(const std::vector<std::byte>& file) {
  std::vector<std::byte> packed(ZSTD_compressBound(file.size()));
  packed.resize(ZSTD_compress(packed.data(), packed.size(), file.data(), file.size(), 3));
  return packed;
}

}  // namespace ndif::remote::testing
