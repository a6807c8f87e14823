#include "ndif_sweep/store/readers.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/store/parallel_output.hpp"
#include "reading.hpp"

namespace ndif::store {

using h5::check;
using h5::check_id;
using h5::Handle;

namespace reading {

h5::Handle open_output(const std::filesystem::path& path) {
  // check_existing carries the diagnosis of a foreign or damaged file; the job hash is not known here.
  const std::string file = "output file " + path.string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw InputError(file + " does not exist");
  std::ifstream probe(path, std::ios::binary);
  std::array<char, 8> head{};
  probe.read(head.data(), head.size());
  static constexpr std::array<char, 8> kSignature{'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  if (!probe || head != kSignature) throw SpecMismatch(file + " is not an HDF5 file");
  Handle handle;
  try {
    handle = h5::open_file_read(path);
  } catch (const StorageError& e) {
    throw SpecMismatch(file + " is an HDF5 file that cannot be opened (truncated or damaged)\n" + e.what());
  }
  if (!h5::attribute_exists(handle.get(), "format"))
    throw SpecMismatch(file + " has no \"format\" attribute, so another tool made it");
  const std::string format = h5::read_string_attribute(handle.get(), "format", path.string());
  if (format != kFormat) throw SpecMismatch(file + " has format \"" + format + "\", not \"" + kFormat + "\"");
  return handle;
}

namespace {
herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* names) {
  static_cast<std::vector<std::string>*>(names)->emplace_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> probe_names(hid_t file) {
  Handle acts = h5::open_group(file, "acts");
  std::vector<std::string> names;
  check(H5Literate(acts.get(), H5_INDEX_CRT_ORDER, H5_ITER_INC, nullptr, collect_name, &names), "list /acts");
  return names;
}

std::vector<ProbeReader> open_probes(hid_t file, const std::string& where) {
  std::vector<ProbeReader> probes;
  for (const std::string& name : probe_names(file)) {
    ProbeReader probe;
    const std::string object = where + ":/acts/" + name;
    probe.dataset = h5::open_dataset(file, "acts/" + name);
    probe.type = Handle(check_id(H5Dget_type(probe.dataset.get()), "get the type of " + object));
    probe.dims = h5::dataset_shape(probe.dataset.get(), object);
    if (probe.dims.size() != 4) throw StorageError(object + " is not 4-dimensional");
    probe.element_bytes = H5Tget_size(probe.type.get());
    probe.row_bytes = probe.dims[1] * probe.dims[2] * probe.dims[3] * probe.element_bytes;
    probe.status.name = name;
    probe.status.module = h5::read_string_attribute(probe.dataset.get(), "module", object);
    probe.status.output_index =
        static_cast<int>(h5::read_int_attribute(probe.dataset.get(), "output_index", object));
    probe.status.layers = h5::read_int_array_attribute(probe.dataset.get(), "layers", object);
    const std::string dtype = h5::read_string_attribute(probe.dataset.get(), "dtype", object);
    const auto parsed = dtype_from_name(dtype);
    if (!parsed || !is_activation_dtype(*parsed))
      throw StorageError(object + " has dtype \"" + dtype + "\", not float16, bfloat16 or float32");
    probe.status.dtype = *parsed;
    probes.push_back(std::move(probe));
  }
  return probes;
}

void read_rows(const ProbeReader& probe, std::span<const std::int64_t> ascending_rows,
               std::span<std::byte> out) {
  Handle file_space(
      check_id(H5Dget_space(probe.dataset.get()), "get the dataspace of /acts/" + probe.status.name));
  for (std::size_t first = 0; first < ascending_rows.size();) {
    std::size_t last = first;
    while (last + 1 < ascending_rows.size() && ascending_rows[last + 1] == ascending_rows[last] + 1) ++last;
    const std::array<hsize_t, 4> offset{static_cast<hsize_t>(ascending_rows[first]), 0, 0, 0};
    const std::array<hsize_t, 4> extent{last - first + 1, probe.dims[1], probe.dims[2], probe.dims[3]};
    const std::string what = "rows " + std::to_string(offset[0]) + ".." +
                             std::to_string(offset[0] + extent[0] - 1) + " of /acts/" + probe.status.name;
    check(
        H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr, extent.data(), nullptr),
        "select " + what);
    Handle mem_space(
        check_id(H5Screate_simple(4, extent.data(), nullptr), "create the memory space for " + what));
    check(H5Dread(probe.dataset.get(), probe.type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT,
                  out.data() + first * probe.row_bytes),
          "read " + what);
    first = last + 1;
  }
}

}  // namespace reading

StoredPlan read_plan(const std::filesystem::path& path) {
  Handle file = reading::open_output(path);
  StoredPlan plan;
  plan.n_tokens = h5::read_all<std::int32_t>(file.get(), "prompts/n_tokens");
  {
    Handle positions = h5::open_dataset(file.get(), "prompts/positions");
    const auto shape = h5::dataset_shape(positions.get(), "prompts/positions");
    if (shape.size() != 2)
      throw SpecMismatch("output file " + path.string() + ": /prompts/positions is not N x P");
    plan.positions_per_row = static_cast<std::int64_t>(shape[1]);
    positions.close("close /prompts/positions");
  }
  plan.order = h5::read_all<std::int64_t>(file.get(), "batches/order");
  plan.start = h5::read_all<std::int64_t>(file.get(), "batches/start");
  plan.count = h5::read_all<std::int64_t>(file.get(), "batches/count");
  file.close("close " + path.string());
  return plan;
}

FileStatus read_status(const std::filesystem::path& path) {
  Handle file = reading::open_output(path);
  const std::string where = path.string();
  FileStatus status;
  status.path = where;
  status.format = h5::read_string_attribute(file.get(), "format", where);
  status.model = h5::read_string_attribute(file.get(), "model", where);
  status.model_key = h5::read_string_attribute(file.get(), "model_key", where);
  status.job_hash = h5::read_string_attribute(file.get(), "job_hash", where);
  status.tool_version = h5::read_string_attribute(file.get(), "tool_version", where);
  status.created_utc = h5::read_string_attribute(file.get(), "created_utc", where);

  const auto done = h5::read_all<std::uint8_t>(file.get(), "batches/done");
  const auto count = h5::read_all<std::int64_t>(file.get(), "batches/count");
  status.batches_total = static_cast<std::int64_t>(done.size());
  for (const std::int64_t rows : count) status.rows_total += rows;
  for (std::size_t b = 0; b < done.size(); ++b) {
    if (done[b] != 0) {
      ++status.batches_done;
      status.rows_done += count.at(b);
    } else if (!status.missing_batches.empty() &&
               status.missing_batches.back().second + 1 == static_cast<std::int64_t>(b)) {
      status.missing_batches.back().second = static_cast<std::int64_t>(b);
    } else {
      status.missing_batches.emplace_back(static_cast<std::int64_t>(b), static_cast<std::int64_t>(b));
    }
  }
  for (reading::ProbeReader& probe : reading::open_probes(file.get(), where))
    status.probes.push_back(probe.status);
  if (H5Lexists(file.get(), "journal", H5P_DEFAULT) > 0) {
    Handle jobs = h5::open_dataset(file.get(), "journal/jobs");
    Handle type = h5::journal_type();
    std::vector<h5::JournalRecord> records(done.size());
    check(H5Dread(jobs.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, records.data()),
          "read " + where + ":/journal/jobs");
    for (std::size_t b = 0; b < records.size(); ++b) {
      const std::string id(records[b].job_id, strnlen(records[b].job_id, kJournalIdBytes));
      if (done[b] == 0 && !id.empty())
        status.journal.push_back(
            {static_cast<std::int64_t>(b), id, records[b].attempt, records[b].submitted_unix});
    }
    type.close("close the journal type");
    jobs.close("close /journal/jobs");
  }
  file.close("close " + where);
  status.runs = read_run_records(path);
  return status;
}

nlohmann::json FileStatus::to_json() const {
  nlohmann::json probes_json = nlohmann::json::array();
  for (const ProbeStatus& probe : probes)
    probes_json.push_back(
        {{"name", probe.name},
         {"module", probe.module},
         {"output_index", probe.output_index < 0 ? nlohmann::json() : nlohmann::json(probe.output_index)},
         {"layers", probe.layers},
         {"dtype", dtype_name(probe.dtype)}});
  nlohmann::json runs_json = nlohmann::json::array();
  for (const RunRecord& run : runs)
    runs_json.push_back({{"time_utc", run.time_utc},
                         {"ranks", run.ranks},
                         {"host", run.host},
                         {"slurm_job_id", run.slurm_job_id},
                         {"slurm_restart_count", run.slurm_restart_count},
                         {"tool_version", run.tool_version},
                         {"outcome", run.outcome}});
  nlohmann::json journal_json = nlohmann::json::array();
  for (const JournaledJob& job : journal)
    journal_json.push_back({{"batch", job.batch},
                            {"job_id", job.job_id},
                            {"attempt", job.attempt},
                            {"submitted_unix", job.submitted_unix}});
  nlohmann::json missing = nlohmann::json::array();
  for (const auto& [first, last] : missing_batches) missing.push_back({first, last});
  return {{"format", format},
          {"model", model},
          {"model_key", model_key},
          {"job_hash", job_hash},
          {"tool_version", tool_version},
          {"created_utc", created_utc},
          {"batches", {{"done", batches_done}, {"total", batches_total}}},
          {"rows", {{"done", rows_done}, {"total", rows_total}}},
          {"missing_batches", missing},
          {"probes", probes_json},
          {"runs", runs_json},
          {"journal", journal_json}};
}

std::string FileStatus::to_text() const {
  std::ostringstream out;
  out << path << ": " << format << ", model " << model << "\n";
  out << "batches " << batches_done << "/" << batches_total << " done, rows " << rows_done << "/"
      << rows_total << (batches_done == batches_total ? " (complete)" : "") << "\n";
  if (!missing_batches.empty()) {
    out << "missing batches:";
    for (const auto& [first, last] : missing_batches) {
      out << " " << first;
      if (last != first) out << "-" << last;
    }
    out << "\n";
  }
  if (!journal.empty()) {
    out << "journal: " << journal.size()
        << " NDIF job(s) of missing batches that a restart polls first (batch";
    for (std::size_t k = 0; k < std::min<std::size_t>(journal.size(), 8); ++k)
      out << (k ? ", " : " ") << journal[k].batch << " job " << journal[k].job_id;
    out << (journal.size() > 8 ? ", ...)" : ")") << "\n";
  }
  for (const ProbeStatus& probe : probes) {
    out << "probe " << probe.name << ": " << probe.module;
    if (probe.output_index >= 0) out << "[" << probe.output_index << "]";
    out << ", " << probe.layers.size() << " layers, " << dtype_name(probe.dtype) << "\n";
  }
  for (std::size_t k = 0; k < runs.size(); ++k) {
    const RunRecord& run = runs[k];
    out << "run " << k << ": " << run.time_utc << ", " << run.ranks << " ranks on " << run.host;
    if (!run.slurm_job_id.empty())
      out << ", SLURM job " << run.slurm_job_id << " restart " << run.slurm_restart_count;
    out << ", " << run.outcome << "\n";
  }
  return out.str();
}

VerifyReport verify(const std::filesystem::path& path) {
  Handle file = reading::open_output(path);
  const std::string where = path.string();
  const auto done = h5::read_all<std::uint8_t>(file.get(), "batches/done");
  const auto stored = h5::read_all<std::uint64_t>(file.get(), "batches/checksum");
  const auto start = h5::read_all<std::int64_t>(file.get(), "batches/start");
  const auto count = h5::read_all<std::int64_t>(file.get(), "batches/count");
  const auto order = h5::read_all<std::int64_t>(file.get(), "batches/order");
  const std::vector<reading::ProbeReader> probes = reading::open_probes(file.get(), where);

  VerifyReport report;
  report.batches_total = static_cast<std::int64_t>(done.size());
  std::vector<std::vector<std::byte>> buffers(probes.size());
  for (std::size_t b = 0; b < done.size(); ++b) {
    if (done[b] == 0) continue;
    const std::span<const std::int64_t> rows(order.data() + start.at(b),
                                             static_cast<std::size_t>(count.at(b)));
    // Read in ascending order (runs of rows), then lay the rows out in batch order as written.
    std::vector<std::size_t> ascending(rows.size());
    for (std::size_t k = 0; k < ascending.size(); ++k) ascending[k] = k;
    std::sort(ascending.begin(), ascending.end(),
              [&](std::size_t x, std::size_t y) { return rows[x] < rows[y]; });
    std::vector<std::int64_t> sorted_rows(rows.size());
    for (std::size_t k = 0; k < ascending.size(); ++k) sorted_rows[k] = rows[ascending[k]];

    std::vector<std::span<const std::byte>> spans;
    for (std::size_t p = 0; p < probes.size(); ++p) {
      const std::size_t row_bytes = probes[p].row_bytes;
      std::vector<std::byte> sorted(rows.size() * row_bytes);
      reading::read_rows(probes[p], sorted_rows, sorted);
      buffers[p].resize(sorted.size());
      for (std::size_t k = 0; k < ascending.size(); ++k)
        std::memcpy(buffers[p].data() + ascending[k] * row_bytes, sorted.data() + k * row_bytes, row_bytes);
      spans.emplace_back(buffers[p].data(), buffers[p].size());
    }
    const std::uint64_t computed = batch_checksum(spans);
    ++report.batches_checked;
    if (computed != stored.at(b))
      report.mismatches.push_back({static_cast<std::int64_t>(b), stored[b], computed});
  }
  file.close("close " + where);
  return report;
}

nlohmann::json VerifyReport::to_json() const {
  nlohmann::json bad = nlohmann::json::array();
  for (const ChecksumMismatch& m : mismatches)
    bad.push_back({{"batch", m.batch}, {"stored", m.stored}, {"computed", m.computed}});
  return {{"ok", ok()},
          {"batches_checked", batches_checked},
          {"batches_total", batches_total},
          {"mismatches", bad}};
}

std::string VerifyReport::to_text() const {
  std::ostringstream out;
  out << "checked " << batches_checked << " of " << batches_total << " batches (the done ones): ";
  if (ok()) {
    out << "all match their checksums\n";
    return out.str();
  }
  out << mismatches.size() << " do not match\n";
  for (const ChecksumMismatch& m : mismatches)
    out << "batch " << m.batch << ": stored checksum " << std::hex << m.stored << ", data gives "
        << m.computed << std::dec << "\n";
  return out.str();
}

}  // namespace ndif::store
