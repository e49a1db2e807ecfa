#include "worker/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace llmt::train {

absl::StatusOr<Schedule::Kind> Schedule::ParseKind(const std::string& s) {
  if (s == "cosine" || s.empty()) return Kind::kCosine;
  if (s == "linear") return Kind::kLinear;
  if (s == "constant") return Kind::kConstant;
  if (s == "wsd") return Kind::kWsd;
  return absl::InvalidArgumentError(
      absl::StrCat("schedule.kind: unknown schedule '", s, "' (cosine|linear|constant|wsd)"));
}

double Schedule::LrAt(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) {
    return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  const double min_lr = lr * min_lr_ratio;
  const int64_t decay_total = std::max<int64_t>(1, max_steps - warmup_steps);
  // progress in [0, 1] over the post-warmup part of training
  const double progress =
      std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(decay_total), 0.0, 1.0);
  switch (kind) {
    case Kind::kConstant:
      return lr;
    case Kind::kLinear:
      return min_lr + (lr - min_lr) * (1.0 - progress);
    case Kind::kCosine:
      return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case Kind::kWsd: {
      const int64_t decay_steps =
          std::max<int64_t>(1, static_cast<int64_t>(std::llround(decay_fraction * max_steps)));
      const int64_t decay_start = std::max(warmup_steps, max_steps - decay_steps);
      if (step < decay_start) return lr;
      const double p = std::clamp(static_cast<double>(step - decay_start) /
                                      static_cast<double>(std::max<int64_t>(1, max_steps - decay_start)),
                                  0.0, 1.0);
      return min_lr + (lr - min_lr) * (1.0 - p);
    }
  }
  return lr;
}

}  // namespace llmt::train
