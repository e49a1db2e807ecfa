// Decides whether an optimizer step is "bad" and must be skipped: a loss or
// gradient norm that is NaN/Inf, or (when spike_factor > 0, after warmup) one
// that exceeds spike_factor times its running mean. The running means follow
// every finite value, skipped or not: a genuine upward drift (grad norm rising
// early in training) then lifts the bar instead of stalling the run, while a
// one-off spike moves it by only 5%.
#pragma once

#include <cstdint>
#include <string>

namespace llmt::train {

class StepGuard {
 public:
  StepGuard() = default;
  StepGuard(double spike_factor, int64_t warmup_steps, double loss_ema, double grad_norm_ema)
      : factor_(spike_factor), warmup_(warmup_steps), loss_ema_(loss_ema), gnorm_ema_(grad_norm_ema) {}

  // `step` is the 0-based index of the step being taken. Returns "" for a good
  // step, else the reason. Updates the running means.
  std::string Check(int64_t step, double loss, double grad_norm);

  double loss_ema() const { return loss_ema_; }
  double grad_norm_ema() const { return gnorm_ema_; }

 private:
  double factor_ = 0;
  int64_t warmup_ = 0;
  double loss_ema_ = 0, gnorm_ema_ = 0;
};

}  // namespace llmt::train
