// Pointwise activations. (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// GELU, tanh approximation (GPT-2 "gelu_new"):
//   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void GeluForward(float* out, const float* inp, int64_t n);
// dinp = dout * gelu'(inp); dinp may alias dout.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n);

// SwiGLU (Llama MLP): out[r, j] = silu(gate[r, j]) * up[r, j] where gate_up is
// [rows, 2F] holding gate in columns [0, F) and up in [F, 2F) (the layout of
// one GEMM against the stacked [gate_proj; up_proj] weight).
void SwiGLUForward(float* out, const float* gate_up, int64_t rows, int F);
// dgate_up [rows, 2F] (overwritten) from dout [rows, F].
void SwiGLUBackward(float* dgate_up, const float* gate_up, const float* dout, int64_t rows, int F);

}  // namespace llmt::kernels::cpu
