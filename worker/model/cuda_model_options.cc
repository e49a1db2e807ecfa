// Spec strings of the CUDA model's options; in llmt_model so spec checks and
// the trainer need no CUDA build.
#include "absl/strings/str_cat.h"
#include "worker/model/cuda_model.h"

namespace llmt::model {

absl::StatusOr<Precision> ParsePrecision(const std::string& s) {
  if (s == "bf16") return Precision::kBf16;
  if (s == "fp32" || s.empty()) return Precision::kFp32;
  return absl::InvalidArgumentError(
      absl::StrCat("train.precision: must be fp32 or bf16, got '", s, "'"));
}

absl::StatusOr<Recompute> ParseRecompute(const std::string& s) {
  if (s == "none" || s.empty()) return Recompute::kNone;
  if (s == "gelu") return Recompute::kGelu;
  if (s == "norm_gelu") return Recompute::kNormGelu;
  return absl::InvalidArgumentError(
      absl::StrCat("train.recompute: must be none, gelu or norm_gelu, got '", s, "'"));
}

absl::StatusOr<bool> ParseWgradStream(const char* env) {
  const std::string v = env == nullptr ? "" : env;
  if (v.empty() || v == "0" || v == "off") return false;
  if (v == "1" || v == "on") return true;
  return absl::InvalidArgumentError(
      absl::StrCat("LLMT_WGRAD_STREAM='", v, "': expected 0/off or 1/on"));
}

}  // namespace llmt::model
