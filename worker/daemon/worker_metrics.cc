#include "worker/daemon/worker_metrics.h"

namespace llmt::daemon {
namespace {
const std::vector<std::string> kJobRank = {"job", "rank"};
}  // namespace

WorkerMetrics::WorkerMetrics(metrics::Registry* r)
    : train_loss(r->AddGauge("llmt_train_loss", "Training loss of the last step.", kJobRank)),
      val_loss(r->AddGauge("llmt_val_loss", "Validation loss of the last evaluation.", kJobRank)),
      learning_rate(r->AddGauge("llmt_learning_rate", "Learning rate of the last step.", kJobRank)),
      grad_norm(r->AddGauge("llmt_grad_norm",
                            "Global gradient norm of the last step (before "
                            "clipping).",
                            kJobRank)),
      tokens_per_second(r->AddGauge("llmt_tokens_per_second",
                                    "Training throughput of the whole job (all ranks), last step.",
                                    kJobRank)),
      mfu_ratio(r->AddGauge("llmt_mfu_ratio",
                            "Model FLOPs utilisation: achieved training FLOP/s (6N + attention "
                            "per token) over the peak of the job's devices.",
                            kJobRank)),
      step_duration(r->AddHistogram("llmt_step_duration_seconds",
                                    "Wall time of one optimizer step.", kJobRank,
                                    metrics::ExponentialBuckets(0.001, 2, 18))),
      train_steps(r->AddCounter("llmt_train_steps_total",
                                "Optimizer steps completed by ranks on this worker.", kJobRank)),
      checkpoint_duration(r->AddHistogram("llmt_checkpoint_duration_seconds",
                                          "Time to write and commit one checkpoint.", kJobRank,
                                          metrics::ExponentialBuckets(0.01, 2, 16))),
      checkpoint_bytes(
          r->AddCounter("llmt_checkpoint_bytes_total", "Bytes of checkpoints written.", kJobRank)),
      gpu_memory_used(r->AddGauge("llmt_gpu_memory_used_bytes",
                                  "GPU memory held by the rank's process (NVML).", kJobRank)),
      attempts_running(r->AddGauge("llmt_attempts_running",
                                   "1 while the rank's trainer process runs on this worker.",
                                   kJobRank)),
      connected(
          r->AddGauge("llmt_worker_connected", "1 while heartbeats reach the coordinator.").Get()),
      heartbeat_failures(r->AddCounter("llmt_worker_heartbeat_failures_total",
                                       "Heartbeats that did not reach the coordinator.")
                             .Get()),
      registrations(r->AddCounter("llmt_worker_registrations_total",
                                  "Successful RegisterWorker calls (1 + re-registrations).")
                        .Get()),
      reports_pending(r->AddGauge("llmt_worker_reports_pending",
                                  "Progress, checkpoint and result reports not yet accepted by "
                                  "the coordinator.")
                          .Get()),
      report_retries(r->AddCounter("llmt_worker_report_retries_total",
                                   "Report deliveries retried after a transient failure.")
                         .Get()),
      ranks_ended(r->AddCounter("llmt_worker_ranks_ended_total",
                                "Trainer processes that ended, by reported outcome.",
                                {"outcome"})) {}

void WorkerMetrics::RemoveRank(const std::vector<std::string>& labels) {
  train_loss.Remove(labels);
  val_loss.Remove(labels);
  learning_rate.Remove(labels);
  grad_norm.Remove(labels);
  tokens_per_second.Remove(labels);
  mfu_ratio.Remove(labels);
  step_duration.Remove(labels);
  train_steps.Remove(labels);
  checkpoint_duration.Remove(labels);
  checkpoint_bytes.Remove(labels);
  gpu_memory_used.Remove(labels);
  attempts_running.Remove(labels);
}

}  // namespace llmt::daemon
