// Optimizer updates over flat buffers. (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// AdamW (Loshchilov & Hutter; same arithmetic as torch.optim.AdamW) over n
// elements, bias-corrected with the 1-based `step`:
//   p *= 1 - lr*wd                       (decoupled weight decay)
//   m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2      with g' = grad_scale * g
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// The per-tensor no-decay mask (norms, biases) is handled by the caller
// calling this once per contiguous range with wd = 0 where needed.
// grad_scale lets gradient clipping be fused in (no separate scaling pass).
void AdamW(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale = 1.f);

}  // namespace llmt::kernels::cpu
