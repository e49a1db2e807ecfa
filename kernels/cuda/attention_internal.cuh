// Shared between attention.cu (SIMT kernels, dispatch, RoPE) and
// attention_tc.cu (tensor-core kernels). Not a public header.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda::internal {

// Problem shape in the packed qkv layout (see attention.cuh).
struct AttnDims {
  int B, T, NH, NKV, hd;
  int64_t ld;   // qkv row stride: (NH + 2*NKV) * hd
  int64_t C;    // out row stride: NH * hd
  int group;    // NH / NKV query heads per key/value head
  float scale;  // 1 / sqrt(hd)
  // wgmma kernels only (set by FlashForwardWgmma/FlashBackwardWgmma): bit 0
  // exchanges LBO and SBO in K-major descriptors, bit 1 in MN-major ones
  // (WgmmaSwapMask()).
  int wgmma_swap = 0;
};

// Tensor-core flash attention for bf16, hd 64 or 128, pointers 16-byte
// aligned: mma.sync with register-resident accumulators (attention_mma.cu)
// and the portable WMMA version (attention_tc.cu).
void FlashForwardMma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                     AttentionForwardVariant variant, cudaStream_t stream);
// The wgmma forward (attention_wgmma.cu), hd 64 or 128, for the kWgmma*
// variants; only where WgmmaAvailable() (the current device is sm_90).
bool WgmmaAvailable();
// A hardware bring-up knob, LLMT_WGMMA_SWAP ("k", "mn", "k,mn"; read once):
// exchanges the descriptors' LBO and SBO for the named B layouts in the
// kernels and in the self-check alike, in case a GPU reads the no-swizzle
// layouts the other way round from the PTX ISA's text (WgmmaProductLayouts
// says whether it does). Unset: the ISA's reading. Fatal on other values.
int WgmmaSwapMask();
// The wgmma backward (dK/dV, then dQ), hd 64 or 128, for variant.wgmma; Dsum
// as for FlashBackwardMma. a_smem (variant.wgmma_ss; always at hd 128): the
// fixed A operands are read from shared memory instead of registers.
void FlashBackwardWgmma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, const AttnDims& d, bool a_smem, cudaStream_t stream);
// D [64][64] fp32 = A [64][16] B [16][64] (row-major bf16, device) with one
// wgmma, B staged K-major or MN-major in the kernels' blocked layout: a
// layout check for tests. swap_strides exchanges the descriptor's LBO and
// SBO (the PTX ISA's convention is the unswapped one; the swapped form only
// diagnoses a GPU that disagrees).
void WgmmaProduct(float* d, const bf16* a, const bf16* b, bool mn_major, bool swap_strides,
                  cudaStream_t stream);
void FlashForwardWgmma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                       AttentionForwardVariant variant, cudaStream_t stream);
// ds (variant.ds only): scratch for the dS tiles of ds_batch batch elements
// (DsBatchBytes each); the backward runs in chunks of that many.
void FlashBackwardMma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                      const float* Dsum, const AttnDims& d, AttentionBackwardVariant variant,
                      bf16* ds, int ds_batch, cudaStream_t stream);

// The ds backward variant's dS tiles: kDsTile x kDsTile bf16, the causal
// (query tile >= key tile) pairs of every (batch, head).
inline constexpr int kDsTile = 64;
inline size_t DsBatchBytes(int T, int NH) {
  const size_t n = static_cast<size_t>((T + kDsTile - 1) / kDsTile);
  return size_t(NH) * (n * (n + 1) / 2) * kDsTile * kDsTile * sizeof(bf16);
}
bool FlashTcSupports(int hd);
void FlashForwardTc(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream);
// Dsum [B, NH, T] = rowsum(dout * out), computed by the caller.
void FlashBackwardTc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dsum, const AttnDims& d, cudaStream_t stream);

}  // namespace llmt::kernels::cuda::internal
