// Fused classifier on the GPU: the kernels/loss.h ops with device pointers
// and a stream. fp32 and bf16 logits; arithmetic in fp32.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// Softmax + cross-entropy forward and backward in one kernel, one thread
// block per row, writing
//   logits[r, j] = grad_scale * (softmax(logits[r])[j] - [j == targets[r]])
// IN PLACE, so no second vocab-sized buffer exists. Rows of 16-byte vectors up
// to 112 KB (GPT-2's 50304 bf16) are read from memory once: the row is staged
// in shared memory, the max and sum of exponentials (online softmax) and the
// gradient are computed from there. Other rows take the previous kernel: a
// first read for the max/sum, a second (mostly L2) read for the rewrite.
// row_losses[r] (device, required) receives the row's cross-entropy; sum it
// with cuda::Sum (reduce.cuh) for the mean loss.
// `ld` >= V is the row stride: a padded vocabulary (e.g. 50304 for GPT-2's
// 50257, so that every row is 128-byte aligned for cuBLASLt) has its padding
// columns [V, ld) set to 0, so they contribute no gradient.
// A target outside [0, V) yields a NaN row loss and a zero gradient row (the
// caller validates targets; NaN makes a violation visible in the loss).
// max_blocks > 0 caps the grid: each block then takes rows b, b + grid, ...
// in turn (the same per-row arithmetic, so bit-identical results), e.g. to
// leave most SMs to a GEMM running beside it on another stream.
void SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream,
                         int max_blocks = 0);
void SoftmaxCrossEntropy(bf16* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream,
                         int max_blocks = 0);

// A/B switch: true runs the previous two-pass kernel for every row. It starts
// as LLMT_LEGACY_KERNELS (a comma-separated list of kernel names, read once)
// names "xent"; tests flip it. Returns the previous setting.
bool SetLegacySoftmaxCrossEntropy(bool legacy);

// Row-wise softmax in place over the first V of every `ld` columns
// (inference / sampling); padding columns are set to 0.
void Softmax(float* x, int64_t rows, int V, int64_t ld, cudaStream_t stream);
void Softmax(bf16* x, int64_t rows, int V, int64_t ld, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
