#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/files.hpp"
#include "ndif_sweep/core/hash.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/output_lock.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "ndif_sweep/store/readers.hpp"
#include "store_fixture.hpp"

namespace ndif::store {
namespace {

namespace fs = std::filesystem;
using namespace ndif::store::testing;
using ::testing::HasSubstr;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    dir_ = fs::temp_directory_path() / ("ndif-store-test-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path file() const { return dir_ / "sweep.h5"; }

  /// Writes batches `which` of `layout` through ParallelOutput on MPI_COMM_SELF.
  void write_batches(const FileLayout& layout, const std::vector<std::size_t>& which) {
    ParallelOutput output = ParallelOutput::open(file(), MPI_COMM_SELF);
    for (const std::size_t b : which) {
      const auto rows = batch_rows(layout, b);
      std::vector<std::vector<std::byte>> data;
      std::vector<std::span<const std::byte>> spans;
      for (std::size_t p = 0; p < layout.probes.size(); ++p) data.push_back(batch_data(layout, p, b));
      for (const auto& d : data) spans.emplace_back(d);
      output.write_batch(static_cast<std::int32_t>(b), rows, spans,
                         {static_cast<std::int32_t>(b + 1), 0.5 * static_cast<double>(b),
                          1000 + static_cast<std::int64_t>(b), 0});
    }
    output.close();
  }

  fs::path dir_;
};

std::string read_string_attr(hid_t obj, const char* name) {
  const hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  const hid_t type = H5Aget_type(attr);
  char* text = nullptr;
  H5Aread(attr, type, &text);
  std::string value = text ? text : "";
  H5free_memory(text);
  H5Tclose(type);
  H5Aclose(attr);
  return value;
}

std::vector<hsize_t> shape_of(hid_t file, const char* name, std::vector<hsize_t>* chunk = nullptr) {
  const hid_t set = H5Dopen2(file, name, H5P_DEFAULT);
  const hid_t space = H5Dget_space(set);
  std::vector<hsize_t> dims(static_cast<std::size_t>(H5Sget_simple_extent_ndims(space)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  if (chunk) {
    const hid_t dcpl = H5Dget_create_plist(set);
    chunk->resize(dims.size());
    H5Pget_chunk(dcpl, static_cast<int>(dims.size()), chunk->data());
    H5Pclose(dcpl);
  }
  H5Sclose(space);
  H5Dclose(set);
  return dims;
}

TEST_F(StoreTest, CreateWritesEveryDatasetOfTheFormatAtFullSize) {
  const FileLayout layout = example_layout("float16");
  create_output_file(file(), layout);
  EXPECT_FALSE(fs::exists(file().string() + ".creating"));

  const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  EXPECT_EQ(read_string_attr(f, "format"), "ndif-sweep/1");
  EXPECT_EQ(read_string_attr(f, "job_hash"), "a1b2c3");
  EXPECT_EQ(read_string_attr(f, "job"), layout.job_json);
  EXPECT_EQ(read_string_attr(f, "model_key"), "test.model:key");
  EXPECT_THAT(read_string_attr(f, "created_utc"),
              ::testing::MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z"));
  std::vector<hsize_t> chunk;
  EXPECT_EQ(shape_of(f, "/acts/resid", &chunk), (std::vector<hsize_t>{8, 3, 2, 4}));
  EXPECT_EQ(chunk, (std::vector<hsize_t>{8, 3, 2, 4}));  // tiny rows: one chunk holds all of them
  EXPECT_EQ(shape_of(f, "/acts/mlp"), (std::vector<hsize_t>{8, 1, 2, 4}));
  EXPECT_EQ(shape_of(f, "/prompts/positions"), (std::vector<hsize_t>{8, 2}));
  EXPECT_EQ(shape_of(f, "/batches/done"), (std::vector<hsize_t>{3}));
  EXPECT_EQ(H5Lexists(f, "/runs", H5P_DEFAULT), 1);

  const hid_t resid = H5Dopen2(f, "/acts/resid", H5P_DEFAULT);
  EXPECT_EQ(read_string_attr(resid, "dtype"), "float16");
  EXPECT_EQ(read_string_attr(resid, "module"), "model.layers.{layer}");
  const hid_t type = H5Dget_type(resid);
  EXPECT_EQ(H5Tget_class(type), H5T_FLOAT);
  EXPECT_EQ(H5Tget_size(type), 2U);
  const hid_t dcpl = H5Dget_create_plist(resid);
  H5D_fill_time_t fill_time{};
  H5D_alloc_time_t alloc_time{};
  H5Pget_fill_time(dcpl, &fill_time);
  H5Pget_alloc_time(dcpl, &alloc_time);
  EXPECT_EQ(fill_time, H5D_FILL_TIME_NEVER);
  EXPECT_EQ(alloc_time, H5D_ALLOC_TIME_EARLY);
  EXPECT_EQ(H5Pget_nfilters(dcpl), 0);
  H5Pclose(dcpl);
  H5Tclose(type);
  std::int64_t output_index = 0;
  const hid_t attr = H5Aopen(H5Dopen2(f, "/acts/mlp", H5P_DEFAULT), "output_index", H5P_DEFAULT);
  H5Aread(attr, H5T_NATIVE_INT64, &output_index);
  EXPECT_EQ(output_index, -1);
  H5Dclose(resid);
  H5Fclose(f);

  EXPECT_EQ(read_numbers<std::uint8_t>(file(), "/batches/done"), (std::vector<std::uint8_t>{0, 0, 0}));
  EXPECT_EQ(read_numbers<std::int64_t>(file(), "/batches/order"), layout.order);
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/prompts/batch"), layout.batch_of_row);
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/prompts/positions"), layout.positions);
  EXPECT_EQ(read_numbers<std::uint64_t>(file(), "/batches/checksum"), (std::vector<std::uint64_t>{0, 0, 0}));
}

TEST_F(StoreTest, CreatedInStepsTheFileHoldsEveryRanksRowsOnlyOncePublished) {
  const FileLayout whole = example_layout("float16", 6);
  const std::size_t n = whole.text.size();
  ASSERT_EQ(n, 17u);
  FileLayout layout = whole;
  layout.text.clear();
  layout.id.clear();
  layout.meta.clear();
  layout.positions.clear();
  layout.positions_from_ranks = true;
  // Blocks of several sizes, out of row order, as a source that takes them from the ranks' parts in
  // turn gives them.
  const std::vector<std::pair<std::size_t, std::size_t>> blocks{{9, 4}, {0, 1}, {13, 4}, {1, 5}, {6, 3}};
  std::size_t given = 0;
  layout.prompt_strings = [&](PromptStrings& out) -> std::optional<std::size_t> {
    EXPECT_TRUE(out.text.empty());
    if (given == blocks.size()) return std::nullopt;
    const auto [first, count] = blocks[given++];
    for (std::size_t r = first; r < first + count; ++r) {
      out.text.push_back(whole.text[r].c_str());
      out.id.push_back(whole.id[r].c_str());
      out.meta.push_back(whole.meta[r].c_str());
    }
    return first;
  };
  const auto temporary = create_unpublished(file(), layout);
  EXPECT_EQ(temporary, unpublished_path(file()));
  EXPECT_EQ(given, blocks.size());
  EXPECT_TRUE(fs::exists(temporary));
  EXPECT_FALSE(fs::exists(file()));
  // Two "ranks" write their rows of positions, in any order; rows past the file are refused and the
  // file is still closed (a later open works).
  const std::span<const std::int32_t> all(whole.positions);
  write_positions(temporary, MPI_COMM_SELF, 9, all.subspan(18));
  write_positions(temporary, MPI_COMM_SELF, 0, all.subspan(0, 18));
  EXPECT_THROW(write_positions(temporary, MPI_COMM_SELF, n - 1, all.subspan(0, 4)), InternalError);
  EXPECT_THROW(write_positions(temporary, MPI_COMM_SELF, 0, all.subspan(0, 3)), InternalError);
  write_positions(temporary, MPI_COMM_SELF, n, {});  // a rank with no rows
  publish(temporary, file());
  EXPECT_FALSE(fs::exists(temporary));
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/prompts/positions"), whole.positions);
  EXPECT_EQ(read_strings_raw(file().string(), "/prompts/text"), whole.text);
  EXPECT_EQ(read_strings_raw(file().string(), "/prompts/id"), whole.id);
  EXPECT_EQ(read_strings_raw(file().string(), "/prompts/meta"), whole.meta);
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/prompts/n_tokens"), whole.n_tokens);
  EXPECT_EQ(check_existing(file(), "a1b2c3"), Existing::same_job);
  // The whole layout through create_output_file makes the same datasets.
  fs::remove(file());
  create_output_file(file(), whole);
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/prompts/positions"), whole.positions);
  EXPECT_EQ(read_strings_raw(file().string(), "/prompts/text"), whole.text);
}

TEST_F(StoreTest, AFailedCreationLeavesNoFileBehind) {
  FileLayout layout = example_layout("float16");
  const std::size_t n = layout.text.size();
  layout.text.clear();
  layout.id.clear();
  layout.meta.clear();
  // A source that fails midway (another rank could not read its part); one that gives an empty
  // block, rows past the end, a row twice, or too few rows.
  std::size_t calls = 0;
  const auto three_rows = [&](std::size_t first) {
    return [&calls, first](PromptStrings& out) -> std::optional<std::size_t> {
      if (calls++ > 0) throw InputError("prompts.jsonl:5: the line changed");
      out = {{"a", "b", "c"}, {"1", "2", "3"}, {"{}", "{}", "{}"}};
      return first;
    };
  };
  layout.prompt_strings = three_rows(0);
  EXPECT_THROW((void)create_unpublished(file(), layout), InputError);
  calls = 0;
  layout.prompt_strings = three_rows(n - 2);
  EXPECT_THROW((void)create_unpublished(file(), layout), InternalError);
  layout.prompt_strings = [](PromptStrings&) -> std::optional<std::size_t> { return 0; };
  EXPECT_THROW((void)create_unpublished(file(), layout), InternalError);
  const auto from_rows = [](std::vector<std::size_t> firsts) {
    return [firsts, k = std::size_t{0}](PromptStrings& out) mutable -> std::optional<std::size_t> {
      if (k == firsts.size()) return std::nullopt;
      out = {{"a", "b"}, {"1", "2"}, {"{}", "{}"}};
      return firsts[k++];
    };
  };
  layout.prompt_strings = from_rows({0, 2, 3});  // row 3 twice
  EXPECT_THROW((void)create_unpublished(file(), layout), InternalError);
  layout.prompt_strings = from_rows({0, 2});  // rows 4 on never come
  try {
    (void)create_unpublished(file(), layout);
    ADD_FAILURE() << "a file with rows never written was made";
  } catch (const InternalError& e) {
    EXPECT_THAT(e.what(), HasSubstr(std::to_string(n - 4) + " of " + std::to_string(n) + " rows never came"));
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
  // Positions left to the ranks need the steps; without them they are a layout error.
  FileLayout deferred = example_layout("float16");
  deferred.positions.clear();
  deferred.positions_from_ranks = true;
  EXPECT_THROW(create_output_file(file(), deferred), InternalError);
  deferred.positions_from_ranks = false;
  EXPECT_THROW(create_output_file(file(), deferred), InternalError);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

TEST_F(StoreTest, CreateChoosesChunksOfAboutTwoMebibytesSpanningAllLayers) {
  FileLayout layout = example_layout("float32", 40, 4096);  // a row of resid: 3 * 2 * 4096 * 4 = 96 KiB
  create_output_file(file(), layout);
  const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  std::vector<hsize_t> chunk;
  shape_of(f, "/acts/resid", &chunk);
  H5Fclose(f);
  EXPECT_EQ(chunk, (std::vector<hsize_t>{21, 3, 2, 4096}));
}

TEST_F(StoreTest, CreateRefusesPathsThatCannotBeAFileBeforeWritingAnything) {
  const FileLayout layout = example_layout("float16");
  EXPECT_THROW(create_output_file(dir_, layout), InputError);
  try {
    create_output_file(dir_ / "missing" / "out.h5", layout);
    FAIL() << "a missing parent directory was accepted";
  } catch (const InputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("does not exist"));
    EXPECT_EQ(e.exit_code(), ExitCode::invalid_input);
  }
  EXPECT_FALSE(fs::exists(dir_ / "missing"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

TEST_F(StoreTest, CheckExistingAcceptsTheSameJobAndNamesAnotherJob) {
  EXPECT_EQ(check_existing(file(), "a1b2c3"), Existing::absent);
  create_output_file(file(), example_layout("float16"));
  EXPECT_EQ(check_existing(file(), "a1b2c3"), Existing::same_job);
  const std::string before = sha256_file_hex(file());
  try {
    (void)check_existing(file(), "ffff");
    FAIL() << "another job's file was accepted";
  } catch (const SpecMismatch& e) {
    EXPECT_THAT(e.what(), HasSubstr("was made by another job (job_hash a1b2c3, this job ffff)"));
    EXPECT_THAT(e.what(), HasSubstr(file().string()));
    EXPECT_EQ(e.exit_code(), ExitCode::output_mismatch);
  }
  EXPECT_EQ(sha256_file_hex(file()), before);
}

TEST_F(StoreTest, CheckExistingRejectsATextFile) {
  std::ofstream(file()) << "not an HDF5 file\n";
  try {
    (void)check_existing(file(), "a1b2c3");
    FAIL();
  } catch (const SpecMismatch& e) {
    EXPECT_THAT(e.what(), HasSubstr("is not an HDF5 file"));
  }
  EXPECT_EQ(read_file(file(), "test"), "not an HDF5 file\n");
}

TEST_F(StoreTest, CheckExistingRejectsATruncatedFile) {
  create_output_file(file(), example_layout("float16"));
  fs::resize_file(file(), fs::file_size(file()) / 2);
  const std::string before = sha256_file_hex(file());
  try {
    (void)check_existing(file(), "a1b2c3");
    FAIL();
  } catch (const SpecMismatch& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot be opened (truncated or damaged)"));
  }
  EXPECT_EQ(sha256_file_hex(file()), before);
}

TEST_F(StoreTest, CheckExistingRejectsAnotherToolsHdf5File) {
  const hid_t f = H5Fcreate(file().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(f);
  EXPECT_THROW((void)check_existing(file(), "a1b2c3"), SpecMismatch);
  EXPECT_THROW((void)check_existing(dir_, "a1b2c3"), InputError);
}

class WriteBatchTest : public StoreTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(WriteBatchTest, RowsReadBackBitExactAndOnlyWrittenBatchesAreFlagged) {
  const FileLayout layout = example_layout(GetParam(), 6);
  create_output_file(file(), layout);
  write_batches(layout, {4, 0, 2});

  const auto done = read_numbers<std::uint8_t>(file(), "/batches/done");
  EXPECT_EQ(done, (std::vector<std::uint8_t>{1, 0, 1, 0, 1, 0}));
  for (std::size_t p = 0; p < layout.probes.size(); ++p) {
    const auto stored = read_raw(file().string(), "/acts/" + layout.probes[p].name);
    const std::size_t bytes = row_bytes(layout, p);
    ASSERT_EQ(stored.size(), bytes * layout.text.size());
    for (std::size_t row = 0; row < layout.text.size(); ++row) {
      if (done[static_cast<std::size_t>(layout.batch_of_row[row])] == 0) continue;
      const auto expected = expected_row(layout, p, static_cast<std::int64_t>(row));
      EXPECT_EQ(std::memcmp(stored.data() + row * bytes, expected.data(), bytes), 0)
          << "probe " << layout.probes[p].name << " row " << row;
    }
  }
  const auto checksums = read_numbers<std::uint64_t>(file(), "/batches/checksum");
  const auto d0 = batch_data(layout, 0, 2), d1 = batch_data(layout, 1, 2);
  EXPECT_EQ(checksums[2], batch_checksum({d0, d1}));
  std::vector<std::byte> joined(d0);
  joined.insert(joined.end(), d1.begin(), d1.end());
  EXPECT_EQ(checksums[2], xxh3_64(joined));  // the checksum is XXH3-64 of the concatenation
  EXPECT_EQ(checksums[1], 0U);
  EXPECT_EQ(read_numbers<std::int32_t>(file(), "/batches/attempts"),
            (std::vector<std::int32_t>{1, 0, 3, 0, 5, 0}));
  EXPECT_EQ(read_numbers<double>(file(), "/batches/seconds")[4], 2.0);
  EXPECT_EQ(read_numbers<std::int64_t>(file(), "/batches/bytes")[2], 1002);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WriteBatchTest, ::testing::Values("float16", "bfloat16", "float32"));

TEST_F(StoreTest, WriteBatchRejectsRowsOtherThanTheBatchOrder) {
  const FileLayout layout = example_layout("float16");
  create_output_file(file(), layout);
  ParallelOutput output = ParallelOutput::open(file(), MPI_COMM_SELF);
  EXPECT_EQ(output.probe_names(), (std::vector<std::string>{"resid", "mlp"}));
  auto rows = batch_rows(layout, 0);
  ASSERT_GE(rows.size(), 2U);
  std::swap(rows[0], rows[1]);
  const auto d0 = batch_data(layout, 0, 0), d1 = batch_data(layout, 1, 0);
  EXPECT_THROW(output.write_batch(0, rows, {d0, d1}, {}), InternalError);
  EXPECT_THROW(output.write_batch(0, batch_rows(layout, 0), {d0}, {}), InternalError);
  EXPECT_THROW(output.write_batch(7, batch_rows(layout, 0), {d0, d1}, {}), InternalError);
  EXPECT_EQ(output.read_done_flags(), (std::vector<std::uint8_t>{0, 0, 0}));
  output.close();
}

TEST_F(StoreTest, StatusCountsDoneBatchesAndRowsAndListsMissingRanges) {
  const FileLayout layout = example_layout("bfloat16", 6);
  create_output_file(file(), layout);
  write_batches(layout, {0, 3});
  RunRecord run;
  run.time_utc = "2025-01-31T12:00:00Z";
  run.ranks = 4;
  run.host = "node7";
  run.slurm_job_id = "1234";
  run.tool_version = "0.1.0";
  EXPECT_EQ(append_run_record(file(), run), 0U);
  const FileStatus status = read_status(file());
  const nlohmann::json json = status.to_json();
  EXPECT_EQ(json["format"], "ndif-sweep/1");
  EXPECT_EQ(json["model"], "test/model");
  EXPECT_EQ(json["batches"], nlohmann::json({{"done", 2}, {"total", 6}}));
  const std::int64_t rows_done = layout.batch_count[0] + layout.batch_count[3];
  EXPECT_EQ(json["rows"], nlohmann::json({{"done", rows_done}, {"total", layout.text.size()}}));
  EXPECT_EQ(json["missing_batches"], nlohmann::json::parse("[[1, 2], [4, 5]]"));
  EXPECT_EQ(json["probes"][0], nlohmann::json::parse(R"({"name": "resid", "module": "model.layers.{layer}",
      "output_index": 0, "layers": [0, 2, 5], "dtype": "bfloat16"})"));
  EXPECT_TRUE(json["probes"][1]["output_index"].is_null());
  EXPECT_EQ(json["runs"][0]["host"], "node7");
  EXPECT_EQ(json["runs"][0]["outcome"], "running");
  EXPECT_THAT(status.to_text(), HasSubstr("batches 2/6 done"));
  EXPECT_THAT(status.to_text(), HasSubstr("missing batches: 1-2 4-5"));
}

TEST_F(StoreTest, TheJournalKeepsEachBatchsLastJobAndStatusShowsThoseOfMissingBatches) {
  const FileLayout layout = example_layout("float16", 5);
  create_output_file(file(), layout);
  {
    ParallelOutput output = ParallelOutput::open(file(), MPI_COMM_SELF);
    for (const auto& entry : output.read_journal()) EXPECT_TRUE(entry.empty());
    output.journal(1, JournalEntry{"job-1-a", 1, 1.7e9, 0x0123456789abcdefULL});
    output.journal(1, JournalEntry{"job-1-b", 2, 1.7e9 + 5, 0xfedcba9876543210ULL});  // a retry replaces it
    output.journal(3, JournalEntry{std::string(kJournalIdBytes - 1, 'x'), 1, 1.7e9 + 9, 7});
    output.journal(4, JournalEntry{"job-4", 1, 1.7e9 + 11, 8});
    EXPECT_THROW(output.journal(2, JournalEntry{std::string(kJournalIdBytes, 'y'), 1, 0, 0}), InternalError);
    output.close();
  }
  write_batches(layout, {4});  // done: its journal entry no longer matters
  ParallelOutput output = ParallelOutput::open(file(), MPI_COMM_SELF);
  const auto journal = output.read_journal();
  output.close();
  ASSERT_EQ(journal.size(), 5U);
  EXPECT_TRUE(journal[0].empty());
  EXPECT_EQ(journal[1].job_id, "job-1-b");
  EXPECT_EQ(journal[1].attempt, 2);
  EXPECT_EQ(journal[1].submitted_unix, 1.7e9 + 5);
  EXPECT_EQ(journal[1].request_hash, 0xfedcba9876543210ULL);
  EXPECT_TRUE(journal[2].empty());
  EXPECT_EQ(journal[3].job_id, std::string(kJournalIdBytes - 1, 'x'));
  const auto json = read_status(file()).to_json();
  ASSERT_EQ(json["journal"].size(), 2U) << json["journal"].dump();
  EXPECT_EQ(json["journal"][0], nlohmann::json::parse(R"({"batch": 1, "job_id": "job-1-b", "attempt": 2,
      "submitted_unix": 1700000005.0})"));
  EXPECT_EQ(json["journal"][1]["batch"], 3);
  EXPECT_THAT(read_status(file()).to_text(), HasSubstr("journal: 2 NDIF job(s) of missing batches"));
}

TEST_F(StoreTest, AFileWithoutAJournalReadsAsEmptyAndIgnoresJournalWrites) {
  const FileLayout layout = example_layout("float16", 3);
  create_output_file(file(), layout);
  // A file made before the journal existed.
  const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Ldelete(f, "journal", H5P_DEFAULT), 0);
  H5Fclose(f);
  ParallelOutput output = ParallelOutput::open(file(), MPI_COMM_SELF);
  output.journal(0, JournalEntry{"job", 1, 1.0, 2});
  const auto journal = output.read_journal();
  output.close();
  ASSERT_EQ(journal.size(), 3U);
  for (const auto& entry : journal) EXPECT_TRUE(entry.empty());
  EXPECT_TRUE(read_status(file()).to_json()["journal"].empty());
}

TEST_F(StoreTest, RunRecordsAppendInOrderAndTakeTheirOutcome) {
  create_output_file(file(), example_layout("float16"));
  RunRecord first;
  first.time_utc = "2025-01-31T12:00:00Z";
  first.host = "a";
  RunRecord second = first;
  second.host = "b";
  second.ranks = 3;
  second.slurm_restart_count = 2;
  EXPECT_EQ(append_run_record(file(), first), 0U);
  set_run_outcome(file(), 0, "drained");
  EXPECT_EQ(append_run_record(file(), second), 1U);
  set_run_outcome(file(), 1, "complete");
  const auto runs = read_run_records(file());
  ASSERT_EQ(runs.size(), 2U);
  EXPECT_EQ(runs[0].outcome, "drained");
  EXPECT_EQ(runs[1].outcome, "complete");
  EXPECT_EQ(runs[1].host, "b");
  EXPECT_EQ(runs[1].ranks, 3);
  EXPECT_EQ(runs[1].slurm_restart_count, 2);
  EXPECT_THROW(set_run_outcome(file(), 2, "complete"), InternalError);
  EXPECT_THROW(set_run_outcome(file(), 0, "finished"), InternalError);
}

/// Parses a .npy file written by export: returns the header dict text and the data bytes.
std::pair<std::string, std::string> read_npy(const fs::path& path) {
  const std::string bytes = read_file(path, "npy");
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_length =
      static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  EXPECT_EQ((10 + header_length) % 64, 0U);
  return {bytes.substr(10, header_length), bytes.substr(10 + header_length)};
}

TEST_F(StoreTest, ExportNpyWritesCompletedRowsPerLayerInAscendingOrder) {
  const FileLayout layout = example_layout("float16", 6);
  create_output_file(file(), layout);
  write_batches(layout, {1, 4, 5});
  const fs::path out = dir_ / "export";
  export_rows(file(), out, ExportFormat::npy);

  std::vector<std::int64_t> rows;
  for (std::size_t r = 0; r < layout.text.size(); ++r) {
    const auto b = layout.batch_of_row[r];
    if (b == 1 || b == 4 || b == 5) rows.push_back(static_cast<std::int64_t>(r));
  }
  const auto [rows_header, rows_data] = read_npy(out / "rows.npy");
  EXPECT_THAT(rows_header, HasSubstr("'descr': '<i8', 'fortran_order': False, 'shape': (" +
                                     std::to_string(rows.size()) + ",)"));
  ASSERT_EQ(rows_data.size(), rows.size() * 8);
  EXPECT_EQ(std::memcmp(rows_data.data(), rows.data(), rows_data.size()), 0);

  for (std::size_t p = 0; p < layout.probes.size(); ++p) {
    const auto& probe = layout.probes[p];
    const std::size_t slice = layout.positions_per_row * layout.hidden * 2;
    for (std::size_t l = 0; l < probe.layers.size(); ++l) {
      const auto [header, data] =
          read_npy(out / (probe.name + "_layer" + std::to_string(probe.layers[l]) + ".npy"));
      EXPECT_THAT(header, HasSubstr("'descr': '<f2', 'fortran_order': False, 'shape': (" +
                                    std::to_string(rows.size()) + ", 2, 4)"));
      ASSERT_EQ(data.size(), rows.size() * slice);
      for (std::size_t k = 0; k < rows.size(); ++k) {
        const auto expected = expected_row(layout, p, rows[k]);
        EXPECT_EQ(std::memcmp(data.data() + k * slice, expected.data() + l * slice, slice), 0)
            << probe.name << " layer " << probe.layers[l] << " row " << rows[k];
      }
    }
  }
  const auto meta = nlohmann::json::parse(read_file(out / "meta.json", "meta"));
  EXPECT_EQ(meta["model"], "test/model");
  EXPECT_EQ(meta["dtype"], "float16");
  EXPECT_EQ(meta["rows"], rows.size());
  EXPECT_EQ(meta["ids"][0], "p" + std::to_string(rows[0]));
  EXPECT_EQ(meta["meta"][0]["row"], rows[0]);
  EXPECT_EQ(meta["positions"][0], nlohmann::json({rows[0] % 3, 4 + rows[0]}));
  EXPECT_EQ(meta["probes"][0]["layers"], nlohmann::json({0, 2, 5}));
}

TEST_F(StoreTest, ExportNpzIsReadByNumpyWithTheSameValues) {
  if (!fs::exists("/usr/bin/python3") || std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0)
    GTEST_SKIP() << "Debian's python3-numpy is not installed";
  const FileLayout layout = example_layout("bfloat16", 6);
  create_output_file(file(), layout);
  write_batches(layout, {0, 2, 3});
  const fs::path out = dir_ / "npz";
  export_rows(file(), out, ExportFormat::npz);
  export_rows(file(), dir_ / "npy", ExportFormat::npy);
  EXPECT_FALSE(fs::exists(out / ".resid.npz.parts"));
  // numpy must see in each .npz exactly the arrays of the matching .npy export (checked byte-exact
  // against the layout in the npy test).
  const std::string script =
      "import numpy as np, sys\n"
      "d = sys.argv[1]\n"
      "for probe, layers in (('resid', (0, 2, 5)), ('mlp', (1,))):\n"
      "    z = np.load(f'{d}/npz/{probe}.npz')\n"
      "    assert sorted(z.files) == sorted(f'layer{l}' for l in layers), z.files\n"
      "    for l in layers:\n"
      "        a = z[f'layer{l}']; b = np.load(f'{d}/npy/{probe}_layer{l}.npy')\n"
      "        assert a.dtype == np.uint16 and a.shape == b.shape and a.shape[1:] == (2, 4), (a.dtype, "
      "a.shape)\n"
      "        assert (a == b).all()\n"
      "print('ok')\n";
  std::ofstream(dir_ / "check.py") << script;
  const std::string command = "/usr/bin/python3 " + (dir_ / "check.py").string() + " " + dir_.string() +
                              " > " + (dir_ / "result.txt").string() + " 2>&1";
  EXPECT_EQ(std::system(command.c_str()), 0) << read_file(dir_ / "result.txt", "result");
  EXPECT_EQ(read_file(dir_ / "result.txt", "result"), "ok\n");
}

TEST_F(StoreTest, VerifyFindsAByteFlippedInADoneBatch) {
  const FileLayout layout = example_layout("float16", 5);
  create_output_file(file(), layout);
  write_batches(layout, {0, 1, 3});
  VerifyReport report = verify(file());
  EXPECT_TRUE(report.ok()) << report.to_text();
  EXPECT_EQ(report.batches_checked, 3);
  EXPECT_EQ(report.batches_total, 5);

  // Flip one element of the first row of batch 1 in /acts/mlp with a plain serial HDF5 write.
  const auto batch_one = batch_rows(layout, 1);
  ASSERT_FALSE(batch_one.empty());
  const std::int64_t row = batch_one[0];
  const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hid_t set = H5Dopen2(f, "/acts/mlp", H5P_DEFAULT);
  const hid_t space = H5Dget_space(set);
  const std::array<hsize_t, 4> start{static_cast<hsize_t>(row), 0, 1, 2}, count{1, 1, 1, 1};
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  const hid_t mem = H5Screate_simple(4, count.data(), nullptr);
  std::uint16_t value = 0;
  H5Dread(set, H5T_NATIVE_UINT16, mem, space, H5P_DEFAULT, &value);
  value ^= 0x0100;
  ASSERT_GE(H5Dwrite(set, H5T_NATIVE_UINT16, mem, space, H5P_DEFAULT, &value), 0);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(set);
  H5Fclose(f);

  report = verify(file());
  ASSERT_EQ(report.mismatches.size(), 1U);
  EXPECT_EQ(report.mismatches[0].batch, 1);
  EXPECT_NE(report.mismatches[0].stored, report.mismatches[0].computed);
  EXPECT_THAT(report.to_text(), HasSubstr("1 do not match"));
  EXPECT_EQ(report.to_json()["ok"], false);
}

TEST_F(StoreTest, ReadersRejectFilesOfAnotherFormat) {
  std::ofstream(file()) << "text";
  EXPECT_THROW((void)read_status(file()), SpecMismatch);
  EXPECT_THROW((void)verify(file()), SpecMismatch);
  EXPECT_THROW(export_rows(file(), dir_ / "x", ExportFormat::npy), SpecMismatch);
  EXPECT_THROW((void)parse_export_format("csv"), InputError);
}

TEST_F(StoreTest, OutputLockKeepsASecondRunOut) {
  OutputLock lock = OutputLock::acquire(file(), MPI_COMM_SELF, std::chrono::milliseconds(100));
  EXPECT_TRUE(lock.held());
  EXPECT_TRUE(fs::exists(lock_path(file())));
  try {
    (void)OutputLock::acquire_exclusive(file(), std::chrono::milliseconds(150));
    FAIL() << "a second run got the lock";
  } catch (const SpecMismatch& e) {
    EXPECT_THAT(e.what(),
                HasSubstr("another run holds " + file().string() + " (lock " + file().string() + ".lock)"));
  }
  EXPECT_THROW((void)OutputLock::acquire(file(), MPI_COMM_SELF, std::chrono::milliseconds(0)), SpecMismatch);
  lock.release();
  EXPECT_FALSE(lock.held());
  OutputLock next = OutputLock::acquire(file(), MPI_COMM_SELF, std::chrono::milliseconds(0));
  EXPECT_TRUE(next.held());
}

TEST_F(StoreTest, OutputLockInAMissingDirectoryIsAnInputError) {
  EXPECT_THROW((void)OutputLock::acquire(dir_ / "missing" / "out.h5", MPI_COMM_SELF), InputError);
}

}  // namespace
}  // namespace ndif::store
