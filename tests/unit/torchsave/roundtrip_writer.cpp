// Writes torch.save files with ndif::torchsave::save() and, next to them, the JSON description
// of what they hold; check_roundtrip.py then loads them with real torch and compares.
// Usage: torchsave_roundtrip_writer OUT_DIR

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "archive_layout.hpp"
#include "describe.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ts = ndif::torchsave;

using ndif::DType;

namespace {

template <typename T>
std::vector<std::byte> le_bytes(const std::vector<T>& xs) {
  std::vector<std::byte> out(xs.size() * sizeof(T));
  std::memcpy(out.data(), xs.data(), out.size());
  return out;
}

ts::Value tensor(DType dtype, std::vector<std::int64_t> shape, std::vector<std::byte> bytes) {
  return {ts::Tensor::from_bytes(dtype, std::move(shape), std::move(bytes))};
}

ts::Value view(const ts::Tensor& base, std::int64_t offset, std::vector<std::int64_t> shape,
               std::vector<std::int64_t> stride) {
  ts::Tensor t = base;
  t.offset = offset;
  t.shape = std::move(shape);
  t.stride = std::move(stride);
  return {t};
}

ts::Value sample() {
  std::vector<float> grid(24);
  for (std::size_t i = 0; i < grid.size(); ++i) grid[i] = static_cast<float>(i) * 0.5f - 3.0f;
  const ts::Tensor base = ts::Tensor::from_bytes(DType::float32, {4, 6}, le_bytes(grid));
  // bfloat16 and float16 bit patterns: 1, -0, +inf, NaN, the smallest subnormal, an arbitrary value.
  const std::vector<std::uint16_t> bf16{0x3F80, 0x8000, 0x7F80, 0x7FC0, 0x0001, 0xC2F7};
  const std::vector<std::uint16_t> f16{0x3C00, 0x8000, 0x7C00, 0x7E00, 0x0001, 0xD1A3};

  ts::Dict result;
  result.items.emplace_back(ts::Value{std::int64_t{5}}, tensor(DType::bfloat16, {2, 3}, le_bytes(bf16)));
  result.items.emplace_back(ts::Value{std::int64_t{-7}}, tensor(DType::float16, {3, 2}, le_bytes(f16)));

  ts::Dict root;
  auto put = [&](const char* key, ts::Value v) {
    root.items.emplace_back(ts::Value{std::string(key)}, std::move(v));
  };
  put("id", {std::string("abc")});
  put("result", {std::move(result)});
  put("int64", tensor(DType::int64, {3}, le_bytes(std::vector<std::int64_t>{INT64_MIN, -1, INT64_MAX})));
  put("float64", tensor(DType::float64, {2}, le_bytes(std::vector<double>{1.0 / 3, -2.5e300})));
  put("int32", tensor(DType::int32, {2}, le_bytes(std::vector<std::int32_t>{INT32_MIN, 9})));
  put("uint8", tensor(DType::uint8, {2}, le_bytes(std::vector<std::uint8_t>{0, 255})));
  put("bool", tensor(DType::bool_, {3}, le_bytes(std::vector<std::uint8_t>{1, 0, 1})));
  put("scalar", tensor(DType::float32, {}, le_bytes(std::vector<float>{2.75f})));
  put("empty", tensor(DType::bfloat16, {0, 4}, {}));
  put("base", {base});
  put("transposed", view(base, 0, {6, 4}, {1, 6}));
  put("corner", view(base, 7, {2, 2}, {6, 2}));
  put("element", view(base, 23, {}, {}));
  put("broadcast", view(base, 3, {3, 2}, {0, 1}));
  put("scalars",
      {ts::List{ts::Value{ts::None{}}, ts::Value{true}, ts::Value{false}, ts::Value{std::int64_t{0}},
                ts::Value{std::int64_t{255}}, ts::Value{std::int64_t{256}}, ts::Value{std::int64_t{65536}},
                ts::Value{std::int64_t{-129}}, ts::Value{std::int64_t{INT32_MIN}},
                ts::Value{std::int64_t{1} << 31}, ts::Value{std::int64_t{-(std::int64_t{1} << 40)}},
                ts::Value{INT64_MAX}, ts::Value{INT64_MIN}, ts::Value{0.1}, ts::Value{-1e-310},
                ts::Value{std::string("")}, ts::Value{std::string("ünïcödé ✓")}}});
  put("tuples", {ts::List{ts::Value{ts::Tuple{}}, ts::Value{ts::Tuple{{ts::Value{std::int64_t{1}}}}},
                          ts::Value{ts::Tuple{{ts::Value{std::int64_t{1}}, ts::Value{std::string("two")},
                                               ts::Value{ts::None{}}, ts::Value{ts::List{}}}}}}});
  ts::Dict wide;
  wide.items.resize(2500);
  for (std::size_t i = 0; i < wide.items.size(); ++i) {
    wide.items[i].first.v = static_cast<std::int64_t>(i);
    wide.items[i].second.v = std::to_string(i);
  }
  put("wide", {std::move(wide)});
  return {std::move(root)};
}

void write(const std::filesystem::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: torchsave_roundtrip_writer OUT_DIR\n";
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  const ts::Value value = sample();
  write(dir / "values.pt", ts::save(value, "values"));
  write(dir / "values_zip64.pt", ts::detail::save_archive(value, "values_zip64", 0));
  const nlohmann::json expected = {{"values.pt", ts::testing::describe(value)},
                                   {"values_zip64.pt", ts::testing::describe(value)}};
  std::ofstream(dir / "expected.json") << expected.dump() << "\n";
  return 0;
}
