#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/spec/job_spec.hpp"
#include "ndif_sweep/spec/prompts.hpp"

namespace ndif::plan {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// --- a tiny byte-level BPE tokenizer.json -------------------------------------------------------

std::string utf8(std::uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

// The byte-to-character table of byte-level BPE: printable bytes stand for themselves, the
// others are numbered from U+0100 in byte order.
std::string byte_char(int byte) {
  const auto printable = [](int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  };
  if (printable(byte)) return utf8(static_cast<std::uint32_t>(byte));
  std::uint32_t shifted = 256;
  for (int b = 0; b < byte; ++b) shifted += printable(b) ? 0 : 1;
  return utf8(shifted);
}

constexpr std::int32_t kBos = 261;

// Vocabulary: the 256 byte characters (id = byte), then "Ġc" 256, "at" 257, "Ġcat" 258, "Th" 259,
// "The" 260, and the special token <s> 261 that the post-processor puts first.
tokenizer::Tokenizer tiny_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::string space = byte_char(' ');
  vocab[space + "c"] = 256;
  vocab["at"] = 257;
  vocab[space + "cat"] = 258;
  vocab["Th"] = 259;
  vocab["The"] = 260;
  const json tokenizer_json = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {{{"id", kBos},
         {"content", "<s>"},
         {"single_word", false},
         {"lstrip", false},
         {"rstrip", false},
         {"normalized", false},
         {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {kBos}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", nullptr},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", {space + " c", "a t", space + "c at", "T h", "Th e"}}}}};
  return tokenizer::Tokenizer::from_json(tokenizer_json.dump(), "tiny.json");
}

spec::PositionSpec index(std::int64_t value) {
  spec::PositionSpec position;
  position.index = value;
  return position;
}

spec::PositionSpec span(const std::string& text, std::int64_t occurrence, bool last_token) {
  spec::PositionSpec position;
  position.is_span = true;
  position.span = text;
  position.occurrence = occurrence;
  position.last_token = last_token;
  return position;
}

spec::PromptRecord record(std::size_t line, const std::string& text,
                          std::vector<spec::PositionSpec> positions) {
  spec::PromptRecord result;
  result.line = line;
  result.text = text;
  result.positions = std::move(positions);
  return result;
}

std::vector<EncodedPrompt> encode(const std::vector<spec::PromptRecord>& prompts,
                                  bool add_special_tokens = true) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  return encode_prompts(prompts, tokenizer, add_special_tokens, "p.jsonl");
}

std::string encode_error(const std::vector<spec::PromptRecord>& prompts) {
  try {
    (void)encode(prompts);
  } catch (const InputError& error) {
    return error.what();
  }
  return "no error";
}

// "The cat sat" encodes as <s> The Ġcat Ġ s at, with code-point offsets
// (0,0) (0,3) (3,7) (7,8) (8,9) (9,11).
TEST(EncodePrompts, TheTinyTokenizerGivesTheExpectedIds) {
  const auto encoded = encode({record(1, "The cat sat", {index(0)})});
  EXPECT_THAT(encoded[0].ids, ElementsAre(kBos, 260, 258, 32, 115, 257));
  EXPECT_THAT(encode({record(1, "The cat sat", {index(0)})}, false)[0].ids,
              ElementsAre(260, 258, 32, 115, 257));
}

std::vector<spec::PromptRecord> many_prompts(std::size_t n) {
  const char* texts[] = {"The cat sat", "The cat", "sat", "cat sat The cat"};
  std::vector<spec::PromptRecord> prompts;
  for (std::size_t k = 0; k < n; ++k)
    prompts.push_back(record(k + 1, texts[k % 4], {index(-1), span("at", 0, true)}));
  return prompts;
}

TEST(MeasurePrompts, EveryThreadCountKeepsTheLengthsAndPositionsOfOneThreadsEncoding) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto prompts = many_prompts(1000);
  const auto encoded = encode(prompts);
  std::vector<std::int32_t> lengths, positions;
  std::int32_t max_id = -1;
  for (const auto& e : encoded) {
    lengths.push_back(static_cast<std::int32_t>(e.ids.size()));
    positions.insert(positions.end(), e.positions.begin(), e.positions.end());
    max_id = std::max(max_id, *std::max_element(e.ids.begin(), e.ids.end()));
  }
  for (unsigned threads : {1U, 2U, 3U, 8U}) {
    const auto shapes = measure_prompts(prompts, tokenizer, true, "p.jsonl", threads);
    EXPECT_EQ(shapes.n_tokens, lengths) << threads;
    EXPECT_EQ(shapes.positions, positions) << threads;
    EXPECT_EQ(shapes.positions_per_row, 2);
    EXPECT_EQ(shapes.max_token_id, max_id);
    const auto& at = encoded[shapes.max_token_row].ids;
    EXPECT_NE(std::find(at.begin(), at.end(), max_id), at.end());
  }
}

TEST(MeasurePrompts, TheFirstBadPromptInFileOrderIsReportedWhateverTheThreads) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  auto prompts = many_prompts(1000);
  prompts[900].positions = {index(40), index(0)};
  prompts[300].positions = {index(-30), index(0)};
  for (unsigned threads : {1U, 2U, 4U}) {
    try {
      (void)measure_prompts(prompts, tokenizer, true, "p.jsonl", threads);
      ADD_FAILURE() << "no error with " << threads << " threads";
    } catch (const InputError& e) {
      EXPECT_STREQ(e.what(), "p.jsonl:301: position -30 is out of range for a prompt of 6 tokens") << threads;
    }
  }
}

// A prompts file of `lines` (JSON values), in the temporary directory.
spec::PromptsFile prompts_file(const std::vector<std::string>& lines,
                               const std::string& name = "scan.jsonl") {
  const auto path = std::filesystem::temp_directory_path() / ("ndif_plan_test_" + name);
  {
    std::ofstream out(path, std::ios::binary);
    for (const auto& line : lines) out << line << '\n';
  }
  return spec::PromptsFile::index(path);
}

std::vector<std::string> many_lines(std::size_t n) {
  const char* texts[] = {"The cat sat", "The cat", "sat", "cat sat The cat"};
  std::vector<std::string> lines;
  for (std::size_t k = 0; k < n; ++k)
    lines.push_back(json{{"prompt", texts[k % 4]}, {"id", "p" + std::to_string(k)}}.dump());
  return lines;
}

const std::vector<spec::PositionSpec> kScanPositions{index(-1), span("at", 0, true)};

/// What ranks 0..parts-1 do: each scans its part, every part but the first travels as bytes, rank 0
/// merges them in row order.
PromptShapes scan_in_parts(const spec::PromptsFile& file, std::size_t parts, unsigned threads,
                           std::size_t block_rows) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto p = positions_per_row(file, kScanPositions);
  ScanMerge merge(file.rows(), p);
  // Each part keeps its positions (a rank writes them into the file); here they are put together.
  std::vector<std::int32_t> positions;
  for (std::size_t r = 0; r < parts; ++r) {
    const auto [first, end] = scan_part_rows(file.rows(), r, parts);
    auto part = scan_part(file, kScanPositions, tokenizer, true, p, first, end, threads, block_rows);
    positions.insert(positions.end(), part.positions.begin(), part.positions.end());
    merge.add(r == 0 ? std::move(part) : decode_scan_part(encode_scan_part(part, p), p));
  }
  auto shapes = std::move(merge).finish(file, kScanPositions);
  EXPECT_TRUE(shapes.positions.empty()) << "the merge holds no positions";
  shapes.positions = std::move(positions);
  return shapes;
}

/// The error of scanning `file`: with scan_prompts when `parts` is 0, else in that many parts.
std::string scan_error(const spec::PromptsFile& file, unsigned threads, std::size_t block_rows,
                       std::size_t parts = 0) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  try {
    if (parts == 0)
      (void)scan_prompts(file, kScanPositions, tokenizer, true, threads, block_rows);
    else
      (void)scan_in_parts(file, parts, threads, block_rows);
  } catch (const InputError& error) {
    return error.what();
  }
  return "no error";
}

TEST(ScanPrompts, EveryBlockSizeAndThreadCountKeepsWhatMeasuringTheParsedFileKeeps) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto file = prompts_file(many_lines(1000), "blocks.jsonl");
  const auto parsed = spec::read_prompts(file.path(), kScanPositions);
  const auto expected = measure_prompts(parsed, tokenizer, true, file.path(), 1);
  ASSERT_EQ(expected.n_tokens.size(), 1000u);
  for (unsigned threads : {1U, 2U, 3U})
    for (std::size_t block : {std::size_t{1}, std::size_t{7}, std::size_t{256}, std::size_t{65536}}) {
      const auto shapes = scan_prompts(file, kScanPositions, tokenizer, true, threads, block);
      EXPECT_EQ(shapes.n_tokens, expected.n_tokens) << threads << " " << block;
      // The positions stay in the part that measured them.
      EXPECT_TRUE(shapes.positions.empty());
      EXPECT_EQ(scan_part(file, kScanPositions, tokenizer, true, 2, 0, 1000, threads, block).positions,
                expected.positions)
          << threads << " " << block;
      EXPECT_EQ(shapes.positions_per_row, 2);
      EXPECT_EQ(shapes.max_token_id, expected.max_token_id);
      EXPECT_EQ(shapes.n_tokens[shapes.max_token_row], expected.n_tokens[expected.max_token_row]);
    }
}

TEST(ScanPrompts, AnyNumberOfRanksScanningTheirPartsKeepsWhatOneScanKeeps) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto file = prompts_file(many_lines(1000), "parts.jsonl");
  const auto parsed = spec::read_prompts(file.path(), kScanPositions);
  const auto expected = measure_prompts(parsed, tokenizer, true, file.path(), 1);
  for (std::size_t parts : {1U, 2U, 3U, 7U, 1000U, 1001U}) {
    const auto shapes = scan_in_parts(file, parts, 2, 64);
    EXPECT_EQ(shapes.n_tokens, expected.n_tokens) << parts;
    EXPECT_EQ(shapes.positions, expected.positions) << parts;
    EXPECT_EQ(shapes.positions_per_row, 2);
    EXPECT_EQ(shapes.max_token_id, expected.max_token_id) << parts;
    EXPECT_EQ(shapes.n_tokens[shapes.max_token_row], expected.n_tokens[expected.max_token_row]);
  }
  // Every row is in exactly one part, in order.
  std::size_t next = 0;
  for (std::size_t r = 0; r < 7; ++r) {
    const auto [first, end] = scan_part_rows(1000, r, 7);
    EXPECT_EQ(first, next);
    EXPECT_GE(end, first);
    next = end;
  }
  EXPECT_EQ(next, 1000u);
}

TEST(ScanPrompts, APartsBytesAreCheckedAgainstTheJob) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto file = prompts_file(many_lines(100), "part_bytes.jsonl");
  const auto part = scan_part(file, kScanPositions, tokenizer, true, 2, 10, 60, 1);
  const auto bytes = encode_scan_part(part, 2);
  const auto again = decode_scan_part(bytes, 2);
  EXPECT_EQ(again.first, 10u);
  EXPECT_EQ(again.end, 60u);
  EXPECT_EQ(again.n_tokens, part.n_tokens);
  EXPECT_EQ(part.positions.size(), 100u);
  EXPECT_TRUE(again.positions.empty());  // the positions stay with the rank that measured them
  // Measured without keeping them (`plan`): the same lengths and hashes, no positions.
  const auto lengths_only = scan_part(file, kScanPositions, tokenizer, true, 2, 10, 60, 1, 65536, false);
  EXPECT_TRUE(lengths_only.positions.empty());
  EXPECT_EQ(lengths_only.n_tokens, part.n_tokens);
  EXPECT_EQ(lengths_only.id_hashes, part.id_hashes);
  EXPECT_EQ(bytes.size(), sizeof(std::uint64_t) * 6 + 8 + 50 * 12);
  EXPECT_EQ(again.id_hashes, part.id_hashes);
  EXPECT_EQ(again.max_token_id, part.max_token_id);
  EXPECT_FALSE(again.error);
  EXPECT_THROW((void)decode_scan_part(bytes, 3), InternalError);
  EXPECT_THROW((void)decode_scan_part(std::string_view(bytes).substr(0, bytes.size() - 1), 2), InternalError);
  EXPECT_THROW((void)decode_scan_part(std::string_view(bytes).substr(0, 20), 2), InternalError);
  // A part out of order is refused, not merged.
  ScanMerge merge(100, 2);
  EXPECT_THROW(merge.add(decode_scan_part(bytes, 2)), InternalError);
}

TEST(ScanPrompts, TheFirstBadLineInFileOrderIsReportedWhateverTheBlocksAndThreads) {
  const std::string name = (std::filesystem::temp_directory_path() / "ndif_plan_test_scan.jsonl").string();
  auto lines = many_lines(1000);
  // A repeated id (line 701 repeats line 12), then a line that is not JSON, then a bad position.
  lines[700] = json{{"prompt", "The cat"}, {"id", "p11"}}.dump();
  lines[800] = "{\"prompt\": ";
  lines[900] = json{{"prompt", "The cat"}, {"positions", {40, 0}}}.dump();
  for (unsigned threads : {1U, 2U})
    for (std::size_t block : {std::size_t{1}, std::size_t{64}, std::size_t{750}, std::size_t{65536}}) {
      EXPECT_EQ(scan_error(prompts_file(lines), threads, block),
                name +
                    ":701: id \"p11\" is already the id of line 12 (an absent id is the row number, from 0); "
                    "ids must be unique")
          << threads << " " << block;
    }
  // The same when ranks scan parts: the repeat spans two parts, and the later bad lines are in
  // parts that end the scan of their own.
  for (std::size_t parts : {2U, 3U, 8U})
    EXPECT_EQ(scan_error(prompts_file(lines), 1, 64, parts),
              name +
                  ":701: id \"p11\" is already the id of line 12 (an absent id is the row number, from 0); "
                  "ids must be unique")
        << parts;
  // Without the repeat, the first bad line is the one that is not JSON; a repeat after it is not
  // reached.
  lines[700] = many_lines(701)[700];
  lines[950] = json{{"prompt", "The cat"}, {"id", "p3"}}.dump();
  for (std::size_t block : {std::size_t{64}, std::size_t{65536}})
    EXPECT_THAT(scan_error(prompts_file(lines), 2, block), HasSubstr(name + ":801: not valid JSON")) << block;
  for (std::size_t parts : {2U, 3U, 8U})
    EXPECT_THAT(scan_error(prompts_file(lines), 2, 64, parts), HasSubstr(name + ":801: not valid JSON"))
        << parts;
  // A blank line, and an id that is the row number of a line without one.
  lines = many_lines(300);
  lines[200] = "";
  EXPECT_THAT(scan_error(prompts_file(lines), 2, 64), HasSubstr(name + ":201: blank line"));
  lines[200] = "\"The cat\"";  // id "200"
  lines[250] = json{{"prompt", "sat"}, {"id", 200}}.dump();
  EXPECT_EQ(scan_error(prompts_file(lines), 2, 64),
            name +
                ":251: id \"200\" is already the id of line 201 (an absent id is the row number, from 0); "
                "ids must be unique");
  // The first line fixes P; a line with another count is refused.
  lines = many_lines(10);
  lines[4] = json{{"prompt", "The cat"}, {"positions", {0}}}.dump();
  EXPECT_THAT(scan_error(prompts_file(lines), 1, 3),
              HasSubstr(name + ":5: this prompt has 1 positions but line 1 has 2"));
  lines[0] = "[1]";
  EXPECT_THAT(scan_error(prompts_file(lines), 1, 3), HasSubstr(name + ":1: a line must be a JSON string"));
}

TEST(EncodeRecords, ABatchIsEncodedInItsRowOrderAsThePlanEncodedIt) {
  static const tokenizer::Tokenizer tokenizer = tiny_tokenizer();
  const auto prompts = many_prompts(8);
  const auto all = encode(prompts);
  const auto batch = encode_records({prompts[6], prompts[1], prompts[3]}, 2, tokenizer, true, "p.jsonl");
  ASSERT_EQ(batch.size(), 3u);
  EXPECT_EQ(batch[0].ids, all[6].ids);
  EXPECT_EQ(batch[1].positions, all[1].positions);
  EXPECT_EQ(batch[2].ids, all[3].ids);
  try {
    (void)encode_records({prompts[2]}, 3, tokenizer, true, "p.jsonl");
    ADD_FAILURE() << "a prompt of 2 positions was taken for 3";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("p.jsonl:3: this prompt has 2 positions but line 1 has 3"));
  }
}

TEST(PlanFromArrays, TheStoredArraysGiveBackThePlanTheyCameFrom) {
  const std::vector<std::int32_t> n_tokens{5, 9, 2, 9, 1, 7, 3};
  spec::BatchOptions options;
  options.max_prompts = 3;
  const RowShape shape{2, 1, 4, 2};
  const auto made = make_batch_plan(n_tokens, options, shape);
  const auto again = plan_from_arrays(n_tokens, made.order, made.start, made.count);
  ASSERT_EQ(again.batches.size(), made.batches.size());
  for (std::size_t b = 0; b < made.batches.size(); ++b) {
    EXPECT_EQ(again.batches[b].index, made.batches[b].index);
    EXPECT_EQ(again.batches[b].rows, made.batches[b].rows);
    EXPECT_EQ(again.batches[b].padded_len, made.batches[b].padded_len);
  }
  EXPECT_EQ(again.batch_of_row, made.batch_of_row);
}

TEST(PlanFromArrays, InconsistentArraysFromAFileAreRefused) {
  const std::vector<std::int32_t> n{3, 4, 5};
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1}, {0}, {2}), SpecMismatch);
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1, 1}, {0, 2}, {2, 1}), SpecMismatch);
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1, 7}, {0, 2}, {2, 1}), SpecMismatch);
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1, 2}, {0, 1}, {2, 1}), SpecMismatch);
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1, 2}, {0}, {2}), SpecMismatch);
  EXPECT_THROW((void)plan_from_arrays(n, {0, 1, 2}, {0, 2}, {2, 0}), SpecMismatch);
  EXPECT_NO_THROW((void)plan_from_arrays(n, {2, 0, 1}, {0, 1}, {1, 2}));
}

TEST(EncodePrompts, IndicesCountFromTheEndWhenNegative) {
  const auto encoded = encode({record(1, "The cat sat", {index(-1), index(0), index(2), index(-6)})});
  EXPECT_THAT(encoded[0].positions, ElementsAre(5, 0, 2, 0));
}

TEST(EncodePrompts, OutOfRangePositionNamesTheLine) {
  EXPECT_EQ(encode_error({record(1, "The cat", {index(0)}), record(17, "The cat sat", {index(40)})}),
            "p.jsonl:17: position 40 is out of range for a prompt of 6 tokens");
  EXPECT_EQ(encode_error({record(3, "The cat sat", {index(-7)})}),
            "p.jsonl:3: position -7 is out of range for a prompt of 6 tokens");
}

TEST(EncodePrompts, SpanTakesTheFirstOrLastTokenOfTheOccurrence) {
  const auto encoded =
      encode({record(1, "The cat sat",
                     {span("cat", -1, true), span("cat", -1, false), span("sat", -1, false),
                      span("sat", -1, true), span(" sat", 0, false), span("The c", 0, true)})});
  EXPECT_THAT(encoded[0].positions, ElementsAre(2, 2, 4, 5, 3, 2));
}

TEST(EncodePrompts, SpanOccurrencesCountFromEitherEnd) {
  const auto encoded = encode(
      {record(1, "The cat sat",
              {span("at", 0, true), span("at", 1, true), span("at", -1, true), span("at", -2, true)})});
  EXPECT_THAT(encoded[0].positions, ElementsAre(2, 5, 5, 2));
}

TEST(EncodePrompts, SpanOffsetsCountCodePointsNotBytes) {
  // "é" is two bytes and one code point; each byte is its own token with the offsets of the character.
  const auto encoded =
      encode({record(1, "\xC3\xA9 cat", {span("cat", 0, true), span("\xC3\xA9", 0, false)})});
  ASSERT_EQ(encoded[0].ids.size(), 4U);
  EXPECT_EQ(encoded[0].ids[3], 258);
  EXPECT_THAT(encoded[0].positions, ElementsAre(3, 1));
}

TEST(EncodePrompts, MissingSpanOrOccurrenceNamesTheLine) {
  EXPECT_EQ(encode_error({record(4, "The cat sat", {span("dog", -1, true)})}),
            "p.jsonl:4: span \"dog\" does not occur in the prompt");
  EXPECT_EQ(
      encode_error({record(5, "The cat sat", {span("at", 2, true)})}),
      "p.jsonl:5: span \"at\" occurs 2 times, so occurrence 2 does not exist (0 is the first, -1 the last)");
  EXPECT_EQ(
      encode_error({record(6, "The cat sat", {span("cat", -2, true)})}),
      "p.jsonl:6: span \"cat\" occurs 1 time, so occurrence -2 does not exist (0 is the first, -1 the last)");
}

TEST(EncodePrompts, EveryPromptMustHaveTheSamePositionCount) {
  EXPECT_EQ(
      encode_error({record(1, "The", {index(0), index(-1)}), record(2, "cat", {index(0), index(-1)}),
                    record(3, "sat", {index(-1)})}),
      "p.jsonl:3: this prompt has 1 positions but line 1 has 2; every prompt must resolve to the same number "
      "of positions P = 2");
}

TEST(EncodePrompts, NoPromptsGiveNothing) { EXPECT_TRUE(encode({}).empty()); }

// --- batch plan ----------------------------------------------------------------------------------

spec::BatchOptions options(double target_mb, int max_prompts, int max_tokens, bool sort) {
  return spec::BatchOptions{target_mb, max_prompts, max_tokens, sort};
}

const RowShape kSmallRows{.total_layers = 3, .positions = 2, .hidden = 4, .dtype_bytes = 2};  // 48 bytes

TEST(BatchPlan, RowBytesIsLayersTimesPositionsTimesHiddenTimesDtype) {
  EXPECT_EQ(kSmallRows.row_bytes(), 48);
  EXPECT_EQ((RowShape{.total_layers = 35, .positions = 2, .hidden = 64, .dtype_bytes = 2}.row_bytes()), 8960);
}

TEST(BatchPlan, PaddingOffsetShiftsByThePadding) {
  const auto offset = PaddingOffset::for_prompt(50, 30);
  EXPECT_EQ(offset.value, 20);
  EXPECT_EQ(offset.apply(2), 22);
  EXPECT_EQ(PaddingOffset::for_prompt(7, 7).apply(6), 6);
}

TEST(BatchPlan, LongestFirstCutByPaddedTokens) {
  const std::vector<std::int32_t> lengths{10, 50, 20, 40, 30};
  const BatchPlan plan = make_batch_plan(lengths, options(32, 256, 100, true), kSmallRows);
  ASSERT_EQ(plan.batches.size(), 2U);
  EXPECT_THAT(plan.batches[0].rows, ElementsAre(1, 3));  // 3 x 50 would exceed 100
  EXPECT_EQ(plan.batches[0].padded_len, 50);
  EXPECT_THAT(plan.batches[1].rows, ElementsAre(4, 2, 0));  // 3 x 30 = 90
  EXPECT_EQ(plan.batches[1].padded_len, 30);
  EXPECT_EQ(plan.batches[1].index, 1);
  EXPECT_THAT(plan.order, ElementsAre(1, 3, 4, 2, 0));
  EXPECT_THAT(plan.start, ElementsAre(0, 2));
  EXPECT_THAT(plan.count, ElementsAre(2, 3));
  EXPECT_THAT(plan.batch_of_row, ElementsAre(1, 0, 1, 0, 1));
}

TEST(BatchPlan, FileOrderWhenNotSorted) {
  const std::vector<std::int32_t> lengths{10, 50, 20, 40, 30};
  const BatchPlan plan = make_batch_plan(lengths, options(32, 256, 100, false), kSmallRows);
  ASSERT_EQ(plan.batches.size(), 3U);
  EXPECT_THAT(plan.batches[0].rows, ElementsAre(0, 1));
  EXPECT_EQ(plan.batches[0].padded_len, 50);
  EXPECT_THAT(plan.batches[1].rows, ElementsAre(2, 3));  // 3 x 40 would exceed 100
  EXPECT_EQ(plan.batches[1].padded_len, 40);
  EXPECT_THAT(plan.batches[2].rows, ElementsAre(4));
  EXPECT_THAT(plan.batch_of_row, ElementsAre(0, 0, 1, 1, 2));
}

TEST(BatchPlan, CutByPromptCount) {
  const std::vector<std::int32_t> lengths(10, 5);
  const BatchPlan plan = make_batch_plan(lengths, options(32, 4, 32768, true), kSmallRows);
  EXPECT_THAT(plan.count, ElementsAre(4, 4, 2));
  EXPECT_THAT(plan.order, ElementsAre(0, 1, 2, 3, 4, 5, 6, 7, 8, 9));  // equal lengths keep file order
}

TEST(BatchPlan, CutByTargetBytesInDecimalMegabytes) {
  const RowShape shape{.total_layers = 1, .positions = 1, .hidden = 50000, .dtype_bytes = 2};  // 100 kB a row
  const std::vector<std::int32_t> lengths(7, 3);
  EXPECT_THAT(make_batch_plan(lengths, options(0.35, 256, 32768, true), shape).count, ElementsAre(3, 3, 1));
  EXPECT_THAT(make_batch_plan(lengths, options(0.4, 256, 32768, true), shape).count, ElementsAre(4, 3));
  EXPECT_THAT(make_batch_plan(lengths, options(0.05, 256, 32768, true), shape).count,
              ElementsAre(1, 1, 1, 1, 1, 1, 1));  // a batch always holds one prompt
}

TEST(BatchPlan, TheTightestLimitWins) {
  const RowShape shape{
      .total_layers = 1, .positions = 1, .hidden = 500, .dtype_bytes = 2};  // 1000 bytes a row
  const std::vector<std::int32_t> lengths{8, 8, 8, 8, 8, 8, 8, 8};
  EXPECT_THAT(make_batch_plan(lengths, options(0.003, 5, 48, true), shape).count,
              ElementsAre(3, 3, 2));  // bytes
  EXPECT_THAT(make_batch_plan(lengths, options(0.01, 2, 48, true), shape).count,
              ElementsAre(2, 2, 2, 2));  // count
  EXPECT_THAT(make_batch_plan(lengths, options(0.01, 8, 40, true), shape).count,
              ElementsAre(5, 3));  // tokens
}

TEST(BatchPlan, DependsOnlyOnItsInputs) {
  const std::vector<std::int32_t> a{3, 9, 4, 4, 12, 1, 7, 7, 2};
  const std::vector<std::int32_t> b{100, 1};
  const auto first = make_batch_plan(a, options(0.0002, 3, 30, true), kSmallRows);
  (void)make_batch_plan(b, options(1, 1, 1000, false), kSmallRows);
  const auto again = make_batch_plan(a, options(0.0002, 3, 30, true), kSmallRows);
  EXPECT_EQ(first.order, again.order);
  EXPECT_EQ(first.count, again.count);
  EXPECT_EQ(first.batch_of_row, again.batch_of_row);
  // 0.0002 MB = 200 bytes = 4 rows of 48, capped at 3 prompts and at 30 padded tokens.
  EXPECT_THAT(first.order, ElementsAre(4, 1, 6, 7, 2, 3, 0, 8, 5));
  EXPECT_THAT(first.count, ElementsAre(2, 3, 3, 1));
}

TEST(BatchPlan, EmptyPromptListHasNoBatches) {
  const BatchPlan plan = make_batch_plan({}, options(32, 256, 32768, true), kSmallRows);
  EXPECT_TRUE(plan.batches.empty());
  EXPECT_TRUE(plan.order.empty());
  EXPECT_TRUE(plan.batch_of_row.empty());
}

TEST(BatchPlan, PromptLongerThanMaxTokensNamesItsLine) {
  try {
    (void)make_batch_plan({10, 40000}, options(32, 256, 32768, true), kSmallRows);
    FAIL() << "no error";
  } catch (const InputError& error) {
    EXPECT_STREQ(
        error.what(),
        "prompt row 1 (line 2 of the prompts file) has 40000 tokens, more than \"batch.max_tokens\" (32768); "
        "raise batch.max_tokens or shorten the prompt");
  }
  EXPECT_THROW((void)make_batch_plan({3, 0}, options(32, 256, 32768, true), kSmallRows), InputError);
}

TEST(PlanSummary, NumbersComputedByHand) {
  const std::vector<std::int32_t> lengths{10, 50, 20, 40, 30};
  const BatchPlan plan = make_batch_plan(lengths, options(32, 256, 100, true), kSmallRows);
  const PlanSummary summary = summarize(plan, lengths, kSmallRows);
  EXPECT_EQ(summary.prompts, 5);
  EXPECT_EQ(summary.tokens, 150);
  EXPECT_EQ(summary.padded_tokens, 2 * 50 + 3 * 30);
  EXPECT_EQ(summary.batches, 2);
  EXPECT_EQ(summary.jobs, 2);
  EXPECT_EQ(summary.max_batch_bytes, 3 * 48);
  EXPECT_EQ(summary.download_bytes, 5 * 48);
  // acts + per row (n_tokens, batch, order, 2 positions) + per batch (done and 7 eight-byte columns)
  EXPECT_EQ(summary.file_bytes, 5 * 48 + 5 * (4 + 4 + 8 + 2 * 4) + 2 * (1 + 7 * 8));
}

TEST(PlanSummary, SortingSavesPaddedTokens) {
  const std::vector<std::int32_t> lengths{1, 300, 2, 299, 3, 298};
  const auto sorted =
      summarize(make_batch_plan(lengths, options(32, 2, 32768, true), kSmallRows), lengths, kSmallRows);
  const auto unsorted =
      summarize(make_batch_plan(lengths, options(32, 2, 32768, false), kSmallRows), lengths, kSmallRows);
  EXPECT_EQ(sorted.padded_tokens, 2 * 300 + 2 * 298 + 2 * 2);
  EXPECT_EQ(unsorted.padded_tokens, 2 * 300 + 2 * 299 + 2 * 298);
}

// The demo job of the README: it parses, every line resolves to P = 2, its lengths span 1 to more
// than 300 tokens, and it cuts into tens of batches. Needs the Llama-3.1 tokenizer that
// scripts/fetch-tokenizers.sh puts in data/tokenizers.
TEST(DemoJob, ResolvesAndCutsIntoTensOfBatches) {
  const spec::JobSpec job =
      spec::parse_job_spec(std::filesystem::path(NDIF_SOURCE_DIR) / "jobs" / "demo.json");
  const auto prompts = spec::read_prompts(job.prompts, job.positions);
  ASSERT_EQ(prompts.size(), 2000U);
  if (!std::filesystem::exists(job.tokenizer))
    GTEST_SKIP() << "run scripts/fetch-tokenizers.sh for " << job.tokenizer;
  const auto tokenizer = tokenizer::Tokenizer::from_file(job.tokenizer);
  const auto encoded = encode_prompts(prompts, tokenizer, job.add_special_tokens, job.prompts);
  std::vector<std::int32_t> lengths;
  for (const EncodedPrompt& prompt : encoded) {
    ASSERT_EQ(prompt.positions.size(), 2U);
    lengths.push_back(static_cast<std::int32_t>(prompt.ids.size()));
  }
  EXPECT_EQ(*std::min_element(lengths.begin(), lengths.end()), 1);
  EXPECT_GT(*std::max_element(lengths.begin(), lengths.end()), 300);
  EXPECT_EQ(encoded[0].positions, (std::vector<std::int32_t>{0, 0}));

  std::int64_t total_layers = 0;
  for (const spec::Probe& probe : job.probes) total_layers += static_cast<std::int64_t>(probe.layers.size());
  const RowShape shape{total_layers, 2, job.effective_model_config()->hidden_size,
                       spec::dtype_bytes(job.dtype)};
  EXPECT_EQ(shape.row_bytes(), 35 * 2 * 64 * 2);
  const PlanSummary summary = summarize(make_batch_plan(lengths, job.batch, shape), lengths, shape);
  EXPECT_GE(summary.batches, 10);
  EXPECT_LT(summary.batches, 100);
  EXPECT_LE(summary.max_batch_bytes, static_cast<std::int64_t>(job.batch.target_mb * 1e6));
  std::cout << "demo: " << summary.prompts << " prompts, " << summary.tokens << " tokens, "
            << summary.padded_tokens << " padded tokens, " << summary.batches << " batches, "
            << summary.download_bytes << " bytes\n";
}

}  // namespace
}  // namespace ndif::plan
