// The coordinator's state machine: jobs, attempts, workers, checkpoints and
// events held in memory and made durable in the RocksDB store before any
// reply reveals them. The gRPC layer (service.h) is a thin adapter over this
// class, so the logic is unit-tested with an injected clock and no network.
//
// Concurrency: one mutex orders every state transition; each transition is
// built as one store::Batch and *enqueued* under that mutex (fixing its
// order), then the caller waits for durability outside the mutex, so
// concurrent RPCs share synced writes (group commit). Read-only calls wait
// for the newest enqueued batch too: a reply never shows state that a crash
// could take back. A failed synced write aborts the process (crash-only):
// memory is ahead of disk and only a restart from disk is consistent.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "coordinator/clock.h"
#include "coordinator/rendezvous.h"
#include "coordinator/scheduler.h"
#include "llmt/v1/coordinator.pb.h"
#include "llmt/v1/job.pb.h"
#include "storage/store/store.h"

namespace llmt::coord {

struct CoordinatorOptions {
  absl::Duration lease_timeout = absl::Seconds(10);
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Restart k waits base * 2^(k-1), capped.
  absl::Duration restart_backoff = absl::Seconds(2);
  absl::Duration restart_backoff_max = absl::Minutes(5);
  // Stop lower-priority gangs (they checkpoint on SIGTERM, then resume) when
  // a higher-priority job cannot be placed.
  bool preemption = false;
  // output_dir for jobs that do not set one: <jobs_dir>/<id>. Must be a path
  // every worker sees (shared filesystem). "" = the spec must set output_dir.
  std::string jobs_dir;
  int default_page_size = 50;
  int max_page_size = 1000;
};

// Prometheus series the coordinator exports (prefix llmt_coordinator_).
struct CoordinatorMetrics {
  explicit CoordinatorMetrics(metrics::Registry* r);
  metrics::Family<metrics::Gauge>& jobs;        // {state}
  metrics::Family<metrics::Gauge>& workers;     // {state}
  metrics::Gauge* queue_depth;
  metrics::Gauge* live_attempts;
  metrics::Histogram* scheduling_latency;       // PENDING -> placed, seconds
  metrics::Family<metrics::Histogram>& rpc_latency;  // {service, method, code}
  metrics::Family<metrics::Counter>& unauthenticated;  // {service}
  metrics::Counter* leases_expired;
  metrics::Counter* attempts_started;
  metrics::Family<metrics::Counter>& attempts_ended;  // {state}
  metrics::Counter* job_restarts;
  metrics::Counter* preemptions;
  metrics::Counter* checkpoints_committed;
  metrics::Counter* checkpoints_gc_deleted;
  metrics::Counter* checkpoint_gc_bytes;
  metrics::Histogram* commit_group_size;        // batches per synced write
  metrics::Histogram* commit_seconds;           // synced write latency
};

// Parses "jobs/{id}" (or a bare id); the error names `field`.
absl::StatusOr<uint64_t> ParseJobName(const std::string& name, const std::string& field = "name");
std::string JobName(uint64_t id);
const char* JobStateName(v1::JobState s);  // "PENDING", ...
const char* AttemptStateName(v1::AttemptState s);
bool IsTerminal(v1::JobState s);
// Checkpoint URI ("file:///x" or "/x") -> local path; "" if not a local path.
std::string CheckpointPath(const std::string& uri);

class Coordinator {
 public:
  // `registry` may be null (no metrics). The store and clock must outlive it.
  Coordinator(store::Store* store, Clock* clock, CoordinatorOptions options,
              metrics::Registry* registry);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Loads all state from the store. Call once before anything else.
  absl::Status Recover();

  // --- JobService ---
  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& req);
  absl::StatusOr<v1::Job> GetJob(const v1::GetJobRequest& req);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& req);
  absl::StatusOr<v1::Job> CancelJob(const v1::CancelJobRequest& req);
  // Streams events through `send` (returns false when the client is gone);
  // `cancelled` is polled while waiting. Returns when the job reaches a
  // terminal event, the client goes away or Shutdown() is called.
  absl::Status WatchJob(const v1::WatchJobRequest& req,
                        const std::function<bool(const v1::Event&)>& send,
                        const std::function<bool()>& cancelled);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(
      const v1::ListCheckpointsRequest& req);
  absl::StatusOr<v1::ListAttemptsResponse> ListAttempts(const v1::ListAttemptsRequest& req);
  absl::StatusOr<v1::GetQueueResponse> GetQueue();
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers();

  // --- WorkerService ---
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest& req);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& req);
  absl::Status ReportProgress(const v1::ReportProgressRequest& req);
  absl::StatusOr<v1::Checkpoint> CommitCheckpoint(const v1::CommitCheckpointRequest& req);
  absl::StatusOr<v1::ReportAttemptResultResponse> ReportAttemptResult(
      const v1::ReportAttemptResultRequest& req);
  absl::Status KvSet(const v1::KvSetRequest& req);
  absl::StatusOr<v1::KvGetResponse> KvGet(const v1::KvGetRequest& req);
  absl::StatusOr<v1::KvWaitResponse> KvWait(const v1::KvWaitRequest& req);
  absl::StatusOr<v1::KvAddResponse> KvAdd(const v1::KvAddRequest& req);

  // --- Background work ---
  // Expires leases, then (when something changed or a backoff ran out) runs
  // a scheduling pass: places pending jobs, preempts if enabled.
  void Tick();
  // Sleeps until new work is signalled or `timeout` passes.
  void WaitForWork(absl::Duration timeout);
  // Deletes files of checkpoints that retention marked DELETING (tolerating
  // files already gone), then their registry records. Returns how many.
  int RunCheckpointGc();
  // Wakes WatchJob streams and KV waiters so the server can stop.
  void Shutdown();

  CoordinatorMetrics* metrics() { return metrics_.get(); }
  const CoordinatorOptions& options() const { return options_; }

 private:
  struct JobEntry {
    v1::Job job;
  };
  struct WorkerEntry {
    v1::Worker w;
    absl::Time lease_expiry;
  };
  struct Txn;

  // All *Locked helpers require mu_.
  absl::Status Commit(Txn& txn, std::unique_lock<std::mutex>& l);
  absl::Status ReadBarrier(std::unique_lock<std::mutex>& l);
  // Marks the job to be written once at commit (events bump its last_event_seq).
  void MarkJob(Txn& txn, JobEntry& e);
  void PutJobNow(Txn& txn, JobEntry& e);
  void PutAttempt(Txn& txn, const v1::Attempt& a);
  void PutWorker(Txn& txn, const v1::Worker& w);
  void PutCheckpoint(Txn& txn, const v1::Checkpoint& c);
  void AppendEvent(Txn& txn, JobEntry& e, v1::Event ev);
  void AttemptEvent(Txn& txn, JobEntry& e, const v1::Attempt& a);
  void SetJobState(Txn& txn, JobEntry& e, v1::JobState to, const std::string& reason,
                   uint64_t attempt_id);
  void StopAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, v1::AttemptState outcome,
                   const std::string& reason);
  void MaybeFinalize(Txn& txn, JobEntry& e, v1::Attempt& a);
  void FailAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, const std::string& reason);
  // Stops an attempt whose worker stopped a rank on its own (shutdown,
  // superseded session) and requeues its job without using a restart.
  void RequeueAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, const std::string& why);
  void LoseWorker(Txn& txn, WorkerEntry& w, const std::string& reason);
  void PlaceJob(Txn& txn, JobEntry& e, const std::vector<RankSlot>& slots);
  void ApplyRetention(Txn& txn, JobEntry& e);
  void SchedulePass(Txn& txn, absl::Time now);
  void Preempt(Txn& txn, JobEntry& e, const GangRequest& req);
  std::string WaitReason(const JobEntry& e, bool behind_blocker, absl::Time now,
                         const std::vector<WorkerFree>& ready_total) const;
  std::vector<WorkerFree> FreeResources(bool count_stopping_as_free) const;
  std::vector<WorkerFree> TotalCapacity(bool include_lost) const;
  // The job's current attempt if `attempt_id` is it and it is live; else
  // FAILED_PRECONDITION naming the stale attempt (fencing).
  absl::StatusOr<v1::Attempt*> CurrentAttempt(uint64_t attempt_id, int rank,
                                              const std::string& worker_id, JobEntry** job);
  absl::Status CheckKvAccess(uint64_t attempt_id);
  void UpdateGauges();
  void Wake();

  store::Store* store_;
  Clock* clock_;
  CoordinatorOptions options_;
  std::unique_ptr<CoordinatorMetrics> metrics_;
  Rendezvous rendezvous_;

  std::mutex mu_;
  std::map<uint64_t, JobEntry> jobs_;
  std::map<uint64_t, v1::Attempt> attempts_;
  std::set<uint64_t> live_attempts_;  // STARTING, RUNNING, STOPPING
  std::map<std::string, WorkerEntry> workers_;
  std::map<uint64_t, std::map<int64_t, v1::Checkpoint>> checkpoints_;  // job -> step
  std::unordered_map<std::string, v1::IdempotencyRecord> idempotency_;
  std::set<std::pair<int64_t, uint64_t>> pending_;  // (-priority, job id): queue order
  uint64_t next_job_id_ = 1;
  uint64_t next_attempt_id_ = 1;
  bool sched_dirty_ = true;
  uint64_t blocker_id_ = 0;     // first job the last pass could not place (0 = none)
  std::string blocker_detail_;  // why it waits
  absl::Time next_backoff_due_ = absl::InfiniteFuture();
  bool recovered_ = false;

  // WatchJob / scheduler wake-ups (separate from mu_ so waiters never hold it).
  std::mutex wake_mu_;
  std::condition_variable watch_cv_;
  std::condition_variable work_cv_;
  uint64_t watch_gen_ = 0;
  bool work_pending_ = false;
  bool shutdown_ = false;
};

}  // namespace llmt::coord
