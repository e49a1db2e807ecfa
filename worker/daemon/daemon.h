// llmt-worker's core: registers with the coordinator, heartbeats, and
// reconciles the attempts the coordinator wants run here (level-triggered:
// start what is desired and not running, stop what runs and is not desired),
// supervising one trainer process per local rank (rank_process.h) and
// forwarding its progress, checkpoints and outcome (outbox.h).
//
// Fencing: a rank starts only when a successful heartbeat lists it; it is
// stopped when a heartbeat no longer does (SIGTERM, so the trainer
// checkpoints, then SIGKILL after the grace period) and killed at once when
// the coordinator refuses its reports as stale, when this worker's session was
// superseded, or when the heartbeat that dropped it came after a silence
// longer than the lease (the coordinator may have declared this worker lost
// and placed the attempt elsewhere: a checkpoint from here could clobber the
// new attempt's). A rank that ended is never started again.
//
// Threads: Run() is the control loop (it forks the trainers, see
// RankProcess::Start); the outbox has a sender; each rank a reader.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "llmt/v1/coordinator.grpc.pb.h"
#include "worker/daemon/outbox.h"
#include "worker/daemon/rank_process.h"
#include "worker/daemon/rpc_client.h"
#include "worker/daemon/worker_metrics.h"

namespace llmt::daemon {

struct DaemonOptions {
  std::string worker_id;           // stable name; default: the hostname
  std::string advertise_host;      // address peers reach this machine at (Gloo binds it)
  rpc::ClientOptions coordinator;  // address, token (WorkerService), TLS
  std::string trainer;             // path of the `llmt` binary that runs `llmt train`
  std::string state_dir;           // rank logs and spec files
  std::string gpus = "auto";       // see BuildCapacity
  int cpus = 0;                    // 0 = every allowed core
  std::map<std::string, std::string> labels;
  absl::Duration stop_grace = absl::Seconds(30);  // SIGTERM -> SIGKILL
  absl::Duration progress_interval = absl::Seconds(1);
  absl::Duration rpc_timeout = absl::Seconds(5);
  std::string http_listen = "0.0.0.0:7072";  // /metrics, /healthz, /readyz; "" = off
  double peak_flops_per_rank = 0;            // for llmt_mfu_ratio; 0 = from the hardware
  std::string port_file;                     // "http_port=N\n" once serving
  // A finished rank's {job, rank} series stay exported this long (so the last
  // values are scraped and seen on dashboards), then are dropped, so a
  // long-running worker does not export every job it ever ran.
  absl::Duration finished_series_ttl = absl::Minutes(15);
};

// Training FLOPs per token of the spec's model (6 x parameters + 6 x layers x
// d_model x seq_len for attention, as the engine counts them); 0 when the
// family is unknown or vocab_size is 0.
double TrainFlopsPerToken(const v1::JobSpec& spec, int vocab_size);

class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(const DaemonOptions& options);
  ~Daemon();

  // The control loop; returns after RequestStop() once every rank stopped
  // (SIGTERM, checkpoint, exit; SIGKILL after the grace) and the outbox
  // drained (bounded).
  void Run();
  void RequestStop();
  int http_port() const { return http_ ? http_->port() : 0; }

 private:
  struct Rank;
  using Key = std::pair<uint64_t, int>;  // (attempt id, rank)

  explicit Daemon(const DaemonOptions& options);
  absl::Status Register();
  // One heartbeat; reconciles on success.
  void HeartbeatOnce();
  void Reconcile(const v1::HeartbeatResponse& resp, bool after_silence);
  void StartRank(const v1::DesiredAttempt& d, const v1::RankAssignment& ra);
  void StopRank(Rank& r, bool kill_now, const std::string& why);
  void ReapRanks();
  void FinishRank(Rank& r);
  void Enforce();  // SIGKILL past the grace; kill fenced attempts
  void OnEvent(Rank* r, const TrainerEvent& ev);
  void ReportNotStarted(const v1::DesiredAttempt& d, int rank, const std::string& why,
                        v1::AttemptOutcome outcome = v1::ATTEMPT_OUTCOME_FAILED);
  std::vector<int> TakeCpus(int n);
  void ReleaseCpus(const std::vector<int>& cpus);
  std::vector<v1::RunningRank> RunningRanks() const;

  DaemonOptions options_;
  metrics::Registry registry_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<metrics::HttpServer> http_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::unique_ptr<Outbox> outbox_;
  v1::WorkerCapacity capacity_;
  std::vector<int> allowed_cpus_;
  std::vector<int> cpu_load_;  // ranks pinned per allowed_cpus_ entry
  size_t cpu_rotate_ = 0;      // spreads co-located workers over different cores

  // Control-loop state (Run's thread only).
  bool registered_ = false;
  uint64_t session_ = 0;
  absl::Duration heartbeat_interval_ = absl::Seconds(1);
  absl::Duration lease_timeout_ = absl::Seconds(10);
  absl::Time last_heartbeat_ok_ = absl::InfinitePast();
  absl::Time next_heartbeat_ = absl::InfinitePast();
  absl::Duration retry_backoff_ = absl::Milliseconds(100);
  absl::Time last_complaint_ = absl::InfinitePast();
  std::map<Key, std::unique_ptr<Rank>> ranks_;
  std::set<Key> finished_;  // ended here (never restarted)
  // Per-rank metric series to drop once `at` has passed (finished_series_ttl).
  struct StaleSeries {
    absl::Time at;
    std::string job;
    int rank;
  };
  std::vector<StaleSeries> stale_series_;
  void DropStaleSeries();
  bool draining_ = false;

  // Shared with other threads.
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_requested_ = false;
  bool wake_ = false;
  std::set<uint64_t> fenced_;  // attempts the coordinator refused (outbox thread adds)
  std::atomic<bool> ready_{false};
};

}  // namespace llmt::daemon
