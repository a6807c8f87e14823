#pragma once
/// \file
/// Work split into parts that run on threads of their own, for the loops that parse and tokenize
/// prompts a block at a time.

#include <cstddef>
#include <functional>

namespace ndif {

/// Runs `work(0)` to `work(parts - 1)`: part 0 on the calling thread, each other part on a thread
/// of its own, and returns once every part has run. A part whose thread cannot be started (a
/// limit on threads, cgroup pids) runs on the calling thread instead, so that a rank under such a
/// limit is slower, never stopped. `work` must not throw: each part keeps its own error.
void run_parts(std::size_t parts, const std::function<void(std::size_t part)>& work);

/// How many contiguous slices `rows` rows are worked in: at most `threads`, none of fewer than
/// `min_rows` rows (a thread costs more than a few rows' work), at least one.
[[nodiscard]] std::size_t slice_count(std::size_t rows, unsigned threads, std::size_t min_rows) noexcept;

/// Runs `work(part, from, to)` for the `parts` contiguous slices of rows [0, rows) through
/// run_parts, slice k being [rows * k / parts, rows * (k + 1) / parts). `work` may throw: once every
/// slice has run, the error of the lowest slice that threw is rethrown, the one a single thread
/// going through the rows in order would have met first.
void run_slices(std::size_t rows, std::size_t parts,
                const std::function<void(std::size_t part, std::size_t from, std::size_t to)>& work);

}  // namespace ndif
