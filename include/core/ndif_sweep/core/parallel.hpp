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

}  // namespace ndif
