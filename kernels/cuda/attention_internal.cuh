// Shared between attention.cu (SIMT kernels, dispatch, RoPE) and
// attention_tc.cu (tensor-core kernels). Not a public header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/wgmma_layout.h"

namespace llmt::kernels::cuda::internal {

// Problem shape in the packed qkv layout (see attention.cuh).
struct AttnDims {
  int B, T, NH, NKV, hd;
  int64_t ld;   // qkv row stride: (NH + 2*NKV) * hd
  int64_t C;    // out row stride: NH * hd
  int group;    // NH / NKV query heads per key/value head
  float scale;  // 1 / sqrt(hd)
};

// Tensor-core flash attention for bf16, hd 64 or 128, pointers 16-byte
// aligned: mma.sync with register-resident accumulators (attention_mma.cu)
// and the portable WMMA version (attention_tc.cu).
void FlashForwardMma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                     AttentionForwardVariant variant, cudaStream_t stream);
// The tile layout of the wgmma kernels: LLMT_WGMMA_LAYOUT ("swizzled", the
// default, or "blocked"; read once, fatal on other values); Set overrides
// it (process-wide, for tests).
WgLayout GetWgmmaLayout();
void SetWgmmaLayout(WgLayout layout);
// Whether the wgmma kernels (attention_wgmma.cu) may run with the current
// layout: the current device is compute capability 9.0 and passed a
// one-time self-check of that layout (per device and layout).
bool WgmmaAvailable();
// The wgmma backward (dK/dV, then dQ), hd 64 or 128, for variant.wgmma; Dsum
// as for FlashBackwardMma. a_smem (variant.wgmma_ss; always at hd 128): the
// fixed A operands are read from shared memory instead of registers. With
// dq_acc (variant.wgmma_fused; hd 64 without a_smem, otherwise ignored): one
// fused kernel that adds the dQ contributions in a fixed order into dq_acc
// (WgFusedAccBytes) with dq_count (WgFusedCountBytes; zeroed here) as
// counters (one per batch, head and 64-query tile, then the blocks' ticket);
// two_wg (variant.wgmma_fused_2wg): 128-key blocks of two warpgroups.
void FlashBackwardWgmma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, const AttnDims& d, bool a_smem, float* dq_acc,
                        int* dq_count, bool two_wg, cudaStream_t stream);
inline size_t WgFusedAccBytes(int B, int T, int NH) {
  return static_cast<size_t>(B) * NH * T * 64 * sizeof(float);
}
inline size_t WgFusedCountBytes(int B, int T, int NH) {
  return (static_cast<size_t>(B) * NH * ((T + 63) / 64) + 1) * sizeof(int);
}
// D [64][N] fp32 = A [64][16] B [16][N] (row-major bf16, device) with one
// wgmma through the attention kernels' descriptor code, B staged in a tile
// of `layout` as its second k-chunk (so the chunk's start offset counts):
// K-major (N = 64, a [64][64] tile, B^T in columns 16..31) or MN-major
// (N = 128, a [32][128] tile, B in rows 16..31: two 64-column regions, so
// the swizzled layout's LBO counts). A layout check for tests and the
// self-check. swap_strides exchanges the descriptor's LBO and SBO (a
// diagnosis: does the device read the layout the other way round?).
void WgmmaProduct(float* d, const bf16* a, const bf16* b, bool mn_major, WgLayout layout,
                  bool swap_strides, cudaStream_t stream);
// The wgmma forward (attention_wgmma.cu), hd 64 or 128: variant kWgmma,
// kWgmmaPipe, kWgmma2Wg or kWgmmaPipe2Wg.
void FlashForwardWgmma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                       AttentionForwardVariant v, cudaStream_t stream);
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
// cuDNN's fused flash attention (attention_cudnn.cc, attention_cudnn.h),
// bf16: LLMT_ATTN_FWD=cudnn / LLMT_ATTN_BWD=cudnn. Each returns false with
// *why set, having done nothing, when cuDNN cannot run the problem here (no
// libcudnn, an unsupported shape, no engine); the caller then runs its own
// kernels. The backward computes Dsum [B, NH, T] = rowsum(dout * out) into
// the caller's scratch itself. Not deterministic run to run (cuDNN adds the
// dQ partial sums with atomics) unless `deterministic` (cuDNN's dP-workspace
// engines: dQ = dS K straight to dQ; a workspace of ~ B NH T^2 bf16).
bool CudnnFlashForward(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                       cudaStream_t stream, std::string* why);
bool CudnnFlashBackward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, float* Dsum, const AttnDims& d, bool deterministic,
                        cudaStream_t stream, std::string* why);

// Builds the plans of the cuDNN forward (`fwd`) and backward (`bwd`,
// `deterministic`) for d's shape and grows the workspace to hold them.
// Returns the workspace's bytes (0 when cuDNN cannot take the problem: then
// *why_not says why), or sets *error when the allocation fails.
size_t CudnnPrepare(const AttnDims& d, bool fwd, bool bwd, bool deterministic,
                    std::string* error, std::string* why_not);

bool FlashTcSupports(int hd);
void FlashForwardTc(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream);
// Dsum [B, NH, T] = rowsum(dout * out), computed by the caller.
void FlashBackwardTc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dsum, const AttnDims& d, cudaStream_t stream);

}  // namespace llmt::kernels::cuda::internal
