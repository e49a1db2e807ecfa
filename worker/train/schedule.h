// Learning-rate schedules. All start with a linear warmup from lr/warmup to lr.
//   cosine:   cosine decay from lr to lr*min_lr_ratio at max_steps
//   linear:   linear decay from lr to lr*min_lr_ratio at max_steps
//   constant: lr after warmup
//   wsd:      warmup-stable-decay: constant, then linear decay to lr*min_lr_ratio
//             over the last decay_fraction of max_steps
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace llmt::train {

struct Schedule {
  enum class Kind { kCosine, kLinear, kConstant, kWsd };
  Kind kind = Kind::kCosine;
  double lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t max_steps = 1;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;

  static absl::StatusOr<Schedule::Kind> ParseKind(const std::string& s);
  // lr for optimizer step `step` (0-based).
  double LrAt(int64_t step) const;
};

}  // namespace llmt::train
