#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/run/job.hpp"
#include "ndif_sweep/run/planning.hpp"
#include "ndif_sweep/run/progress.hpp"

namespace ndif::run {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

const fs::path kTokenizer = fs::path(NDIF_SOURCE_DIR) / "tests/data/tokenizers/bytes.json";

spec::ModelConfig no_network(const spec::JobSpec&) { throw InputError("no network in unit tests"); }

class JobFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ndif_run_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    write("prompts.jsonl",
          "\"The cat\"\n\"The cat sat on the mat\"\n{\"prompt\": \"a\", \"positions\": [0, -1]}\n");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }

  fs::path job(const std::string& extra = "") {
    write("job.json", R"({"model": "org/model", "endpoint": "local", "local": {"layers": 4, "hidden": 8},
      "tokenizer": ")" + kTokenizer.string() +
                          R"(", "prompts": "prompts.jsonl", "positions": [0, -1],
      "probes": [{"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": "0:4"}],
      "output": "out.h5")" +
                          extra + "}");
    return dir_ / "job.json";
  }

  fs::path dir_;
};

cpu_set_t cores(std::initializer_list<int> ids) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (const int c : ids) CPU_SET(c, &set);
  return set;
}

TEST(PlanningThreads, RanksBoundApartKeepTheirCoresRanksSharingASetSplitIt) {
  // One rank of a 2-core machine plans on both; two ranks free on both take one each.
  EXPECT_EQ(core_share({cores({0, 1})}, 0), 2u);
  EXPECT_EQ(core_share({cores({0, 1}), cores({0, 1})}, 1), 1u);
  // Bound apart, one core each, or eight each of 64.
  EXPECT_EQ(core_share({cores({0}), cores({1})}, 0), 1u);
  std::vector<cpu_set_t> bound;
  for (int r = 0; r < 8; ++r)
    bound.push_back(
        cores({8 * r, 8 * r + 1, 8 * r + 2, 8 * r + 3, 8 * r + 4, 8 * r + 5, 8 * r + 6, 8 * r + 7}));
  for (std::size_t r = 0; r < 8; ++r) EXPECT_EQ(core_share(bound, r), 8u);
  // Eight ranks free in a cpuset of 8 cores of a 64-core node: one each, not eight.
  const std::vector<cpu_set_t> shared(8, cores({0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(core_share(shared, 3), 1u);
  // Never fewer than one, also for a rank not in the list.
  EXPECT_EQ(core_share(std::vector<cpu_set_t>(4, cores({0})), 0), 1u);
  EXPECT_EQ(core_share({}, 0), 1u);
}

TEST_F(JobFiles, PrepareTokenizesResolvesAndPlans) {
  const auto prepared = prepare_job(job(), {}, no_network);
  ASSERT_EQ(prepared.shapes.positions_per_row, 2);
  // [<bos>, T, he, Ġcat]; [<bos>, T, he, Ġcat, Ġsat, Ġ, o, n, Ġthe, Ġ, m, at]; [<bos>, a]
  EXPECT_EQ(prepared.shapes.n_tokens, (std::vector<std::int32_t>{4, 12, 2}));
  // Rank 0 keeps no positions: the part that measured them does (and writes them into the file).
  EXPECT_TRUE(prepared.shapes.positions.empty());
  EXPECT_EQ(
      plan::scan_part(*prepared.prompts_file, prepared.spec.positions, *prepared.tokenizer, true, 2, 0, 3, 1)
          .positions,
      (std::vector<std::int32_t>{0, 3, 0, 11, 0, 1}));
  // A batch's prompts are tokenized again when it is handed out, in its row order.
  const auto batch = encode_batch(prepared, {2, 0});
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].ids.size(), 2u);
  EXPECT_EQ(batch[0].positions, (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(batch[1].ids.size(), 4u);
  EXPECT_EQ(batch[1].positions, (std::vector<std::int32_t>{0, 3}));
  EXPECT_EQ(prepared.model_config.hidden_size, 8);
  EXPECT_EQ(prepared.shape.row_bytes(), 4 * 2 * 8 * 2);
  ASSERT_EQ(prepared.plan.batches.size(), 1u);
  // Longest first.
  EXPECT_EQ(prepared.plan.batches[0].rows, (std::vector<std::int64_t>{1, 0, 2}));
  EXPECT_EQ(prepared.plan.batches[0].padded_len, 12);
  EXPECT_EQ(prepared.job_hash.size(), 64u);
}

TEST_F(JobFiles, AnotherRankTokenizesABatchAsRankZeroThroughItsIndex) {
  const auto prepared = prepare_job(job(), {}, no_network);
  // What rank 0 sends, through its byte form.
  const auto source = PromptSource::decode(PromptSource::of(prepared.spec).encode());
  EXPECT_TRUE(source.prompts.is_absolute());
  EXPECT_EQ(source.prompts, std::filesystem::absolute(dir_ / "prompts.jsonl").lexically_normal());
  EXPECT_EQ(source.tokenizer, std::filesystem::absolute(prepared.spec.tokenizer).lexically_normal());
  EXPECT_EQ(source.add_special_tokens, prepared.spec.add_special_tokens);
  EXPECT_EQ(spec::positions_json(source.default_positions), spec::positions_json(prepared.spec.positions));
  const auto index = prepared.prompts_file->index_bytes();
  const auto other = BatchTokenizer::for_rank(source, index, prepared.tokenizer_sha256, 2);
  const auto theirs = other.encode({2, 0, 1});
  const auto ours = encode_batch(prepared, {2, 0, 1});
  ASSERT_EQ(theirs.size(), 3u);
  for (std::size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(theirs[k].ids, ours[k].ids);
    EXPECT_EQ(theirs[k].positions, ours[k].positions);
  }
  // Planning's lengths, which the plan's padding was made from, not only the same code run twice.
  for (std::size_t k = 0; k < 3; ++k)
    EXPECT_EQ(theirs[k].ids.size(),
              static_cast<std::size_t>(prepared.shapes.n_tokens.at(std::vector<std::size_t>{2, 0, 1}[k])));
  EXPECT_EQ(theirs[2].ids.size(), 12u);
  EXPECT_EQ(theirs[2].positions, (std::vector<std::int32_t>{0, 11}));
  // A node whose tokenizer file is not rank 0's is refused.
  try {
    (void)BatchTokenizer::for_rank(source, index, std::string(64, '0'), 2);
    ADD_FAILURE() << "another tokenizer was taken";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("every node must see the same tokenizer file"));
  }
}

TEST_F(JobFiles, ARestartTakesTheStoredPlanTokenizesNothingAndEncodesABatchAsPlanningDid) {
  const auto fresh = prepare_job(job(), {}, no_network);
  bool asked = false;
  const auto restart = prepare_job(load_job_spec(dir_ / "job.json", {}), no_network,
                                   [&](const PreparedJob& j) -> std::optional<store::StoredPlan> {
                                     asked = true;
                                     // The identity is known before the plan is asked for.
                                     EXPECT_EQ(j.job_hash, fresh.job_hash);
                                     return store::StoredPlan{fresh.shapes.n_tokens, 2, fresh.plan.order,
                                                              fresh.plan.start, fresh.plan.count};
                                   });
  ASSERT_TRUE(asked);
  EXPECT_TRUE(restart.plan_from_file);
  EXPECT_TRUE(restart.shapes.positions.empty());  // nothing was tokenized: lengths are the file's
  EXPECT_EQ(restart.shapes.n_tokens, fresh.shapes.n_tokens);
  EXPECT_EQ(restart.shape.row_bytes(), fresh.shape.row_bytes());
  ASSERT_EQ(restart.plan.batches.size(), fresh.plan.batches.size());
  EXPECT_EQ(restart.plan.batches[0].rows, fresh.plan.batches[0].rows);
  EXPECT_EQ(restart.plan.batches[0].padded_len, fresh.plan.batches[0].padded_len);
  const auto again = encode_batch(restart, restart.plan.batches[0].rows);
  const auto first = encode_batch(fresh, fresh.plan.batches[0].rows);
  ASSERT_EQ(again.size(), first.size());
  for (std::size_t k = 0; k < again.size(); ++k) {
    EXPECT_EQ(again[k].ids, first[k].ids);
    EXPECT_EQ(again[k].positions, first[k].positions);
  }
  // Rows 1, 0, 2 (longest first) have 12, 4 and 2 tokens and positions [0, -1] resolved.
  ASSERT_EQ(again.size(), 3u);
  EXPECT_EQ(again[0].ids.size(), 12u);
  EXPECT_EQ(again[0].positions, (std::vector<std::int32_t>{0, 11}));
  EXPECT_EQ(again[1].ids.size(), 4u);
  EXPECT_EQ(again[1].positions, (std::vector<std::int32_t>{0, 3}));
  EXPECT_EQ(again[2].ids, first[2].ids);
  EXPECT_EQ(again[2].positions, (std::vector<std::int32_t>{0, 1}));
  // A stored plan of another prompt count is not this file's.
  EXPECT_THROW((void)prepare_job(load_job_spec(dir_ / "job.json", {}), no_network,
                                 [&](const PreparedJob&) -> std::optional<store::StoredPlan> {
                                   return store::StoredPlan{{4, 12}, 2, {1, 0}, {0}, {2}};
                                 }),
               SpecMismatch);
}

TEST_F(JobFiles, JobHashIgnoresRunSteeringKeysButNotData) {
  const auto base = prepare_job(job(), {}, no_network).job_hash;
  EXPECT_EQ(prepare_job(job(R"(, "max_inflight": 7, "retry": {"max_attempts": 2})"), {}, no_network).job_hash,
            base);
  JobOverrides moved;
  moved.output = dir_ / "elsewhere.h5";
  EXPECT_EQ(prepare_job(job(), moved, no_network).job_hash, base);
  EXPECT_NE(prepare_job(job(R"(, "dtype": "bfloat16")"), {}, no_network).job_hash, base);
  // Synthetic values never mix with a service's; a service's address may change.
  auto service = [](const spec::JobSpec&) { return spec::ModelConfig{8, 4}; };
  JobOverrides here, there;
  here.endpoint = "http://127.0.0.1:8000";
  there.endpoint = "https://ndif.example.org";
  const auto remote = prepare_job(job(), here, service).job_hash;
  EXPECT_NE(remote, base);
  EXPECT_EQ(prepare_job(job(), there, service).job_hash, remote);
  write("prompts.jsonl",
        "\"The cat\"\n\"The cat sat on the mat\"\n{\"prompt\": \"b\", \"positions\": [0, -1]}\n");
  EXPECT_NE(prepare_job(job(), {}, no_network).job_hash, base);
}

TEST_F(JobFiles, PlanSummaryCountsTokensAndPadding) {
  const auto prepared = prepare_job(job(), {}, no_network);
  const auto j = plan_summary_json(prepared);
  EXPECT_EQ(j.at("prompts"), 3);
  EXPECT_EQ(j.at("tokens"), 4 + 12 + 2);
  EXPECT_EQ(j.at("padded_tokens"), 3 * 12);
  EXPECT_EQ(j.at("batches"), 1);
  EXPECT_EQ(j.at("jobs"), 1);
  EXPECT_EQ(j.at("download_bytes"), 3 * 4 * 2 * 8 * 2);
  EXPECT_THAT(plan_summary_text(prepared), HasSubstr("3 (18 tokens, 36 padded tokens sent, 50.0% padding)"));
}

TEST_F(JobFiles, BadOverridesAreInputErrors) {
  JobOverrides bad;
  bad.endpoint = "ftp://host";
  EXPECT_THROW((void)prepare_job(job(), bad, no_network), InputError);
  JobOverrides zero;
  zero.max_inflight = 0;
  EXPECT_THROW((void)prepare_job(job(), zero, no_network), InputError);
}

TEST_F(JobFiles, RemoteEndpointWithoutShapeAsksTheConfigSource) {
  write("prompts.jsonl", "\"The cat\"\n\"a\"\n");
  write("job2.json", R"({"model": "org/model", "endpoint": "http://127.0.0.1:9",
      "tokenizer": ")" + kTokenizer.string() +
                         R"(", "prompts": "prompts.jsonl", "positions": [0],
      "probes": [{"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": [1, 30]}],
      "output": "out.h5"})");
  int asked = 0;
  auto source = [&](const spec::JobSpec&) {
    ++asked;
    return spec::ModelConfig{16, 32};
  };
  const auto prepared = prepare_job(dir_ / "job2.json", {}, source);
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(prepared.model_config.hidden_size, 16);
  // A layer beyond the server's model is an input error naming the probe.
  auto small = [](const spec::JobSpec&) { return spec::ModelConfig{16, 8}; };
  try {
    (void)prepare_job(dir_ / "job2.json", {}, small);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("resid"));
  }
}

TEST(Progress, ParsesModesAndRejectsOthers) {
  EXPECT_EQ(parse_progress_mode("jsonl"), ProgressMode::jsonl);
  EXPECT_EQ(parse_progress_mode("none"), ProgressMode::none);
  EXPECT_THROW((void)parse_progress_mode("fancy"), InputError);
}

TEST(Progress, FormatsDurations) {
  EXPECT_EQ(ProgressReporter::format_duration(0), "0:00:00");
  EXPECT_EQ(ProgressReporter::format_duration(3723.4), "1:02:03");
  EXPECT_EQ(ProgressReporter::format_duration(-1), "--:--");
}

TEST(Progress, LinesReportBatchesRowsBytesRateAndEta) {
  std::ostringstream out;
  const auto t0 = ProgressReporter::Clock::now();
  ProgressReporter p(ProgressMode::lines, out, 10, 1000, 2, 200, t0);
  p.batch_done(100, 4'000'000);
  p.batch_done(100, 4'000'000);
  p.tick(t0 + std::chrono::seconds(4), true);
  const auto text = out.str();
  EXPECT_THAT(text, HasSubstr("batches 4/10 (40.0%)"));
  EXPECT_THAT(text, HasSubstr("rows 400/1000"));
  EXPECT_THAT(text, HasSubstr("8.0 MB received"));
  EXPECT_THAT(text, HasSubstr("2.00 MB/s"));
  // 2 new batches in 4 s, 6 to go: 12 s.
  EXPECT_THAT(text, HasSubstr("ETA 0:00:12"));
}

TEST(Progress, JsonlEventsAreOneObjectPerLine) {
  std::ostringstream out;
  const auto t0 = ProgressReporter::Clock::now();
  ProgressReporter p(ProgressMode::jsonl, out, 3, 30, 0, 0, t0);
  p.batch_done(10, 100);
  p.batch_failed();
  p.tick(t0 + std::chrono::seconds(1), true);
  p.finish(t0 + std::chrono::seconds(2), "incomplete");
  std::istringstream in(out.str());
  std::string line;
  std::vector<nlohmann::json> events;
  while (std::getline(in, line)) events.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].at("batches_done"), 1);
  EXPECT_EQ(events[0].at("batches_failed"), 1);
  EXPECT_EQ(events[1].at("event"), "finished");
  EXPECT_EQ(events[1].at("outcome"), "incomplete");
}

TEST(Progress, TheBarAlwaysFitsTheTerminalAndKeepsTheMostUsefulFields) {
  std::ostringstream out;
  const auto t0 = ProgressReporter::Clock::now();
  ProgressReporter p(ProgressMode::bar, out, 19000, 2000000, 0, 0, t0);
  for (int i = 0; i < 1234; ++i) p.batch_done(105, 390000);
  p.batch_failed();
  p.set_in_flight({{"QUEUED", 12}, {"RUNNING", 4}, {"RETRY", 1}});
  const auto now = t0 + std::chrono::seconds(600);
  for (int columns : {1, 20, 40, 60, 80, 100, 120, 160, 250}) {
    const auto line = p.bar_line(now, columns);
    EXPECT_LT(static_cast<int>(line.size()), std::max(columns, 20)) << columns << ": " << line;
    EXPECT_EQ(line.find('\n'), std::string::npos);
  }
  EXPECT_THAT(p.bar_line(now, 40), HasSubstr("1234/19000 6.5%"));
  const auto eighty = p.bar_line(now, 80);
  EXPECT_THAT(eighty, HasSubstr("failed 1"));
  EXPECT_THAT(eighty, HasSubstr("ETA "));
  EXPECT_THAT(eighty, HasSubstr("QUEUED 12 RETRY 1 RUNNING 4"));
  const auto wide = p.bar_line(now, 160);
  EXPECT_THAT(wide, HasSubstr("rows 129570/2000000"));
  EXPECT_THAT(wide, HasSubstr("MB/s"));
  EXPECT_THAT(wide, HasSubstr("[#" + std::string(29, '.') + "]"));  // 30 columns, 6.5% of them filled
  EXPECT_THAT(wide, HasSubstr("QUEUED 12 RETRY 1 RUNNING 4"));
}

TEST(Progress, TheBarFollowsTheTerminalsWidthAtEveryRedraw) {
  std::ostringstream out;
  int columns = 120;
  const auto t0 = ProgressReporter::Clock::now();
  ProgressReporter p(ProgressMode::auto_, out, 10, 100, 0, 0, t0, Terminal{[&] { return columns; }});
  EXPECT_EQ(p.mode(), ProgressMode::bar);
  p.set_in_flight({{"QUEUED", 2}});
  p.tick(t0 + std::chrono::seconds(1), true);
  columns = 50;
  p.tick(t0 + std::chrono::seconds(2), true);
  // Each redraw: carriage return, the line, erase to the end of the line.
  std::vector<std::string> draws;
  std::string text = out.str();
  for (std::size_t at = 0; (at = text.find('\r', at)) != std::string::npos; ++at) {
    const auto end = text.find("\x1b[K", at);
    ASSERT_NE(end, std::string::npos);
    draws.push_back(text.substr(at + 1, end - at - 1));
  }
  ASSERT_EQ(draws.size(), 2U);
  EXPECT_LT(draws[0].size(), 120U);
  EXPECT_GT(draws[0].size(), 60U);
  EXPECT_LT(draws[1].size(), 50U);
  // A log message clears the bar's line first and does not end up inside it.
  p.log("ndif-sweep: batch 3 attempt 1 failed; retrying\n");
  EXPECT_THAT(out.str(), HasSubstr("\r\x1b[Kndif-sweep: batch 3"));
  // Without a terminal, auto means lines.
  ProgressReporter plain(ProgressMode::auto_, out, 10, 100, 0, 0, t0);
  EXPECT_EQ(plain.mode(), ProgressMode::lines);
}

}  // namespace
}  // namespace ndif::run
