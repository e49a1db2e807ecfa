#include "worker/train/step_guard.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace llmt::train {

std::string StepGuard::Check(int64_t step, double loss, double grad_norm) {
  std::string reason;
  const bool armed = factor_ > 0 && step >= warmup_;
  if (!std::isfinite(loss)) {
    reason = "loss is not finite";
  } else if (!std::isfinite(grad_norm)) {
    reason = "gradient norm is not finite";
  } else if (armed && loss_ema_ > 0 && loss > factor_ * loss_ema_) {
    reason = absl::StrFormat("loss %.4f is over %.1fx its running mean %.4f", loss, factor_, loss_ema_);
  } else if (armed && gnorm_ema_ > 0 && grad_norm > factor_ * gnorm_ema_) {
    reason = absl::StrFormat("gradient norm %.4g is over %.1fx its running mean %.4g", grad_norm,
                             factor_, gnorm_ema_);
  }
  if (std::isfinite(loss) && std::isfinite(grad_norm)) {
    loss_ema_ = loss_ema_ == 0 ? loss : 0.95 * loss_ema_ + 0.05 * loss;
    gnorm_ema_ = gnorm_ema_ == 0 ? grad_norm : 0.95 * gnorm_ema_ + 0.05 * grad_norm;
  }
  return reason;
}

}  // namespace llmt::train
