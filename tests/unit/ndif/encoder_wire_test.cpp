#include "ndif_sweep/ndif/encoder_wire.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote::wire {
namespace {

std::vector<std::byte> bytes_of(std::string_view text) {
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  return {p, p + text.size()};
}

TEST(EncoderWire, AFrameIsMagicLengthsJsonAndAttachment) {
  const auto attachment = bytes_of("blob");
  const auto f = frame(nlohmann::json{{"op", "hello"}}, attachment);
  const std::string json = R"({"op":"hello"})";
  ASSERT_EQ(f.size(), kHeaderBytes + json.size() + 4);
  EXPECT_EQ(std::memcmp(f.data(), "NSE1", 4), 0);
  EXPECT_EQ(static_cast<int>(f[4]), static_cast<int>(json.size()));  // little-endian u32
  EXPECT_EQ(static_cast<int>(f[8]), 4);                               // little-endian u64
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.data() + kHeaderBytes), json.size()), json);
  EXPECT_THROW(static_cast<void>(frame(nlohmann::json::array())), InternalError);
}

TEST(EncoderWire, TheReaderReassemblesFramesFedAByteAtATime) {
  auto stream = frame({{"op", "a"}}, bytes_of("xyz"));
  const auto second = frame({{"op", "b"}});
  stream.insert(stream.end(), second.begin(), second.end());
  FrameReader reader;
  std::vector<Message> got;
  for (auto b : stream) {
    reader.feed(std::span(&b, 1));
    while (auto m = reader.next()) got.push_back(std::move(*m));
  }
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(got[0].body["op"], "a");
  EXPECT_EQ(got[0].attachment, bytes_of("xyz"));
  EXPECT_EQ(got[1].body["op"], "b");
  EXPECT_TRUE(got[1].attachment.empty());
  EXPECT_EQ(reader.pending(), 0U);
}

TEST(EncoderWire, GarbageOverLimitAndNonObjectFramesAreDecodeErrors) {
  FrameReader garbage;
  garbage.feed(bytes_of("Traceback (most recent call last):\n"));
  EXPECT_THROW(static_cast<void>(garbage.next()), DecodeError);

  auto huge = frame({{"op", "x"}});
  huge[15] = std::byte{0x7f};  // attachment length near 2^63
  FrameReader over;
  over.feed(huge);
  EXPECT_THROW(static_cast<void>(over.next()), DecodeError);

  std::vector<std::byte> array_frame = bytes_of(std::string("NSE1") + std::string("\x02\0\0\0", 4) + std::string(8, '\0') + "[]");
  FrameReader not_object;
  not_object.feed(array_frame);
  EXPECT_THROW(static_cast<void>(not_object.next()), DecodeError);

  FrameReader partial;
  const auto f = frame({{"op", "x"}}, bytes_of("abc"));
  partial.feed(std::span(f.data(), f.size() - 1));
  EXPECT_FALSE(partial.next());
}

}  // namespace
}  // namespace ndif::remote::wire
