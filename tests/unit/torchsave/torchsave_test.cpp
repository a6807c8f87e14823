#include "ndif_sweep/torchsave/torchsave.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "archive_layout.hpp"
#include "byte_io.hpp"
#include "describe.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "zip_archive.hpp"

namespace ndif::torchsave {
namespace {

using namespace std::string_view_literals;

using nlohmann::json;
using testing::describe;

const std::filesystem::path kGoldenDir = std::filesystem::path(NDIF_SOURCE_DIR) / "tests/data/torchsave";

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

std::vector<std::byte> golden(const std::string& name) {
  return bytes_of(read_file(kGoldenDir / name, "golden torch.save file"));
}

json expected_goldens() { return json::parse(read_file(kGoldenDir / "expected.json", "golden sidecar")); }

template <typename T>
std::vector<std::byte> le_bytes(std::initializer_list<T> xs) {
  std::vector<std::byte> out(xs.size() * sizeof(T));
  std::memcpy(out.data(), std::data(xs), out.size());
  return out;
}

// An archive with a hand-written data.pkl and the given storages, laid out as torch does.
std::vector<std::byte> archive_with(std::string_view pickle,
                                    const std::vector<std::vector<std::byte>>& storages = {}) {
  detail::ZipBuffer zip;
  zip.add("archive/data.pkl", bytes_of(pickle));
  for (std::size_t i = 0; i < storages.size(); ++i) zip.add("archive/data/" + std::to_string(i), storages[i]);
  zip.add("archive/version", bytes_of("3\n"));
  return std::move(zip).finish();
}

std::string decode_error_of(std::span<const std::byte> bytes) {
  try {
    (void)load(bytes);
  } catch (const DecodeError& e) {
    return e.what();
  }
  return "(no error)";
}

// A pickle of _rebuild_tensor_v2 over storage "0" of `numel` float32 with a chosen view.
std::string tensor_pickle(int numel, int offset, std::initializer_list<int> size,
                          std::initializer_list<int> stride) {
  auto tuple = [](std::initializer_list<int> xs) {
    std::string s = "(";
    for (int x : xs) s += "J" + std::string(reinterpret_cast<const char*>(&x), 4);
    return s + "t";
  };
  std::string p =
      "\x80\x02"
      "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00"sv
       "0X\x03\x00\x00\x00"sv
       "cpu";
  p += "J" + std::string(reinterpret_cast<const char*>(&numel), 4) + "tQ";
  p += "J" + std::string(reinterpret_cast<const char*>(&offset), 4);
  p += tuple(size) + tuple(stride);
  p += "\x89"
       "ccollections\nOrderedDict\n)RtR.";
  return p;
}

TEST(TorchsaveGolden, EveryGoldenFileDecodesToWhatTorchLoaded) {
  const json expected = expected_goldens();
  ASSERT_GE(expected.size(), 12u);
  for (const auto& [name, description] : expected.items()) {
    SCOPED_TRACE(name);
    json want = description;
    testing::drop_tensor_values(want);
    const json got = describe(load(golden(name)));
    EXPECT_EQ(got, want) << json::diff(want, got).dump();
  }
}

TEST(TorchsaveGolden, ViewsOfOneStorageShareIt) {
  const Value v = load(golden("shared_storage.pt"));
  const auto& list = std::get<List>(v.v);
  ASSERT_EQ(list.size(), 3u);
  const auto& a = std::get<Tensor>(list[0].v);
  const auto& b = std::get<Tensor>(list[1].v);
  const auto& c = std::get<Tensor>(list[2].v);
  EXPECT_EQ(a.storage.get(), b.storage.get());
  EXPECT_EQ(a.storage.get(), c.storage.get());
  EXPECT_EQ(a.offset, 2);
  EXPECT_EQ(c.stride, std::vector<std::int64_t>{3});
}

TEST(TorchsaveGolden, TransposedViewReadsInRowMajorOrder) {
  const Value v = load(golden("views.pt"));
  const auto& dict = std::get<Dict>(v.v);
  const auto& transposed = std::get<Tensor>(dict.items.at(1).second.v);
  ASSERT_EQ(std::get<std::string>(dict.items.at(1).first.v), "transposed");
  EXPECT_EQ(transposed.shape, (std::vector<std::int64_t>{6, 4}));
  EXPECT_EQ(transposed.stride, (std::vector<std::int64_t>{1, 6}));
  const auto bytes = transposed.contiguous_bytes();
  std::vector<float> values(bytes.size() / 4);
  std::memcpy(values.data(), bytes.data(), bytes.size());
  // base = arange(24).reshape(4, 6) / 4 - 2, so transposed[i][j] = (6 j + i) / 4 - 2.
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 4; ++j)
      EXPECT_EQ(values[static_cast<std::size_t>(4 * i + j)], (6 * j + i) / 4.0f - 2.0f);
}

TEST(TorchsaveGolden, NestedResultDictHasIdAndIntegerKey) {
  const Value v = load(golden("nested.pt"));
  const auto& dict = std::get<Dict>(v.v);
  ASSERT_EQ(dict.items.size(), 2u);
  EXPECT_EQ(std::get<std::string>(dict.items[0].second.v), "abc");
  const auto& result = std::get<Dict>(dict.items[1].second.v);
  EXPECT_EQ(std::get<std::int64_t>(result.items.at(0).first.v), 5);
  const auto& t = std::get<Tensor>(result.items.at(0).second.v);
  EXPECT_EQ(t.dtype(), DType::float16);
  EXPECT_EQ(testing::hex_of(t.contiguous_bytes()), "003c004000420044");  // 1, 2, 3, 4 in float16
}

TEST(TorchsaveRoundTrip, SaveThenLoadGivesBackEveryKindOfValue) {
  const json expected = expected_goldens();
  for (const auto& [name, description] : expected.items()) {
    SCOPED_TRACE(name);
    const Value original = load(golden(name));
    EXPECT_EQ(describe(load(save(original))), describe(original));
  }
}

TEST(TorchsaveRoundTrip, Zip64RecordsRoundTrip) {
  const Value original = load(golden("views.pt"));
  const auto bytes = detail::save_archive(original, "archive", 0);
  EXPECT_EQ(describe(load(bytes)), describe(original));
  EXPECT_NE(bytes, save(original));
}

TEST(TorchsaveWriter, EntriesAreStoredInTorchOrderAt64ByteOffsets) {
  Value v{List{Value{Tensor::from_bytes(DType::int16, {2}, le_bytes<std::int16_t>({-1, 7}))},
               Value{std::string("x")}}};
  const auto bytes = save(v, "res");
  const auto entries = detail::read_zip(bytes);
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].name, "res/data.pkl");
  EXPECT_EQ(entries[1].name, "res/byteorder");
  EXPECT_EQ(detail::to_string(entries[1].data), "little");
  EXPECT_EQ(entries[2].name, "res/data/0");
  EXPECT_EQ(testing::hex_of({entries[2].data.begin(), entries[2].data.end()}), "ffff0700");
  EXPECT_EQ(entries[3].name, "res/version");
  EXPECT_EQ(detail::to_string(entries[3].data), "3\n");
  for (const auto& e : entries) EXPECT_EQ((e.data.data() - bytes.data()) % 64, 0) << e.name;
}

TEST(TorchsaveWriter, TensorsSharingAStorageShareOneEntry) {
  Tensor base = Tensor::from_bytes(DType::float32, {4}, le_bytes<float>({1, 2, 3, 4}));
  Tensor tail = base;
  tail.offset = 2;
  tail.shape = {2};
  tail.stride = {1};
  const Value loaded = load(save(Value{Tuple{{Value{base}, Value{tail}}}}));
  const auto& items = std::get<Tuple>(loaded.v).items;
  const auto& a = std::get<Tensor>(items[0].v);
  const auto& b = std::get<Tensor>(items[1].v);
  EXPECT_EQ(a.storage.get(), b.storage.get());
  EXPECT_EQ(testing::hex_of(b.contiguous_bytes()), testing::hex_of(le_bytes<float>({3, 4})));
}

TEST(TorchsaveTensor, ElementSizesAndNamesFollowTorch) {
  EXPECT_EQ(element_size(DType::bfloat16), 2u);
  EXPECT_EQ(element_size(DType::float32), 4u);
  EXPECT_EQ(element_size(DType::int64), 8u);
  EXPECT_EQ(element_size(DType::bool_), 1u);
  EXPECT_STREQ(dtype_name(DType::bfloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::bool_), "bool");
}

TEST(TorchsaveTensor, FromBytesIsContiguousRowMajor) {
  const Tensor t = Tensor::from_bytes(DType::int32, {2, 3, 4}, std::vector<std::byte>(96));
  EXPECT_EQ(t.stride, (std::vector<std::int64_t>{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_THROW((void)Tensor::from_bytes(DType::int32, {2, 3}, std::vector<std::byte>(20)), InternalError);
}

TEST(TorchsaveTensor, ZeroDimensionalAndEmptyTensors) {
  const Tensor scalar = Tensor::from_bytes(DType::float32, {}, le_bytes<float>({2.5f}));
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.contiguous_bytes(), le_bytes<float>({2.5f}));
  const Tensor empty = Tensor::from_bytes(DType::float16, {0, 7}, {});
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_TRUE(empty.contiguous_bytes().empty());
}

TEST(TorchsaveMalformed, TruncationAtEveryLengthIsADecodeError) {
  for (const char* name : {"float16.pt", "views.pt", "containers.pt", "parameter.pt"}) {
    const auto bytes = golden(name);
    for (std::size_t n = 0; n < bytes.size(); ++n)
      EXPECT_THROW((void)load(std::span(bytes).first(n)), DecodeError) << name << " cut to " << n << " bytes";
  }
}

TEST(TorchsaveMalformed, FlippedBytesDecodeOrFailCleanly) {
  const auto original = golden("views.pt");
  const json want = describe(load(original));
  int rejected = 0;
  for (std::size_t i = 0; i < original.size(); ++i) {
    auto bytes = original;
    bytes[i] ^= std::byte{0xFF};
    try {
      // A flip in padding, a timestamp or a version field is harmless; anything else is caught.
      EXPECT_EQ(describe(load(bytes)), want) << "byte " << i;
    } catch (const DecodeError&) {
      ++rejected;
    }
  }
  // Every byte of the pickle and of the storages is covered by a CRC-32.
  EXPECT_GT(rejected, static_cast<int>(original.size()) / 2);
}

TEST(TorchsaveMalformed, DamagedStorageFailsItsCrc) {
  auto bytes = golden("float32.pt");
  const auto entries = detail::read_zip(bytes);
  const auto data_at = static_cast<std::size_t>(entries.at(1).data.data() - bytes.data());
  ASSERT_EQ(entries.at(1).name, "float32/data/0");
  bytes[data_at + 3] ^= std::byte{1};
  EXPECT_NE(decode_error_of(bytes).find("CRC-32 mismatch in ZIP entry float32/data/0"), std::string::npos);
}

TEST(TorchsaveMalformed, NotAZipArchiveIsNamed) {
  EXPECT_NE(decode_error_of(bytes_of(std::string(100, 'x'))).find("not a zipfile-format torch.save"),
            std::string::npos);
  EXPECT_NE(decode_error_of({}).find("too short"), std::string::npos);
}

TEST(TorchsaveMalformed, CompressedEntryIsRejected) {
  auto bytes = golden("float16.pt");
  // Method field of the first central directory entry (offset 10 in the header).
  const auto entries = detail::read_zip(bytes);
  std::size_t dir = 0;
  for (std::size_t i = bytes.size() - 22;; --i)
    if (detail::read_le<std::uint32_t>(bytes, i, "t") == 0x06054b50) {
      dir = detail::read_le<std::uint32_t>(bytes, i + 16, "t");
      break;
    }
  bytes[dir + 10] = std::byte{8};
  EXPECT_NE(decode_error_of(bytes).find("float16/data.pkl is compressed (method 8)"), std::string::npos);
}

std::vector<std::byte> patched(std::vector<std::byte> bytes, std::size_t at, std::uint64_t value,
                               std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) bytes[at + i] = static_cast<std::byte>((value >> (8 * i)) & 0xFF);
  return bytes;
}

TEST(TorchsaveMalformed, HugeSizesInEndRecordsAreRejected) {
  // torch itself always writes a ZIP64 end record (found through the locator 20 bytes before
  // the classic end record); this writer writes only the classic one below 4 GiB.
  const auto from_torch = golden("float16.pt");
  const std::size_t end64 = detail::read_le<std::uint64_t>(from_torch, from_torch.size() - 22 - 20 + 8, "t");
  ASSERT_EQ(detail::read_le<std::uint32_t>(from_torch, end64, "t"), 0x06064b50u);
  EXPECT_NE(
      decode_error_of(patched(from_torch, end64 + 32, 1ULL << 40, 8)).find("claims 1099511627776 entries"),
      std::string::npos);
  EXPECT_NE(decode_error_of(patched(from_torch, end64 + 40, ~0ULL - 5, 8)).find("overlaps its end record"),
            std::string::npos);
  EXPECT_NE(decode_error_of(patched(from_torch, from_torch.size() - 22 - 20 + 8, 1ULL << 62, 8))
                .find("out of place"),
            std::string::npos);

  const auto ours = save(Value{std::string("x")});
  const std::size_t end = ours.size() - 22;
  EXPECT_NE(decode_error_of(patched(ours, end + 10, 0xFFFF, 2)).find("claims 65535 entries"),
            std::string::npos);
  EXPECT_NE(decode_error_of(patched(ours, end + 12, 0xFFFFFFF0u, 4)).find("overlaps its end record"),
            std::string::npos);
}

TEST(TorchsaveMalformed, HugeSizesInEntryHeadersAreRejected) {
  const auto ours = save(Value{std::string("x")});
  const std::size_t dir = detail::read_le<std::uint32_t>(ours, ours.size() - 22 + 16, "t");
  // Size and compressed size of the first entry, then its local header offset.
  const auto sized = patched(patched(ours, dir + 20, 0x7FFFFFFF, 4), dir + 24, 0x7FFFFFFF, 4);
  EXPECT_NE(decode_error_of(sized).find("data of ZIP entry archive/data.pkl"), std::string::npos);
  EXPECT_NE(decode_error_of(patched(ours, dir + 42, 0xFFFFFF00u, 4)).find("local header of archive/data.pkl"),
            std::string::npos);
  // A ZIP64 archive whose extra field claims a 2^60-byte entry.
  const auto big = detail::save_archive(Value{std::string("x")}, "archive", 0);
  const std::size_t end64 = detail::read_le<std::uint64_t>(big, big.size() - 22 - 20 + 8, "t");
  const std::size_t dir64 = detail::read_le<std::uint64_t>(big, end64 + 48, "t");
  const std::size_t name_len = detail::read_le<std::uint16_t>(big, dir64 + 28, "t");
  const std::size_t extra = dir64 + 46 + name_len;
  ASSERT_EQ(detail::read_le<std::uint16_t>(big, extra, "t"), 1u);
  const auto huge = patched(patched(big, extra + 4, 1ULL << 60, 8), extra + 12, 1ULL << 60, 8);
  EXPECT_NE(decode_error_of(huge).find("data of ZIP entry archive/data.pkl"), std::string::npos);
}

TEST(TorchsaveMalformed, UnknownOpcodeIsNamed) {
  EXPECT_NE(decode_error_of(archive_with("\x80\x02i__builtin__\nobject\n.")).find("opcode 0x69 at byte 2"),
            std::string::npos);
}

TEST(TorchsaveMalformed, GlobalOutsideTheAllowListIsRejected) {
  const std::string msg =
      decode_error_of(archive_with("\x80\x02"
                                   "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."sv));
  EXPECT_NE(msg.find("GLOBAL os.system is not in the allow-list"), std::string::npos) << msg;
}

TEST(TorchsaveMalformed, ValidHandMadeTensorDecodes) {
  const Value v =
      load(archive_with(tensor_pickle(6, 1, {2, 2}, {1, 2}), {le_bytes<float>({0, 1, 2, 3, 4, 5})}));
  const auto& t = std::get<Tensor>(v.v);
  EXPECT_EQ(t.contiguous_bytes(), le_bytes<float>({1, 3, 2, 4}));
}

TEST(TorchsaveMalformed, OutOfBoundsViewsAreRejected) {
  const std::vector<std::vector<std::byte>> storage{le_bytes<float>({0, 1, 2, 3, 4, 5})};
  EXPECT_NE(
      decode_error_of(archive_with(tensor_pickle(6, 1, {2, 3}, {3, 1}), storage)).find("reaches element 6"),
      std::string::npos);
  EXPECT_NE(
      decode_error_of(archive_with(tensor_pickle(6, -1, {1}, {1}), storage)).find("negative storage offset"),
      std::string::npos);
  EXPECT_NE(decode_error_of(archive_with(tensor_pickle(6, 0, {-2}, {1}), storage)).find("negative size"),
            std::string::npos);
  EXPECT_NE(
      decode_error_of(archive_with(tensor_pickle(6, 0, {2, 2}, {1, -1}), storage)).find("negative stride"),
      std::string::npos);
  EXPECT_NE(decode_error_of(
                archive_with(tensor_pickle(6, 0, {0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF}, {1, 1, 1}), storage))
                .find("overflow"),
            std::string::npos);
  EXPECT_NE(decode_error_of(archive_with(tensor_pickle(6, 7, {0}, {1}), storage)).find("past the end"),
            std::string::npos);
}

TEST(TorchsaveMalformed, StorageSizeMustMatchItsElementCount) {
  const std::string msg =
      decode_error_of(archive_with(tensor_pickle(7, 0, {1}, {1}), {le_bytes<float>({0, 1})}));
  EXPECT_NE(msg.find("archive/data/0 holds 8 bytes, but 7 elements of float32 need 28"), std::string::npos)
      << msg;
  EXPECT_NE(decode_error_of(archive_with(tensor_pickle(1, 0, {1}, {1}))).find("archive/data/0 is missing"),
            std::string::npos);
}

TEST(TorchsaveMalformed, BigEndianByteorderIsRejected) {
  detail::ZipBuffer zip;
  zip.add("a/data.pkl", bytes_of("\x80\x02N."));
  zip.add("a/byteorder", bytes_of("big"));
  EXPECT_NE(decode_error_of(std::move(zip).finish()).find("byteorder is \"big\""), std::string::npos);
}

TEST(TorchsaveMalformed, SelfReferenceIsADepthError) {
  // A list memoised as 0 and appended to itself.
  EXPECT_NE(decode_error_of(archive_with("\x80\x02]q\x00h\x00"
                                         "a."sv))
                .find("nest deeper"),
            std::string::npos);
}

TEST(TorchsaveMalformed, ExponentialSharingIsBounded) {
  // Each step makes a pair holding the previous value twice: 2^60 leaves from a few hundred bytes.
  std::string p = "\x80\x02N";
  for (int i = 0; i < 60; ++i) p += "q\x00h\x00\x86"sv;
  p += ".";
  EXPECT_NE(decode_error_of(archive_with(p)).find("expand beyond"), std::string::npos);
}

TEST(TorchsaveMalformed, StackAndMarkMisuseIsRejected) {
  EXPECT_NE(decode_error_of(archive_with("\x80\x02"
                                         "a."))
                .find("stack underflow"),
            std::string::npos);
  EXPECT_NE(decode_error_of(archive_with("\x80\x02t.")).find("no MARK"), std::string::npos);
  EXPECT_NE(decode_error_of(archive_with("\x80\x02NN.")).find("exactly one value"), std::string::npos);
  EXPECT_NE(decode_error_of(archive_with("\x80\x02h\x05.")).find("memo key 5"), std::string::npos);
  EXPECT_NE(decode_error_of(archive_with("\x80\x02X\xff\xff\xff\x7f")).find("truncated"), std::string::npos);
  EXPECT_NE(decode_error_of(archive_with("\x80\x02N.N")).find("follow STOP"), std::string::npos);
}

TEST(TorchsaveMalformed, MissingOrDuplicatePickleIsRejected) {
  detail::ZipBuffer zip;
  zip.add("a/version", bytes_of("3\n"));
  EXPECT_NE(decode_error_of(std::move(zip).finish()).find("found 0"), std::string::npos);
  detail::ZipBuffer two;
  two.add("a/data.pkl", bytes_of("\x80\x02N."));
  two.add("b/data.pkl", bytes_of("\x80\x02N."));
  EXPECT_NE(decode_error_of(std::move(two).finish()).find("found 2"), std::string::npos);
}

std::vector<std::byte> zstd_compress(const std::vector<std::byte>& data, bool with_content_size) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, with_content_size ? 1 : 0);
  std::vector<std::byte> out(ZSTD_compressBound(data.size()));
  const std::size_t n = ZSTD_compress2(cctx, out.data(), out.size(), data.data(), data.size());
  ZSTD_freeCCtx(cctx);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

std::vector<std::byte> counting_bytes(std::size_t n) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 7) % 251);
  return out;
}

TEST(TorchsaveZstd, BytesWithoutTheMagicPassThroughUnchanged) {
  const auto plain = golden("float16.pt");
  EXPECT_EQ(maybe_decompress_zstd(plain, 10), plain);
  EXPECT_EQ(maybe_decompress_zstd(bytes_of("\x28\xb5"), 10), bytes_of("\x28\xb5"));
}

TEST(TorchsaveZstd, FramesWithAndWithoutContentSizeDecompress) {
  const auto data = counting_bytes(300000);
  EXPECT_EQ(maybe_decompress_zstd(zstd_compress(data, true), data.size()), data);
  EXPECT_EQ(maybe_decompress_zstd(zstd_compress(data, false), data.size()), data);
  const auto file = golden("views.pt");
  EXPECT_EQ(describe(load(maybe_decompress_zstd(zstd_compress(file, false), 1 << 20))), describe(load(file)));
}

TEST(TorchsaveZstd, AFrameThatAnnouncesItsSizeDecompressesIntoTheRoomMadeForIt) {
  const auto data = counting_bytes(300000);
  const auto packed = zstd_compress(data, true);
  auto room = zstd_room(packed, data.size());
  ASSERT_EQ(room.capacity(), data.size());
  EXPECT_TRUE(room.empty());
  const auto* where = room.data();
  const auto out = decompress_zstd(packed, data.size(), std::move(room));
  EXPECT_EQ(out.data(), where);  // the room's memory, not a new allocation
  EXPECT_TRUE(std::equal(out.begin(), out.end(), data.begin(), data.end()));
  // No room beyond the limit or for bytes that are not zstd.
  EXPECT_EQ(zstd_room(packed, data.size() - 1).capacity(), 0U);
  EXPECT_EQ(zstd_room(data, data.size()).capacity(), 0U);
  // A room too small is not written past: the output is allocated instead, and exact.
  ByteBuffer small;
  small.reserve(10);
  const auto grown = decompress_zstd(packed, data.size(), std::move(small));
  EXPECT_TRUE(std::equal(grown.begin(), grown.end(), data.begin(), data.end()));
}

TEST(TorchsaveZstd, AFrameWithoutASizeStreamsIntoRoomOfTheLimit) {
  const auto data = counting_bytes(300000);
  const auto packed = zstd_compress(data, false);
  const std::size_t limit = data.size() + 1000;
  auto room = zstd_room(packed, limit);
  ASSERT_EQ(room.capacity(), limit);
  const auto* where = room.data();
  const auto out = decompress_zstd(packed, limit, std::move(room));
  EXPECT_EQ(out.data(), where);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), data.begin(), data.end()));
  // The limit still holds with the room: one byte less than the data is refused.
  EXPECT_THROW(
      static_cast<void>(decompress_zstd(packed, data.size() - 1, zstd_room(packed, data.size() - 1))),
      DecodeError);
}

TEST(TorchsaveZstd, ConcatenatedFramesDecompressToTheirConcatenation) {
  auto a = counting_bytes(1000);
  const auto b = bytes_of("tail");
  auto both = zstd_compress(a, true);
  const auto second = zstd_compress(b, false);
  both.insert(both.end(), second.begin(), second.end());
  a.insert(a.end(), b.begin(), b.end());
  EXPECT_EQ(maybe_decompress_zstd(both, a.size()), a);
}

TEST(TorchsaveZstd, OutputIsBoundedByMaxBytesWhateverTheHeaderSays) {
  const auto data = counting_bytes(5000);
  for (bool with_size : {true, false}) {
    const auto packed = zstd_compress(data, with_size);
    EXPECT_EQ(maybe_decompress_zstd(packed, 5000).size(), 5000u);
    EXPECT_THROW((void)maybe_decompress_zstd(packed, 4999), DecodeError);
  }
  // 200 MB of zeros compress to a few kilobytes; the limit stops it early, also when the header
  // announces the 200 MB (the room made for the output follows the limit, not the header).
  for (bool with_size : {false, true}) {
    const auto bomb = zstd_compress(std::vector<std::byte>(200'000'000), with_size);
    ASSERT_LT(bomb.size(), 100'000u);
    try {
      (void)maybe_decompress_zstd(bomb, 1'000'000);
      ADD_FAILURE() << "a 200 MB frame passed a 1 MB limit";
    } catch (const DecodeError& e) {
      EXPECT_NE(std::string(e.what()).find("exceeds the limit of 1000000 bytes"), std::string::npos);
    }
  }
}

TEST(TorchsaveZstd, DecompressReadsFramesWhereTheyLieAndRefusesOtherBytes) {
  const auto data = counting_bytes(70000);
  auto buffer = bytes_of("head");
  const auto packed = zstd_compress(data, true);
  buffer.insert(buffer.end(), packed.begin(), packed.end());
  const std::span<const std::byte> frames = std::span<const std::byte>(buffer).subspan(4);
  ASSERT_TRUE(is_zstd(frames));
  const auto out = decompress_zstd(frames, data.size());
  EXPECT_EQ(std::vector<std::byte>(out.begin(), out.end()), data);
  EXPECT_FALSE(is_zstd(buffer));
  EXPECT_THROW((void)decompress_zstd(buffer, 1 << 20), DecodeError);
}

TEST(TorchsaveZstd, TruncatedOrDamagedFramesAreDecodeErrors) {
  const auto packed = zstd_compress(counting_bytes(20000), true);
  for (std::size_t n = 4; n < packed.size(); ++n)
    EXPECT_THROW((void)maybe_decompress_zstd(
                     {packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(n)}, 1 << 20),
                 DecodeError)
        << "cut to " << n;
  auto garbage = bytes_of("\x28\xb5\x2f\xfd garbage that is no frame header");
  EXPECT_THROW((void)maybe_decompress_zstd(garbage, 1 << 20), DecodeError);
}

TEST(TorchsaveLoadInPlace, StoragesViewTheFileWhereTheirBytesLieAndKeepItAlive) {
  for (const char* name : {"float16.pt", "views.pt"}) {
    const auto copy = golden(name);
    auto file = std::make_shared<const std::vector<std::byte>>(copy);
    const std::byte* first = file->data();
    const std::byte* end = first + file->size();
    const auto value = load_in_place(*file, file);
    EXPECT_EQ(describe(value), describe(load(copy))) << name;
    std::weak_ptr<const std::vector<std::byte>> watch = file;
    file.reset();
    // The tensors hold the file: its bytes are still theirs, inside it, unchanged.
    ASSERT_FALSE(watch.expired()) << name;
    std::size_t tensors = 0;
    const std::function<void(const Value&)> visit = [&](const Value& v) {
      if (const auto* t = std::get_if<Tensor>(&v.v)) {
        ++tensors;
        const auto bytes = t->storage->data();
        EXPECT_TRUE(t->storage->bytes.empty());
        EXPECT_GE(bytes.data(), first);
        EXPECT_LE(bytes.data() + bytes.size(), end);
        EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), copy.begin() + (bytes.data() - first)));
      }
      if (const auto* d = std::get_if<Dict>(&v.v))
        for (const auto& [key, item] : d->items) visit(item);
      if (const auto* l = std::get_if<List>(&v.v))
        for (const auto& item : *l) visit(item);
      if (const auto* t = std::get_if<Tuple>(&v.v))
        for (const auto& item : t->items) visit(item);
    };
    visit(value);
    EXPECT_GT(tensors, 0U) << name;
  }
  // load() copies: its storages own their bytes.
  const auto copied = load(golden("float16.pt"));
  EXPECT_FALSE(std::get<Tensor>(copied.v).storage->bytes.empty());
  EXPECT_FALSE(std::get<Tensor>(copied.v).storage->owner);
}

TEST(TorchsaveLoadInPlace, NeedsAnOwner) {
  const auto file = golden("float16.pt");
  EXPECT_THROW((void)load_in_place(file, nullptr), InternalError);
}

}  // namespace
}  // namespace ndif::torchsave
