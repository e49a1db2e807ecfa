// Kernels of matmul.cu that only matmul.cc (and the kernel tests) call. Not a
// public header.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda::internal {

// BiasBackward in two stages with caller-provided scratch (MatmulBackward
// passes the cuBLASLt workspace); the same sum as BiasBackward's up to the
// (fixed) order.
void BiasBackwardTwoStage(float* dbias, const float* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream);
void BiasBackwardTwoStage(bf16* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream);
void BiasBackwardTwoStage(float* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream);

// Fingerprint of a row-major [rows, cols] matrix of `elem_bytes`-byte
// elements (2 or 4) with row stride ld elements, for the exact autotune mode:
// out[0] = the sum mod 2^64 of a 64-bit mix of (element index, element bits)
// over all elements, out[1] = the number of elements that are not +-0. Sums
// of integers mod 2^64 do not depend on order, so this is a pure function of
// the matrix; equal prints mean equal matrices up to a 2^-64 chance.
// `words` is device scratch of kFingerprintWords; `out` is host memory (the
// call synchronises the stream).
inline constexpr int kFingerprintBlocks = 256;
inline constexpr int kFingerprintWords = 2 * kFingerprintBlocks + 2;
void Fingerprint(unsigned long long* words, unsigned long long out[2], const void* m, int64_t rows,
                 int64_t cols, int64_t ld, int elem_bytes, cudaStream_t stream);

}  // namespace llmt::kernels::cuda::internal
