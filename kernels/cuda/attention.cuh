// Causal multi-head self-attention (GQA) and rotary embeddings on the GPU:
// the kernels/attention.h ops with device pointers and a stream.
//
// Same packed layout as the CPU backend: qkv is [B, T, (NH + 2*NKV) * hd]
// holding the NH query heads, then NKV key heads, then NKV value heads; query
// head h reads key/value head h / (NH / NKV); out is [B, T, NH*hd].
//
// Unlike the CPU backend, attention here is a flash-attention-style fused
// kernel: the T x T score/probability matrix is never materialised. The
// forward keeps, per query row, a running max and sum of exponentials (online
// softmax) while streaming key/value tiles through shared memory, and saves
// only the row's log-sum-exp (lse [B, NH, T], fp32) for the backward. The
// backward recomputes the probabilities tile by tile from q, k and lse
// (FlashAttention-2's scheme) in two kernels: one owns a tile of keys and
// accumulates dK and dV over all queries (and all query heads of its GQA
// group) in registers, the other owns a tile of queries and accumulates dQ.
// Every output element is written by exactly one thread, so results are
// deterministic without atomics.
//
// Implementations (see docs/cuda.md and AttentionImpl below): bf16 inputs
// with head dim 64 or 128 and T a multiple of 128 run cuDNN's fused flash
// attention by default where libcudnn.so.9 loads (forward, and backward on
// its deterministic engines; measured faster than the own kernels on an
// H100, see "auto" below); otherwise bf16 at head dim 64 or 128 runs the own
// kernels on tensor cores (mma.sync by default, or the WMMA version);
// everything else (fp32, used by the tests against the CPU,
// and other head dims) runs a SIMT kernel in fp32 arithmetic. Supported head
// dims: 8, 16, 32, 64, 80, 96, 128.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// True when AttentionForward/Backward support head dimension hd.
bool AttentionSupportsHeadDim(int hd);

// out [B, T, NH*hd] (overwritten); lse [B, NH, T] (fp32, overwritten) is the
// log-sum-exp of each query row's scaled scores. Scale 1/sqrt(hd).
void AttentionForward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                      int hd, cudaStream_t stream);
void AttentionForward(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, int NKV, int hd,
                      cudaStream_t stream);

// Scratch bytes AttentionBackward needs: rowsum(dout * out) (B*NH*T fp32),
// with the ds backward variant the dS tiles of a batch chunk, and with
// wgmma-fused (head dim 64) an fp32 dQ accumulator (B*NH*T*hd) and counters.
size_t AttentionBackwardScratchBytes(int B, int T, int NH, int hd);

// dqkv (same layout as qkv) is overwritten from dout [B, T, NH*hd], the
// forward's inputs qkv, its output out and its lse.
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int B, int T, int NH, int NKV, int hd, void* scratch,
                       size_t scratch_bytes, cudaStream_t stream);
void AttentionBackward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                       const float* lse, int B, int T, int NH, int NKV, int hd, void* scratch,
                       size_t scratch_bytes, cudaStream_t stream);

// Which kernels bf16 attention uses. kAuto (the default) = kMma. kMma and
// kWmma apply to head dims 64 and 128 with 16-byte aligned pointers; any
// other case (and fp32 always) runs kSimt. A process-wide switch for tests
// and debugging (not thread-safe), e.g. to fall back to kWmma if the mma.sync
// kernels misbehave on some GPU.
enum class AttentionImpl { kAuto, kMma, kWmma, kSimt };
void SetAttentionImpl(AttentionImpl impl);
AttentionImpl GetAttentionImpl();

// Alternative tilings of the mma backward at head dim 64, kept selectable at
// run time so they can be A/B-timed on a GPU against the default (the
// GPU-verified kernels); other head dims and implementations ignore them.
//   dq64:  the dQ kernel with 64-row query blocks (16 rows per warp) instead
//          of 128 (32 per warp): fewer registers, more blocks per SM, but each
//          K/V fragment read from shared memory feeds one m-tile, not two.
//   dkdv8: the dK/dV kernel with 8 warps x 32 keys (256 keys per block), so
//          each Q/dO fragment read from shared memory feeds two key m-tiles,
//          in 16-query steps to bound registers.
//   ds:    (head dims 64 and 128; overrides the two above) the dK/dV kernel
//          also writes each dS tile it computes (bf16, the causal 64 x 64
//          tiles) to scratch, and the dQ kernel computes dQ = dS K from
//          them: one tile product per tile pair instead of recomputing S and
//          dP (FlashAttention-2's five products in all instead of seven,
//          still without atomics). The scratch holds the dS of as many batch
//          elements as fit ds_max_bytes (at least one); larger batches run
//          in chunks. AttentionBackwardScratchBytes includes it when ds is on.
//   wgmma: (head dims 64 and 128, sm_90a; overrides the others) both
//          backward kernels on Hopper warpgroup MMA (attention_wgmma.cu): the
//          same seven products and work split, 64-row blocks of one
//          warpgroup. Other devices run the mma kernels. Written without a
//          GPU: emulator-checked only until an H100 run says otherwise.
//   wgmma-ss: wgmma with the fixed A operands (K, V; Q, dO) read from shared
//          memory at head dim 64 too (as always at 128): fewer registers, so
//          possibly more blocks per SM.
//   wgmma-fused: (head dim 64; implies wgmma, other head dims and wgmma-ss
//          run it unfused) one kernel, five products: the dK/dV kernel also
//          computes each dQ contribution dS K and adds it into an fp32
//          accumulator in a fixed key-tile order (a counter per query tile;
//          FlashAttention-2 adds them with atomics, in any order), so the
//          dQ kernel's recomputation of S and dP goes. Still bit-identical
//          run to run. Scratch: + B*NH*T*64 fp32. Not yet run on a GPU.
//   wgmma-fused-2wg: wgmma-fused with 128-key blocks of two warpgroups that
//          share each step's Q/dO tiles and one ordered dQ add (the second
//          warpgroup's part summed into the first's in shared memory): half
//          the L2 traffic per key and half the handshakes. Not yet run on a
//          GPU.
//   cudnn: (bf16, head dims 64 and 128, T a multiple of 128; overrides the
//          others) cuDNN's fused flash-attention backward (attention_cudnn.h:
//          libcudnn.so.9 loaded at run time). Where cuDNN is missing or
//          declines the problem, the own kernels run (a warning names why).
//          Not deterministic run to run (cuDNN sums dQ with atomics).
//   cudnn-det: cudnn on cuDNN's deterministic (dP-workspace) engines:
//          bit-identical run to run; a workspace of ~ B NH T^2 bf16.
//   auto:  (the default: LLMT_ATTN_BWD unset, "" or "auto") cudnn-det where
//          cuDNN loads and takes the problem, quietly the own default
//          kernels elsewhere (one info line per reason). On an H100 at the
//          GPT-2 shape (2026-11-27): cudnn-det 1.27 ms, own kernels 1.64.
// The choice comes from the environment variable LLMT_ATTN_BWD, read once on
// first use: a comma-separated list of the names above, or "own" (alias
// "default") for the own default kernels alone; an unknown name is a fatal
// error, so a typo cannot silently time the default. Results differ between
// variants in summation order only; each but "cudnn" is deterministic run
// to run. Set/Get are a process-wide switch for tests and benchmarks (not
// thread-safe); Set overrides the environment (and must come before sizing
// the scratch).
struct AttentionBackwardVariant {
  bool dq64 = false;
  bool dkdv8 = false;
  bool ds = false;
  bool wgmma = false;
  bool wgmma_ss = false;
  bool wgmma_fused = false;      // with wgmma
  bool wgmma_fused_2wg = false;  // with wgmma_fused
  bool cudnn = false;
  bool cudnn_det = false;  // with cudnn
  // "auto": cuDNN's deterministic backward where it runs, else the flags
  // above (none: the own default). A default-constructed variant is "own".
  bool cudnn_auto = false;
  size_t ds_max_bytes = size_t{512} << 20;
};
void SetAttentionBackwardVariant(AttentionBackwardVariant v);
AttentionBackwardVariant GetAttentionBackwardVariant();
// The variant LLMT_ATTN_BWD=`names` selects (fatal on an unknown name).
AttentionBackwardVariant ParseAttentionBackwardVariant(const std::string& names);

// Alternative forward kernels for A/B timing. On an H100 at the GPT-2 124M
// shape (B 64, T 1024, 12 heads of 64; bench_attention, 2026-11-27): default
// 0.54 ms, m64 0.59, m64n128 0.73, wgmma 0.52 (blocked tiles: 0.94):
//   kM64:     head dim 64: 64-row query blocks (one 16-row m-tile per warp)
//             instead of 128: fewer registers, more blocks per SM.
//   kM64N128: the same with 128-key tiles instead of 64: half the per-tile
//             online-softmax rescales, reductions and barriers.
//   kWgmma:   head dims 64 and 128, sm_90a only: Hopper warpgroup MMA
//             (attention_wgmma.cu), 64-row blocks, 128-key tiles at head dim
//             64 and 64-key tiles at 128. On a device other than compute
//             capability 9.0 it falls back to the default (with a warning).
//             (0.52 ms on 128-byte-swizzled tiles: faster than the default.)
//   kWgmmaPipe: the same with the next tile's Q K^T and softmax overlapped
//             with this tile's P V (not yet run on a GPU).
//   kWgmma2Wg: kWgmma with two warpgroups per block sharing every K and V
//             tile: 128-row blocks, half the L2 -> shared traffic of K and V
//             (not yet run on a GPU).
//   kWgmmaPipe2Wg: kWgmmaPipe with two warpgroups per block (both of the
//             above; not yet run on a GPU).
//   kCudnn:   cuDNN's fused flash-attention forward (as the backward's
//             "cudnn" above; its lse is the own kernels', so either backward
//             can follow it). H100, GPT-2 shape: 0.31 ms (own: 0.52).
//   kAuto:    (the default) kCudnn where cuDNN loads and takes the problem,
//             quietly kDefault elsewhere.
// From LLMT_ATTN_FWD (read once): "m64", "m64n128", "wgmma", "wgmma-pipe",
// "wgmma-2wg", "wgmma-pipe-2wg", "cudnn", "own" (alias "default": kDefault,
// the own mma kernels), "" or "auto" (kAuto); any other value is a fatal
// error. Set overrides it (process-wide, for tests).
enum class AttentionForwardVariant {
  kDefault,
  kM64,
  kM64N128,
  kWgmma,
  kWgmmaPipe,
  kWgmma2Wg,
  kWgmmaPipe2Wg,
  kCudnn,
  kAuto
};
void SetAttentionForwardVariant(AttentionForwardVariant v);
AttentionForwardVariant GetAttentionForwardVariant();

// Readies the selected bf16 attention variants for problems of this shape
// ahead of the first step: with cuDNN selected (auto, or LLMT_ATTN_FWD/BWD=
// cudnn*), builds cuDNN's plans and allocates their workspace, which would
// otherwise happen inside the first call -- so an out-of-memory shows at
// model creation, not mid-step. `bytes`: the device memory that workspace
// holds (0 when only the own kernels run, or cuDNN cannot take the problem:
// the calls then fall back). `error`: set when the allocation fails for an
// explicit cudnn* choice; under auto such a failure turns cuDNN off for the
// process instead (the own kernels need no workspace). `what`: one line
// naming the attention that will run, for the log.
struct AttentionPrepared {
  size_t bytes = 0;
  std::string error;
  std::string what;
};
AttentionPrepared PrepareAttention(int B, int T, int NH, int NKV, int hd);

// RoPE tables cos/sin [T, hd/2] (device, fp32) for positions 0..T-1:
// angle(t, i) = t * theta^(-2i/hd), computed in double like the CPU backend.
void RopeTable(float* cos, float* sin, int T, int hd, float theta, cudaStream_t stream);
// Rotates in place `n_heads` heads of width hd starting at column 0 of each
// row of x (row r = b*T + t, row stride ld elements), Hugging Face
// rotate_half convention: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin.
void RopeForward(float* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld, cudaStream_t stream);
void RopeForward(bf16* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld, cudaStream_t stream);
// In-place backward (the inverse rotation) on gradients.
void RopeBackward(float* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld, cudaStream_t stream);
void RopeBackward(bf16* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
