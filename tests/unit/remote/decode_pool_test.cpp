#include "ndif_sweep/remote/decode_pool.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "ndif_sweep/torchsave/torchsave.hpp"

namespace ndif::remote {
namespace {

namespace ts = torchsave;
using namespace std::chrono_literals;

// B=2 prompts, one probe of 2 layers, P=1, H=4 in float16: element i of result `k` holds the
// 16-bit pattern 1000 k + i, so every value says which result and which element it is.
ExpectedResult expected() {
  ExpectedResult e;
  e.saved_node = 7;
  e.batch = 2;
  e.probe_layers = {2};
  e.positions = 1;
  e.hidden = 4;
  e.dtype = DType::float16;
  return e;
}

std::uint16_t value(std::int64_t k, std::size_t i) { return static_cast<std::uint16_t>(1000 * k + i); }

std::vector<std::byte> result_file(std::int64_t k, bool zstd) {
  const auto e = expected();
  const auto count = static_cast<std::size_t>(e.data_bytes() / 2);
  std::vector<std::byte> bytes(count * 2);
  for (std::size_t i = 0; i < count; ++i) {
    const auto v = value(k, i);
    std::memcpy(bytes.data() + 2 * i, &v, 2);
  }
  ts::Dict results;
  results.items.emplace_back(ts::Value{e.saved_node},
                             ts::Value{ts::Tensor::from_bytes(e.dtype, {2, 2, 1, 4}, std::move(bytes))});
  ts::Dict root;
  root.items.emplace_back(ts::Value{std::string("id")}, ts::Value{std::string("job")});
  root.items.emplace_back(ts::Value{std::string("result")}, ts::Value{std::move(results)});
  auto file = ts::save(ts::Value{std::move(root)});
  if (!zstd) return file;
  std::vector<std::byte> packed(ZSTD_compressBound(file.size()));
  packed.resize(ZSTD_compress(packed.data(), packed.size(), file.data(), file.size(), 3));
  return packed;
}

void expect_exact(const DecodeOutcome& out, std::int64_t k) {
  ASSERT_TRUE(out.result.has_value()) << out.error;
  ASSERT_EQ(out.result->probes.size(), 1U);
  const auto bytes = out.result->probes[0].bytes;
  ASSERT_EQ(bytes.size(), 32U);
  for (std::size_t i = 0; i < 16; ++i) {
    std::uint16_t got = 0;
    std::memcpy(&got, bytes.data() + 2 * i, 2);
    EXPECT_EQ(got, value(k, i)) << "result " << k << " element " << i;
  }
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
    wrong.hidden = 8;
    decoder.submit(2, result_file(2, false), wrong);
    decoder.submit(3, result_file(3, true), expected());
    auto all = take_all(decoder, 3);
    ASSERT_EQ(all.size(), 3U) << threads << " threads";
    std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
    EXPECT_FALSE(all[0].result.has_value());
    EXPECT_FALSE(all[0].error.empty());
    ASSERT_FALSE(all[1].result.has_value());
    EXPECT_NE(all[1].error.find("expected (2, 2, 1, 8)"), std::string::npos) << all[1].error;
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
  std::atomic<int> woken{0};
  {
    DecodePool decoder(2, [&] { ++woken; });
    for (std::int64_t k = 0; k < 50; ++k) decoder.submit(k, result_file(k, true), expected());
  }
  EXPECT_LE(woken.load(), 50);
}

}  // namespace
}  // namespace ndif::remote
