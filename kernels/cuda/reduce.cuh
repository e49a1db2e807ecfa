// Reductions and whole-buffer maintenance on the GPU: the kernels/reduce.h
// ops with device pointers and a stream. Results of reductions stay on the
// device (no implicit host synchronisation); copy them back when needed.
//
// Determinism: every reduction is two-stage with a fixed shape — a fixed
// number of blocks (kReduceBlocks) each summing a fixed strided subset in
// double, then one block combining the partials in a fixed tree — so the
// result depends only on the data and n, never on timing or the GPU model.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

inline constexpr int kReduceBlocks = 1024;
// Scratch bytes every reduction below needs (the per-block partials).
size_t ReduceScratchBytes();

// *out = sum(x^2) in double (or *out += when accumulate, to combine several
// buffers into one global norm). `out` is a device pointer.
void SumSquares(const float* x, int64_t n, double* out, bool accumulate, void* scratch,
                size_t scratch_bytes, cudaStream_t stream);
void SumSquares(const bf16* x, int64_t n, double* out, bool accumulate, void* scratch,
                size_t scratch_bytes, cudaStream_t stream);
// *out = sqrt(sum(x^2)) (global gradient L2 norm, double).
void L2Norm(const float* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
            cudaStream_t stream);
void L2Norm(const bf16* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
            cudaStream_t stream);
// *out = sum(x) in double (e.g. the per-row losses of SoftmaxCrossEntropy).
void Sum(const float* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
         cudaStream_t stream);

// x *= s.
void Scale(float* x, int64_t n, float s, cudaStream_t stream);
void Scale(bf16* x, int64_t n, float s, cudaStream_t stream);
// *flag = 1 if any element is NaN or +-Inf; *flag is left untouched
// otherwise (zero it first; several buffers can share one flag).
void AnyNonFinite(const float* x, int64_t n, int* flag, cudaStream_t stream);
void AnyNonFinite(const bf16* x, int64_t n, int* flag, cudaStream_t stream);
// x = 0.
void Zero(float* x, int64_t n, cudaStream_t stream);
void Zero(bf16* x, int64_t n, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
