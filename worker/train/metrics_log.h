// OUT/metrics.jsonl: one JSON object per optimizer step, "step" first. On
// resume, lines past the checkpoint's step are dropped so the file always
// describes exactly one history.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/train/trainer.h"

namespace llmt::train {

class MetricsLog {
 public:
  ~MetricsLog();
  static absl::StatusOr<std::unique_ptr<MetricsLog>> Open(const std::string& path,
                                                          int64_t keep_up_to_step);
  absl::Status Append(const StepMetrics& m);
  static std::string ToJsonLine(const StepMetrics& m);

 private:
  MetricsLog() = default;
  std::string path_;
  FILE* f_ = nullptr;
};

}  // namespace llmt::train
