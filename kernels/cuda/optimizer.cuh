// AdamW on the GPU: the kernels/optimizer.h update with device pointers and a
// stream, over fp32 master weights and fp32 moments, from fp32 or bf16
// gradients, optionally writing the bf16 parameter copy that the forward pass
// reads (round-to-nearest or stochastic rounding) in the same pass.
//
// Multi-tensor: AdamWMultiTensor updates a whole flat parameter buffer in ONE
// launch; a small device table of segments (one per parameter tensor, or per
// run of tensors with the same weight decay) gives each element its weight
// decay, which is how norms and biases get wd = 0.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// Elements [offset, offset + n) of the buffer use `weight_decay`.
struct AdamWSegment {
  int64_t offset = 0;
  int64_t n = 0;
  float weight_decay = 0.f;
};

// OK when the segments are sorted, contiguous and cover exactly [0, n)
// (empty segments allowed); the error names the first bad segment.
absl::Status ValidateAdamWSegments(const std::vector<AdamWSegment>& segments, int64_t n);

// Same arithmetic as cpu::AdamW (see kernels/optimizer.h), over n elements:
//   p *= 1 - lr wd;  m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2  (g' = grad_scale g)
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// If p_bf16 is non-null it receives bf16(p) — stochastically rounded with
// bits derived from (seed, element index) when stochastic_rounding, else
// round-to-nearest-even.
void AdamW(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale, bf16* p_bf16,
           bool stochastic_rounding, uint64_t seed, cudaStream_t stream);
void AdamW(float* p, const bf16* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale, bf16* p_bf16,
           bool stochastic_rounding, uint64_t seed, cudaStream_t stream);

// One launch over the flat buffers; `segments` is a DEVICE array of
// num_segments entries that passed ValidateAdamWSegments for this n.
void AdamWMultiTensor(float* p, const float* g, float* m, float* v, int64_t n,
                      const AdamWSegment* segments, int num_segments, float lr, float b1, float b2,
                      float eps, int64_t step, float grad_scale, bf16* p_bf16,
                      bool stochastic_rounding, uint64_t seed, cudaStream_t stream);
void AdamWMultiTensor(float* p, const bf16* g, float* m, float* v, int64_t n,
                      const AdamWSegment* segments, int num_segments, float lr, float b1, float b2,
                      float eps, int64_t step, float grad_scale, bf16* p_bf16,
                      bool stochastic_rounding, uint64_t seed, cudaStream_t stream);

// fp32 -> bf16 copy (parameter copies, checkpoint loading), round-to-nearest
// or stochastic as above; and bf16 -> fp32.
void ConvertF32ToBf16(bf16* dst, const float* src, int64_t n, bool stochastic_rounding,
                      uint64_t seed, cudaStream_t stream);
void ConvertBf16ToF32(float* dst, const bf16* src, int64_t n, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
