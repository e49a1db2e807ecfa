// Matrix multiplication (every GEMM of the engine goes through here).
//
// Backend convention for all kernels/*.h headers: each header declares the CPU
// implementation in namespace llmt::kernels::cpu on raw host float pointers.
// The CUDA backend implements the same op families with the same argument
// order and semantics in namespace llmt::kernels::cuda, declared in
// kernels/cuda/<family>.cuh (those take device pointers plus a cudaStream_t),
// so these headers stay free of CUDA types and compile everywhere.
//
// All tensors are row-major and densely packed unless a leading dimension is
// given. Gradient outputs of weights ACCUMULATE (+=) so gradient accumulation
// over micro-batches needs no extra buffer; activation gradients overwrite
// unless stated otherwise.
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// How a weight matrix W of a linear map in -> out is stored.
enum class WeightLayout {
  kInOut,  // [in, out]: Hugging Face Conv1D (GPT-2 c_attn / c_proj / c_fc)
  kOutIn,  // [out, in]: torch nn.Linear (Llama projections, lm_head)
};

// C[M,N] = alpha * op(A) * op(B) + beta * C with op(X) = X or X^T (cblas_sgemm,
// row-major). Large products are split over the OpenMP threads by output
// blocks, each block one single-threaded sgemm (see runtime.h for why).
void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// out[M,N] = inp[M,K] * W (+ bias[N]) (+ residual[M,N]); W is [K,N] (kInOut)
// or [N,K] (kOutIn). bias / residual may be nullptr; the residual add is fused
// (out is seeded with residual + bias and the GEMM accumulates onto it).
// out must not alias inp; it may alias residual.
void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout,
                   const float* residual = nullptr);

// Backward of MatmulForward scaled by `alpha` (the loss scale):
//   dinp[M,K]    = alpha * dout * W^T      (overwritten; += if accumulate_dinp)
//   dweight     += alpha * inp^T * dout    (in W's layout)
//   dbias[N]    += alpha * column sums of dout
// Any of dinp / dweight / dbias may be nullptr to skip it.
void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t M, int64_t K, int64_t N, WeightLayout layout,
                    float alpha = 1.f, bool accumulate_dinp = false);

}  // namespace llmt::kernels::cpu
