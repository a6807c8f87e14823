#include "ndif_sweep/run/planning.hpp"

#include <sched.h>

#include <algorithm>
#include <exception>
#include <thread>

namespace ndif::run {

unsigned planning_threads(int ranks_on_node) {
  unsigned allowed = std::max(1U, std::thread::hardware_concurrency());
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof mask, &mask) == 0)
    allowed = static_cast<unsigned>(std::max(1, CPU_COUNT(&mask)));
  // Ranks bound apart (srun --cpu-bind) each see their own cores; ranks that may all run anywhere
  // split the node's cores, so that R ranks of a node start no more threads than it has cores.
  const unsigned share =
      std::max(1U, std::thread::hardware_concurrency() / static_cast<unsigned>(std::max(1, ranks_on_node)));
  return std::max(1U, std::min(allowed, share));
}

plan::PromptShapes MeasuredPrompts::shapes(const BatchTokenizer& prompts) && {
  if (broken) std::rethrow_exception(broken);
  return std::move(merge).finish(*prompts.prompts_file, prompts.default_positions);
}

std::optional<MeasuredPrompts> measure_prompts_in_parts(const Communicator& comm,
                                                        const BatchTokenizer& prompts) {
  const auto& file = *prompts.prompts_file;
  const std::size_t rows = file.rows();
  const std::size_t p = prompts.positions_per_row;
  const auto parts = static_cast<std::size_t>(comm.size());
  const unsigned threads = planning_threads(comm.ranks_on_node());
  const auto [first, end] = plan::scan_part_rows(rows, static_cast<std::size_t>(comm.rank()), parts);
  auto mine = plan::scan_part(file, prompts.default_positions, *prompts.tokenizer, prompts.add_special_tokens,
                              p, first, end, threads);
  if (comm.rank() != 0) {
    comm.gather_to_root(plan::encode_scan_part(mine, p), {});
    return std::nullopt;
  }
  std::optional<MeasuredPrompts> measured;
  measured.emplace(MeasuredPrompts{plan::ScanMerge(rows, p), nullptr});
  auto& m = *measured;
  m.merge.add(std::move(mine));
  comm.gather_to_root({}, [&](int, std::string&& bytes) {
    if (m.broken) return;
    try {
      m.merge.add(plan::decode_scan_part(bytes, p));
    } catch (...) {
      m.broken = std::current_exception();
    }
  });
  return measured;
}

}  // namespace ndif::run
