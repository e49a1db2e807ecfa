// Token (+ learned position) embeddings. (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// out[b, t, :] = wte[tokens[b, t], :] (+ wpe[t, :] when wpe != nullptr).
// Token ids must lie in [0, V) (the caller validates them).
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int T, int C);
// dwte[tokens[b,t], :] += dout[b,t,:]; dwpe[t, :] += sum_b dout[b,t,:] (if
// dwpe != nullptr). Deterministic (threads own channel slices, not rows).
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C);

}  // namespace llmt::kernels::cpu
