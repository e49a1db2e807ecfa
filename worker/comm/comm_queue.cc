#include "worker/comm/comm_queue.h"

#include "common/status.h"

namespace llmt::comm {

CommQueue::CommQueue(Collective* collective) : collective_(collective) {
  thread_ = std::thread([this] { Loop(); });
}

CommQueue::~CommQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CommQueue::Enqueue(std::string name, Op op) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(std::move(name), std::move(op));
  }
  cv_.notify_one();
}

absl::Status CommQueue::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
  absl::Status s = error_;
  error_ = absl::OkStatus();
  return s;
}

void CommQueue::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and nothing left to run
    auto [name, op] = std::move(queue_.front());
    queue_.pop_front();
    const bool skip = !error_.ok();
    busy_ = true;
    lock.unlock();
    absl::Status s = skip ? absl::OkStatus() : op(*collective_);
    lock.lock();
    busy_ = false;
    if (!s.ok() && error_.ok()) error_ = Annotate(s, name);
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace llmt::comm
