// Human progress: a redrawn bar on a terminal, plain lines otherwise.
#pragma once

#include <chrono>
#include <cstdint>

#include "worker/train/trainer.h"

namespace llmt::train {

class ProgressPrinter {
 public:
  ProgressPrinter(TrainOptions::Progress mode, int64_t max_steps, int log_every);
  void Update(const StepMetrics& m);
  void Finish();  // ends the bar line

 private:
  TrainOptions::Progress mode_;
  int64_t max_steps_;
  int log_every_;
  bool bar_open_ = false;
  double tok_s_ema_ = 0;
  double last_val_ = -1;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace llmt::train
