#include "ndif_sweep/remote/result.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <string>
#include <tuple>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/torchsave/torchsave.hpp"
#include "result_files.hpp"

namespace ndif::remote {
namespace {

namespace ts = torchsave;

using testing::at16;
using testing::expected_f16;
using testing::file_of;
using testing::g2_result;
using testing::pattern16;
using testing::tensor;
using testing::zstd_of;

std::string decode_message(const std::vector<std::byte>& file, const ExpectedResult& expected) {
  try {
    static_cast<void>(decode_result(file, expected));
  } catch (const DecodeError& e) {
    return e.what();
  }
  return "no error";
}

/// The probes of expected_f16() (2 and 1 layers) split from a (2, 3, 2, 4) result of pattern16(48),
/// whose element (b, l, p, h) is b*24 + l*8 + p*4 + h: probe 0 holds layers 0-1 of each prompt,
/// probe 1 layer 2, every element exact.
void expect_split_pattern(const DecodedResult& decoded) {
  ASSERT_EQ(decoded.probes.size(), 2U);
  EXPECT_EQ(decoded.probes[0].shape, (std::vector<std::int64_t>{2, 2, 2, 4}));
  EXPECT_EQ(decoded.probes[1].shape, (std::vector<std::int64_t>{2, 1, 2, 4}));
  ASSERT_EQ(decoded.probes[0].bytes.size(), 32U * 2);
  ASSERT_EQ(decoded.probes[1].bytes.size(), 16U * 2);
  for (std::size_t b = 0; b < 2; ++b) {
    for (std::size_t i = 0; i < 16; ++i) EXPECT_EQ(at16(decoded.probes[0].bytes, b * 16 + i), b * 24 + i);
    for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(at16(decoded.probes[1].bytes, b * 8 + i), b * 24 + 16 + i);
  }
}

TEST(ResultDecoder, SplitsPerProbeIntoContiguousBlocksWithExactBytes) {
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  const auto decoded = decode_result(file, expected_f16());
  ASSERT_EQ(decoded.probes.size(), 2);
  EXPECT_EQ(decoded.probes[0].shape, (std::vector<std::int64_t>{2, 2, 2, 4}));
  EXPECT_EQ(decoded.probes[1].shape, (std::vector<std::int64_t>{2, 1, 2, 4}));
  expect_split_pattern(decoded);
  EXPECT_EQ(decoded.nonfinite, 0);
}

TEST(ResultDecoder, CountsNonFiniteValuesOfEachDtype) {
  auto f16 = pattern16(48);
  const std::uint16_t inf16 = 0x7C00, nan16 = 0xFE01;
  std::memcpy(f16.data() + 2 * 5, &inf16, 2);
  std::memcpy(f16.data() + 2 * 40, &nan16, 2);
  EXPECT_EQ(
      decode_result(file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, f16))), expected_f16()).nonfinite,
      2);

  auto bf16 = pattern16(48);
  const std::uint16_t inf_bf = 0xFF80;  // -inf in bfloat16; 0x7C00 is an ordinary finite bfloat16
  std::memcpy(bf16.data() + 2 * 7, &inf_bf, 2);
  std::memcpy(bf16.data() + 2 * 8, &inf16, 2);
  auto expected = expected_f16();
  expected.dtype = DType::bfloat16;
  EXPECT_EQ(
      decode_result(file_of(g2_result(tensor(DType::bfloat16, {2, 3, 2, 4}, bf16))), expected).nonfinite, 1);

  std::vector<std::byte> f32(48 * 4, std::byte{0});
  const float values[] = {1.0f, std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity()};
  std::memcpy(f32.data(), values, sizeof values);
  expected.dtype = DType::float32;
  EXPECT_EQ(decode_result(file_of(g2_result(tensor(DType::float32, {2, 3, 2, 4}, f32))), expected).nonfinite,
            2);
}

/// A (2, 3, 2, 4) float16 view of a storage holding pattern16(elements).
ts::Tensor view_of_pattern(std::size_t elements, std::int64_t offset, std::vector<std::int64_t> stride) {
  auto storage = std::make_shared<ts::Storage>();
  storage->dtype = DType::float16;
  storage->bytes = pattern16(elements);
  ts::Tensor view;
  view.storage = storage;
  view.offset = offset;
  view.shape = {2, 3, 2, 4};
  view.stride = std::move(stride);
  return view;
}

TEST(ResultDecoder, ReadsAStridedViewWithAnOffset) {
  // A view starting 4 elements into a larger storage, as a server slicing on its side may save it.
  const auto view = view_of_pattern(52, 4, {24, 8, 4, 1});
  const auto decoded = decode_result(file_of(g2_result(ts::Value{view})), expected_f16());
  EXPECT_EQ(at16(decoded.probes[0].bytes, 0), 4);
  EXPECT_EQ(at16(decoded.probes[1].bytes, 15), 24 + 16 + 7 + 4);
}

ExpectedResult one_probe() {
  auto e = expected_f16();
  e.probe_layers = {3};
  return e;
}

TEST(ResultDecoder, OneProbeOfAContiguousTensorIsReadInPlaceWithExactBytes) {
  auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  // Moved in, the downloaded buffer becomes the result's: the block lies inside it, not in a copy.
  const std::byte* first = file.data();
  const std::byte* end = first + file.size();
  const auto decoded = decode_result(std::move(file), one_probe());
  ASSERT_EQ(decoded.probes.size(), 1u);
  EXPECT_GE(decoded.probes[0].bytes.data(), first);
  EXPECT_LE(decoded.probes[0].bytes.data() + decoded.probes[0].bytes.size(), end);
  EXPECT_EQ(decoded.probes[0].shape, (std::vector<std::int64_t>{2, 3, 2, 4}));
  ASSERT_EQ(decoded.probes[0].bytes.size(), 48u * 2);
  EXPECT_TRUE(decoded.copies.empty());
  EXPECT_NE(decoded.storage, nullptr);
  for (std::size_t i = 0; i < 48; ++i) EXPECT_EQ(at16(decoded.probes[0].bytes, i), i);
}

TEST(ResultDecoder, OneProbeOfAPermutedViewIsCopiedInRowMajorOrder) {
  // (b, l, p, h) at b*24 + l*8 + p + 2h: positions and hidden swapped in memory.
  const auto view = view_of_pattern(48, 0, {24, 8, 1, 2});
  EXPECT_FALSE(view.contiguous_view().has_value());
  const auto decoded = decode_result(file_of(g2_result(ts::Value{view})), one_probe());
  ASSERT_EQ(decoded.copies.size(), 1u);
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t l = 0; l < 3; ++l)
      for (std::size_t p = 0; p < 2; ++p)
        for (std::size_t h = 0; h < 4; ++h)
          EXPECT_EQ(at16(decoded.probes[0].bytes, ((b * 3 + l) * 2 + p) * 4 + h), b * 24 + l * 8 + p + 2 * h);
}

TEST(ResultDecoder, CountsEveryNonFinite16BitPatternOnce) {
  // All 65536 patterns and one more (an infinity) that the word-at-a-time loop leaves to its tail:
  // float16 has 2 x 1024 patterns with the exponent all ones, bfloat16 2 x 128.
  auto bytes = pattern16(65536);
  const std::uint16_t inf16 = 0x7C00, inf_bf16 = 0x7F80;
  ExpectedResult e;
  e.saved_node = 20;
  e.batch = 1;
  e.probe_layers = {1};
  e.positions = 1;
  e.hidden = 65537;
  for (const auto& [dtype, inf, expect] :
       {std::tuple{DType::float16, inf16, 2048 + 1}, std::tuple{DType::bfloat16, inf_bf16, 256 + 1}}) {
    auto data = bytes;
    data.resize(data.size() + 2);
    std::memcpy(data.data() + data.size() - 2, &inf, 2);
    e.dtype = dtype;
    EXPECT_EQ(decode_result(file_of(g2_result(tensor(dtype, {1, 1, 1, 65537}, data))), e).nonfinite, expect);
  }
}

TEST(ResultDecoder, AcceptsZstdCompressedFiles) {
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  std::vector<std::byte> compressed(ZSTD_compressBound(file.size()));
  const auto n = ZSTD_compress(compressed.data(), compressed.size(), file.data(), file.size(), 3);
  ASSERT_FALSE(ZSTD_isError(n));
  compressed.resize(n);
  EXPECT_EQ(at16(decode_result(compressed, expected_f16()).probes[1].bytes, 8), 24 + 16);
  compressed.resize(n / 2);
  EXPECT_THROW(static_cast<void>(decode_result(compressed, expected_f16())), DecodeError);
}

TEST(ResultDecoder, AZstdResultIsDecompressedIntoTheRoomMadeForItOnAnotherThread) {
  auto one_probe = expected_f16();
  one_probe.probe_layers = {3};
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  const auto compressed = zstd_of(file);
  // As DecodePool does: the room is made where the download arrived, the decoding runs elsewhere.
  auto room = result_room(compressed, one_probe);
  ASSERT_GE(room.inflated.capacity(), file.size());
  EXPECT_TRUE(room.probes.empty());  // one probe's rows are read where they lie
  const auto* begin = room.inflated.data();
  const auto* end = begin + room.inflated.capacity();
  const auto decoded = decode_result(compressed, one_probe, std::move(room));
  ASSERT_EQ(decoded.probes.size(), 1U);
  const auto* rows = decoded.probes[0].bytes.data();
  EXPECT_TRUE(rows >= begin && rows + decoded.probes[0].bytes.size() <= end);
  for (std::size_t i = 0; i < 48; ++i) ASSERT_EQ(at16(decoded.probes[0].bytes, i), i);
  // A plain result needs none.
  EXPECT_EQ(result_room(file, one_probe).inflated.capacity(), 0U);
}

TEST(ResultDecoder, SeveralProbesRowsAreCopiedIntoTheRoomMadeForThem) {
  // Probes of 2 and 1 layers: probe 0 holds layers 0-1 of each prompt, probe 1 layer 2.
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  auto room = result_room(file, expected_f16());
  EXPECT_EQ(room.inflated.capacity(), 0U);
  ASSERT_EQ(room.probes.size(), 2U);
  EXPECT_EQ(room.probes[0].capacity(), 2U * 2 * 2 * 4 * 2);
  EXPECT_EQ(room.probes[1].capacity(), 2U * 1 * 2 * 4 * 2);
  const std::byte* where[] = {room.probes[0].data(), room.probes[1].data()};
  const auto decoded = decode_result(file, expected_f16(), std::move(room));
  ASSERT_EQ(decoded.probes.size(), 2U);
  for (std::size_t p = 0; p < 2; ++p) EXPECT_EQ(decoded.probes[p].bytes.data(), where[p]);
  expect_split_pattern(decoded);
  EXPECT_EQ(decoded.storage, nullptr);  // the file is let go: the rows are in the copies
  // A room too small for probe 0, and none for probe 1, still give exact rows, in memory allocated
  // for them.
  ResultRoom small;
  small.probes.emplace_back().reserve(3);
  const auto allocated = decode_result(file, expected_f16(), std::move(small));
  expect_split_pattern(allocated);
}

TEST(ResultDecoder, AcceptsAG3ResultKeyedByNameWithOneTensor) {
  ts::Dict results;
  results.items.emplace_back(ts::Value{std::string("acts")},
                             tensor(DType::float16, {2, 3, 2, 4}, pattern16(48)));
  ts::Dict root;
  root.items.emplace_back(ts::Value{std::string("id")}, ts::Value{std::string("job-1")});
  root.items.emplace_back(ts::Value{std::string("result")}, ts::Value{std::move(results)});
  EXPECT_EQ(decode_result(file_of(ts::Value{std::move(root)}), expected_f16()).probes.size(), 2);
}

ts::Value g4_result(std::vector<std::pair<std::string, ts::Value>> saved) {
  ts::Dict root;
  for (auto& [name, value] : saved) root.items.emplace_back(ts::Value{name}, std::move(value));
  return ts::Value{std::move(root)};
}

TEST(ResultDecoder, AG4ResultIsTheSavedVariableOfTheExpectedName) {
  auto expected = expected_f16();
  expected.saved_name = kSaveName;
  std::vector<std::pair<std::string, ts::Value>> saved;
  saved.emplace_back("other", ts::Value{std::int64_t{3}});
  saved.emplace_back(kSaveName, tensor(DType::float16, {2, 3, 2, 4}, pattern16(48)));
  const auto decoded = decode_result(file_of(g4_result(std::move(saved))), expected);
  ASSERT_EQ(decoded.probes.size(), 2U);
  EXPECT_EQ(at16(decoded.probes[1].bytes, 0), 16);  // row 0, layer 2: element 2 * P * H
}

TEST(ResultDecoder, AG4ResultWithoutTheVariableNamesWhatItHolds) {
  auto expected = expected_f16();
  expected.saved_name = kSaveName;
  std::vector<std::pair<std::string, ts::Value>> saved;
  saved.emplace_back("acts", tensor(DType::float16, {2, 3, 2, 4}, pattern16(48)));
  EXPECT_EQ(decode_message(file_of(g4_result(std::move(saved))), expected),
            "result file has no saved variable \"ndif_sweep_acts\" (it holds \"acts\")");
  std::vector<std::pair<std::string, ts::Value>> wrong_type;
  wrong_type.emplace_back(kSaveName, ts::Value{std::string("text")});
  EXPECT_EQ(decode_message(file_of(g4_result(std::move(wrong_type))), expected),
            "result variable \"ndif_sweep_acts\" is a str, expected a tensor");
  std::vector<std::pair<std::string, ts::Value>> wrong_shape;
  wrong_shape.emplace_back(kSaveName, tensor(DType::float16, {2, 3, 2, 2}, pattern16(24)));
  EXPECT_NE(
      decode_message(file_of(g4_result(std::move(wrong_shape))), expected).find("expected (2, 3, 2, 4)"),
      std::string::npos);
}

TEST(ResultDecoder, ShapeMismatchNamesExpectedAndGot) {
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 4, 2}, pattern16(48))));
  EXPECT_EQ(
      decode_message(file, expected_f16()),
      "result tensor has shape (2, 3, 4, 2), expected (2, 3, 2, 4) = (prompts, layers, positions, hidden)");
}

TEST(ResultDecoder, DtypeMismatchNamesExpectedAndGot) {
  const auto file = file_of(g2_result(tensor(DType::bfloat16, {2, 3, 2, 4}, pattern16(48))));
  EXPECT_EQ(decode_message(file, expected_f16()),
            "result tensor has dtype bfloat16, expected float16 as requested");
}

TEST(ResultDecoder, WrongContainersAreDecodeErrors) {
  const auto t = [] { return tensor(DType::float16, {2, 3, 2, 4}, pattern16(48)); };
  EXPECT_EQ(decode_message(file_of(t()), expected_f16()), "result file holds a tensor, expected a dict");
  ts::Dict no_result;
  no_result.items.emplace_back(ts::Value{std::string("id")}, ts::Value{std::string("j")});
  EXPECT_EQ(decode_message(file_of(ts::Value{no_result}), expected_f16()),
            "result file's dict has no \"result\" key");
  EXPECT_EQ(decode_message(file_of(g2_result(ts::Value{std::int64_t{3}})), expected_f16()),
            "result for node 20 is a int, expected a tensor");
  ts::Dict two;
  two.items.emplace_back(ts::Value{std::int64_t{1}}, t());
  two.items.emplace_back(ts::Value{std::int64_t{2}}, t());
  ts::Dict root;
  root.items.emplace_back(ts::Value{std::string("result")}, ts::Value{two});
  EXPECT_EQ(decode_message(file_of(ts::Value{root}), expected_f16()),
            "result file has no value for node 20 and 2 tensors instead of exactly one");
}

TEST(ResultDecoder, GarbageAndTruncatedFilesAreDecodeErrors) {
  const auto file = file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(48))));
  for (std::size_t cut : {std::size_t{0}, std::size_t{10}, file.size() / 2, file.size() - 1}) {
    const std::vector<std::byte> truncated(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(cut));
    EXPECT_THROW(static_cast<void>(decode_result(truncated, expected_f16())), DecodeError) << cut;
  }
}

TEST(ResultDecoder, MaxResultBytesIsTheDataPlusContainerRoom) {
  EXPECT_EQ(max_result_bytes(expected_f16()), 96 + (1U << 20));
}

}  // namespace
}  // namespace ndif::remote
