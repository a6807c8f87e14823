#include <array>

#include "h5.hpp"
#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/store/output_file.hpp"

namespace ndif::store {

using h5::check;
using h5::check_id;
using h5::Handle;

namespace {

constexpr std::array<const char*, 5> kOutcomes{"running", "complete", "incomplete", "failed", "drained"};

void require_outcome(const std::string& outcome) {
  for (const char* known : kOutcomes)
    if (outcome == known) return;
  throw InternalError("run outcome \"" + outcome +
                      "\" is not one of running, complete, incomplete, failed, drained");
}

std::size_t run_count(hid_t runs) {
  H5G_info_t info{};
  check(H5Gget_info(runs, &info), "count the records in /runs");
  return info.nlinks;
}

}  // namespace

std::size_t append_run_record(const std::filesystem::path& path, const RunRecord& record) {
  require_outcome(record.outcome);
  Handle file = h5::open_file_write(path);
  Handle runs = h5::open_group(file.get(), "runs");
  const std::size_t index = run_count(runs.get());
  const std::string name = std::to_string(index);
  {
    Handle group(check_id(H5Gcreate2(runs.get(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                          "create group /runs/" + name));
    h5::write_attribute(group.get(), "time_utc", record.time_utc);
    h5::write_attribute(group.get(), "ranks", record.ranks);
    h5::write_attribute(group.get(), "host", record.host);
    h5::write_attribute(group.get(), "slurm_job_id", record.slurm_job_id);
    h5::write_attribute(group.get(), "slurm_restart_count", record.slurm_restart_count);
    h5::write_attribute(group.get(), "tool_version", record.tool_version);
    h5::write_attribute(group.get(), "outcome", record.outcome);
    group.close("close /runs/" + name);
  }
  runs.close("close /runs");
  file.close("close " + path.string());
  return index;
}

void set_run_outcome(const std::filesystem::path& path, std::size_t index, const std::string& outcome) {
  require_outcome(outcome);
  Handle file = h5::open_file_write(path);
  const std::string name = "runs/" + std::to_string(index);
  if (!h5::link_exists(file.get(), "runs") || !h5::link_exists(file.get(), name))
    throw InternalError(path.string() + " has no run record /" + name);
  Handle group = h5::open_group(file.get(), name);
  h5::rewrite_attribute(group.get(), "outcome", outcome);
  group.close("close /" + name);
  file.close("close " + path.string());
}

std::vector<RunRecord> read_run_records(const std::filesystem::path& path) {
  Handle file = h5::open_file_read(path);
  Handle runs = h5::open_group(file.get(), "runs");
  std::vector<RunRecord> records;
  const std::size_t count = run_count(runs.get());
  for (std::size_t k = 0; k < count; ++k) {
    const std::string name = std::to_string(k);
    const std::string where = path.string() + ":/runs/" + name;
    Handle group = h5::open_group(runs.get(), name);
    RunRecord record;
    record.time_utc = h5::read_string_attribute(group.get(), "time_utc", where);
    record.ranks = h5::read_int_attribute(group.get(), "ranks", where);
    record.host = h5::read_string_attribute(group.get(), "host", where);
    record.slurm_job_id = h5::read_string_attribute(group.get(), "slurm_job_id", where);
    record.slurm_restart_count = h5::read_int_attribute(group.get(), "slurm_restart_count", where);
    record.tool_version = h5::read_string_attribute(group.get(), "tool_version", where);
    record.outcome = h5::read_string_attribute(group.get(), "outcome", where);
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace ndif::store
