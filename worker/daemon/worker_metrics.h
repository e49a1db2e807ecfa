// Prometheus series served on llmt-worker's /metrics. Training series are
// labelled {job="jobs/N", rank="R"}; worker series carry no labels.
#pragma once

#include "common/metrics.h"

namespace llmt::daemon {

struct WorkerMetrics {
  explicit WorkerMetrics(metrics::Registry* r);

  // Per rank (from the trainer's step and checkpoint events).
  metrics::Family<metrics::Gauge>& train_loss;
  metrics::Family<metrics::Gauge>& val_loss;
  metrics::Family<metrics::Gauge>& learning_rate;
  metrics::Family<metrics::Gauge>& grad_norm;
  metrics::Family<metrics::Gauge>& tokens_per_second;
  metrics::Family<metrics::Gauge>& mfu_ratio;
  metrics::Family<metrics::Histogram>& step_duration;
  metrics::Family<metrics::Counter>& train_steps;
  metrics::Family<metrics::Histogram>& checkpoint_duration;
  metrics::Family<metrics::Counter>& checkpoint_bytes;
  metrics::Family<metrics::Gauge>& gpu_memory_used;
  metrics::Family<metrics::Gauge>& attempts_running;
  // Drops every per-rank series with these {job, rank} label values.
  void RemoveRank(const std::vector<std::string>& labels);

  // The daemon itself.
  metrics::Gauge* connected;  // 1 while heartbeats succeed
  metrics::Counter* heartbeat_failures;
  metrics::Counter* registrations;
  metrics::Gauge* reports_pending;  // outbox depth
  metrics::Counter* report_retries;
  metrics::Family<metrics::Counter>& ranks_ended;  // {outcome}
};

}  // namespace llmt::daemon
