// LayerNorm and RMSNorm on the GPU: the kernels/norm.h ops with device
// pointers and a stream, plus forward variants fused with the residual add.
// Activations and weights are T (fp32 or bf16); the saved statistics (mean,
// rstd) are always fp32; weight/bias gradients are T or fp32.
//
// Residual fusion. Forward: FusedResidual*NormForward computes the residual
// stream x = inp1 + inp2 (stored, rounded to T) and its normalisation in one
// pass. Backward: dinp is ACCUMULATED (+=), like the CPU backend, so the
// normalisation's input gradient is added straight into the residual-stream
// gradient without a separate add.
//
// Determinism. Weight/bias gradients are reduced in two fixed-order stages
// (per block of 64 rows, or kNormRowsPerBlock for the previous kernel, into
// caller-provided scratch, then across blocks), never with atomics: results
// are bit-identical run to run.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

inline constexpr int kNormRowsPerBlock = 32;

// Scratch bytes the *NormBackward calls need for `rows` x C (fp32 partial
// sums for weight and bias gradients).
size_t NormBackwardScratchBytes(int64_t rows, int C);

// A/B switch: true runs the previous backward kernel (32-row partials, x and
// dy re-read for the weight/bias partials) instead of the single-read one.
// It starts as LLMT_LEGACY_KERNELS (a comma-separated list of kernel names,
// read once) names "norm_bwd"; tests flip it. Returns the previous setting.
bool SetLegacyNormBackward(bool legacy);

// ---- LayerNorm (biased variance, as torch) ---------------------------------
// out = (x - mean) * rstd * w + b; mean[rows], rstd[rows] saved (fp32).
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t rows, int C, float eps, cudaStream_t stream);
void LayerNormForward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* weight,
                      const bf16* bias, int64_t rows, int C, float eps, cudaStream_t stream);
// residual = inp1 + inp2; out = LayerNorm(residual). residual may alias inp1
// or inp2.
void FusedResidualLayerNormForward(float* residual, float* out, float* mean, float* rstd,
                                   const float* inp1, const float* inp2, const float* weight,
                                   const float* bias, int64_t rows, int C, float eps,
                                   cudaStream_t stream);
void FusedResidualLayerNormForward(bf16* residual, bf16* out, float* mean, float* rstd,
                                   const bf16* inp1, const bf16* inp2, const bf16* weight,
                                   const bf16* bias, int64_t rows, int C, float eps,
                                   cudaStream_t stream);
// dinp += dL/dx; dweight += ; dbias += (dbias may be null). dinp must not
// alias dout. `scratch` holds NormBackwardScratchBytes(rows, C) bytes.
// dinp_colsum (optional) += the column sums of the updated dinp, as stored:
// when dinp is a residual stream's gradient, the bias gradient of the linear
// layer whose output joins the stream here, without a pass of its own over
// dinp (LLMT_BIAS_GRAD=norm in the CUDA model). Deterministic: a fixed
// order of additions for given (rows, C).
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t rows, int C, void* scratch, size_t scratch_bytes,
                       cudaStream_t stream, float* dinp_colsum = nullptr);
void LayerNormBackward(bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout, const bf16* inp,
                       const bf16* weight, const float* mean, const float* rstd, int64_t rows,
                       int C, void* scratch, size_t scratch_bytes, cudaStream_t stream,
                       bf16* dinp_colsum = nullptr);
void LayerNormBackward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                       const bf16* weight, const float* mean, const float* rstd, int64_t rows,
                       int C, void* scratch, size_t scratch_bytes, cudaStream_t stream,
                       float* dinp_colsum = nullptr);

// ---- RMSNorm (Llama) -------------------------------------------------------
// out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) saved (fp32).
void RMSNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t rows,
                    int C, float eps, cudaStream_t stream);
void RMSNormForward(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int64_t rows,
                    int C, float eps, cudaStream_t stream);
void FusedResidualRMSNormForward(float* residual, float* out, float* rstd, const float* inp1,
                                 const float* inp2, const float* weight, int64_t rows, int C,
                                 float eps, cudaStream_t stream);
void FusedResidualRMSNormForward(bf16* residual, bf16* out, float* rstd, const bf16* inp1,
                                 const bf16* inp2, const bf16* weight, int64_t rows, int C,
                                 float eps, cudaStream_t stream);
// dinp += ; dweight += ; dinp_colsum as above. Same aliasing and scratch
// rules as LayerNormBackward.
void RMSNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t rows, int C, void* scratch,
                     size_t scratch_bytes, cudaStream_t stream, float* dinp_colsum = nullptr);
void RMSNormBackward(bf16* dinp, bf16* dweight, const bf16* dout, const bf16* inp,
                     const bf16* weight, const float* rstd, int64_t rows, int C, void* scratch,
                     size_t scratch_bytes, cudaStream_t stream, bf16* dinp_colsum = nullptr);
void RMSNormBackward(bf16* dinp, float* dweight, const bf16* dout, const bf16* inp,
                     const bf16* weight, const float* rstd, int64_t rows, int C, void* scratch,
                     size_t scratch_bytes, cudaStream_t stream, float* dinp_colsum = nullptr);

}  // namespace llmt::kernels::cuda
