#include "worker/train/metrics_log.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fs.h"
#include "common/status.h"

namespace llmt::train {
namespace {
// JSON has no NaN/Inf: write null so the file stays parseable.
std::string Num(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

// Parses the leading {"step":N of a line written by ToJsonLine.
bool LineStep(const std::string& line, int64_t* step) {
  const std::string key = "{\"step\":";
  if (line.rfind(key, 0) != 0) return false;
  size_t end = line.find_first_of(",}", key.size());
  return absl::SimpleAtoi(line.substr(key.size(), end - key.size()), step);
}
}  // namespace

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

std::string MetricsLog::ToJsonLine(const StepMetrics& m) {
  std::string s = absl::StrCat("{\"step\":", m.step, ",\"loss\":", Num(m.loss), ",\"lr\":", Num(m.lr),
                               ",\"grad_norm\":", Num(m.grad_norm), ",\"tokens_per_s\":",
                               Num(m.tokens_per_s), ",\"step_ms\":", Num(m.step_ms),
                               ",\"tokens_seen\":", m.tokens_seen);
  if (m.skipped) absl::StrAppend(&s, ",\"skipped\":true");
  if (m.has_val) {
    absl::StrAppend(&s, ",\"val_loss\":", Num(m.val_loss), ",\"val_ppl\":", Num(std::exp(m.val_loss)));
  }
  absl::StrAppend(&s, "}\n");
  return s;
}

absl::StatusOr<std::unique_ptr<MetricsLog>> MetricsLog::Open(const std::string& path,
                                                             int64_t keep_up_to_step) {
  // Rewrite the existing file keeping only steps <= keep_up_to_step (atomic).
  if (fs::Exists(path)) {
    ASSIGN_OR_RETURN(std::string old, fs::ReadFile(path));
    std::string kept;
    std::istringstream in(old);
    std::string line;
    while (std::getline(in, line)) {
      int64_t step = 0;
      if (LineStep(line, &step) && step <= keep_up_to_step) absl::StrAppend(&kept, line, "\n");
    }
    RETURN_IF_ERROR(fs::WriteFileAtomic(path, kept));
  }
  auto log = std::unique_ptr<MetricsLog>(new MetricsLog());
  log->path_ = path;
  log->f_ = std::fopen(path.c_str(), "a");
  if (!log->f_) {
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  return log;
}

absl::Status MetricsLog::Append(const StepMetrics& m) {
  std::string line = ToJsonLine(m);
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    return absl::InternalError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace llmt::train
