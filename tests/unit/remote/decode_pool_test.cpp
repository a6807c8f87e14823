#include "ndif_sweep/remote/decode_pool.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "result_files.hpp"

namespace ndif::remote {
namespace {

using namespace std::chrono_literals;
using testing::file_of;
using testing::g2_result;
using testing::pattern16;
using testing::tensor;
using testing::zstd_of;

// One probe of all 3 layers of testing::expected_f16()'s (2, 3, 2, 4) tensor: element i of result
// `k` holds the 16-bit pattern 1000 k + i, so every value says which result and which element it is.
ExpectedResult expected() {
  auto e = testing::expected_f16();
  e.probe_layers = {3};
  return e;
}

constexpr std::size_t kElements = 48;

std::uint16_t value(std::int64_t k, std::size_t i) { return static_cast<std::uint16_t>(1000 * k + i); }

std::vector<std::byte> result_file(std::int64_t k, bool zstd) {
  const auto file =
      file_of(g2_result(tensor(DType::float16, {2, 3, 2, 4}, pattern16(kElements, value(k, 0)))));
  return zstd ? zstd_of(file) : file;
}

void expect_exact(const DecodeOutcome& out, std::int64_t k) {
  ASSERT_TRUE(out.result.has_value()) << out.error;
  ASSERT_EQ(out.result->probes.size(), 1U);
  const auto bytes = out.result->probes[0].bytes;
  ASSERT_EQ(bytes.size(), 2 * kElements);
  for (std::size_t i = 0; i < kElements; ++i)
    EXPECT_EQ(testing::at16(bytes, i), value(k, i)) << "result " << k << " element " << i;
}

// Waits up to two seconds for `counter` to reach `count`: a thread calls ready() just after its
// result can be taken, so the taker may hold the result first.
void await_count(const std::atomic<int>& counter, int count) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (counter.load() < count && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
}

// Takes until `count` results came back or two seconds passed.
std::vector<DecodeOutcome> take_all(DecodePool& decoder, std::size_t count) {
  std::vector<DecodeOutcome> all;
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (all.size() < count && std::chrono::steady_clock::now() < until)
    for (auto& d : decoder.take(10ms)) all.push_back(std::move(d));
  return all;
}

TEST(DecodePool, OneThreadDecodesInTheBackgroundInOrderWithExactValuesAndWakesTheTaker) {
  std::atomic<int> woken{0};
  DecodePool decoder(1, [&] { ++woken; });
  for (std::int64_t k = 0; k < 6; ++k) decoder.submit(100 + k, result_file(k, k % 2 == 1), expected());
  const auto all = take_all(decoder, 6);
  ASSERT_EQ(all.size(), 6U);
  for (std::int64_t k = 0; k < 6; ++k) {
    EXPECT_EQ(all[static_cast<std::size_t>(k)].key, 100 + k);
    expect_exact(all[static_cast<std::size_t>(k)], k);
  }
  await_count(woken, 6);
  EXPECT_EQ(woken.load(), 6);
  EXPECT_EQ(decoder.pending(), 0U);
}

TEST(DecodePool, SeveralThreadsDecodeEveryResultOnceWithItsOwnValues) {
  std::atomic<int> woken{0};
  DecodePool decoder(3, [&] { ++woken; });
  for (std::int64_t k = 0; k < 24; ++k) decoder.submit(k, result_file(k, k % 3 != 0), expected());
  auto all = take_all(decoder, 24);
  ASSERT_EQ(all.size(), 24U);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  for (std::int64_t k = 0; k < 24; ++k) {
    ASSERT_EQ(all[static_cast<std::size_t>(k)].key, k);
    expect_exact(all[static_cast<std::size_t>(k)], k);
  }
  await_count(woken, 24);
  EXPECT_EQ(woken.load(), 24);
  EXPECT_EQ(decoder.pending(), 0U);
}

TEST(DecodePool, NoThreadsDecodesWithinSubmitAndNeverCallsReady) {
  int woken = 0;
  DecodePool decoder(0, [&] { ++woken; });
  decoder.submit(3, result_file(3, true), expected());
  EXPECT_EQ(decoder.pending(), 1U);
  const auto out = decoder.take();
  ASSERT_EQ(out.size(), 1U);
  EXPECT_EQ(out[0].key, 3);
  expect_exact(out[0], 3);
  EXPECT_EQ(woken, 0);
  EXPECT_TRUE(decoder.take().empty());
}

TEST(DecodePool, ABadResultComesBackAsItsDecodeErrorAndTheNextStillDecodes) {
  for (const unsigned threads : {0U, 1U, 3U}) {
    DecodePool decoder(threads, [] {});
    auto truncated = result_file(1, false);
    truncated.resize(truncated.size() / 2);
    decoder.submit(1, std::move(truncated), expected());
    auto wrong = expected();
    wrong.hidden = 8;  // the file holds (2, 3, 2, 4)
    decoder.submit(2, result_file(2, false), wrong);
    decoder.submit(3, result_file(3, true), expected());
    auto all = take_all(decoder, 3);
    ASSERT_EQ(all.size(), 3U) << threads << " threads";
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
    EXPECT_FALSE(all[0].result.has_value());
    EXPECT_FALSE(all[0].error.empty());
    ASSERT_FALSE(all[1].result.has_value());
    EXPECT_NE(all[1].error.find("expected (2, 3, 2, 8)"), std::string::npos) << all[1].error;
    expect_exact(all[2], 3);
  }
}

TEST(DecodePool, DiscardedResultsNeverComeBack) {
  DecodePool decoder(2, [] {});
  for (std::int64_t k = 0; k < 20; ++k) decoder.submit(k, result_file(k, true), expected());
  decoder.discard();
  decoder.submit(99, result_file(9, false), expected());
  const auto all = take_all(decoder, 1);
  // Whatever had decoded before the discard is gone too: only the result submitted after it.
  std::this_thread::sleep_for(20ms);
  auto later = decoder.take();
  ASSERT_EQ(all.size(), 1U);
  EXPECT_EQ(all[0].key, 99);
  expect_exact(all[0], 9);
  EXPECT_TRUE(later.empty());
  EXPECT_EQ(decoder.pending(), 0U);
}

TEST(DecodePool, TakeWithAWaitReturnsAtOnceWhenNothingIsPending) {
  DecodePool decoder(2, [] {});
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(decoder.take(5s).empty());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST(DecodePool, DestroyedWithResultsQueuedItStopsAndDropsThem) {
  std::vector<std::vector<std::byte>> files;
  for (std::int64_t k = 0; k < 50; ++k) files.push_back(result_file(k, true));
  std::atomic<int> woken{0};
  const auto t0 = std::chrono::steady_clock::now();
  {
    // The thread's first result keeps it in ready() while the rest are queued and the pool is
    // destroyed: those must be dropped, not decoded on the way out.
    DecodePool decoder(1, [&] {
      if (++woken == 1) std::this_thread::sleep_for(200ms);
    });
    decoder.submit(0, std::move(files[0]), expected());
    await_count(woken, 1);
    for (std::int64_t k = 1; k < 50; ++k)
      decoder.submit(k, std::move(files[static_cast<std::size_t>(k)]), expected());
  }
  EXPECT_EQ(woken.load(), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

}  // namespace
}  // namespace ndif::remote
