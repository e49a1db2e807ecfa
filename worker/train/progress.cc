#include "worker/train/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"

namespace llmt::train {
namespace {
std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  long t = std::lround(s);
  if (t >= 3600) return absl::StrFormat("%ldh%02ldm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%ldm%02lds", t / 60, t % 60);
  return absl::StrFormat("%lds", t);
}
std::string Rate(double tok_s) {
  if (tok_s >= 1e6) return absl::StrFormat("%.2fM", tok_s / 1e6);
  if (tok_s >= 1e4) return absl::StrFormat("%.1fk", tok_s / 1e3);
  return absl::StrFormat("%.0f", tok_s);
}
}  // namespace

ProgressPrinter::ProgressPrinter(TrainOptions::Progress mode, int64_t max_steps, int log_every)
    : mode_(mode), max_steps_(max_steps), log_every_(log_every) {
  if (mode_ == TrainOptions::Progress::kAuto) {
    mode_ = isatty(STDERR_FILENO) ? TrainOptions::Progress::kBar : TrainOptions::Progress::kLines;
  }
}

void ProgressPrinter::Update(const StepMetrics& m) {
  if (mode_ == TrainOptions::Progress::kNone) return;
  tok_s_ema_ = tok_s_ema_ == 0 ? m.tokens_per_s : 0.9 * tok_s_ema_ + 0.1 * m.tokens_per_s;
  if (m.has_val) last_val_ = m.val_loss;
  // Smoothed rate: tokens per step / smoothed tokens per second.
  const double tokens_per_step = m.tokens_per_s * m.step_ms / 1e3;
  const double eta = tok_s_ema_ > 0 ? (max_steps_ - m.step) * tokens_per_step / tok_s_ema_ : 0;
  const std::string val =
      last_val_ >= 0 ? absl::StrFormat(" | val %.3f (ppl %.1f)", last_val_, std::exp(last_val_)) : "";
  if (mode_ == TrainOptions::Progress::kBar) {
    auto now = std::chrono::steady_clock::now();
    if (!m.has_val && m.step != max_steps_ && now - last_draw_ < std::chrono::milliseconds(100)) {
      return;
    }
    last_draw_ = now;
    const int width = 24;
    int filled = static_cast<int>(width * m.step / std::max<int64_t>(1, max_steps_));
    std::string bar(filled, '=');
    if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
    std::fprintf(stderr, "\r\033[K[%s] %lld/%lld | loss %.4f%s | %s tok/s | lr %.2e | ETA %s",
                 bar.c_str(), static_cast<long long>(m.step), static_cast<long long>(max_steps_),
                 m.loss, val.c_str(), Rate(tok_s_ema_).c_str(), m.lr, Duration(eta).c_str());
    std::fflush(stderr);
    bar_open_ = true;
    return;
  }
  if (m.step % log_every_ == 0 || m.has_val || m.step == max_steps_) {
    std::fprintf(stderr, "step %lld/%lld | loss %.4f%s | grad %.3f | lr %.2e | %s tok/s | %.0f ms | ETA %s%s\n",
                 static_cast<long long>(m.step), static_cast<long long>(max_steps_), m.loss,
                 val.c_str(), m.grad_norm, m.lr, Rate(tok_s_ema_).c_str(), m.step_ms,
                 Duration(eta).c_str(), m.skipped ? " (skipped)" : "");
  }
}

void ProgressPrinter::Finish() {
  if (bar_open_) {
    std::fprintf(stderr, "\n");
    bar_open_ = false;
  }
}

}  // namespace llmt::train
