// Fused classifier on the GPU: the kernels/loss.h ops with device pointers
// and a stream. fp32 and bf16 logits; arithmetic in fp32.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// Softmax + cross-entropy forward and backward in one kernel, one thread
// block per row: a first read of the row computes the running max and sum of
// exponentials (online softmax), a second read writes
//   logits[r, j] = grad_scale * (softmax(logits[r])[j] - [j == targets[r]])
// IN PLACE, so no second vocab-sized buffer exists (the row's second read is
// mostly served by L2). row_losses[r] (device, required) receives the row's
// cross-entropy; sum it with cuda::Sum (reduce.cuh) for the mean loss.
// `ld` >= V is the row stride: a padded vocabulary (e.g. 50304 for GPT-2's
// 50257, so that every row is 128-byte aligned for cuBLASLt) has its padding
// columns [V, ld) set to 0, so they contribute no gradient.
// A target outside [0, V) yields a NaN row loss and a zero gradient row (the
// caller validates targets; NaN makes a violation visible in the loss).
void SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream);
void SoftmaxCrossEntropy(bf16* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream);

// Row-wise softmax in place over the first V of every `ld` columns
// (inference / sampling); padding columns are set to 0.
void Softmax(float* x, int64_t rows, int V, int64_t ld, cudaStream_t stream);
void Softmax(bf16* x, int64_t rows, int V, int64_t ld, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
