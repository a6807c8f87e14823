#include "ndif_sweep/remote/decode_pool.hpp"

#include <utility>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {

DecodePool::DecodePool(unsigned threads, std::function<void()> ready) : ready_(std::move(ready)) {
  threads_.reserve(threads);
  try {
    for (unsigned t = 0; t < threads; ++t) threads_.emplace_back([this] { loop(); });
  } catch (...) {
    // A thread the system would not start: the ones that did start are stopped, not left running.
    stop();
    throw;
  }
}

DecodePool::~DecodePool() { stop(); }

void DecodePool::stop() noexcept {
  if (threads_.empty()) return;
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

DecodePool::Done DecodePool::decode(Job job) {
  Done done;
  done.outcome.key = job.key;
  try {
    done.outcome.result = decode_result(std::move(job.bytes), job.expected, std::move(job.room));
  } catch (const DecodeError& e) {
    done.outcome.error = e.what();
  } catch (...) {
    done.failure = std::current_exception();
  }
  return done;
}

void DecodePool::submit(std::int64_t key, std::vector<std::byte> bytes, ExpectedResult expected) {
  if (threads_.empty()) {
    auto done = decode(Job{key, std::move(bytes), std::move(expected), {}, 0});
    const std::lock_guard lock(mutex_);
    done_.push_back(std::move(done));
    return;
  }
  // The room for the decompressed result and for several probes' rows is allocated here, on the
  // caller's thread: from the main heap,
  // whose freed large blocks stay mapped (core/memory.hpp), where a decoding thread's own arena
  // unmaps its heaps once empty and every result was faulted in afresh (bench/write_bench.cpp: G4
  // 0.55 GB/s on a thread against 0.86 inline, before).
  auto room = result_room(bytes, expected);
  {
    const std::lock_guard lock(mutex_);
    queue_.push_back(Job{key, std::move(bytes), std::move(expected), std::move(room), generation_});
  }
  work_cv_.notify_one();
}

void DecodePool::loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    auto job = std::move(queue_.front());
    queue_.pop_front();
    const auto generation = job.generation;
    ++decoding_;
    lock.unlock();
    auto done = decode(std::move(job));
    lock.lock();
    --decoding_;
    const bool kept = generation == generation_;  // else discarded while it decoded
    if (kept) done_.push_back(std::move(done));
    lock.unlock();
    ready_cv_.notify_all();
    if (kept && ready_) ready_();
    // A discarded result's buffers are freed here, outside the lock.
    done = Done{};
    lock.lock();
  }
}

std::vector<DecodeOutcome> DecodePool::take_locked(std::unique_lock<std::mutex>& lock) {
  auto done = std::exchange(done_, {});
  lock.unlock();
  std::vector<DecodeOutcome> out;
  out.reserve(done.size());
  for (auto& d : done) {
    if (d.failure) std::rethrow_exception(d.failure);
    out.push_back(std::move(d.outcome));
  }
  return out;
}

std::vector<DecodeOutcome> DecodePool::take() {
  std::unique_lock lock(mutex_);
  return take_locked(lock);
}

std::vector<DecodeOutcome> DecodePool::take(std::chrono::milliseconds max_wait) {
  std::unique_lock lock(mutex_);
  ready_cv_.wait_for(lock, max_wait, [&] { return !done_.empty() || (queue_.empty() && decoding_ == 0); });
  return take_locked(lock);
}

std::size_t DecodePool::pending() const {
  const std::lock_guard lock(mutex_);
  return queue_.size() + decoding_ + done_.size();
}

void DecodePool::discard() {
  std::deque<Job> queued;
  std::vector<Done> done;
  {
    const std::lock_guard lock(mutex_);
    ++generation_;
    queued.swap(queue_);
    done.swap(done_);
  }
  // Freed here, outside the lock.
}

}  // namespace ndif::remote
