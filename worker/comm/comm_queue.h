// Runs collective calls on a background thread, in submission order, so the
// trainer can overlap gradient communication with the rest of backward: it
// enqueues a bucket's all-reduce as soon as that bucket's gradients are final
// and calls Drain() before the optimizer step. Gloo calls block their thread,
// so this is how a CPU run overlaps; NCCL calls could also be queued here.
//
// Order is the contract: every rank must enqueue the same calls in the same
// order (as with direct calls). The enqueuing thread must not touch a buffer
// an enqueued call uses until Drain() returns.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "worker/comm/collective.h"

namespace llmt::comm {

class CommQueue {
 public:
  using Op = std::function<absl::Status(Collective&)>;

  explicit CommQueue(Collective* collective);
  ~CommQueue();  // finishes queued calls, then stops the thread
  CommQueue(const CommQueue&) = delete;
  CommQueue& operator=(const CommQueue&) = delete;

  // Queues `op` (named `name` in errors). After a failed call the remaining
  // queued calls are skipped: the group is broken and their results unusable.
  void Enqueue(std::string name, Op op);
  // Waits until every queued call has run; returns the first error since the
  // previous Drain() (prefixed with the call's name) and resets it.
  absl::Status Drain();

 private:
  void Loop();

  Collective* collective_;
  std::mutex mu_;
  std::condition_variable cv_;       // work available / stop
  std::condition_variable idle_cv_;  // queue drained
  std::deque<std::pair<std::string, Op>> queue_;
  bool busy_ = false;
  bool stop_ = false;
  absl::Status error_;
  std::thread thread_;
};

}  // namespace llmt::comm
