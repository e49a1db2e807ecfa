// Parsing the trainer's event lines (worker/train/event_pipe.h documents the
// format): one flat JSON object per line with a "type" of step, checkpoint or
// exit.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace llmt::daemon {

struct TrainerEvent {
  enum class Type { kStep, kCheckpoint, kExit };
  Type type = Type::kStep;
  int64_t step = 0;       // step / checkpoint
  int64_t max_steps = 0;  // step
  // step: every numeric field but step/max_steps (loss, lr, grad_norm,
  // tokens_per_s, step_ms, tokens_seen, val_loss, ...); checkpoint: val_loss.
  std::map<std::string, double> metrics;
  bool skipped = false;    // step
  std::string dir;         // checkpoint
  bool ok = false;         // exit
  int64_t final_step = 0;  // exit
  std::string message;     // exit
};

// Errors quote (a prefix of) the line and say what is wrong.
absl::StatusOr<TrainerEvent> ParseTrainerEvent(const std::string& line);

}  // namespace llmt::daemon
