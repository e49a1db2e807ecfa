// Trainer -> worker daemon channel: when `llmt train` runs under llmt-worker,
// the daemon passes a pipe's write end in LLMT_EVENT_FD and reads one JSON
// object per line:
//   {"type":"step","step":N,"max_steps":M,"loss":..,"lr":..,"grad_norm":..,
//    "tokens_per_s":..,"step_ms":..,"tokens_seen":..[,"val_loss":..][,"skipped":true]}
//   {"type":"checkpoint","step":N,"dir":"/abs/path/step-0000000N","val_loss":..}
//   {"type":"exit","ok":true|false,"final_step":N,"message":"..."}
// The trainer never talks to the coordinator itself.
#pragma once

#include <string>

#include "worker/train/trainer.h"

namespace llmt::train {

class EventPipeObserver final : public TrainObserver {
 public:
  explicit EventPipeObserver(int fd) : fd_(fd) {}
  void OnStep(const StepMetrics& m) override;
  void OnCheckpoint(int64_t step, const std::string& dir, double val_loss) override;
  void OnExit(bool ok, int64_t final_step, const std::string& message);
  // Returns the fd from LLMT_EVENT_FD, or -1 when unset/invalid.
  static int FdFromEnv();

 private:
  void WriteLine(const std::string& line);
  int fd_;
};

std::string JsonEscape(const std::string& s);

}  // namespace llmt::train
