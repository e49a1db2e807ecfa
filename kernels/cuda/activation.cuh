// Pointwise activations on the GPU: the kernels/activation.h ops with device
// pointers and a stream (see kernels/matmul.h for the backend convention).
// fp32 and bf16 overloads; arithmetic is fp32 in both.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// GELU, tanh approximation (GPT-2 "gelu_new"), computed as x * sigmoid(2u)
// with u = sqrt(2/pi) (x + 0.044715 x^3), exactly like the CPU backend.
void GeluForward(float* out, const float* inp, int64_t n, cudaStream_t stream);
void GeluForward(bf16* out, const bf16* inp, int64_t n, cudaStream_t stream);
// dinp = dout * gelu'(inp); dinp may alias dout.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n, cudaStream_t stream);
void GeluBackward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t n, cudaStream_t stream);

// SwiGLU: out[r, j] = silu(gate_up[r, j]) * gate_up[r, F + j]; gate_up is
// [rows, 2F] (gate columns then up columns), out is [rows, F].
void SwiGLUForward(float* out, const float* gate_up, int64_t rows, int F, cudaStream_t stream);
void SwiGLUForward(bf16* out, const bf16* gate_up, int64_t rows, int F, cudaStream_t stream);
// dgate_up [rows, 2F] (overwritten) from dout [rows, F].
void SwiGLUBackward(float* dgate_up, const float* gate_up, const float* dout, int64_t rows, int F,
                    cudaStream_t stream);
void SwiGLUBackward(bf16* dgate_up, const bf16* gate_up, const bf16* dout, int64_t rows, int F,
                    cudaStream_t stream);

}  // namespace llmt::kernels::cuda
