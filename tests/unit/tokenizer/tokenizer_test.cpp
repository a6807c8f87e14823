#include "ndif_sweep/tokenizer/tokenizer.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/tokenizer/tokenize_command.hpp"

namespace {

using ndif::InputError;
using ndif::tokenizer::Offset;
using ndif::tokenizer::Tokenizer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A tokenizer.json around `model`, with the given stages (JSON text, "null" when absent).
std::string tokenizer_json(const std::string& model, const std::string& added = "[]",
                           const std::string& normalizer = "null", const std::string& pre_tokenizer = "null",
                           const std::string& post_processor = "null") {
  return R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":)" + added +
         R"(,"normalizer":)" + normalizer + R"(,"pre_tokenizer":)" + pre_tokenizer + R"(,"post_processor":)" +
         post_processor + R"(,"decoder":null,"model":)" + model + "}";
}

// Byte-level vocabulary: "Ġ" stands for the space byte.
const std::string byte_level_model =
    R"({"type":"BPE","dropout":null,"unk_token":null,"vocab":{"a":0,"b":1,"Ġ":2,"ab":3,"Ġab":4,"c":5,"<x>":6},)"
    R"("merges":["a b",["Ġ","ab"]]})";
const std::string byte_level_pre =
    R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";

TEST(Tokenizer, ByteLevelBpeMergesStringAndPairForms) {
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, "[]", "null", byte_level_pre), "t.json");
  const auto encoding = tokenizer.encode("ab ab c", false);
  EXPECT_THAT(encoding.ids, ElementsAre(3, 4, 2, 5));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 2}, Offset{2, 5}, Offset{5, 6}, Offset{6, 7}));
}

TEST(Tokenizer, AddedTokensMatchInRawTextWithStrip) {
  const std::string added =
      R"([{"id":6,"content":"<x>","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true}])";
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, added, "null", byte_level_pre), "t.json");
  const auto encoding = tokenizer.encode("ab <x> ab", false);
  EXPECT_THAT(encoding.ids, ElementsAre(3, 6, 3));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 2}, Offset{2, 7}, Offset{7, 9}));
}

TEST(Tokenizer, SingleWordAddedTokenSkipsMatchesInsideWords) {
  const std::string added =
      R"([{"id":5,"content":"c","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":false}])";
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, added, "null", byte_level_pre), "t.json");
  EXPECT_THAT(tokenizer.encode("abc", false).ids, ElementsAre(3, 5));
  EXPECT_THAT(tokenizer.encode("c ab", false).ids, ElementsAre(5, 4));
}

TEST(Tokenizer, TemplateAddsBosWithEmptyOffsetsOnlyWithSpecialTokens) {
  const std::string post =
      R"({"type":"Sequence","processors":[{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},)"
      R"({"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<x>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],)"
      R"("pair":[],"special_tokens":{"<x>":{"id":"<x>","ids":[6],"tokens":["<x>"]}}}]})";
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, "[]", "null", byte_level_pre, post), "t.json");
  const auto with = tokenizer.encode("ab", true);
  EXPECT_THAT(with.ids, ElementsAre(6, 3));
  EXPECT_THAT(with.offsets, ElementsAre(Offset{0, 0}, Offset{0, 2}));
  EXPECT_THAT(tokenizer.encode("ab", false).ids, ElementsAre(3));
  EXPECT_THAT(tokenizer.encode("", true).ids, ElementsAre(6));
}

// SentencePiece-style: Prepend and Replace normalizers, byte fallback, fused unknowns.
const std::string sentencepiece_model =
    R"({"type":"BPE","dropout":null,"unk_token":"<unk>","fuse_unk":true,"byte_fallback":true,)"
    R"("vocab":{"<unk>":0,"▁":1,"a":2,"<0xC3>":3,"<0xA9>":4,"▁a":5},"merges":["▁ a"]})";
const std::string sentencepiece_normalizer =
    R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},)"
    R"({"type":"Replace","pattern":{"String":" "},"content":"▁"}]})";

TEST(Tokenizer, PrependReplaceAndByteFallbackMapOffsetsToTheInput) {
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(sentencepiece_model, "[]", sentencepiece_normalizer), "t.json");
  const auto encoding = tokenizer.encode("a é", false);
  EXPECT_THAT(encoding.ids, ElementsAre(5, 1, 3, 4));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 1}, Offset{1, 2}, Offset{2, 3}, Offset{2, 3}));
  EXPECT_TRUE(tokenizer.encode("", false).ids.empty());
}

TEST(Tokenizer, UnknownCharactersFuseIntoOneToken) {
  const std::string model =
      R"({"type":"BPE","dropout":null,"unk_token":"<unk>","fuse_unk":true,"byte_fallback":false,)"
      R"("vocab":{"<unk>":0,"a":1},"merges":[]})";
  const auto tokenizer = Tokenizer::from_json(tokenizer_json(model), "t.json");
  const auto encoding = tokenizer.encode(
      "a\xE2\x82\xAC\xC3\xA9"
      "a",
      false);  // a€éa
  EXPECT_THAT(encoding.ids, ElementsAre(1, 0, 1));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 1}, Offset{1, 3}, Offset{3, 4}));
}

TEST(Tokenizer, NfcComposesAndAlignsToTheBaseCharacter) {
  // Checked against the reference: the composed "é" maps back to the "e" alone.
  const std::string model =
      R"({"type":"BPE","dropout":null,"unk_token":"?","vocab":{"?":0,"é":1,"x":2},"merges":[]})";
  const auto tokenizer = Tokenizer::from_json(tokenizer_json(model, "[]", R"({"type":"NFC"})"), "t.json");
  const auto encoding = tokenizer.encode("xe\xCC\x81x", false);
  EXPECT_THAT(encoding.ids, ElementsAre(2, 1, 2));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 1}, Offset{1, 2}, Offset{3, 4}));
}

TEST(Tokenizer, NfkcFoldsCompatibilityCharacters) {
  const std::string model =
      R"({"type":"BPE","dropout":null,"unk_token":"?","vocab":{"?":0,"f":1,"i":2,"fi":3},"merges":["f i"]})";
  const auto tokenizer = Tokenizer::from_json(tokenizer_json(model, "[]", R"({"type":"NFKC"})"), "t.json");
  const auto encoding = tokenizer.encode("\xEF\xAC\x81", false);  // the "ﬁ" ligature
  EXPECT_THAT(encoding.ids, ElementsAre(3));
  EXPECT_THAT(encoding.offsets, ElementsAre(Offset{0, 1}));
}

TEST(Tokenizer, SplitBehaviours) {
  const std::string model = R"({"type":"BPE","dropout":null,"unk_token":"?","ignore_merges":true,)"
                            R"("vocab":{"?":0,"a":1,"b":2,"-":3,"a-":4,"-b":5,"ab":6},"merges":["a b"]})";
  auto split = [&](const std::string& behavior, bool invert,
                   const std::string& pattern = R"({"String":"-"})") {
    const std::string pre = R"({"type":"Split","pattern":)" + pattern + R"(,"behavior":")" + behavior +
                            R"(","invert":)" + (invert ? "true" : "false") + "}";
    return Tokenizer::from_json(tokenizer_json(model, "[]", "null", pre), "t.json").encode("a-b", false).ids;
  };
  EXPECT_THAT(split("Isolated", false), ElementsAre(1, 3, 2));
  EXPECT_THAT(split("Removed", false), ElementsAre(1, 2));
  EXPECT_THAT(split("MergedWithPrevious", false), ElementsAre(4, 2));
  EXPECT_THAT(split("MergedWithNext", false), ElementsAre(1, 5));
  EXPECT_THAT(split("Removed", true, R"({"Regex":"\\p{L}+"})"), ElementsAre(1, 2));
  EXPECT_THAT(split("Contiguous", false, R"({"Regex":"[ab]"})"), ElementsAre(1, 3, 2));
}

TEST(Tokenizer, MetaspacePrependsOnlyToTheFirstSplit) {
  const std::string model =
      R"({"type":"BPE","dropout":null,"unk_token":"?","vocab":{"?":0,"▁":1,"a":2,"▁a":3,"<x>":4},"merges":["▁ a"]})";
  const std::string added =
      R"([{"id":4,"content":"<x>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}])";
  const std::string pre = R"({"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true})";
  const auto tokenizer = Tokenizer::from_json(tokenizer_json(model, added, "null", pre), "t.json");
  EXPECT_THAT(tokenizer.encode("a a<x>a", false).ids, ElementsAre(3, 3, 4, 2));
}

TEST(Tokenizer, UnsupportedFeatureIsAnInputErrorNamingIt) {
  try {
    static_cast<void>(Tokenizer::from_json(
        tokenizer_json(byte_level_model, "[]", R"({"type":"BertNormalizer"})"), "bert.json"));
    FAIL() << "loaded a tokenizer with an unsupported normalizer";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("bert.json"));
    EXPECT_THAT(e.what(), HasSubstr("normalizer type \"BertNormalizer\" is not supported"));
  }
  EXPECT_THROW(static_cast<void>(Tokenizer::from_json(R"({"model":{"type":"Unigram"}})", "u.json")),
               InputError);
  EXPECT_THROW(static_cast<void>(Tokenizer::from_json("{not json", "broken.json")), InputError);
}

TEST(Tokenizer, MergeOutsideVocabularyIsAnInputError) {
  const std::string model = R"({"type":"BPE","dropout":null,"vocab":{"a":0},"merges":["a b"]})";
  EXPECT_THROW(static_cast<void>(Tokenizer::from_json(tokenizer_json(model), "m.json")), InputError);
}

// The message of the InputError that loading `text` throws ("" when it loads).
std::string load_error(const std::string& text) {
  try {
    static_cast<void>(Tokenizer::from_json(text, "e.json"));
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Tokenizer, StreamedVocabularyAndMergeErrorsNameTheEntry) {
  const std::string merges = R"(,"merges":[]})";
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":-1})" + merges)),
              HasSubstr("e.json: model.vocab[\"a\"] = -1 is not an id in [0, 2^31)"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":2147483648})" + merges)),
              HasSubstr("model.vocab[\"a\"] = 2147483648"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":"0"})" + merges)),
              HasSubstr("model.vocab[\"a\"] must be an integer id, not a string"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b","ab"]})")),
              HasSubstr("e.json: model.merges[1]: \"ab\" is not two tokens separated by a space"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":0},"merges":[["a"]]})")),
              HasSubstr("model.merges[0] must be \"a b\" or [\"a\", \"b\"]: it has fewer than two tokens"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":0},"merges":[1]})")),
              HasSubstr("model.merges[0] must be \"a b\" or [\"a\", \"b\"], not a number"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","merges":[]})")),
              HasSubstr("e.json: model.vocab is missing"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":[],"merges":[]})")),
              HasSubstr("model.vocab must be an object of token -> id"));
  EXPECT_THAT(load_error(tokenizer_json(R"({"type":"BPE","vocab":{"a":0}})")),
              HasSubstr("model.merges is missing"));
  EXPECT_THAT(load_error(R"({"model": {"vocab": {"a": 0)"), HasSubstr("e.json: not valid JSON"));
  EXPECT_THAT(load_error(R"({"model": {"vocab": {"a": 1e999}}})"), HasSubstr("e.json: not valid JSON"));
}

TEST(Tokenizer, VocabularyAndMergesKeysOutsideTheModelStayOrdinaryJson) {
  // A "vocab" or "merges" key elsewhere, before or after the model, is not the model's.
  const std::string text =
      R"({"decoder":{"vocab":{"x":"y"},"merges":[1,2]},"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]},)"
      R"("added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null})";
  const auto tokenizer = Tokenizer::from_json(text, "k.json");
  EXPECT_THAT(tokenizer.encode("abba", false).ids, ElementsAre(2, 1, 0));
  EXPECT_EQ(tokenizer.vocab_size(), 3U);
}

TEST(Tokenizer, RepeatedVocabularyTokenKeepsItsLastId) {
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(R"({"type":"BPE","vocab":{"a":0,"a":1},"merges":[]})"), "r.json");
  EXPECT_THAT(tokenizer.encode("aa", false).ids, ElementsAre(1, 1));
}

TEST(Tokenizer, LargeVocabularyFindsEveryTokenAfterItsIndexGrew) {
  // 5,000 two-character tokens "xy" built by 5,000 merges: the index grows several times while
  // loading, and every merge must still resolve to its own token.
  std::string vocab = "{";
  std::string merges = "[";
  std::vector<std::string> letters;
  for (int c = 0x100; c < 0x164; ++c) {  // 100 two-byte letters, U+0100 to U+0163
    letters.push_back({static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))});
  }
  int id = 0;
  for (const auto& letter : letters) vocab += "\"" + letter + "\":" + std::to_string(id++) + ",";
  for (int i = 0; i < 50; ++i) {
    for (int j = 0; j < 100; ++j) {
      vocab += "\"" + letters[static_cast<std::size_t>(i)] + letters[static_cast<std::size_t>(j)] +
               "\":" + std::to_string(id++) + ",";
      merges += "[\"" + letters[static_cast<std::size_t>(i)] + "\",\"" +
                letters[static_cast<std::size_t>(j)] + "\"],";
    }
  }
  vocab.back() = '}';
  merges.back() = ']';
  const auto tokenizer = Tokenizer::from_json(
      tokenizer_json(R"({"type":"BPE","vocab":)" + vocab + R"(,"merges":)" + merges + "}"), "l.json");
  EXPECT_EQ(tokenizer.vocab_size(), 5100U);
  for (int i = 0; i < 50; i += 7) {
    for (int j = 0; j < 100; j += 3) {
      const std::string word = letters[static_cast<std::size_t>(i)] + letters[static_cast<std::size_t>(j)];
      EXPECT_THAT(tokenizer.encode(word, false).ids, ElementsAre(100 + 100 * i + j)) << i << "," << j;
    }
  }
}

TEST(Tokenizer, SharedWordCacheGivesEveryThreadTheSameTokens) {
  // Many distinct words, each repeated, some longer than the cache takes, encoded by four threads
  // at once: cached and freshly merged words must give the same ids and offsets.
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, "[]", "null", byte_level_pre), "t.json");
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    std::string word;
    for (int bit = 0; bit < 9; ++bit) word += (i >> bit & 1) != 0 ? "ab" : "ba";
    texts.push_back(word + " " + word + " c" + std::string(static_cast<std::size_t>(i % 90), 'a') + "b");
  }
  std::vector<ndif::tokenizer::Encoding> expected;
  for (const auto& text : texts) expected.push_back(tokenizer.encode(text, false));
  // "abbaabbabababababa" twice, then " caaaaab".
  EXPECT_THAT(expected[5].ids, ElementsAre(3, 1, 0, 3, 1, 3, 3, 3, 3, 3, 0, 4, 1, 0, 3, 1, 3, 3, 3, 3, 3, 0,
                                           2, 5, 0, 0, 0, 0, 3));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (std::size_t i = 0; i < texts.size(); ++i) {
          const std::size_t k = (i * 7 + t * 101 + static_cast<std::size_t>(round)) % texts.size();
          const auto encoding = tokenizer.encode(texts[k], false);
          if (encoding.ids != expected[k].ids || encoding.offsets != expected[k].offsets) ++mismatches[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(Tokenizer, InvalidUtf8IsAnInputError) {
  const auto tokenizer =
      Tokenizer::from_json(tokenizer_json(byte_level_model, "[]", "null", byte_level_pre), "t.json");
  EXPECT_THROW(static_cast<void>(tokenizer.encode("a\xC3", false)), InputError);
  EXPECT_THROW(static_cast<void>(tokenizer.encode("\xED\xA0\x80", false)), InputError);  // a surrogate
  EXPECT_EQ(tokenizer.vocab_size(), 7U);
}

TEST(TokenizeCommand, PrintsIdsOrOffsetsPerLineAndNamesABadLine) {
  const auto path = std::filesystem::temp_directory_path() / "ndif_tokenize_command_test.json";
  std::ofstream(path) << tokenizer_json(byte_level_model, "[]", "null", byte_level_pre);
  std::istringstream in("\"ab ab\"\n\"c\"\n");
  std::ostringstream out;
  EXPECT_EQ(ndif::tokenizer::run_tokenize_command(path, false, false, in, out), 0);
  EXPECT_EQ(out.str(), "[3,4]\n[5]\n");
  std::istringstream in_offsets("\"ab c\"\n");
  std::ostringstream out_offsets;
  ndif::tokenizer::run_tokenize_command(path, false, true, in_offsets, out_offsets);
  EXPECT_EQ(out_offsets.str(), "{\"ids\":[3,2,5],\"offsets\":[[0,2],[2,3],[3,4]]}\n");
  std::istringstream bad("\"ab\"\n42\n");
  std::ostringstream ignored;
  try {
    ndif::tokenizer::run_tokenize_command(path, false, false, bad, ignored);
    FAIL() << "accepted a line that is not a JSON string";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("stdin:2"));
  }
  for (const char* not_a_string : {"\"ab\"\n{\"ab\"\n", "\"ab\"\n1e999\n"}) {
    std::istringstream line(not_a_string);
    try {
      ndif::tokenizer::run_tokenize_command(path, false, false, line, ignored);
      FAIL() << "accepted " << not_a_string;
    } catch (const InputError& e) {
      EXPECT_THAT(e.what(), HasSubstr("stdin:2: expected a JSON string, got text that is not JSON"));
    }
  }
  std::filesystem::remove(path);
}

}  // namespace
