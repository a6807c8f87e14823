// The output file's creation step alone (docs/design.md, "One batch", step 2), as `ndif-sweep run`
// takes it once the prompts are measured: rank 0 makes FILE.creating with every dataset, the
// prompts' strings read by every rank for its part (run::create_with_every_rank), every rank writes
// its part's positions (store::write_positions), rank 0 renames it. No tokenizer: lengths are a
// constant, positions zeros; the strings are the prompts file's own. Run it under mpirun for several
// ranks. Prints the seconds of each part and rank 0's peak RSS.
//
//   [mpirun -np R] create_bench PROMPTS.jsonl [--layers 80] [--hidden 8192] [--positions 1]
//                               [--dir /tmp] [--repeat 1]
//
// With --layers 1 --hidden 1 the activations' chunk index is small and the strings are what is
// measured; with a model's shape (80 x 8192, one row a chunk) the early allocation of N chunks is
// added. Figures are kept in docs/performance.md.
#include <fmt/format.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ndif_sweep/core/memory.hpp"
#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/file_creation.hpp"
#include "ndif_sweep/run/planning.hpp"
#include "ndif_sweep/store/output_file.hpp"
#include "ndif_sweep/store/parallel_output.hpp"

namespace {

using namespace ndif;
using Clock = std::chrono::steady_clock;

struct Options {
  std::filesystem::path prompts;
  std::int64_t layers = 80, hidden = 8192, positions = 1;
  std::filesystem::path dir = "/tmp";
  int repeat = 1;
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

long peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

/// Rank 0's layout: constant lengths, the plan they give, one probe of the given shape.
store::FileLayout layout_of(std::size_t rows, const Options& o) {
  store::FileLayout layout;
  layout.job_json = "{}";
  layout.job_hash = "create_bench";
  layout.model = layout.model_key = "bench";
  layout.tokenizer_sha256 = std::string(64, '0');
  layout.tool_version = "bench";
  layout.n_tokens.assign(rows, 40);
  layout.positions_from_ranks = true;
  layout.positions_per_row = static_cast<std::size_t>(o.positions);
  const plan::RowShape shape{.total_layers = o.layers, .positions = o.positions, .hidden = o.hidden};
  auto plan = plan::make_batch_plan(layout.n_tokens, spec::BatchOptions{}, shape);
  layout.batch_of_row = std::move(plan.batch_of_row);
  layout.order = std::move(plan.order);
  layout.batch_start = std::move(plan.start);
  layout.batch_count = std::move(plan.count);
  std::vector<int> layers(static_cast<std::size_t>(o.layers));
  for (std::size_t l = 0; l < layers.size(); ++l) layers[l] = static_cast<int>(l);
  layout.probes = {{"resid", "model.layers.{layer}", 0, layers, "all"}};
  layout.hidden = static_cast<std::size_t>(o.hidden);
  return layout;
}

void measure(const run::Communicator& comm, const Options& o) {
  const bool root = comm.rank() == 0;
  // Every rank reads the prompts file through rank 0's index, as a run does.
  std::shared_ptr<const spec::PromptsFile> file;
  if (root) file = std::make_shared<const spec::PromptsFile>(spec::PromptsFile::index(o.prompts));
  std::string index = root ? file->index_bytes() : std::string();
  comm.broadcast_in_place(index);
  if (!root)
    file = std::make_shared<const spec::PromptsFile>(spec::PromptsFile::from_index(o.prompts, index));
  std::string().swap(index);
  const run::BatchTokenizer prompts{file, nullptr, {}, true, static_cast<std::size_t>(o.positions)};
  const unsigned threads = run::core_share(comm);
  const auto [first, end] = plan::scan_part_rows(file->rows(), static_cast<std::size_t>(comm.rank()),
                                                 static_cast<std::size_t>(comm.size()));
  const std::vector<std::int32_t> positions((end - first) * static_cast<std::size_t>(o.positions), 0);
  const auto output = o.dir / fmt::format("create_bench_{}.h5", comm.broadcast(std::to_string(::getpid())));
  if (root)
    std::cout << fmt::format("{} prompts, {} rank(s), {} thread(s) a rank, {} layers x {}, {} position(s)\n",
                             file->rows(), comm.size(), threads, o.layers, o.hidden, o.positions)
              << fmt::format("{:>10} {:>12} {:>10} {:>8} {:>10}\n", "strings s", "positions s", "rename s",
                             "total s", "rank 0 MB");
  for (int pass = 0; pass < o.repeat; ++pass) {
    std::filesystem::remove(output);
    // Made before the clock starts, as a run has its plan before the step.
    std::optional<store::FileLayout> layout;
    if (root) layout = layout_of(file->rows(), o);
    comm.barrier();
    const auto t0 = Clock::now();
    auto temporary =
        run::create_with_every_rank(comm, prompts, threads, output, [&] { return std::move(*layout); });
    const double strings = seconds_since(t0);
    temporary = comm.broadcast(temporary.string());
    const auto t1 = Clock::now();
    store::write_positions(temporary, comm.handle(), first, positions);
    const double written = seconds_since(t1);
    const auto t2 = Clock::now();
    if (root) store::publish(temporary, output);
    comm.barrier();
    const double renamed = seconds_since(t2);
    if (root)
      std::cout << fmt::format("{:>10.2f} {:>12.2f} {:>10.2f} {:>8.2f} {:>10}\n", strings, written, renamed,
                               seconds_since(t0), peak_rss_mb())
                << std::flush;
  }
  if (root) std::filesystem::remove(output);
}

}  // namespace

int main(int argc, char** argv) {
  keep_large_buffers();  // as ndif-sweep does
  run::MpiSession session(&argc, &argv);
  Options o;
  CLI::App app{"create_bench: the output file's creation step alone"};
  app.add_option("prompts", o.prompts, "prompts file (JSON Lines)")->required()->check(CLI::ExistingFile);
  app.add_option("--layers", o.layers, "layers of the one probe")->check(CLI::PositiveNumber);
  app.add_option("--hidden", o.hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--positions", o.positions, "positions a prompt")->check(CLI::PositiveNumber);
  app.add_option("--dir", o.dir, "where the file is made")->check(CLI::ExistingDirectory);
  app.add_option("--repeat", o.repeat, "passes")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    measure(run::Communicator(), o);
  } catch (const std::exception& e) {
    std::cerr << "create_bench: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
