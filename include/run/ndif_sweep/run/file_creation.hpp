#pragma once
/// \file
/// Creating the output file with every rank (docs/design.md, "One batch", step 2). The rank that
/// measured a part of the prompts also reads that part's strings and writes its positions:
///  1. rank 0 makes `<FILE>.creating` with the serial driver and writes the prompts' strings, which
///     every rank reads and parses for its own part and sends as rank 0 comes to it (HDF5 writes
///     variable-length strings through one process only: the reading and parsing is what divides);
///  2. every rank writes its part's positions into it through MPI-IO (store::write_positions);
///  3. rank 0 publishes it under FILE.
/// So rank 0 never holds the N x P positions, nor parses every line a second time.

#include <filesystem>
#include <functional>

#include "ndif_sweep/run/communicator.hpp"
#include "ndif_sweep/run/job.hpp"
#include "ndif_sweep/spec/prompt_strings.hpp"
#include "ndif_sweep/store/output_file.hpp"

namespace ndif::run {

/// What a rank other than 0 sent rank 0 of its part's strings in create_with_every_rank.
struct PartSent {
  std::size_t rows = 0;      ///< rows of the blocks it sent
  bool asked = false;        ///< rank 0 asked for its part
  bool ended_early = false;  ///< rank 0 needed no more before its part's end (it failed meanwhile)
};

/// Collective, step 1: rank 0 creates `<output>.creating` from the layout `layout_of` makes
/// (store::create_unpublished), the strings of every row read from `prompts` by the rank whose part
/// of planning (plan::scan_part_rows) holds it, on `threads` threads. Rank 0 writes a block of each
/// rank's part in turn; each rank (rank 0 on a thread of its own) reads its next block while rank 0
/// writes the others', and sends it without blocking when it has read the one after, so that every
/// rank reads at once and holds a few blocks at most (one on its way, one read, one being read:
/// spec::StringBlockReader's bounds, `block_rows` rows). `layout_of` is called on rank 0 only, once
/// every other rank can be told to stop if it throws.
///
/// Returns the unpublished file's path on rank 0, an empty path elsewhere. Throws on rank 0 when the
/// file cannot be made, or with another rank's error when that rank could not read its part (a line
/// changed since it was indexed: exit 2); the temporary is then gone, and a rank still reading its
/// part is told to stop. The other ranks return normally either way, and none is left in the
/// exchange when rank 0 returns or throws. A failure that would leave the exchange broken (bytes
/// that are not a block, an MPI error with a send under way) ends every rank (MPI_Abort).
///
/// On a rank other than 0, `sent` (when given) says what the rank sent of its part.
[[nodiscard]] std::filesystem::path create_with_every_rank(
    const Communicator& comm, const BatchTokenizer& prompts, unsigned threads,
    const std::filesystem::path& output, const std::function<store::FileLayout()>& layout_of,
    std::size_t block_rows = spec::StringBlockReader::kMaxRows, PartSent* sent = nullptr);

}  // namespace ndif::run
