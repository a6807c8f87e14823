#include "ndif_sweep/core/parallel.hpp"

#include <algorithm>
#include <exception>
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

std::size_t slice_count(std::size_t rows, unsigned threads, std::size_t min_rows) noexcept {
  return std::clamp<std::size_t>(threads, 1,
                                 std::max<std::size_t>(1, rows / std::max<std::size_t>(1, min_rows)));
}

void run_slices(std::size_t rows, std::size_t parts,
                const std::function<void(std::size_t part, std::size_t from, std::size_t to)>& work) {
  std::vector<std::exception_ptr> errors(parts);
  run_parts(parts, [&](std::size_t part) {
    try {
      work(part, rows * part / parts, rows * (part + 1) / parts);
    } catch (...) {
      errors[part] = std::current_exception();
    }
  });
  for (const auto& error : errors)  // slices are in row order
    if (error) std::rethrow_exception(error);
}

}  // namespace ndif
