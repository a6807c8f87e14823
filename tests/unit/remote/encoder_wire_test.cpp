#include "ndif_sweep/remote/encoder_wire.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/nnsight_encoder.hpp"

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
  EXPECT_EQ(static_cast<int>(f[8]), 4);                              // little-endian u64
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

  std::vector<std::byte> array_frame =
      bytes_of(std::string("NSE1") + std::string("\x02\0\0\0", 4) + std::string(8, '\0') + "[]");
  FrameReader not_object;
  not_object.feed(array_frame);
  EXPECT_THROW(static_cast<void>(not_object.next()), DecodeError);

  FrameReader partial;
  const auto f = frame({{"op", "x"}}, bytes_of("abc"));
  partial.feed(std::span(f.data(), f.size() - 1));
  EXPECT_FALSE(partial.next());
}

BatchRequest one_prompt() {
  BatchRequest r;
  r.model = "m";
  r.model_key = "key";
  r.prompts = {plan::EncodedPrompt{{5, 6, 7}, {2, 0}}};
  r.padded_len = 3;
  spec::Probe p;
  p.name = "resid";
  p.module = "model.layers.{layer}";
  p.layers = {0, 1};
  r.probes = {p};
  r.hidden = 4;
  return r;
}

Message answer(nlohmann::json body, std::string_view blob = "blob") {
  return Message{std::move(body), bytes_of(blob)};
}

nlohmann::json good_encode() {
  return {{"ok", true},
          {"envelope", R"({"model_key":"key","session_id":"","compress":true,"env":{}})"},
          {"headers", {{"nnsight-version", "0.8.1"}, {"python-version", "3.11.7 (main, May  9 2026)"}}},
          {"save_name", kSaveName}};
}

TEST(EncoderReplies, AnEncodeAnswerBecomesAG4RequestForTheBatch) {
  const auto encoded = encode_reply(answer(good_encode()), "key", one_prompt());
  EXPECT_TRUE(encoded.multipart());
  EXPECT_EQ(encoded.body, bytes_of("blob"));
  EXPECT_EQ(encoded.headers.size(), 2U);
  EXPECT_EQ(encoded.expected.saved_name, kSaveName);
  EXPECT_EQ(encoded.expected.total_layers(), 2);
  EXPECT_EQ(encoded.expected.positions, 2);
}

TEST(EncoderReplies, AnswersThatCannotBeSentAreEncoderFailures) {
  auto wrong_key = good_encode();
  wrong_key["envelope"] = R"({"model_key":"other"})";
  auto injected = good_encode();
  injected["headers"]["nnsight-version"] = "0.8.1\r\nndif-api-key: stolen";
  auto bad_name = good_encode();
  bad_name["headers"]["bad header"] = "x";
  auto other_save = good_encode();
  other_save["save_name"] = "acts";
  for (const auto& body : {wrong_key, injected, bad_name, other_save}) {
    EXPECT_THROW(static_cast<void>(encode_reply(answer(body), "key", one_prompt())), EncoderFailure)
        << body.dump();
  }
  EXPECT_THROW(static_cast<void>(encode_reply(answer(good_encode(), ""), "key", one_prompt())),
               EncoderFailure);
}

TEST(EncoderReplies, RefusalsTheUserFixesAreInputErrorsTheRestEncoderFailures) {
  for (const char* kind : {"no_nnsight", "bad_probe", "model_files"}) {
    EXPECT_THROW(check_reply({{"ok", false}, {"kind", kind}, {"message", "m"}}, "open"), InputError) << kind;
  }
  EXPECT_THROW(check_reply({{"ok", false}, {"kind", "internal"}, {"message", "Traceback"}}, "encode"),
               EncoderFailure);
  EXPECT_THROW(check_reply({{"ok", "yes"}}, "encode"), EncoderFailure);
  EXPECT_THROW(check_reply(nlohmann::json::object(), "encode"), EncoderFailure);
}

TEST(EncoderReplies, HelloAndOpenAnswersAreReadAndChecked) {
  const auto hello = hello_reply({{"ok", true},
                                  {"protocol", kProtocol},
                                  {"nnsight", "0.8.1"},
                                  {"python", "3.11.7"},
                                  {"executable", "/venv/bin/python"},
                                  {"pid", 42},
                                  {"packages", {{"torch", "2.13.0"}}}},
                                 "/tmp/s");
  EXPECT_EQ(hello.nnsight_version, "0.8.1");
  EXPECT_EQ(hello.executable, "/venv/bin/python");
  EXPECT_EQ(hello.pid, 42);
  EXPECT_EQ(hello.packages["torch"], "2.13.0");
  EXPECT_THROW(static_cast<void>(hello_reply({{"ok", true}, {"protocol", 2}}, "/tmp/s")), InputError);
  const auto model = open_reply({{"ok", true},
                                 {"pad_token_id", 128001},
                                 {"position_ids", true},
                                 {"hidden_size", 64},
                                 {"num_hidden_layers", 4},
                                 {"vocab_size", 128256},
                                 {"read_order", {"model.layers.0", "model.layers.1"}}});
  EXPECT_EQ(model.pad_token_id, 128001);
  EXPECT_TRUE(model.position_ids);
  EXPECT_EQ(model.read_order.size(), 2U);
  EXPECT_THROW(static_cast<void>(open_reply({{"ok", true}, {"pad_token_id", -1}})), EncoderFailure);
}

// The encoder's environment and `ndif-sweep report` put the bundled package ahead of the user's path.
TEST(PythonPath, BundledPackageComesFirst) {
  EXPECT_EQ(python_path_with("/opt/ndif/python", ""), "/opt/ndif/python");
  EXPECT_EQ(python_path_with("/opt/ndif/python", "/home/me/lib:/x"), "/opt/ndif/python:/home/me/lib:/x");
  EXPECT_EQ(python_path_with("", "/home/me/lib"), "/home/me/lib");
  EXPECT_EQ(python_path_with("", ""), "");
}

}  // namespace
}  // namespace ndif::remote::wire
