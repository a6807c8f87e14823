// The prompts' strings on their way into the output file: a block's bytes between ranks, checked as
// bytes from another process, and the reader that cuts a rank's rows into bounded blocks.
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

#include "ndif_sweep/core/error.hpp"

namespace ndif::spec {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

StringBlock example_block() {
  StringBlock block;
  block.first = 41;
  block.text = {"The cat", "", std::string("\xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x99\x82", 11)};
  block.id = {"p41", "7", "x"};
  block.meta = {"{}", R"({"k":[1,2]})", "{}"};
  block.last = true;
  return block;
}

TEST(StringBlock, ItsBytesGiveTheSameBlockBack) {
  const auto block = example_block();
  const auto bytes = encode_string_block(block);
  // Header 32 bytes, then a 4-byte length and the bytes of each of 9 strings.
  std::size_t strings = 0;
  for (const auto* column : {&block.text, &block.id, &block.meta})
    for (const auto& s : *column) strings += 4 + s.size();
  EXPECT_EQ(bytes.size(), 32 + strings);
  const auto again = decode_string_block(bytes);
  EXPECT_EQ(again.first, 41u);
  EXPECT_EQ(again.text, block.text);
  EXPECT_EQ(again.id, block.id);
  EXPECT_EQ(again.meta, block.meta);
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
  StringBlock failed;
  failed.first = 990;
  failed.last = true;
  failed.error = std::make_exception_ptr(InputError("prompts.jsonl:991: the line changed"));
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
  // A row count that the bytes cannot hold is refused before anything is allocated for it.
  auto huge = bytes;
  const std::uint64_t rows = std::uint64_t{1} << 60;
  std::memcpy(huge.data() + 8, &rows, sizeof rows);
  EXPECT_THROW((void)decode_string_block(huge), InternalError);
  // A `last` other than 0 or 1.
  auto bad_last = bytes;
  bad_last[16] = 2;
  EXPECT_THROW((void)decode_string_block(bad_last), InternalError);
  // An error block that goes on, or holds strings.
  StringBlock failed;
  failed.error = std::make_exception_ptr(InputError("x"));
  failed.last = false;
  EXPECT_THROW((void)decode_string_block(encode_string_block(failed)), InternalError);
  failed.last = true;
  EXPECT_THROW((void)decode_string_block(encode_string_block(failed) + "more"), InternalError);
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

  /// Every block of rows [first, end) with these bounds; each block's strings are parse_prompt's.
  std::vector<StringBlock> blocks(std::size_t first, std::size_t end, std::size_t max_rows,
                                  std::size_t max_bytes, unsigned threads = 2) {
    StringBlockReader reader(file_, {}, first, end, threads, max_rows, max_bytes);
    std::vector<StringBlock> out;
    while (!reader.done()) out.push_back(reader.next());
    return out;
  }

  void expect_rows(const std::vector<StringBlock>& got, std::size_t first, std::size_t end) {
    std::size_t row = first;
    for (const auto& block : got) {
      ASSERT_FALSE(block.error);
      EXPECT_EQ(block.first, row);
      for (std::size_t k = 0; k < block.rows(); ++k, ++row) {
        const auto record = parse_prompt(lines_[row], row, path_, {});
        EXPECT_EQ(block.text[k], record.text) << row;
        EXPECT_EQ(block.id[k], record.id) << row;
        EXPECT_EQ(block.meta[k], record.meta_json) << row;
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
  // One thread reads what two read.
  expect_rows(blocks(0, 100, 16, StringBlockReader::kMaxBytes, 1), 0, 100);
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
