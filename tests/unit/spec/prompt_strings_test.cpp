// The prompts' strings on their way into the output file: a line's strings read through SAX events
// are parse_prompt's (and so are its errors), a block's bytes between ranks are checked as bytes
// from another process, and the reader cuts a rank's rows into bounded blocks.
#include "ndif_sweep/spec/prompt_strings.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "line_strings.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/parallel.hpp"

namespace ndif::spec {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using Column = StringBlock::Column;

StringBlock example_block() {
  StringBlock block;
  block.first = 41;
  block.add("The cat", "p41", "{}");
  block.add("", "7", R"({"k":[1,2]})");
  block.add(std::string("\xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x99\x82", 11), "x", "{}");
  block.last = true;
  return block;
}

TEST(StringBlock, ItsStringsLieBackToBackAsCStrings) {
  const auto block = example_block();
  ASSERT_EQ(block.rows(), 3u);
  EXPECT_EQ(block.view(0, Column::text), "The cat");
  EXPECT_EQ(block.view(1, Column::text), "");
  EXPECT_EQ(block.view(1, Column::meta), R"({"k":[1,2]})");
  EXPECT_EQ(block.view(2, Column::id), "x");
  EXPECT_STREQ(block.c_str(0, Column::id), "p41");
  EXPECT_STREQ(block.c_str(2, Column::meta), "{}");
  EXPECT_EQ(block.bytes.size(), 8 + 4 + 3 + 1 + 2 + 12 + 12 + 2 + 3);
  // Appending another block's rows keeps every string where it belongs.
  StringBlock both = example_block();
  both.append(example_block());
  ASSERT_EQ(both.rows(), 6u);
  for (std::size_t k = 0; k < 3; ++k)
    for (auto column : {Column::text, Column::id, Column::meta})
      EXPECT_EQ(both.view(3 + k, column), block.view(k, column));
}

TEST(StringBlock, ItsBytesGiveTheSameBlockBack) {
  const auto block = example_block();
  const auto bytes = encode_string_block(block);
  EXPECT_EQ(bytes.size(), 40 + block.bytes.size());  // the header, then the strings as they lie
  const auto again = decode_string_block(bytes);
  EXPECT_EQ(again.first, 41u);
  EXPECT_EQ(again.bytes, block.bytes);
  EXPECT_EQ(again.starts, block.starts);
  EXPECT_TRUE(again.last);
  EXPECT_FALSE(again.error);
  // The fuzz target's seed is this very block.
  std::ifstream seed(
      std::filesystem::path(NDIF_SOURCE_DIR) / "tests/fuzz/corpus/string_block_fuzz/three_rows",
      std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(seed), {}), bytes);

  StringBlock empty;
  empty.first = 5;
  const auto none = decode_string_block(encode_string_block(empty));
  EXPECT_EQ(none.first, 5u);
  EXPECT_EQ(none.rows(), 0u);
  EXPECT_FALSE(none.last);
}

TEST(StringBlock, AnErrorTravelsWithItsExitCodeAndMessage) {
  const auto failed =
      error_block(990, std::make_exception_ptr(InputError("prompts.jsonl:991: the line changed")));
  const auto again = decode_string_block(encode_string_block(failed));
  EXPECT_EQ(again.first, 990u);
  EXPECT_TRUE(again.last);
  ASSERT_TRUE(again.error);
  try {
    std::rethrow_exception(again.error);
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "prompts.jsonl:991: the line changed");
  }
}

TEST(StringBlock, BytesThatAreNotABlockAreRefused) {
  const auto bytes = encode_string_block(example_block());
  // Cut anywhere, or with a byte more.
  for (std::size_t size = 0; size < bytes.size(); size += 3)
    EXPECT_THROW((void)decode_string_block(std::string_view(bytes).substr(0, size)), InternalError) << size;
  EXPECT_THROW((void)decode_string_block(bytes + "x"), InternalError);
  // Rows that do not match the strings: more (a huge count is refused before anything is made for
  // it) or fewer; a last string without its NUL.
  for (const std::uint64_t rows : {std::uint64_t{1} << 60, std::uint64_t{4}, std::uint64_t{2}}) {
    auto wrong = bytes;
    std::memcpy(wrong.data() + 8, &rows, sizeof rows);
    EXPECT_THROW((void)decode_string_block(wrong), InternalError) << rows;
  }
  auto unended = bytes;
  unended.back() = 'x';
  EXPECT_THROW((void)decode_string_block(unended), InternalError);
  // A `last` other than 0 or 1.
  auto bad_last = bytes;
  bad_last[16] = 2;
  EXPECT_THROW((void)decode_string_block(bad_last), InternalError);
  // An error block that goes on, or holds strings.
  auto failed = error_block(0, std::make_exception_ptr(InputError("x")));
  failed.last = false;
  EXPECT_THROW((void)decode_string_block(encode_string_block(failed)), InternalError);
  failed.last = true;
  failed.add("a", "b", "{}");
  EXPECT_THROW((void)decode_string_block(encode_string_block(failed)), InternalError);
}

/// What append_strings gives for a line, or its error.
std::string strings_of(std::string_view line, std::size_t row = 6) {
  StringBlock block;
  try {
    append_strings(line, row, "p.jsonl", {}, block);
  } catch (const InputError& e) {
    return std::string("error: ") + e.what();
  }
  EXPECT_EQ(block.rows(), 1u);
  return json{block.view(0, Column::text), block.view(0, Column::id), block.view(0, Column::meta)}.dump();
}

/// What parse_prompt gives for the same line, in the same form.
std::string record_of(std::string_view line, std::size_t row = 6) {
  try {
    const auto record = parse_prompt(line, row, "p.jsonl", {});
    return json{record.text, record.id, record.meta_json}.dump();
  } catch (const InputError& e) {
    return std::string("error: ") + e.what();
  }
}

TEST(AppendStrings, EveryLineGivesWhatParsePromptGivesErrorsIncluded) {
  const std::vector<std::string> lines{
      // Read through the SAX path.
      R"("plain prompt")",
      R"("caf\u00e9 \ud83d\ude42 \"quoted\" \\ tab\t")",
      R"({"prompt": "The cat"})",
      R"({"id": "z", "prompt": "key order", "meta": {"b": 1, "a": [1, 2.5, null, true, {"y": "x"}]}})",
      R"({"prompt": "int id", "id": 17})",
      R"({"prompt": "big id", "id": 18446744073709551615})",
      R"({"prompt": "negative id", "id": -3})",
      R"({"prompt": "floats", "meta": {"x": 1e300, "y": -0.0, "z": 0.1, "w": 12345678901234567890}})",
      R"({"prompt": "spans", "positions": [0, -1, {"span": "cat", "occurrence": -1, "token": "last"}]})",
      R"({"prompt": "nested", "meta": {"deep": {"deeper": [[], {}, [{"k": "v"}]]}}})",
      "{\"prompt\": \"raw \xE6\x9D\xB1\", \"meta\": {}}",
      R"(  {"prompt" : "spaces" , "id" : "s"}  )",
      // Refused, with parse_prompt's own message.
      R"({"prompt": "a", "id": 1.5})",
      R"({"prompt": "a", "id": ""})",
      R"({"prompt": "a", "meta": [1]})",
      R"({"prompt": 5})",
      R"({"id": "a"})",
      R"({"prompt": "a", "colour": 1})",
      R"({"prompt": "a", "prompt": "b"})",
      R"({"prompt": "a", "meta": {"k": 1, "k": 2}})",
      R"({"prompt": "a", "positions": [{"span": "a", "span": "b"}]})",
      R"({"prompt": "a", "positions": "last"})",
      R"({"prompt": "a", "positions": [1.5]})",
      R"({"prompt": "a", "meta": {"n": 1e999}})",
      R"({"prompt": "a\u0000b"})",
      R"({"prompt": "a", "id": "x\u0000"})",
      R"("a" "b")",
      R"([1, 2])",
      "42",
      "",
      "   ",
      "{\"prompt\": \"\xFF\"}",
      R"({"prompt": "cut)",
  };
  for (const auto& line : lines) EXPECT_EQ(strings_of(line), record_of(line)) << line;
  EXPECT_EQ(strings_of(R"("x")", 41), R"(["x","41","{}"])");
  // The first twelve are read without parse_prompt (else this test would pass with the fast path
  // never taken); the others are not taken plainly (or are refused: positions are checked there).
  for (std::size_t k = 0; k < lines.size(); ++k) {
    StringBlock block;
    bool plain = false;
    try {
      plain = detail::append_plain(lines[k], 6, "p.jsonl", block);
    } catch (const InputError&) {
    }
    EXPECT_EQ(plain, k < 12) << lines[k];
    EXPECT_EQ(block.rows(), plain ? 1U : 0U) << lines[k];
  }
}

class StringReader : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("ndif_spec_strings_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".jsonl");
    std::ofstream out(path_, std::ios::binary);
    for (int k = 0; k < 100; ++k) {
      lines_.push_back(k % 3 == 0 ? json("plain " + std::to_string(k)).dump()
                                  : json{{"prompt", std::string(static_cast<std::size_t>(k), 'a')},
                                         {"id", "q" + std::to_string(k)},
                                         {"meta", {{"k", k}}}}
                                        .dump());
      out << lines_.back() << '\n';
    }
    out.close();
    file_ = std::make_shared<const PromptsFile>(PromptsFile::index(path_));
  }
  void TearDown() override { std::filesystem::remove(path_); }

  /// Every block of rows [first, end) with these bounds.
  std::vector<StringBlock> blocks(std::size_t first, std::size_t end, std::size_t max_rows,
                                  std::size_t max_bytes, unsigned threads = 2) {
    StringBlockReader reader(file_, {}, first, end, threads, max_rows, max_bytes);
    std::vector<StringBlock> out;
    while (!reader.done()) out.push_back(reader.next());
    return out;
  }

  /// Each block's strings are parse_prompt's, every row once, in order.
  void expect_rows(const std::vector<StringBlock>& got, std::size_t first, std::size_t end) {
    std::size_t row = first;
    for (const auto& block : got) {
      ASSERT_FALSE(block.error);
      EXPECT_EQ(block.first, row);
      for (std::size_t k = 0; k < block.rows(); ++k, ++row) {
        const auto record = parse_prompt(lines_[row], row, path_, {});
        EXPECT_EQ(block.view(k, Column::text), record.text) << row;
        EXPECT_EQ(block.view(k, Column::id), record.id) << row;
        EXPECT_EQ(block.view(k, Column::meta), record.meta_json) << row;
      }
      EXPECT_EQ(block.last, row == end);
    }
    EXPECT_EQ(row, end);
  }

  std::filesystem::path path_;
  std::vector<std::string> lines_;
  std::shared_ptr<const PromptsFile> file_;
};

TEST_F(StringReader, BlocksHoldEveryRowOnceWithinTheirBounds) {
  for (std::size_t max_rows : {1U, 7U, 65536U}) {
    const auto got = blocks(10, 95, max_rows, StringBlockReader::kMaxBytes);
    expect_rows(got, 10, 95);
    EXPECT_EQ(got.size(), (85 + max_rows - 1) / max_rows);
  }
  // By bytes: no block's lines exceed 300 bytes, but a longer line is a block of its own.
  const auto got = blocks(0, 100, 65536, 300);
  expect_rows(got, 0, 100);
  for (const auto& block : got)
    EXPECT_TRUE(file_->line_bytes(block.first, block.rows()) <= 300 || block.rows() == 1) << block.first;
  EXPECT_GT(got.size(), 20u);
  // With one thread too (several threads, which need 256 rows a slice: the test below).
  expect_rows(blocks(0, 100, 16, StringBlockReader::kMaxBytes, 1), 0, 100);
}

TEST_F(StringReader, SlicesOnSeveralThreadsArePutTogetherInRowOrder) {
  // 1,024 rows in one block on 1 to 4 threads: 1 to 4 slices of at least 256 rows.
  std::ofstream out(path_, std::ios::binary);
  lines_.clear();
  for (int k = 0; k < 1024; ++k) {
    lines_.push_back(json{
        {"prompt", std::string(static_cast<std::size_t>(1 + k % 50), 'a' + k % 26)},
        {"meta",
         {{"row", k}}}}.dump());
    out << lines_.back() << '\n';
  }
  out.close();
  file_ = std::make_shared<const PromptsFile>(PromptsFile::index(path_));
  for (unsigned threads : {1U, 2U, 3U, 4U}) {
    ASSERT_EQ(slice_count(1024, threads, StringBlockReader::kSliceRows), threads);
    const auto got = blocks(0, 1024, 65536, StringBlockReader::kMaxBytes, threads);
    ASSERT_EQ(got.size(), 1u);
    expect_rows(got, 0, 1024);
  }
}

TEST_F(StringReader, AnEmptyRangeIsOneEmptyLastBlock) {
  const auto got = blocks(40, 40, 8, StringBlockReader::kMaxBytes);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, 40u);
  EXPECT_EQ(got[0].rows(), 0u);
  EXPECT_TRUE(got[0].last);
  EXPECT_THROW(StringBlockReader(file_, {}, 50, 101, 1), InternalError);
  EXPECT_THROW(StringBlockReader(file_, {}, 60, 50, 1), InternalError);
}

TEST_F(StringReader, ALineChangedSinceTheIndexEndsTheReadWithItsError) {
  {
    // Line 31 (row 30) changes in place, to the same length.
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(file_->line_bytes(0, 30) + 2));
    f << 'X';
  }
  StringBlockReader reader(file_, {}, 0, 100, 2, 16);
  const auto first = reader.next();
  EXPECT_EQ(first.rows(), 16u);
  EXPECT_FALSE(first.error);
  const auto second = reader.next();  // rows 16 to 31 hold the changed line
  EXPECT_EQ(second.first, 16u);
  EXPECT_EQ(second.rows(), 0u);
  EXPECT_TRUE(second.last);
  ASSERT_TRUE(second.error);
  EXPECT_TRUE(reader.done());
  EXPECT_THROW((void)reader.next(), InternalError);
  try {
    std::rethrow_exception(second.error);
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr(".jsonl:31: the line changed since the job read the prompts file"));
  }
  // It travels as an error block.
  const auto again = decode_string_block(encode_string_block(second));
  EXPECT_TRUE(again.error);
  EXPECT_EQ(again.first, 16u);
}

}  // namespace
}  // namespace ndif::spec
