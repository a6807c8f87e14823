#pragma once
/// \file
/// Tokenized prompts, resolved positions and the batch plan. Pure and deterministic: the plan
/// depends only on the job and the prompts, never on the number of ranks.

#include <cstdint>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ndif_sweep/spec/job_spec.hpp"
#include "ndif_sweep/spec/prompts.hpp"
#include "ndif_sweep/spec/prompts_file.hpp"
#include "ndif_sweep/tokenizer/tokenizer.hpp"

namespace ndif::plan {

/// One prompt as sent: its token ids and its positions resolved to indices >= 0 in the unpadded
/// sequence.
struct EncodedPrompt {
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> positions;
};

/// Tokenizes every prompt and resolves its positions (indices and spans). Throws InputError naming
/// the prompts file and line for an out-of-range position, an absent span, or a prompt whose
/// number of positions differs from the others'.
[[nodiscard]] std::vector<EncodedPrompt> encode_prompts(const std::vector<spec::PromptRecord>& prompts,
                                                        const tokenizer::Tokenizer& tokenizer,
                                                        bool add_special_tokens,
                                                        const std::filesystem::path& prompts_file);

/// Tokenizes `records` (prompts of one batch, parsed again from their lines) and resolves their
/// positions, in that order: what a rank sends for one batch. Deterministic, so a batch encoded
/// again on another rank or in a later run is the same. Each must have the `positions_per_row` of
/// the file's first line. Throws as encode_prompts.
[[nodiscard]] std::vector<EncodedPrompt> encode_records(const std::vector<spec::PromptRecord>& records,
                                                        std::size_t positions_per_row,
                                                        const tokenizer::Tokenizer& tokenizer,
                                                        bool add_special_tokens,
                                                        const std::filesystem::path& prompts_file);

/// What planning keeps of every prompt: small integers, never its token ids.
struct PromptShapes {
  std::vector<std::int32_t> n_tokens;  ///< N: tokens of each prompt, special tokens included
  /// N x P resolved positions, row-major, from measure_prompts; empty from scan_prompts and
  /// ScanMerge, whose parts keep their own (each rank writes its part's into the output file), so
  /// that no process holds N x P integers.
  std::vector<std::int32_t> positions;
  std::int64_t positions_per_row = 0;  ///< P
  std::int32_t max_token_id = -1;      ///< the largest token id of any prompt (vocabulary check)
  std::size_t max_token_row = 0;       ///< a prompt that holds it
};

/// Tokenizes every prompt on `threads` threads (contiguous slices) and keeps their lengths and
/// positions. Checks as encode_prompts, and throws the error of the first bad prompt in file
/// order, whatever the thread count.
[[nodiscard]] PromptShapes measure_prompts(const std::vector<spec::PromptRecord>& prompts,
                                           const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                           const std::filesystem::path& prompts_file, unsigned threads);

/// P, the positions of every prompt: those of the file's first line. Throws that line's error.
[[nodiscard]] std::size_t positions_per_row(const spec::PromptsFile& file,
                                            const std::vector<spec::PositionSpec>& default_positions);

/// One rank's part of planning (docs/design.md, step 2): rows [first, end) of the prompts file
/// measured as scan_prompts measures them, with a 64-bit hash of each prompt's id so that rank 0
/// can find ids repeated across parts without the ids. A part stops at its first bad row.
struct ScanPart {
  static constexpr std::size_t kNoBadRow = static_cast<std::size_t>(-1);
  std::size_t first = 0;
  std::size_t end = 0;                   ///< rows measured are [first, end): end is the bad row if any
  std::vector<std::int32_t> n_tokens;    ///< end - first
  std::vector<std::int32_t> positions;   ///< (end - first) x P
  std::vector<std::uint64_t> id_hashes;  ///< end - first
  std::int32_t max_token_id = -1;        ///< of the rows measured
  std::size_t max_token_row = 0;
  std::size_t bad_row = kNoBadRow;  ///< the first bad row of the part
  std::exception_ptr error;         ///< why it is bad
};

/// Rows [first, end) of part `part` of `parts` consecutive parts of `rows` rows; what rank r of R
/// measures. Every row is in exactly one part.
[[nodiscard]] std::pair<std::size_t, std::size_t> scan_part_rows(std::size_t rows, std::size_t part,
                                                                 std::size_t parts);

/// Measures rows [first, end) of `file`, a block of `block_rows` lines at a time on `threads`
/// threads, every prompt with P = `positions_per_row`. Never throws for a bad line: the part keeps
/// the first and why. Without `keep_positions` the positions are checked but not kept (`plan`
/// needs only the lengths).
[[nodiscard]] ScanPart scan_part(const spec::PromptsFile& file,
                                 const std::vector<spec::PositionSpec>& default_positions,
                                 const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                 std::size_t positions_per_row, std::size_t first, std::size_t end,
                                 unsigned threads, std::size_t block_rows = 65536,
                                 bool keep_positions = true);

/// The bytes a rank sends rank 0 for its part (12 bytes a row: length and id hash; the positions
/// stay with the rank, which writes them into the output file itself), the error's exit code and
/// message, and the part made again from them (without positions). decode_scan_part checks the
/// sizes and P and throws InternalError when they do not fit.
[[nodiscard]] std::string encode_scan_part(const ScanPart& part, std::size_t positions_per_row);
[[nodiscard]] ScanPart decode_scan_part(std::string_view bytes, std::size_t positions_per_row);

/// A prompt's id hash and row, sorted to find repeated ids without holding the ids.
struct IdKey {
  std::uint64_t hash;
  std::size_t row;
  auto operator<=>(const IdKey&) const = default;
};

/// Rank 0's merge of the parts of every rank into the shapes of all prompts: the same lengths, and
/// the same first error, as one scan_prompts over the file, whatever the number of parts. Positions
/// are not merged: they stay in the parts (O(N P) integers rank 0 never holds).
class ScanMerge {
 public:
  ScanMerge(std::size_t rows, std::size_t positions_per_row);
  /// Adds the next part; parts come in row order, each starting where the last ended (after a
  /// part with a bad row the rest are ignored). Throws InternalError for a part out of order.
  void add(ScanPart part);
  /// The shapes of every prompt; throws the error of the first bad line in file order (a line that
  /// repeats an earlier line's id is bad), reading only rows whose id hashes collide again.
  [[nodiscard]] PromptShapes finish(const spec::PromptsFile& file,
                                    const std::vector<spec::PositionSpec>& default_positions) &&;

 private:
  std::size_t rows_;
  std::size_t p_;
  std::size_t next_ = 0;
  PromptShapes shapes_;
  std::vector<IdKey> keys_;
  std::size_t bad_row_ = ScanPart::kNoBadRow;
  std::exception_ptr bad_error_;
};

/// Parses, checks and tokenizes every prompt of `file`, a block of `block_rows` lines at a time on
/// `threads` threads, and keeps what ScanMerge keeps (lengths; positions stay in the part): no
/// record, text or id outlives its block (repeated ids are found from 64-bit hashes, and only colliding rows
/// are read again). Checks as parse_prompts and encode_prompts, and throws the error of the first bad line in
/// file order (for a repeated id, the line that repeats it), whatever the thread count and block size.
[[nodiscard]] PromptShapes scan_prompts(const spec::PromptsFile& file,
                                        const std::vector<spec::PositionSpec>& default_positions,
                                        const tokenizer::Tokenizer& tokenizer, bool add_special_tokens,
                                        unsigned threads, std::size_t block_rows = 65536);

/// Where token p of a prompt of n tokens sits in a batch left-padded to S tokens: p + (S - n).
struct PaddingOffset {
  std::int32_t value = 0;
  [[nodiscard]] static PaddingOffset for_prompt(std::int32_t padded_len, std::int32_t n_tokens) noexcept {
    return PaddingOffset{padded_len - n_tokens};
  }
  [[nodiscard]] std::int32_t apply(std::int32_t position) const noexcept { return position + value; }
};

/// One batch: the prompt rows it holds, in the order they are sent (its invokes).
struct Batch {
  std::int32_t index = 0;
  std::vector<std::int64_t> rows;
  std::int32_t padded_len = 0;  ///< longest prompt of the batch, in tokens
};

/// The sizes the plan is cut by.
struct RowShape {
  std::int64_t total_layers = 0;  ///< sum over probes of their layer count
  std::int64_t positions = 0;     ///< P
  std::int64_t hidden = 0;        ///< H
  std::int64_t dtype_bytes = 2;
  /// Bytes one prompt row adds to a batch's saved data.
  [[nodiscard]] std::int64_t row_bytes() const noexcept {
    return total_layers * positions * hidden * dtype_bytes;
  }
};

/// All batches of a job, and the index arrays stored under /batches and /prompts/batch.
struct BatchPlan {
  std::vector<Batch> batches;
  std::vector<std::int64_t> order;         ///< prompt rows in batch order
  std::vector<std::int64_t> start;         ///< per batch: first index into `order`
  std::vector<std::int64_t> count;         ///< per batch: number of rows
  std::vector<std::int32_t> batch_of_row;  ///< per prompt row
};

/// Cuts prompts into batches: sorted by length (stable, longest first) if `sort_by_length`, then
/// greedily filled while the saved data stays within `target_mb`, the prompt count within
/// `max_prompts` and the padded tokens (rows x longest) within `max_tokens`. A batch always holds
/// at least one prompt.
[[nodiscard]] BatchPlan make_batch_plan(const std::vector<std::int32_t>& n_tokens,
                                        const spec::BatchOptions& options, const RowShape& shape);

/// The plan made whole again from the arrays an output file stores (/prompts/n_tokens,
/// /batches/order, /batches/start, /batches/count): what a restart takes instead of tokenizing and
/// planning anew. The arrays come from a file, so they are checked (every row in exactly one
/// batch, the batches contiguous in `order`); throws SpecMismatch saying which check failed.
[[nodiscard]] BatchPlan plan_from_arrays(const std::vector<std::int32_t>& n_tokens,
                                         const std::vector<std::int64_t>& order,
                                         const std::vector<std::int64_t>& start,
                                         const std::vector<std::int64_t>& count);

/// The pre-flight estimate printed by `ndif-sweep plan` (docs/user-guide.md section 2, `plan --json`).
struct PlanSummary {
  std::int64_t prompts = 0;
  std::int64_t tokens = 0;         ///< sum of prompt lengths
  std::int64_t padded_tokens = 0;  ///< sum over batches of rows x longest
  std::int64_t batches = 0;
  std::int64_t max_batch_bytes = 0;
  std::int64_t download_bytes = 0;  ///< saved data of all batches
  std::int64_t file_bytes = 0;      ///< size of the output file's datasets
  std::int64_t jobs = 0;            ///< NDIF jobs to send (one per batch)
};

[[nodiscard]] PlanSummary summarize(const BatchPlan& plan, const std::vector<std::int32_t>& n_tokens,
                                    const RowShape& shape);

}  // namespace ndif::plan
