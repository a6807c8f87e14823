// ndif-sweep: collect activations from an NDIF service into one HDF5 file, resumably, under MPI.
#include <curl/curl.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <optional>

#include "ndif_sweep/core/error.hpp"
#include "ndif_sweep/core/memory.hpp"
#include "ndif_sweep/core/version.hpp"
#include "ndif_sweep/run/commands.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/tokenizer/tokenize_command.hpp"

namespace {

/// Prints the error being handled (when `print`) and returns its exit code. Every error, an
/// ndif::Error or any other exception, reads "ndif-sweep: error: ..." the same way whether one rank
/// or several ran: with several, a rank's error reaches rank 0 as a report and is printed there.
int report_current(bool print) {
  const ndif::ErrorReport r = ndif::report_of(std::current_exception());
  if (print) std::cerr << "ndif-sweep: error: " << r.message << '\n';
  return static_cast<int>(r.code);
}

}  // namespace

int main(int argc, char** argv) {
  ndif::keep_large_buffers();
  CLI::App app{"ndif-sweep: resumable activation sweeps on NDIF, written to one shared HDF5 file"};
  app.set_version_flag("--version", std::string("ndif-sweep ") + ndif::kToolVersion);
  app.require_subcommand(1);

  ndif::run::RunOptions run_opts;
  std::string endpoint, output, progress = "auto";
  int max_inflight = 0;
  auto* run = app.add_subcommand("run", "run (or resume) a sweep; launch with mpirun/srun for several ranks");
  // An int with "given?" asked of CLI11: 0 is a value to reject (exit 2), not "unset".
  run->add_option("job", run_opts.job_file, "job spec (JSON)")->required();
  run->add_option("--endpoint", endpoint,
                  "\"local\" or a base URL http(s)://host[:port]; overrides the job's");
  run->add_option("--output", output, "output HDF5 file; overrides the job's");
  auto* max_inflight_option =
      run->add_option("--max-inflight", max_inflight, "NDIF jobs in flight per rank; overrides the job's");
  run->add_option("--progress", progress, "auto|bar|lines|jsonl|none");

  std::string plan_job;
  bool plan_json = false;
  auto* plan = app.add_subcommand(
      "plan", "validate a job and print the pre-flight estimate (no network, writes nothing)");
  plan->add_option("job", plan_job, "job spec (JSON)")->required();
  plan->add_flag("--json", plan_json, "print JSON");

  std::string check_job;
  bool check_json = false, check_probe = false;
  auto* check = app.add_subcommand(
      "check", "pre-flight against the service: versions, model, key, encoder (writes nothing)");
  check->add_option("job", check_job, "job spec (JSON)")->required();
  check->add_flag("--probe", check_probe, "also run one 1-prompt job end to end and check its shape");
  check->add_flag("--json", check_json, "print JSON");

  std::string status_file;
  bool status_json = false;
  auto* status = app.add_subcommand("status", "progress of an output file, also while a run writes it");
  status->add_option("file", status_file, "output HDF5 file")->required();
  status->add_flag("--json", status_json, "print JSON");

  std::string export_file, export_dir, export_format = "npy";
  auto* exp = app.add_subcommand("export", "completed rows as NumPy files plus meta.json");
  exp->add_option("file", export_file, "output HDF5 file")->required();
  exp->add_option("--to", export_dir, "directory to write")->required();
  exp->add_option("--format", export_format, "npy|npz")->check(CLI::IsMember({"npy", "npz"}));

  std::string verify_file;
  auto* verify = app.add_subcommand("verify", "re-check every completed batch against its stored checksum");
  verify->add_option("file", verify_file, "output HDF5 file")->required();

  ndif::run::ReportOptions report_opts;
  auto* report_cmd = app.add_subcommand(
      "report", "PNGs and one HTML page of the standard analyses (Python package ndif_sweep)");
  report_cmd->add_option("file", report_opts.file, "output HDF5 file (complete, partial or live)")
      ->required();
  report_cmd->add_option("--by", report_opts.by, "meta field with two values that splits the rows")
      ->required();
  report_cmd->add_option("--to", report_opts.to, "directory for the PNGs and index.html")->required();
  report_cmd->add_option("--probe", report_opts.probes, "probe to report (repeatable; default every probe)");
  report_cmd->add_option("--position", report_opts.position, "index into the file's positions (default 0)");
  report_cmd->add_option("--kind", report_opts.kind, "linear probe: ridge|logistic")
      ->check(CLI::IsMember({"ridge", "logistic"}));
  report_cmd->add_option("--python", report_opts.python, "Python interpreter (default python3)");

  std::string tok_file;
  bool tok_special = false, tok_offsets = false;
  auto* tokenize =
      app.add_subcommand("tokenize", "tokenize one JSON string per stdin line with a tokenizer.json");
  tokenize->add_option("tokenizer", tok_file, "tokenizer.json")->required();
  tokenize->add_flag("--special", tok_special, "add the post-processor's special tokens (BOS ...)");
  tokenize->add_flag("--offsets", tok_offsets, "print {\"ids\", \"offsets\"} with offsets in code points");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ndif::ExitCode::invalid_input);
  }

  if (*run) {
    ndif::run::MpiSession mpi(&argc, &argv);
    const bool is_root = ndif::run::Communicator().rank() == 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = 0;
    try {
      if (!endpoint.empty()) run_opts.overrides.endpoint = endpoint;
      if (!output.empty()) run_opts.overrides.output = output;
      if (max_inflight_option->count() > 0) run_opts.overrides.max_inflight = max_inflight;
      run_opts.progress = ndif::run::parse_progress_mode(progress);
      rc = ndif::run::run_sweep(run_opts);
    } catch (const ndif::Error&) {
      // Errors of the sweep are every rank's, or reported by the rank that had them (sweep.cpp).
      rc = report_current(is_root);
    } catch (...) {
      rc = report_current(true);  // an unexpected fault of this rank alone: say it wherever it is
    }
    curl_global_cleanup();
    return rc;
  }

  if (*check) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = 0;
    try {
      rc = ndif::run::check_command(check_job, check_probe, check_json, std::cout);
    } catch (...) {
      rc = report_current(true);
    }
    curl_global_cleanup();
    return rc;
  }

  try {
    if (*plan) {
      ndif::run::plan_command(plan_job, {}, plan_json, std::cout);
    } else if (*status) {
      ndif::run::status_command(status_file, status_json, std::cout);
    } else if (*exp) {
      ndif::run::export_command(export_file, export_dir, export_format, std::cout);
    } else if (*report_cmd) {
      return ndif::run::report_command(report_opts);
    } else if (*verify) {
      return ndif::run::verify_command(verify_file, std::cout);
    } else if (*tokenize) {
      // Large inputs: C stdio synchronisation would slow line-by-line reading several-fold.
      std::ios::sync_with_stdio(false);
      return ndif::tokenizer::run_tokenize_command(tok_file, tok_special, tok_offsets, std::cin, std::cout);
    }
  } catch (...) {
    return report_current(true);
  }
  return 0;
}
