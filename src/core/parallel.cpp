#include "ndif_sweep/core/parallel.hpp"

#include <system_error>
#include <thread>
#include <vector>

namespace ndif {

void run_parts(std::size_t parts, const std::function<void(std::size_t)>& work) {
  std::vector<std::thread> pool;
  std::vector<std::size_t> here;
  // Reserved first: once a thread runs, nothing here may throw before it is joined.
  pool.reserve(parts);
  here.reserve(parts);
  for (std::size_t part = 1; part < parts; ++part) {
    try {
      pool.emplace_back(work, part);
    } catch (const std::system_error&) {
      here.push_back(part);
    }
  }
  if (parts > 0) work(0);
  for (const std::size_t part : here) work(part);
  for (auto& thread : pool) thread.join();
}

}  // namespace ndif
