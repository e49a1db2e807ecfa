// Causal multi-head self-attention with grouped-query attention (GQA) and
// rotary position embeddings. (Backend convention: see matmul.h.)
//
// Packed projection layout: qkv is [B, T, (NH + 2*NKV) * hd] holding the NH
// query heads, then NKV key heads, then NKV value heads (GPT-2's c_attn output
// with NKV == NH, or Llama's stacked [q_proj; k_proj; v_proj] output). Query
// head h reads key/value head h / (NH / NKV).
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// out [B, T, NH*hd]; att [B, NH, T, T] receives the softmax probabilities
// (zero above the diagonal), saved for the backward. Scale 1/sqrt(hd).
// Scores and probs*values are cblas_sgemm calls per (batch, head).
void AttentionForward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV,
                      int hd);
// dqkv (same layout as qkv) is overwritten. datt [B, NH, T, T] is scratch.
void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int B, int T, int NH, int NKV, int hd);

// RoPE tables cos/sin [T, hd/2] for positions 0..T-1: angle(t, i) =
// t * theta^(-2i/hd) (Hugging Face Llama's inv_freq).
void RopeTable(float* cos, float* sin, int T, int hd, float theta);
// Rotates, in place, `n_heads` heads of width hd that start at column 0 of each
// row of x (row r = b*T + t, row stride `ld` floats) with the Hugging Face
// rotate_half convention (non-interleaved halves):
//   y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin  (x1, x2 = first/second half).
void RopeForward(float* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld);
// In-place backward (the inverse rotation) of RopeForward on gradients.
void RopeBackward(float* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld);

}  // namespace llmt::kernels::cpu
