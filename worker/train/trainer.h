// The training loop: data loader -> model forward/backward (with gradient
// accumulation) -> global-norm clipping and bad-step detection -> AdamW with a
// schedule -> periodic validation, metrics.jsonl, checkpoints; exact resume.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "llmt/v1/job.pb.h"

namespace llmt::comm {
class Collective;
}

namespace llmt::train {

struct StepMetrics {
  int64_t step = 0;  // optimizer steps completed (1-based)
  int64_t max_steps = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, step_ms = 0;
  int64_t tokens_seen = 0;
  bool skipped = false;
  bool has_val = false;
  double val_loss = 0;
};

// Receives progress events (the worker daemon forwards them to the
// coordinator; metrics.jsonl and the progress line are built in).
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void OnStep(const StepMetrics& m) {}
  virtual void OnCheckpoint(int64_t step, const std::string& dir, double val_loss) {}
};

struct TrainOptions {
  llmt::v1::JobSpec spec;     // defaults applied and validated
  std::string out_dir;        // metrics.jsonl, checkpoints/
  std::string resume;         // "" (fresh; fails if OUT has checkpoints), "auto", or a checkpoint dir
  enum class Progress { kAuto, kBar, kLines, kNone } progress = Progress::kAuto;
  TrainObserver* observer = nullptr;
  // Data-parallel group (not owned); nullptr = a single process. Every rank
  // runs a Trainer with the same spec; rank 0 writes metrics and checkpoints.
  comm::Collective* comm = nullptr;
};

struct TrainResult {
  int64_t final_step = 0;
  bool stopped_by_signal = false;
  double final_val_loss = 0;  // 0 if no evaluation ran
  std::string last_checkpoint;
};

class Trainer {
 public:
  virtual ~Trainer() = default;
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainOptions& opts);
  virtual absl::StatusOr<TrainResult> Run() = 0;
};

// SIGTERM/SIGINT set a flag the loop checks after each step: it then writes a
// checkpoint and returns (exit 0), so `--resume auto` continues later.
void InstallStopSignalHandlers();
bool StopRequested();
void RequestStop();

}  // namespace llmt::train
