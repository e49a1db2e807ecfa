#include "kernels/cuda/optimizer.cuh"

#include "absl/strings/str_cat.h"

namespace llmt::kernels::cuda {

absl::Status ValidateAdamWSegments(const std::vector<AdamWSegment>& segments, int64_t n) {
  int64_t next = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const AdamWSegment& s = segments[i];
    if (s.offset != next || s.n < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AdamW segment ", i, " [", s.offset, ", ", s.offset + s.n, ") does not start where ",
          "the previous one ends (", next, ") or has a negative size"));
    }
    next = s.offset + s.n;
  }
  if (next != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW segments cover [0, ", next, ") but the buffer has ", n, " elements"));
  }
  if (segments.size() > 0x7fffffff) {
    return absl::InvalidArgumentError("AdamW: too many segments");
  }
  return absl::OkStatus();
}

}  // namespace llmt::kernels::cuda
