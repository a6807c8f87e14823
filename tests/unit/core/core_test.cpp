#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/core/parallel.hpp"
#include "ndif_sweep/core/zip_writer.hpp"

namespace ndif {
namespace {

TEST(Parallel, SliceCountIsBoundedByThreadsAndByRowsASlice) {
  EXPECT_EQ(slice_count(0, 4, 256), 1U);
  EXPECT_EQ(slice_count(100, 4, 256), 1U);
  EXPECT_EQ(slice_count(600, 4, 256), 2U);
  EXPECT_EQ(slice_count(10000, 4, 256), 4U);
  EXPECT_EQ(slice_count(10000, 0, 256), 1U);
  EXPECT_EQ(slice_count(10, 8, 0), 8U);
}

TEST(Parallel, SlicesCoverEveryRowOnceInOrderAndTheLowestErrorIsRethrown) {
  for (const std::size_t parts : {1U, 3U, 7U}) {
    std::vector<int> seen(100, 0);
    std::vector<std::pair<std::size_t, std::size_t>> bounds(parts);
    run_slices(100, parts, [&](std::size_t part, std::size_t from, std::size_t to) {
      bounds[part] = {from, to};
      for (std::size_t r = from; r < to; ++r) ++seen[r];
    });
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 100) << parts;
    EXPECT_EQ(bounds.front().first, 0U);
    EXPECT_EQ(bounds.back().second, 100U);
    for (std::size_t k = 1; k < parts; ++k) EXPECT_EQ(bounds[k].first, bounds[k - 1].second);
  }
  // Slices 1 and 2 of 3 fail, slice 2 first in time (slice 1 waits for it, within a bound for the
  // case of parts run one after the other): slice 1's error comes out, after every slice ran.
  std::vector<int> ran(3, 0);
  std::atomic<bool> second_failed{false};
  try {
    run_slices(30, 3, [&](std::size_t part, std::size_t, std::size_t) {
      ran[part] = 1;
      if (part == 2) {
        second_failed = true;
        throw InputError("slice 2");
      }
      if (part == 1) {
        for (int k = 0; k < 2000 && !second_failed; ++k)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        throw InputError("slice 1");
      }
    });
    ADD_FAILURE() << "no error came out";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "slice 1");
  }
  EXPECT_EQ(ran, (std::vector<int>{1, 1, 1}));
}

TEST(ReplyExcerpt, KeepsTheFirst120BytesAndShowsControlBytesAsQuestionMarks) {
  EXPECT_EQ(reply_excerpt(""), "");
  EXPECT_EQ(reply_excerpt(std::string("a\nb\x7f\x00"
                                      "c\xc3\xa9",
                                      8)),
            "a?b??c\xc3\xa9");
  const std::string page(121, 'x');
  EXPECT_EQ(reply_excerpt(page), std::string(120, 'x') + "...");
  EXPECT_EQ(reply_excerpt(page.substr(0, 120)), std::string(120, 'x'));
}

TEST(ErrorReport, AnErrorTravelsAsItsCodeAndMessageAndIsThrownAgainAsTheSameKind) {
  const auto input = report_of(std::make_exception_ptr(InputError("p.jsonl:3: not valid JSON")));
  EXPECT_EQ(input.code, ExitCode::invalid_input);
  EXPECT_EQ(input.message, "p.jsonl:3: not valid JSON");
  const auto other = report_of(std::make_exception_ptr(std::length_error("vector")));
  EXPECT_EQ(other.code, ExitCode::failure);
  EXPECT_EQ(other.message, "internal error: vector");
  EXPECT_EQ(report_of(std::make_exception_ptr(42)).message, "internal error: an unknown exception");
  try {
    std::rethrow_exception(error_from(input));
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "p.jsonl:3: not valid JSON");
  }
  const auto refused = report_of(error_from({ExitCode::refused, "bad key"}));
  EXPECT_EQ(refused.code, ExitCode::refused);
  EXPECT_EQ(refused.message, "bad key");
}

TEST(Hash, Sha256OfKnownStrings) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Hash, Sha256OfFileEqualsSha256OfItsBytes) {
  auto path = std::filesystem::temp_directory_path() / "ndif_core_test_hash.txt";
  { std::ofstream(path, std::ios::binary) << "abc"; }
  EXPECT_EQ(sha256_file_hex(path), sha256_hex("abc"));
  std::filesystem::remove(path);
}

TEST(Hash, Xxh3OfEmptyInputIsTheReferenceValue) { EXPECT_EQ(xxh3_64({}), 0x2D06800538D394C2ULL); }

TEST(Hash, Crc32IsTheZipCheckValueAndChains) {
  // The CRC-32 of the ZIP format: "123456789" has the check value 0xCBF43926.
  const std::string digits = "123456789";
  const auto bytes = std::as_bytes(std::span(digits.data(), digits.size()));
  EXPECT_EQ(crc32(bytes), 0xCBF43926u);
  EXPECT_EQ(crc32({}), 0u);
  EXPECT_EQ(crc32(bytes.subspan(4), crc32(bytes.first(4))), 0xCBF43926u);
  // Long enough for the folded path: one byte changed anywhere changes it.
  std::vector<std::byte> block(1 << 20, std::byte{0x5A});
  const auto whole = crc32(block);
  block[777777] = std::byte{0x5B};
  EXPECT_NE(crc32(block), whole);
  EXPECT_EQ(crc32(std::span(block).subspan(1000), crc32(std::span(block).first(1000))), crc32(block));
}

TEST(Files, MissingFileIsAnInputErrorNamingThePath) {
  try {
    (void)read_file("/nonexistent/ndif/job.json", "job spec");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.exit_code(), ExitCode::invalid_input);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ndif/job.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace ndif
