// Spec strings of the CUDA model's options; in llmt_model so spec checks and
// the trainer need no CUDA build.
#include "absl/strings/numbers.h"
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

absl::StatusOr<XentOverlap> ParseXentOverlap(const char* env) {
  const std::string v = env == nullptr ? "" : env;
  if (v.empty() || v == "0" || v == "off") return XentOverlap{};
  const auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "LLMT_XENT_OVERLAP='", v, "': expected 0/off, K (2..64 chunks) or K:S (S = 1..1024 SMs "
        "for the cross-entropy)"));
  };
  const size_t colon = v.find(':');
  XentOverlap o;
  if (!absl::SimpleAtoi(v.substr(0, colon), &o.chunks) || o.chunks < 2 || o.chunks > 64) {
    return bad();
  }
  if (colon != std::string::npos &&
      (!absl::SimpleAtoi(v.substr(colon + 1), &o.sms) || o.sms < 1 || o.sms > 1024)) {
    return bad();
  }
  return o;
}

}  // namespace llmt::model
