#pragma once
/// \file
/// The `ndif-sweep` subcommands, one library function each; `main()` only parses flags and maps
/// errors to exit codes.

#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

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

/// `ndif-sweep check`: the pre-flight against the service as a checklist (or JSON): the endpoint
/// answers, the model is deployed and its key, the server's nnsight, the API key accepted, the
/// job's files, the encoder starts (matching the server's nnsight) and encodes the first batch, the
/// tokenizer canary; with `probe` one 1-prompt job end to end with its shape checked. Writes
/// nothing. Returns 0 when every check passed, else the exit code of the first that failed (2 bad
/// input, 5 refused, 1 unreachable or another fault). Needs curl_global_init.
[[nodiscard]] int check_command(const std::filesystem::path& job_file, bool probe, bool as_json,
                                std::ostream& out);

/// `ndif-sweep status`.
void status_command(const std::filesystem::path& file, bool as_json, std::ostream& out);

/// `ndif-sweep export`: completed rows as .npy (or .npz) files plus meta.json in `dir`.
void export_command(const std::filesystem::path& file, const std::filesystem::path& dir,
                    const std::string& format, std::ostream& out);

/// `ndif-sweep verify`: returns 0 when every completed batch matches its checksum, else 6.
[[nodiscard]] int verify_command(const std::filesystem::path& file, std::ostream& out);

/// Flags of `ndif-sweep report`.
struct ReportOptions {
  std::filesystem::path file;
  std::string by;  ///< the meta field that splits the rows into two groups
  std::filesystem::path to;
  std::vector<std::string> probes;  ///< empty: every probe
  int position = 0;
  std::string kind = "ridge";
  std::string python = "python3";  ///< the interpreter with numpy, h5py and matplotlib
};

/// `ndif-sweep report`: runs the `ndif_sweep` Python package's report (python/ndif_sweep/report.py)
/// in place of this process, the bundled package first on PYTHONPATH. Returns only on failure to
/// start it (exit 2, naming the interpreter); the report's own exit code is the command's.
[[nodiscard]] int report_command(const ReportOptions& options);

}  // namespace ndif::run
