#pragma once
/// \file
/// Planning with every rank (docs/design.md, step 2): each rank measures a part of the prompts on
/// its share of its node's cores, and rank 0 merges the parts into the shapes of every prompt. The
/// plan cut from them is the one a single process makes, for any number of ranks.

#include <sched.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <vector>

#include "ndif_sweep/plan/batch_plan.hpp"
#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/job.hpp"

namespace ndif::run {

/// The cores one rank keeps busy (the threads it plans on, and those that decode its results), from
/// the CPU sets (sched_getaffinity) of the ranks of its node, its own at `mine`: the cores of its
/// set, divided among the ranks whose sets share any of them. Ranks bound apart (srun --cpu-bind)
/// keep their own cores; ranks free to run anywhere in one set split it, so that a node never runs
/// more such threads than its ranks have cores. At least 1.
[[nodiscard]] unsigned core_share(const std::vector<cpu_set_t>& node_sets, std::size_t mine);
/// Collective: this rank's share of cores, from its affinity and that of its node's ranks.
[[nodiscard]] unsigned core_share(const Communicator& comm);

/// What rank 0 holds once every rank has measured its part.
struct MeasuredPrompts {
  plan::ScanMerge merge;
  std::exception_ptr broken;  ///< a part that did not arrive whole (InternalError)
  /// The shapes of every prompt. Throws the error of the first bad line in file order (exit 2), or
  /// why a part did not arrive.
  [[nodiscard]] plan::PromptShapes shapes(const BatchTokenizer& prompts) &&;
};

/// What a rank keeps of its own part of the prompts: its first row and the positions of its rows,
/// which it writes into the output file itself (store::write_positions).
struct MeasuredPart {
  std::size_t first = 0;
  std::vector<std::int32_t> positions;  ///< P per row
};

/// Every rank's result of measure_prompts_in_parts.
struct Measurement {
  MeasuredPart mine;
  std::optional<MeasuredPrompts> merged;  ///< rank 0's merge of every part; nothing on the others
};

/// Collective: rank r of R measures rows [N r / R, N (r + 1) / R) of the prompts file through
/// `prompts` on `threads` (its core_share), keeps their positions and sends rank 0 their lengths
/// and id hashes (12 bytes a prompt), which rank 0 merges as they arrive. Never throws for a bad
/// prompt or a broken part (MeasuredPrompts::shapes does, on rank 0), so that no rank is left
/// waiting.
[[nodiscard]] Measurement measure_prompts_in_parts(const Communicator& comm, const BatchTokenizer& prompts,
                                                   unsigned threads);

}  // namespace ndif::run
