#pragma once
/// \file
/// The `ndif-sweep` subcommands, one library function each; `main()` only parses flags and maps
/// errors to exit codes.

#include <filesystem>
#include <iosfwd>
#include <string>

#include "ndif_sweep/run/job.hpp"
#include "ndif_sweep/run/progress.hpp"

namespace ndif::run {

/// Flags of `ndif-sweep run`.
struct RunOptions {
  std::filesystem::path job_file;
  JobOverrides overrides;
  ProgressMode progress = ProgressMode::auto_;
};

/// `ndif-sweep run`: collective over MPI_COMM_WORLD (every rank calls it; MPI must be initialised).
/// Returns the exit code: 0 complete, 3 incomplete but resumable. Throws ndif::Error for the rest.
[[nodiscard]] int run_sweep(const RunOptions& options);

/// `ndif-sweep plan`: validates everything and prints the estimate; no network, writes nothing.
void plan_command(const std::filesystem::path& job_file, const JobOverrides& overrides, bool as_json,
                  std::ostream& out);

/// `ndif-sweep status`.
void status_command(const std::filesystem::path& file, bool as_json, std::ostream& out);

/// `ndif-sweep export`: completed rows as .npy (or .npz) files plus meta.json in `dir`.
void export_command(const std::filesystem::path& file, const std::filesystem::path& dir, const std::string& format,
                    std::ostream& out);

/// `ndif-sweep verify`: returns 0 when every completed batch matches its checksum, else 6.
[[nodiscard]] int verify_command(const std::filesystem::path& file, std::ostream& out);

}  // namespace ndif::run
