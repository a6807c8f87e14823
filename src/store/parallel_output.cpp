#include "ndif_sweep/store/parallel_output.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <numeric>
#include <string>

#include "h5.hpp"
#include "ndif_sweep/core/error.hpp"
#include "reading.hpp"

namespace ndif::store {

using h5::check;
using h5::check_id;
using h5::Handle;

std::uint64_t batch_checksum(const std::vector<std::span<const std::byte>>& per_probe_data) {
  const std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  if (!state || XXH3_64bits_reset(state.get()) != XXH_OK) throw std::bad_alloc();
  for (const auto& data : per_probe_data) XXH3_64bits_update(state.get(), data.data(), data.size());
  return XXH3_64bits_digest(state.get());
}

namespace {

struct ProbeDataset {
  std::string name;
  Handle dataset;
  Handle type;  // the file type, used as memory type too so that HDF5 converts nothing
  std::array<hsize_t, 4> dims{};
  std::size_t row_bytes = 0;
};

/// One element at `index` of a 1-D dataset, written independently.
void write_element(hid_t dataset, hsize_t index, hid_t mem_type, const void* value, const std::string& what) {
  Handle file_space(check_id(H5Dget_space(dataset), "get the dataspace of " + what));
  const hsize_t one = 1;
  check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &index, nullptr, &one, nullptr),
        "select element " + std::to_string(index) + " of " + what);
  Handle mem_space(check_id(H5Screate_simple(1, &one, nullptr), "create a one-element dataspace"));
  check(H5Dwrite(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, value),
        "write element " + std::to_string(index) + " of " + what);
}

std::vector<std::int64_t> read_range(hid_t dataset, hsize_t start, hsize_t count, const std::string& what) {
  std::vector<std::int64_t> values(count);
  Handle file_space(check_id(H5Dget_space(dataset), "get the dataspace of " + what));
  check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr),
        "select elements of " + what);
  Handle mem_space(check_id(H5Screate_simple(1, &count, nullptr), "create a dataspace"));
  check(H5Dread(dataset, H5T_NATIVE_INT64, mem_space.get(), file_space.get(), H5P_DEFAULT, values.data()),
        "read " + what);
  return values;
}

}  // namespace

void write_positions(const std::filesystem::path& temporary, MPI_Comm comm, std::size_t first_row,
                     std::span<const std::int32_t> positions) {
  h5::silence_diagnostics();
  Handle fapl(check_id(H5Pcreate(H5P_FILE_ACCESS), "create a file access property list"));
  check(H5Pset_fapl_mpio(fapl.get(), comm, MPI_INFO_NULL), "select the MPI-IO driver");
  // Every rank opens the same file, so an open fails on all of them or none.
  Handle file(check_id(H5Fopen(temporary.c_str(), H5F_ACC_RDWR, fapl.get()),
                       "open " + temporary.string() + " to write the ranks' positions"));
  std::exception_ptr failed;
  try {
    Handle dataset = h5::open_dataset(file.get(), "prompts/positions");
    const auto dims = h5::dataset_shape(dataset.get(), "/prompts/positions");
    if (dims.size() != 2 || dims[1] == 0 || positions.size() % dims[1] != 0 || first_row > dims[0] ||
        positions.size() / dims[1] > dims[0] - first_row)
      throw InternalError("write_positions: " + std::to_string(positions.size()) + " positions from row " +
                          std::to_string(first_row) + " do not fit /prompts/positions");
    const hsize_t start[2] = {first_row, 0};
    const hsize_t count[2] = {positions.size() / dims[1], dims[1]};
    if (count[0] > 0) {
      Handle file_space(check_id(H5Dget_space(dataset.get()), "get the dataspace of /prompts/positions"));
      check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
            "select this rank's rows of /prompts/positions");
      Handle memory_space(check_id(H5Screate_simple(2, count, nullptr), "create a dataspace for positions"));
      check(H5Dwrite(dataset.get(), H5T_NATIVE_INT32, memory_space.get(), file_space.get(), H5P_DEFAULT,
                     positions.data()),
            "write this rank's rows of /prompts/positions");
    }
    dataset.close("close /prompts/positions");
  } catch (...) {
    failed = std::current_exception();
  }
  // Collective: reached by every rank that opened the file, whatever its write did.
  file.close("close " + temporary.string());
  if (failed) std::rethrow_exception(failed);
}

struct ParallelOutput::State {
  std::filesystem::path path;
  Handle file;
  Handle done, checksum, attempts, seconds, bytes, nonfinite, order;
  Handle journal, journal_type;  // absent in files made before the journal
  std::vector<ProbeDataset> probes;
  std::vector<std::int64_t> start, count;
  std::size_t rows = 0;
};

ParallelOutput::ParallelOutput(std::unique_ptr<State> state) : state_(std::move(state)) {}
ParallelOutput::ParallelOutput(ParallelOutput&&) noexcept = default;
ParallelOutput& ParallelOutput::operator=(ParallelOutput&&) noexcept = default;
ParallelOutput::~ParallelOutput() = default;

ParallelOutput ParallelOutput::open(const std::filesystem::path& path, MPI_Comm comm) {
  h5::silence_diagnostics();
  auto state = std::make_unique<State>();
  state->path = path;
  {
    Handle fapl(check_id(H5Pcreate(H5P_FILE_ACCESS), "create a file access property list"));
    check(H5Pset_fapl_mpio(fapl.get(), comm, MPI_INFO_NULL), "select the MPI-IO driver");
    state->file = Handle(check_id(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()),
                                  "open " + path.string() + " for parallel writing"));
  }
  const hid_t file = state->file.get();
  state->done = h5::open_dataset(file, "batches/done");
  state->checksum = h5::open_dataset(file, "batches/checksum");
  state->attempts = h5::open_dataset(file, "batches/attempts");
  state->seconds = h5::open_dataset(file, "batches/seconds");
  state->bytes = h5::open_dataset(file, "batches/bytes");
  state->nonfinite = h5::open_dataset(file, "batches/nonfinite");
  state->order = h5::open_dataset(file, "batches/order");
  state->start = h5::read_all<std::int64_t>(file, "batches/start");
  state->count = h5::read_all<std::int64_t>(file, "batches/count");
  state->rows = h5::dataset_shape(state->order.get(), "/batches/order").at(0);
  if (H5Lexists(file, "journal", H5P_DEFAULT) > 0) {
    state->journal = h5::open_dataset(file, "journal/jobs");
    state->journal_type = h5::journal_type();
  }

  Handle acts = h5::open_group(file, "acts");
  for (const std::string& name : reading::probe_names(file)) {
    ProbeDataset probe;
    probe.name = "/acts/" + name;
    probe.dataset = h5::open_dataset(acts.get(), name);
    probe.type = Handle(check_id(H5Dget_type(probe.dataset.get()), "get the type of " + probe.name));
    const auto dims = h5::dataset_shape(probe.dataset.get(), probe.name);
    if (dims.size() != 4) throw StorageError(path.string() + ": " + probe.name + " is not 4-dimensional");
    std::copy(dims.begin(), dims.end(), probe.dims.begin());
    probe.row_bytes = dims[1] * dims[2] * dims[3] * H5Tget_size(probe.type.get());
    state->probes.push_back(std::move(probe));
  }
  acts.close("close /acts");
  return ParallelOutput(std::move(state));
}

std::size_t ParallelOutput::batch_count() const noexcept { return state_->start.size(); }
std::size_t ParallelOutput::row_count() const noexcept { return state_->rows; }

std::vector<std::string> ParallelOutput::probe_names() const {
  std::vector<std::string> names;
  for (const ProbeDataset& probe : state_->probes) names.push_back(probe.name.substr(std::strlen("/acts/")));
  return names;
}

std::vector<std::size_t> ParallelOutput::probe_row_bytes() const {
  std::vector<std::size_t> sizes;
  for (const ProbeDataset& probe : state_->probes) sizes.push_back(probe.row_bytes);
  return sizes;
}

namespace {
void require_open(const void* state, const char* operation) {
  if (state == nullptr) throw InternalError(std::string("ParallelOutput::") + operation + " after close()");
}
}  // namespace

std::vector<std::uint8_t> ParallelOutput::read_done_flags() const {
  require_open(state_.get(), "read_done_flags");
  std::vector<std::uint8_t> flags(batch_count());
  check(H5Dread(state_->done.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, flags.data()),
        "read /batches/done");
  return flags;
}

std::vector<JournalEntry> ParallelOutput::read_journal() const {
  require_open(state_.get(), "read_journal");
  std::vector<JournalEntry> entries(batch_count());
  if (!state_->journal.valid()) return entries;
  std::vector<h5::JournalRecord> records(batch_count());
  check(H5Dread(state_->journal.get(), state_->journal_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                records.data()),
        "read /journal/jobs");
  for (std::size_t b = 0; b < records.size(); ++b) {
    const auto& r = records[b];
    entries[b].job_id.assign(r.job_id, strnlen(r.job_id, kJournalIdBytes));
    entries[b].attempt = r.attempt;
    entries[b].submitted_unix = r.submitted_unix;
    entries[b].request_hash = r.request_hash;
  }
  return entries;
}

void ParallelOutput::journal(std::int32_t batch, const JournalEntry& entry) {
  require_open(state_.get(), "journal");
  if (!state_->journal.valid()) return;
  if (batch < 0 || static_cast<std::size_t>(batch) >= batch_count())
    throw InternalError("journal: batch " + std::to_string(batch) + " is outside the file");
  if (entry.job_id.size() >= kJournalIdBytes)
    throw InternalError("journal: job id of " + std::to_string(entry.job_id.size()) + " bytes is too long");
  h5::JournalRecord record{};
  std::memcpy(record.job_id, entry.job_id.data(), entry.job_id.size());
  record.attempt = entry.attempt;
  record.submitted_unix = entry.submitted_unix;
  record.request_hash = entry.request_hash;
  write_element(state_->journal.get(), static_cast<hsize_t>(batch), state_->journal_type.get(), &record,
                "/journal/jobs");
}

void ParallelOutput::write_batch(std::int32_t batch, std::span<const std::int64_t> rows,
                                 const std::vector<std::span<const std::byte>>& per_probe_data,
                                 const BatchStats& stats) {
  require_open(state_.get(), "write_batch");
  State& s = *state_;
  if (batch < 0 || static_cast<std::size_t>(batch) >= s.start.size())
    throw InternalError("write_batch: batch " + std::to_string(batch) + " is outside 0.." +
                        std::to_string(s.start.size() - 1) + " of " + s.path.string());
  const auto b = static_cast<std::size_t>(batch);
  const std::string label = "batch " + std::to_string(batch);
  const auto expected = read_range(s.order.get(), static_cast<hsize_t>(s.start[b]),
                                   static_cast<hsize_t>(s.count[b]), "/batches/order of " + label);
  if (!std::equal(rows.begin(), rows.end(), expected.begin(), expected.end()))
    throw InternalError("write_batch: the rows given for " + label + " differ from its /batches/order slice");
  if (per_probe_data.size() != s.probes.size())
    throw InternalError("write_batch: " + std::to_string(per_probe_data.size()) + " probe buffers for " +
                        std::to_string(s.probes.size()) + " probes");
  for (std::size_t p = 0; p < s.probes.size(); ++p)
    if (per_probe_data[p].size() != rows.size() * s.probes[p].row_bytes)
      throw InternalError("write_batch: " + s.probes[p].name + " data of " + label + " has " +
                          std::to_string(per_probe_data[p].size()) + " bytes, expected " +
                          std::to_string(rows.size() * s.probes[p].row_bytes));

  // HDF5 walks a file selection in file order whatever order the rows came in, so the rows are
  // taken in ascending order and written as runs that are consecutive both in the file and in the
  // batch's data, one H5Dwrite per run, straight from the data (a reordered copy of the batch cost
  // as much as the write itself: bench/write_bench.cpp).
  std::vector<std::size_t> ascending(rows.size());
  std::iota(ascending.begin(), ascending.end(), std::size_t{0});
  std::sort(ascending.begin(), ascending.end(),
            [&](std::size_t a, std::size_t c) { return rows[a] < rows[c]; });

  for (std::size_t p = 0; p < s.probes.size(); ++p) {
    const ProbeDataset& probe = s.probes[p];
    const std::byte* data = per_probe_data[p].data();
    Handle file_space(check_id(H5Dget_space(probe.dataset.get()), "get the dataspace of " + probe.name));
    for (std::size_t first = 0; first < ascending.size();) {
      std::size_t last = first;
      while (last + 1 < ascending.size() && rows[ascending[last + 1]] == rows[ascending[last]] + 1 &&
             ascending[last + 1] == ascending[last] + 1)
        ++last;
      const std::array<hsize_t, 4> offset{static_cast<hsize_t>(rows[ascending[first]]), 0, 0, 0};
      const std::array<hsize_t, 4> extent{last - first + 1, probe.dims[1], probe.dims[2], probe.dims[3]};
      const std::string what = "rows " + std::to_string(offset[0]) + ".." +
                               std::to_string(offset[0] + extent[0] - 1) + " of " + probe.name + " (" +
                               label + ")";
      check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr, extent.data(),
                                nullptr),
            "select " + what);
      Handle mem_space(
          check_id(H5Screate_simple(4, extent.data(), nullptr), "create the memory space for " + what));
      check(H5Dwrite(probe.dataset.get(), probe.type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT,
                     data + ascending[first] * probe.row_bytes),
            "write " + what);
      first = last + 1;
    }
  }

  const std::uint64_t checksum = batch_checksum(per_probe_data);
  const auto index = static_cast<hsize_t>(batch);
  write_element(s.attempts.get(), index, H5T_NATIVE_INT32, &stats.attempts, "/batches/attempts");
  write_element(s.seconds.get(), index, H5T_NATIVE_DOUBLE, &stats.seconds, "/batches/seconds");
  write_element(s.bytes.get(), index, H5T_NATIVE_INT64, &stats.bytes, "/batches/bytes");
  write_element(s.nonfinite.get(), index, H5T_NATIVE_INT64, &stats.nonfinite, "/batches/nonfinite");
  write_element(s.checksum.get(), index, H5T_NATIVE_UINT64, &checksum, "/batches/checksum");
  // Through MPI-IO the data above is in the file once H5Dwrite returns, so the flag goes last.
  const std::uint8_t done = 1;
  write_element(s.done.get(), index, H5T_NATIVE_UINT8, &done, "/batches/done");
}

void ParallelOutput::close() {
  if (!state_) return;
  State& s = *state_;
  for (ProbeDataset& probe : s.probes) {
    probe.type.close("close the type of " + probe.name);
    probe.dataset.close("close " + probe.name);
  }
  s.done.close("close /batches/done");
  s.checksum.close("close /batches/checksum");
  s.attempts.close("close /batches/attempts");
  s.seconds.close("close /batches/seconds");
  s.bytes.close("close /batches/bytes");
  s.nonfinite.close("close /batches/nonfinite");
  s.order.close("close /batches/order");
  if (s.journal.valid()) {
    s.journal_type.close("close the journal type");
    s.journal.close("close /journal/jobs");
  }
  s.file.close("close " + s.path.string());
  state_.reset();
}

}  // namespace ndif::store
