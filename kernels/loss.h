// Fused softmax + cross-entropy. (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// logits [rows, V] in, dL/dlogits out IN PLACE (no second vocab-sized buffer),
// where L = grad_scale * sum_r CE_r, i.e. logits[r, j] becomes
//   grad_scale * (softmax(logits[r])[j] - [j == targets[r]]).
// Pass grad_scale = 1/rows for the gradient of the mean loss. Returns the
// mean cross-entropy over rows (accumulated in double). Optionally writes
// per-row losses. targets must lie in [0, V).
float SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V,
                          float grad_scale, float* row_losses = nullptr);

// Row-wise softmax in place (inference / sampling).
void Softmax(float* x, int64_t rows, int V);

}  // namespace llmt::kernels::cpu
