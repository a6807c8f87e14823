#include "ndif_sweep/run/planning.hpp"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <thread>

namespace ndif::run {

unsigned core_share(const std::vector<cpu_set_t>& node_sets, std::size_t mine) {
  if (mine >= node_sets.size()) return 1;
  cpu_set_t own = node_sets[mine];
  const int cores = CPU_COUNT(&own);
  int sharers = 0;
  for (const auto& set : node_sets) {
    cpu_set_t both;
    cpu_set_t other = set;
    CPU_AND(&both, &own, &other);
    if (CPU_COUNT(&both) > 0) ++sharers;
  }
  return static_cast<unsigned>(std::max(1, cores / std::max(1, sharers)));
}

unsigned core_share(const Communicator& comm) {
  cpu_set_t own;
  CPU_ZERO(&own);
  if (sched_getaffinity(0, sizeof own, &own) != 0) {
    // No affinity to read: every core of the machine.
    for (unsigned c = 0; c < std::max(1U, std::thread::hardware_concurrency()) && c < CPU_SETSIZE; ++c)
      CPU_SET(c, &own);
  }
  std::size_t mine = 0;
  const auto gathered =
      comm.allgather_on_node(std::string(reinterpret_cast<const char*>(&own), sizeof own), &mine);
  std::vector<cpu_set_t> sets(gathered.size());
  for (std::size_t r = 0; r < gathered.size(); ++r)
    std::memcpy(&sets[r], gathered[r].data(), sizeof(cpu_set_t));
  return core_share(sets, mine);
}

plan::PromptShapes MeasuredPrompts::shapes(const BatchTokenizer& prompts) && {
  if (broken) std::rethrow_exception(broken);
  return std::move(merge).finish(*prompts.prompts_file, prompts.default_positions);
}

Measurement measure_prompts_in_parts(const Communicator& comm, const BatchTokenizer& prompts,
                                     unsigned threads) {
  const auto& file = *prompts.prompts_file;
  const std::size_t rows = file.rows();
  const std::size_t p = prompts.positions_per_row;
  const auto parts = static_cast<std::size_t>(comm.size());
  const auto [first, end] = plan::scan_part_rows(rows, static_cast<std::size_t>(comm.rank()), parts);
  auto part = plan::scan_part(file, prompts.default_positions, *prompts.tokenizer, prompts.add_special_tokens,
                              p, first, end, threads);
  Measurement measured;
  measured.mine = MeasuredPart{first, std::move(part.positions)};
  if (comm.rank() != 0) {
    std::string bytes;
    try {
      bytes = plan::encode_scan_part(part, p);
    } catch (...) {
      // Rank 0 waits for a part from every rank: send one that says why there is none.
      plan::ScanPart failed;
      failed.first = failed.end = failed.bad_row = first;
      failed.error = std::current_exception();
      bytes = plan::encode_scan_part(failed, p);
    }
    comm.gather_to_root(bytes, {});
    return measured;
  }
  measured.merged.emplace(MeasuredPrompts{plan::ScanMerge(rows, p), nullptr});
  auto& m = *measured.merged;
  m.merge.add(std::move(part));
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
