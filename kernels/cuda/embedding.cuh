// Token (+ learned position) embeddings on the GPU: the kernels/embedding.h
// ops with device pointers and a stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// out[b, t, :] = wte[tokens[b, t], :] (+ wpe[t, :] when wpe != nullptr).
// tokens is a device array of B*T ids in [0, V) (the caller validates them).
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int T, int C, cudaStream_t stream);
void EmbeddingForward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                      int T, int C, cudaStream_t stream);

// Scratch bytes EmbeddingBackward needs for B*T tokens of width C (a stable
// radix sort of the token ids with their row indices, CUB's temporary
// storage, and fp32 partial sums of 2 x C per 32 sorted positions).
size_t EmbeddingBackwardScratchBytes(int B, int T, int C);

// dwte[tokens[b,t], :] += dout[b,t,:];  dwpe[t, :] += sum_b dout[b,t,:] (if
// dwpe != nullptr). Deterministic without atomics: the (token, row) pairs are
// stably sorted by token on the device; the sorted positions are cut into
// chunks of 32, each token's rows are summed in ascending row order within
// a chunk, a token whose rows span several chunks (a frequent one) gets its
// chunks' sums added in chunk order, and each total is added once.
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream);
void EmbeddingBackward(bf16* dwte, bf16* dwpe, const bf16* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream);
void EmbeddingBackward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
