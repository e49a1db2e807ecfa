// What a worker must tell the coordinator about its ranks, delivered in order
// by one sender thread and re-sent until the coordinator accepts it: progress
// points and log lines (ReportProgress), checkpoint commits
// (CommitCheckpoint) and final outcomes (ReportAttemptResult). A coordinator
// restart or a network blip only delays delivery; nothing is lost while the
// daemon lives.
//
// Progress points are coalesced: while one waits (the coordinator is down, or
// the previous one went out less than `progress_interval` ago) a newer point
// of the same rank replaces it, so an outage costs memory for one point per
// rank, and a fast trainer does not turn every step into a synced write on the
// coordinator. Points that carry a validation loss, and the final step, are
// never replaced. Log lines ride along with the progress points.
//
// A report refused as stale (FAILED_PRECONDITION: the attempt was fenced, or
// NOT_FOUND: the coordinator no longer knows it) is dropped with the rest of
// that attempt's progress and checkpoints, and `on_fenced` tells the daemon to
// kill the attempt's ranks.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "llmt/v1/coordinator.grpc.pb.h"

namespace llmt::daemon {

struct OutboxOptions {
  std::string worker_id;
  std::string token;
  absl::Duration rpc_timeout = absl::Seconds(5);
  absl::Duration progress_interval = absl::Seconds(1);
  // Beyond this many queued reports the oldest log-only ones are dropped
  // (progress, checkpoints and results never are).
  size_t max_queued = 20000;
};

class Outbox {
 public:
  using FencedFn = std::function<void(uint64_t attempt_id, const std::string& why)>;
  // `pending` and `retries` may be null.
  Outbox(std::shared_ptr<grpc::Channel> channel, OutboxOptions options, FencedFn on_fenced,
         metrics::Gauge* pending, metrics::Counter* retries);
  ~Outbox();  // stops the sender (undelivered reports are lost)

  void AddProgress(uint64_t attempt_id, int rank, int64_t step,
                   const std::map<std::string, double>& metrics, bool keep);
  void AddLogLine(uint64_t attempt_id, int rank, const std::string& line);
  void AddCheckpoint(v1::CommitCheckpointRequest req);
  void AddResult(v1::ReportAttemptResultRequest req);

  // Reports for `attempt_id` not yet accepted (including one in flight).
  size_t PendingFor(uint64_t attempt_id) const;
  size_t Pending() const;
  // Blocks until everything queued is delivered or `timeout` passes; true if
  // the queue drained.
  bool Flush(absl::Duration timeout);
  // True while the last call reached the coordinator.
  bool connected() const;

 private:
  enum class Kind { kProgress, kCheckpoint, kResult };
  struct Item {
    Kind kind;
    uint64_t attempt_id = 0;
    int rank = 0;
    bool mergeable = false;  // progress that a newer point may replace
    v1::ReportProgressRequest progress;
    v1::CommitCheckpointRequest checkpoint;
    v1::ReportAttemptResultRequest result;
  };
  void Push(Item item);
  // Progress item of (attempt, rank) at the tail that may still absorb more.
  Item* OpenProgress(uint64_t attempt_id, int rank);
  void SendLoop();
  absl::Status Send(const Item& item);
  void UpdateGauge();

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  OutboxOptions options_;
  FencedFn on_fenced_;
  metrics::Gauge* pending_gauge_;
  metrics::Counter* retries_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // new items / stop
  std::condition_variable idle_cv_;  // queue drained
  std::deque<Item> queue_;
  bool in_flight_ = false;  // queue_.front() is being sent
  bool stop_ = false;
  bool connected_ = false;
  absl::Time last_progress_sent_ = absl::InfinitePast();
  size_t dropped_log_lines_ = 0;
  std::thread sender_;
};

}  // namespace llmt::daemon
