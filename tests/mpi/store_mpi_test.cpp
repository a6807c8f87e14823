// Several ranks write interleaved batches of one shared file through ParallelOutput, a second
// "run" with the ranks in reverse resumes the missing batches, and then every value, flag and
// checksum is checked. Exits 0 only when every rank's checks passed.

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

#include "mpi_checks.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/output_lock.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "ndif_sweep/store/readers.hpp"
#include "store_fixture.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ndif::store;
using namespace ndif::store::testing;

ndif::mpitest::MpiChecks checks;

void expect(bool ok, const std::string& what) { checks.expect(ok, what); }

void write_batch(ParallelOutput& output, const FileLayout& layout, std::size_t b) {
  std::vector<std::vector<std::byte>> data;
  std::vector<std::span<const std::byte>> spans;
  for (std::size_t p = 0; p < layout.probes.size(); ++p) data.push_back(batch_data(layout, p, b));
  for (const auto& d : data) spans.emplace_back(d);
  output.write_batch(static_cast<std::int32_t>(b), batch_rows(layout, b), spans, {1, 0.25, 4096, 0});
}

/// A batch is written in the first phase unless b % 5 == 4; the second phase writes the rest.
bool first_phase(std::size_t b) { return b % 5 != 4; }

/// Rank 0: every row of every flagged batch equals the fixture, byte for byte.
void check_file(const fs::path& file, const FileLayout& layout, bool all_done) {
  const auto done = read_raw(file.string(), "/batches/done");
  for (std::size_t b = 0; b < done.size(); ++b)
    expect(static_cast<int>(done[b]) == ((all_done || first_phase(b)) ? 1 : 0),
           "flag of batch " + std::to_string(b) + (all_done ? " after resume" : " after the first run") +
               " is " + std::to_string(static_cast<int>(done[b])));
  for (std::size_t p = 0; p < layout.probes.size(); ++p) {
    const auto stored = read_raw(file.string(), "/acts/" + layout.probes[p].name);
    const std::size_t bytes = row_bytes(layout, p);
    for (std::size_t row = 0; row < layout.text.size(); ++row) {
      if (done[static_cast<std::size_t>(layout.batch_of_row[row])] == std::byte{0}) continue;
      const auto expected = expected_row(layout, p, static_cast<std::int64_t>(row));
      expect(std::memcmp(stored.data() + row * bytes, expected.data(), bytes) == 0,
             "data of " + layout.probes[p].name + " row " + std::to_string(row));
    }
  }
  const VerifyReport report = verify(file);
  expect(report.ok(), "verify: " + report.to_text());
  const FileStatus status = read_status(file);
  std::int64_t expected_done = 0;
  for (std::size_t b = 0; b < layout.batch_start.size(); ++b)
    expected_done += (all_done || first_phase(b)) ? 1 : 0;
  expect(status.batches_done == expected_done, "status batches done");
  expect(report.batches_checked == expected_done, "verify checked every done batch");
}

void run(const fs::path& dir) {
  const fs::path file = dir / "sweep.h5";
  const FileLayout layout = example_layout("float16", 25, 64);
  const std::size_t batches = layout.batch_start.size();

  // First run: lock, create on rank 0, write interleaved batches.
  {
    OutputLock lock = OutputLock::acquire(file, MPI_COMM_WORLD);
    expect(lock.held(), "lock held");
    if (checks.rank == 0) {
      expect(check_existing(file, layout.job_hash) == Existing::absent, "file absent before create");
      create_output_file(file, layout);
      append_run_record(
          file, RunRecord{"2025-01-31T12:00:00Z", checks.size, "localhost", "", 0, "0.1.0", "running"});
      try {
        (void)OutputLock::acquire_exclusive(file, std::chrono::milliseconds(100));
        expect(false, "a second run got the lock");
      } catch (const ndif::SpecMismatch&) {
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    ParallelOutput output = ParallelOutput::open(file, MPI_COMM_WORLD);
    expect(output.batch_count() == batches, "batch count");
    for (std::size_t b = static_cast<std::size_t>(checks.rank); b < batches;
         b += static_cast<std::size_t>(checks.size))
      if (first_phase(b)) write_batch(output, layout, b);
    MPI_Barrier(MPI_COMM_WORLD);
    const auto flags = output.read_done_flags();
    for (std::size_t b = 0; b < batches; ++b)
      expect(flags[b] == (first_phase(b) ? 1 : 0), "flag seen by every rank, batch " + std::to_string(b));
    if (checks.rank == 0 && std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") == 0) {
      // A separate serial reader (h5py) sees the flags while every rank still has the file open.
      const std::string command =
          "/usr/bin/python3 -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
          "sys.exit(0 if int(f['batches/done'][:].sum())==" +
          std::to_string(flags.size() - batches / 5) + " else 1)\" " + file.string();
      expect(std::system(command.c_str()) == 0, "h5py reads the live file's flags");
    }
    output.close();
    MPI_Barrier(MPI_COMM_WORLD);
    if (checks.rank == 0) {
      set_run_outcome(file, 0, "incomplete");
      check_file(file, layout, false);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);

  // Resume: the same job, ranks taking the missing batches in reverse order.
  {
    OutputLock lock = OutputLock::acquire(file, MPI_COMM_WORLD);
    if (checks.rank == 0)
      expect(check_existing(file, layout.job_hash) == Existing::same_job, "resume sees the same job");
    MPI_Barrier(MPI_COMM_WORLD);
    ParallelOutput output = ParallelOutput::open(file, MPI_COMM_WORLD);
    const auto flags = output.read_done_flags();
    std::vector<std::size_t> pending;
    for (std::size_t b = 0; b < batches; ++b)
      if (flags[b] == 0) pending.push_back(b);
    // Every rank must split the same pending list: nobody writes before all have read the flags.
    MPI_Barrier(MPI_COMM_WORLD);
    for (std::size_t k = 0; k < pending.size(); ++k)
      if (static_cast<int>(k % static_cast<std::size_t>(checks.size)) == checks.size - 1 - checks.rank)
        write_batch(output, layout, pending[k]);
    output.close();
    MPI_Barrier(MPI_COMM_WORLD);
    if (checks.rank == 0) {
      check_file(file, layout, true);
      const auto runs = read_run_records(file);
      expect(runs.size() == 1 && runs[0].outcome == "incomplete", "run record kept");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  checks.start();

  std::string dir;
  if (checks.rank == 0) {
    std::string pattern = (fs::temp_directory_path() / "ndif-store-mpi-XXXXXX").string();
    dir = ::mkdtemp(pattern.data()) ? pattern : "";
  }
  int length = static_cast<int>(dir.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  dir.resize(static_cast<std::size_t>(length));
  MPI_Bcast(dir.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);

  if (dir.empty()) {
    checks.expect(false, "rank 0 made a temporary directory");
  } else {
    try {
      run(dir);
    } catch (const std::exception& e) {
      std::cerr << "rank " << checks.rank << ": " << e.what() << "\n";
      // A throw on one rank would leave the others in a collective call: end the whole job.
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  const int code = checks.finish();
  if (checks.rank == 0 && !dir.empty()) fs::remove_all(dir);
  MPI_Finalize();
  return code;
}
