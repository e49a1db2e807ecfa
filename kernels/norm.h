// Normalisation layers over the last dimension C of a [rows, C] tensor.
// (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// LayerNorm (biased variance, as torch): out = (x - mean) * rstd * w + b.
// Saves mean[rows] and rstd[rows] = 1 / sqrt(var + eps) for the backward.
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t rows, int C, float eps);
// dinp += dL/dx (accumulates, so it can add straight into the residual-stream
// gradient); dweight += ; dbias += . dbias may be nullptr.
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t rows, int C);

// RMSNorm (Llama): out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps).
void RMSNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t rows,
                    int C, float eps);
// dinp += ; dweight += .
void RMSNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t rows, int C);

}  // namespace llmt::kernels::cpu
