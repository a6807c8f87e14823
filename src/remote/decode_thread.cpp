#include "ndif_sweep/remote/decode_thread.hpp"

#include <utility>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {

DecodeThread::DecodeThread(bool background, std::function<void()> ready) : ready_(std::move(ready)) {
  if (background) thread_ = std::thread([this] { loop(); });
}

DecodeThread::~DecodeThread() {
  if (!thread_.joinable()) return;
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  thread_.join();
}

DecodeThread::Done DecodeThread::decode(Job job) {
  Done done;
  done.outcome.key = job.key;
  try {
    done.outcome.result = decode_result(std::move(job.bytes), job.expected);
  } catch (const DecodeError& e) {
    done.outcome.error = e.what();
  } catch (...) {
    done.failure = std::current_exception();
  }
  return done;
}

void DecodeThread::submit(std::int64_t key, std::vector<std::byte> bytes, ExpectedResult expected) {
  if (!thread_.joinable()) {
    auto done = decode(Job{key, std::move(bytes), std::move(expected), 0});
    const std::lock_guard lock(mutex_);
    done_.push_back(std::move(done));
    return;
  }
  {
    const std::lock_guard lock(mutex_);
    queue_.push_back(Job{key, std::move(bytes), std::move(expected), generation_});
  }
  work_cv_.notify_one();
}

void DecodeThread::loop() {
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

std::vector<DecodeOutcome> DecodeThread::take_locked(std::unique_lock<std::mutex>& lock) {
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

std::vector<DecodeOutcome> DecodeThread::take() {
  std::unique_lock lock(mutex_);
  return take_locked(lock);
}

std::vector<DecodeOutcome> DecodeThread::take(std::chrono::milliseconds max_wait) {
  std::unique_lock lock(mutex_);
  ready_cv_.wait_for(lock, max_wait, [&] { return !done_.empty() || (queue_.empty() && decoding_ == 0); });
  return take_locked(lock);
}

std::size_t DecodeThread::pending() const {
  const std::lock_guard lock(mutex_);
  return queue_.size() + decoding_ + done_.size();
}

void DecodeThread::discard() {
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
