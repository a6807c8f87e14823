#include "ndif_sweep/plan/batch_plan.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "ndif_sweep/core/error.hpp"

namespace ndif::plan {

namespace {

// Bytes per row and per batch of the fixed-size datasets of the output file (docs/output-format.md)
// besides /acts: n_tokens, batch (int32), order (int64) and positions (P x int32) per
// row; done (uint8), start, count, checksum, attempts, seconds, bytes, nonfinite (8 bytes each)
// per batch. The variable-length strings (text, id, meta) are not known to the plan.
constexpr std::int64_t kRowIndexBytes = 4 + 4 + 8;
constexpr std::int64_t kPositionBytes = 4;
constexpr std::int64_t kBatchBytes = 1 + 7 * 8;

constexpr double kBytesPerMb = 1e6;

void check_lengths(const std::vector<std::int32_t>& n_tokens, const spec::BatchOptions& options) {
  for (std::size_t row = 0; row < n_tokens.size(); ++row) {
    const std::string where =
        "prompt row " + std::to_string(row) + " (line " + std::to_string(row + 1) + " of the prompts file)";
    if (n_tokens[row] <= 0) throw InputError(where + " has no tokens; a prompt needs at least one");
    if (n_tokens[row] > options.max_tokens) {
      throw InputError(where + " has " + std::to_string(n_tokens[row]) +
                       " tokens, more than \"batch.max_tokens\" (" + std::to_string(options.max_tokens) +
                       "); raise batch.max_tokens or shorten the prompt");
    }
  }
}

}  // namespace

BatchPlan make_batch_plan(const std::vector<std::int32_t>& n_tokens, const spec::BatchOptions& options,
                          const RowShape& shape) {
  check_lengths(n_tokens, options);
  std::vector<std::int64_t> rows(n_tokens.size());
  std::iota(rows.begin(), rows.end(), std::int64_t{0});
  if (options.sort_by_length) {
    std::stable_sort(rows.begin(), rows.end(),
                     [&](std::int64_t a, std::int64_t b) { return n_tokens[a] > n_tokens[b]; });
  }

  const double target_bytes = options.target_mb * kBytesPerMb;
  const std::int64_t row_bytes = shape.row_bytes();
  BatchPlan plan;
  plan.batch_of_row.assign(n_tokens.size(), 0);
  for (std::size_t next = 0; next < rows.size();) {
    Batch batch;
    batch.index = static_cast<std::int32_t>(plan.batches.size());
    batch.rows.push_back(rows[next]);
    batch.padded_len = n_tokens[rows[next]];
    for (++next; next < rows.size(); ++next) {
      const auto count = static_cast<std::int64_t>(batch.rows.size()) + 1;
      const std::int64_t longest = std::max<std::int64_t>(batch.padded_len, n_tokens[rows[next]]);
      if (count > options.max_prompts || static_cast<double>(count * row_bytes) > target_bytes ||
          count * longest > options.max_tokens) {
        break;
      }
      batch.rows.push_back(rows[next]);
      batch.padded_len = static_cast<std::int32_t>(longest);
    }
    plan.start.push_back(static_cast<std::int64_t>(plan.order.size()));
    plan.count.push_back(static_cast<std::int64_t>(batch.rows.size()));
    for (std::int64_t row : batch.rows) {
      plan.order.push_back(row);
      plan.batch_of_row[static_cast<std::size_t>(row)] = batch.index;
    }
    plan.batches.push_back(std::move(batch));
  }
  return plan;
}

BatchPlan plan_from_arrays(const std::vector<std::int32_t>& n_tokens, const std::vector<std::int64_t>& order,
                           const std::vector<std::int64_t>& start, const std::vector<std::int64_t>& count) {
  const auto n = static_cast<std::int64_t>(n_tokens.size());
  auto require = [](bool ok, const char* what) {
    if (!ok) throw SpecMismatch(std::string("the stored batch plan is inconsistent: ") + what);
  };
  require(static_cast<std::int64_t>(order.size()) == n, "/batches/order does not hold one entry per prompt");
  require(start.size() == count.size() && !start.empty(),
          "/batches/start and /batches/count differ or are empty");
  BatchPlan plan;
  plan.order = order;
  plan.start = start;
  plan.count = count;
  plan.batch_of_row.assign(n_tokens.size(), -1);
  std::int64_t next = 0;
  for (std::size_t b = 0; b < start.size(); ++b) {
    require(start[b] == next && count[b] > 0 && count[b] <= n - next,
            "the batches are not contiguous in order");
    Batch batch;
    batch.index = static_cast<std::int32_t>(b);
    for (std::int64_t k = start[b]; k < start[b] + count[b]; ++k) {
      const std::int64_t row = order[static_cast<std::size_t>(k)];
      require(row >= 0 && row < n, "/batches/order names a row outside /prompts");
      auto& owner = plan.batch_of_row[static_cast<std::size_t>(row)];
      require(owner < 0, "/batches/order names a row twice");
      owner = batch.index;
      batch.rows.push_back(row);
      batch.padded_len = std::max(batch.padded_len, n_tokens[static_cast<std::size_t>(row)]);
    }
    next += count[b];
    plan.batches.push_back(std::move(batch));
  }
  require(next == n, "the batches do not cover every prompt");
  return plan;
}

PlanSummary summarize(const BatchPlan& plan, const std::vector<std::int32_t>& n_tokens,
                      const RowShape& shape) {
  PlanSummary summary;
  summary.prompts = static_cast<std::int64_t>(n_tokens.size());
  summary.tokens = std::accumulate(n_tokens.begin(), n_tokens.end(), std::int64_t{0});
  summary.batches = static_cast<std::int64_t>(plan.batches.size());
  summary.jobs = summary.batches;
  for (const Batch& batch : plan.batches) {
    const auto rows = static_cast<std::int64_t>(batch.rows.size());
    summary.padded_tokens += rows * batch.padded_len;
    summary.download_bytes += rows * shape.row_bytes();
    summary.max_batch_bytes = std::max(summary.max_batch_bytes, rows * shape.row_bytes());
  }
  summary.file_bytes = summary.download_bytes +
                       summary.prompts * (kRowIndexBytes + kPositionBytes * shape.positions) +
                       summary.batches * kBatchBytes;
  return summary;
}

}  // namespace ndif::plan
