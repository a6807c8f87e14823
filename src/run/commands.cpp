#include "ndif_sweep/run/commands.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <ostream>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/remote/nnsight_encoder.hpp"
#include "ndif_sweep/store/readers.hpp"

namespace ndif::run {

void plan_command(const std::filesystem::path& job_file, const JobOverrides& overrides, bool as_json,
                  std::ostream& out) {
  const auto job = prepare_job(job_file, overrides, [&](const spec::JobSpec& spec) -> spec::ModelConfig {
    throw InputError(
        fmt::format("{}: \"plan\" uses no network, so it needs the model's shape: add "
                    "\"model_config\": {{\"hidden_size\": H, \"num_hidden_layers\": L}} to the job "
                    "(endpoint is {})",
                    spec.job_file.string(), spec.endpoint));
  });
  if (as_json)
    out << plan_summary_json(job).dump(2) << '\n';
  else
    out << plan_summary_text(job);
}

void status_command(const std::filesystem::path& file, bool as_json, std::ostream& out) {
  const auto status = store::read_status(file);
  if (as_json)
    out << status.to_json().dump(2) << '\n';
  else
    out << status.to_text();
}

void export_command(const std::filesystem::path& file, const std::filesystem::path& dir,
                    const std::string& format, std::ostream& out) {
  store::export_rows(file, dir, store::parse_export_format(format));
  const auto status = store::read_status(file);
  out << fmt::format("exported {} of {} rows ({} of {} batches done) to {}\n", status.rows_done,
                     status.rows_total, status.batches_done, status.batches_total, dir.string());
}

int verify_command(const std::filesystem::path& file, std::ostream& out) {
  const auto report = store::verify(file);
  out << report.to_text();
  return report.ok() ? 0 : 6;
}

int report_command(const ReportOptions& options) {
  std::vector<std::string> args{options.python,
                                "-m",
                                "ndif_sweep.report",
                                options.file.string(),
                                "--by",
                                options.by,
                                "--to",
                                options.to.string(),
                                "--position",
                                std::to_string(options.position),
                                "--kind",
                                options.kind};
  for (const auto& p : options.probes) {
    args.emplace_back("--probe");
    args.push_back(p);
  }
  // The bundled package first, so that the report matches this binary; the user's PYTHONPATH after.
  const char* existing = std::getenv("PYTHONPATH");
  const auto path = remote::python_path_with(remote::bundled_package_dir(), existing ? existing : "");
  if (!path.empty()) ::setenv("PYTHONPATH", path.c_str(), 1);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cout.flush();
  ::execvp(argv[0], argv.data());
  const int error = errno;
  std::cerr << fmt::format(
      "ndif-sweep: error: report: cannot start the interpreter {:?}: {}; pass --python with the path of a "
      "Python 3 that has numpy, h5py and matplotlib\n",
      options.python, std::strerror(error));
  return static_cast<int>(ExitCode::invalid_input);
}

}  // namespace ndif::run
