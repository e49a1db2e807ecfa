// Flash attention for bf16 on Hopper tensor cores with wgmma (warpgroup MMA,
// sm_90a): the structure of the mma kernels (attention_mma.cu) -- online
// softmax in registers, P and dS reused as the A operand of the next product
// straight from their accumulators -- with each product issued as
// one wgmma.m64nNk16 per 16-wide k-chunk for the whole warpgroup instead of
// per-warp mma.sync tiles. The operand that streams (K for Q K^T, V for P V)
// is read by the tensor cores directly from shared memory, once per
// warpgroup; under mma.sync each warp reads it through ldmatrix into its own
// registers (the shared-memory traffic we expected to bound the mma kernels;
// the H100 timings below say it was not the main cost).
//
// Block: one warpgroup (4 warps, 128 threads) owning kMt 64-row query
// m-tiles; warp w owns rows 16 w .. 16 w + 15 of each (the wgmma layout), so
// the per-thread fragment arithmetic is the mma kernel's. K and V tiles of kN
// keys are double-buffered with cp.async in a layout wgmma reads
// (mma_util.cuh: 128-byte swizzled, the default, or "blocked",
// LLMT_WGMMA_LAYOUT); Q is loaded once and kept as A fragments in registers.
//
// Causal masking as in the mma kernel (only on tiles crossing the diagonal);
// an m-tile whose rows all precede the key tile skips its products, which is
// uniform over the warpgroup as wgmma requires.
//
// Written on the CPU emulator (which implements wgmma from the PTX ISA's
// layouts), then run on an H100 (2026-11-27): the backward bit-identical to
// the mma kernels; on swizzled tiles the forward 0.52 ms vs the mma kernel's
// 0.54 at the GPT-2 shape and the backward on par (1.76 vs 1.72) -- every
// product still waits for the previous one (except in wgmma-pipe, not yet
// run on a GPU), and there is no TMA or warp specialisation (docs/cuda.md).
// Selected only by LLMT_ATTN_FWD=wgmma / wgmma-pipe / LLMT_ATTN_BWD=wgmma*
// on a compute-capability-9.0 device.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/log.h"

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"

namespace llmt::kernels::cuda::internal {
namespace {

constexpr int kWgThreads = 128;

// Starts copying rows [row0, row0 + ROWS) x HD of a strided global bf16
// matrix (src points at the head's column 0) into a [ROWS][HD] tile in
// layout L (mma_util.cuh). Rows >= T become zeros. Does not commit.
// Blocked: copy e goes to bytes [16 e, 16 e + 16), consecutive threads fill
// consecutive 16-byte rows of a core matrix, and a warp reads 8 rows x 64
// contiguous bytes from global memory. Swizzled: consecutive threads copy
// consecutive 16-byte chunks of a row (a 128-byte row lands in one 128-byte
// row of banks, permuted).
template <int HD, int ROWS, WgLayout LY, int NT = kWgThreads>
__device__ __forceinline__ void LoadTileAsync(bf16* dst, const bf16* src, int64_t ld, int row0,
                                              int T) {
  constexpr int kChunksPerRow = HD / 8;
#pragma unroll
  for (int e = threadIdx.x; e < ROWS * kChunksPerRow; e += NT) {
    int r, c, at;
    if constexpr (LY == WgLayout::kBlocked) {
      const int blk = e >> 3;
      r = (blk / kChunksPerRow) * 8 + (e & 7);
      c = (blk % kChunksPerRow) * 8;
      at = e * 8;
    } else {
      r = e / kChunksPerRow;
      c = (e % kChunksPerRow) * 8;
      at = TileOffset<LY>(r, c, ROWS, HD);
    }
    const bool ok = row0 + r < T;
    CpAsync16(dst + at, src + static_cast<int64_t>(ok ? row0 + r : 0) * ld + c, ok);
  }
}

// The wgmma kernels' per-tile handshake: this thread's cp.async copies have
// landed, are made visible to the tensor cores' (async-proxy) reads, and the
// barrier publishes everyone's (and frees the previous tile's buffer).
__device__ __forceinline__ void WaitTileForWgmma() {
  CpAsyncWaitAll();
  FenceProxyAsyncShared();
  __syncthreads();
}

// A fragments (16 x 16 each, k-chunks 0..NKC-1) of this warp's 16 rows
// row0.. of a [ROWS][HD] tile in layout L.
template <int HD, int ROWS, WgLayout LY, int NKC>
__device__ __forceinline__ void LoadTileFragments(uint32_t (&frag)[NKC][4], const bf16* tile,
                                                  int row0, int lane) {
#pragma unroll
  for (int kc = 0; kc < NKC; ++kc) {
    LdMatrixX4(frag[kc],
               tile + TileOffset<LY>(row0 + (lane & 15), kc * 16 + (lane >> 4) * 8, ROWS, HD));
  }
}

// The two product shapes of flash attention on tiles in layout L
// (mma_util.cuh), issued for the warpgroup (the caller fences, commits and
// waits):
//
// acc [64 x N] (=, +=) A [64 x HD] B^T with B a [N][HD] tile read K-major
// (Q K^T, K Q^T, dO V^T, V dO^T): A is this thread's register fragments
// (`reg`, one per 16-wide k-chunk) or, with A_SMEM, the [64][HD] tile `a_tile`
// read by the tensor cores. The first k-chunk overwrites acc.
template <int HD, int N, bool A_SMEM, WgLayout LY>
__device__ __forceinline__ void IssueRowProduct(float (&acc)[N / 8][4],
                                                const uint32_t (&reg)[A_SMEM ? 1 : HD / 16][4],
                                                const bf16* a_tile, const bf16* b_tile) {
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    const uint64_t b = KMajorDesc<LY>(b_tile, kc, N, HD);
    if constexpr (A_SMEM) {
      WgmmaSS<N, 0>(acc, KMajorDesc<LY>(a_tile, kc, 64, HD), b, kc > 0);
    } else {
      Wgmma<N, 0>(acc, reg[kc], b, kc > 0);
    }
  }
}
// acc [64 x HD] += A [64 x KN] B with B a [KN][HD] tile read MN-major (P V,
// P^T dO, dS^T Q, dS K) and A register fragments (`frag`, from an
// accumulator through AccToA).
template <int HD, int KN, WgLayout LY>
__device__ __forceinline__ void IssueColProduct(float (&acc)[HD / 8][4],
                                                const uint32_t (&frag)[KN / 16][4],
                                                const bf16* b_tile) {
#pragma unroll
  for (int kc = 0; kc < KN / 16; ++kc) {
    Wgmma<HD, 1>(acc, frag[kc], MnMajorDesc<LY>(b_tile, kc, KN, HD), true);
  }
}

// NWG warpgroups per block, each owning kMt 64-row m-tiles, sharing the key
// and value tiles of kN rows; tiles in layout L (swizzled tiles need
// 1024-byte alignment: kSmemAlignSlack more bytes).
template <int HD, int MT, int NK, WgLayout LY, int NWG = 1>
struct WgFwdTiling {
  static constexpr int kMt = MT, kN = NK, kRows = 64 * MT * NWG;
  static constexpr int kThreads = kWgThreads * NWG;
  static constexpr WgLayout kLayout = LY;
  static_assert(NWG == 1 || MT == 1, "two warpgroups: one m-tile each (see the kernel's live)");
  static constexpr size_t smem = (size_t{kRows} + 4 * size_t{NK}) * HD * sizeof(bf16) +
                                 (LY == WgLayout::kSwizzled ? kSmemAlignSlack : 0);
  static_assert(NK == 64 || NK == 128, "the S product is one wgmma n64 or n128");
  static_assert(NK != HD, "equal-shape S and O products: see WgForwardHd");
};

// A wgmma forward block: its shared tiles -- Q [kRows][HD], then K and V
// double-buffered, [2][kN][HD] each, 1024-byte aligned for swizzled tiles --
// and its place in the packed qkv: query rows q0.. (blocks counted from the
// end, longest rows first) of head h of batch b (blockIdx.y = b NH + h); q,
// k and v point at the batch's row 0 in the head's Q, K and V columns; the
// first n_tiles key tiles reach the block's last row.
template <int HD, int kRows, int kN, WgLayout LY>
struct WgFwdBlock {
  bf16 *Qs, *Ks, *Vs;
  int q0, bh, b, h, n_tiles;
  const bf16 *q, *k, *v;
  __device__ __forceinline__ WgFwdBlock(unsigned char* smem_raw, const bf16* qkv,
                                        const AttnDims& d) {
    unsigned char* smem = LY == WgLayout::kSwizzled ? AlignSmem1024(smem_raw) : smem_raw;
    Qs = reinterpret_cast<bf16*>(smem);
    Ks = Qs + kRows * HD;
    Vs = Ks + 2 * kN * HD;
    q0 = (gridDim.x - 1 - blockIdx.x) * kRows;
    bh = blockIdx.y;
    b = bh / d.NH;
    h = bh % d.NH;
    const int kvh = h / d.group;
    const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
    q = base + static_cast<int64_t>(h) * HD;
    k = base + static_cast<int64_t>(d.NH + kvh) * HD;
    v = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
    n_tiles = DivUp(min(q0 + kRows, d.T), kN);
  }
};

// Causal mask of key tile `tile` (kN keys) for this warp's 16 rows from
// wrow0, where the tile crosses their diagonal (key j visible to query q
// when j <= q; keys >= T are zeros, only visible to rows >= T), then the
// online-softmax step; corr for O's rescale.
template <int kN>
__device__ __forceinline__ void MaskAndSoftmax(float (&s)[kN / 8][4], int tile, int wrow0, int g,
                                               int t, float (&m)[2], float (&l)[2], float sl2,
                                               float (&corr)[2]) {
  const int j0 = tile * kN;
  if (j0 + kN - 1 > wrow0) {
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = j0 + nt * 8 + 2 * t + (i & 1);
        const int q = wrow0 + g + 8 * (i >> 1);
        if (j > q) s[nt][i] = -INFINITY;
      }
    }
  }
  OnlineSoftmaxScores<kN / 8>(s, m, l, sl2, corr);
}

// With two warpgroups (WgFwdTiling's NWG = 2, LLMT_ATTN_FWD=wgmma-2wg) that
// share every K and V tile: 128 query rows per block, as FA2's blocks, so a
// key/value tile is read from L2 once per 128 rows instead of per 64 (the
// one-warpgroup kernel moves ~3.4 TB/s of K/V from L2 at the GPT-2 shape,
// most of what an H100's L2 delivers). Each warpgroup runs the code below on
// its own m-tiles; copies and barriers span the block.
template <int HD, typename FT>
__global__ void __launch_bounds__(FT::kThreads)
    FlashFwdWgmmaKernel(bf16* out, float* lse, const bf16* qkv, AttnDims d) {
  constexpr int kN = FT::kN, kMt = FT::kMt, kRows = FT::kRows, kNT = FT::kThreads;
  constexpr WgLayout LY = FT::kLayout;
  LLMT_DYNAMIC_SMEM(smem_raw);
  const WgFwdBlock<HD, kRows, kN, LY> blk(smem_raw, qkv, d);
  // warp: within the warpgroup (the wgmma row layout); wrows: the block row
  // of this warpgroup's first m-tile.
  const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int wrows = threadIdx.x / kWgThreads * kMt * 64;
  const float sl2 = d.scale * kLog2e;

  LoadTileAsync<HD, kRows, LY, kNT>(blk.Qs, blk.q, d.ld, blk.q0, d.T);
  LoadTileAsync<HD, kN, LY, kNT>(blk.Ks, blk.k, d.ld, 0, d.T);
  LoadTileAsync<HD, kN, LY, kNT>(blk.Vs, blk.v, d.ld, 0, d.T);
  CpAsyncCommit();

  uint32_t qa[kMt][HD / 16][4];
  float o[kMt][HD / 8][4];
  float m[kMt][2], l[kMt][2];  // running max (raw score units) and partial row sums
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.f;
    }
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  // Q's fragments are loaded before the loop, not under `it == 0` inside it:
  // with them defined there, ptxas (CUDA 13.0) gave the P fragments of some
  // tilings the Q fragments' registers, so every key tile after the first
  // multiplied by P instead of Q (seen in the SASS of the tilings that ran
  // wrong on an H100; see WgForwardHd).
  WaitTileForWgmma();  // Q and tile 0 are visible
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    LoadTileFragments<HD, kRows, LY>(qa[mt], blk.Qs, wrows + mt * 64 + warp * 16, lane);
  }
  for (int it = 0; it < blk.n_tiles; ++it) {
    // Tile it is visible; everyone is done with tile it - 1's buffer.
    if (it > 0) WaitTileForWgmma();
    if (it + 1 < blk.n_tiles) {
      const int nb = (it + 1) & 1;
      LoadTileAsync<HD, kN, LY, kNT>(blk.Ks + nb * kN * HD, blk.k, d.ld, (it + 1) * kN, d.T);
      LoadTileAsync<HD, kN, LY, kNT>(blk.Vs + nb * kN * HD, blk.v, d.ld, (it + 1) * kN, d.T);
      CpAsyncCommit();
    }
    const int j0 = it * kN;
    const bf16* Kb = blk.Ks + (it & 1) * kN * HD;
    const bf16* Vb = blk.Vs + (it & 1) * kN * HD;
    // m-tile mt has a visible key in this tile unless all its rows precede
    // j0 (uniform over the warpgroup, as wgmma requires). The first m-tile
    // of a one-warpgroup block always has one (tiles end at its rows). With
    // two warpgroups, the first one's rows may precede the last tile (at
    // head dim 128: 64-key tiles); it runs the products anyway, masked to
    // no effect, since a wgmma under a run-time condition makes ptxas
    // serialise every wgmma of the kernel (C7520).
    bool live[kMt];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      live[mt] = mt == 0 || j0 <= blk.q0 + wrows + mt * 64 + 63;
    }

    // S [64 x kN] per m-tile = Q K^T: B(k = dim, n = key) = K[key][dim],
    // K-major. The first k-chunk overwrites S (no zeroing).
    float s[kMt][kN / 8][4];
    WgmmaFence();
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      if (live[mt]) IssueRowProduct<HD, kN, false, LY>(s[mt], qa[mt], nullptr, Kb);
    }
    WgmmaCommit();
    WgmmaWait<0>();
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) WgmmaFenceOperand(s[mt]);

    uint32_t pa[kMt][kN / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      if (!live[mt]) continue;
      float corr[2];
      MaskAndSoftmax<kN>(s[mt], it, blk.q0 + wrows + mt * 64 + warp * 16, g, t, m[mt], l[mt],
                         sl2, corr);
      RescaleAcc<HD>(o[mt], corr);
      // All A fragments of P before the fence, so that no register an
      // in-flight wgmma reads is rewritten (ptxas would serialise them).
#pragma unroll
      for (int kc = 0; kc < kN / 16; ++kc) AccToA(pa[mt][kc], s[mt][2 * kc], s[mt][2 * kc + 1]);
    }

    // O [64 x HD] += P [64 x kN] V: B(k = key, n = dim) = V[key][dim], MN-major.
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) WgmmaFenceOperand(o[mt]);
    WgmmaFence();
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
      if (live[mt]) IssueColProduct<HD, kN, LY>(o[mt], pa[mt], Vb);
    }
    WgmmaCommit();
    WgmmaWait<0>();
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) WgmmaFenceOperand(o[mt]);
  }

  bf16* obase =
      out + static_cast<int64_t>(blk.b) * d.T * d.C + static_cast<int64_t>(blk.h) * HD;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    StoreForwardRows<HD>(obase, d.C, lse + static_cast<int64_t>(blk.bh) * d.T,
                         blk.q0 + wrows + mt * 64 + warp * 16 + g, d.T, d.scale, o[mt], m[mt],
                         l[mt], t);
  }
}

// The forward with its products overlapped with the softmax
// (LLMT_ATTN_FWD=wgmma-pipe; FlashAttention-3's intra-warpgroup pipelining):
// each step issues S_{j+1} = Q K_{j+1}^T and then O += P_j V_j, waits only
// for S_{j+1}, masks it and runs its softmax while P_j V_j is still in
// flight, then waits for that and rescales O. The tiles as in
// FlashFwdWgmmaKernel (one 64-row m-tile, kN keys: S and O products of
// different shapes); K is loaded two tiles ahead and V one (K_{j+2} into
// K_j's buffer, V_{j+1} into V_{j-1}'s, both free after the step's barrier),
// so the same shared memory suffices. P_{j+1} stays fp32 in S's registers
// until P_j V_j is done, then becomes the next A fragments. NWG = 2
// (wgmma-pipe-2wg): two warpgroups share the K/V tiles, as in
// FlashFwdWgmmaKernel; the block's tiles reach its last row, so the first
// warpgroup's last tile may lie beyond its rows (hd 128): masked, no effect.
template <int HD, WgLayout LY, int NWG = 1>
__global__ void __launch_bounds__(kWgThreads * NWG)
    FlashFwdWgmmaPipeKernel(bf16* out, float* lse, const bf16* qkv, AttnDims d) {
  constexpr int kN = HD == 64 ? 128 : 64, kRows = 64 * NWG, kNT = kWgThreads * NWG;
  LLMT_DYNAMIC_SMEM(smem_raw);
  const WgFwdBlock<HD, kRows, kN, LY> blk(smem_raw, qkv, d);
  const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int wrows = threadIdx.x / kWgThreads * 64;  // this warpgroup's first block row
  const int wrow0 = blk.q0 + wrows + warp * 16;     // this warp's first row
  const float sl2 = d.scale * kLog2e;
  auto load_k = [&](int tile) {
    LoadTileAsync<HD, kN, LY, kNT>(blk.Ks + (tile & 1) * kN * HD, blk.k, d.ld, tile * kN, d.T);
  };
  auto load_v = [&](int tile) {
    LoadTileAsync<HD, kN, LY, kNT>(blk.Vs + (tile & 1) * kN * HD, blk.v, d.ld, tile * kN, d.T);
  };

  LoadTileAsync<HD, kRows, LY, kNT>(blk.Qs, blk.q, d.ld, blk.q0, d.T);
  load_k(0);
  if (blk.n_tiles > 1) load_k(1);
  load_v(0);
  CpAsyncCommit();
  float o[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, corr[2];
  uint32_t qa[HD / 16][4];  // before the loop: see FlashFwdWgmmaKernel
  WaitTileForWgmma();       // Q, K_0, K_1, V_0 are visible
  LoadTileFragments<HD, kRows, LY>(qa, blk.Qs, wrows + warp * 16, lane);

  // S_0 and its softmax (O is still zero: no rescale).
  float s[kN / 8][4];
  WgmmaFence();
  IssueRowProduct<HD, kN, false, LY>(s, qa, nullptr, blk.Ks);
  WgmmaCommit();
  WgmmaWait<0>();
  WgmmaFenceOperand(s);
  MaskAndSoftmax<kN>(s, 0, wrow0, g, t, m, l, sl2, corr);
  uint32_t pa[kN / 16][4];
#pragma unroll
  for (int kc = 0; kc < kN / 16; ++kc) AccToA(pa[kc], s[2 * kc], s[2 * kc + 1]);

  // Every step but the last issues both products, unconditionally: with the
  // S product under a condition, ptxas cannot tell which group wait_group 1
  // retires and serialises the products (C7514).
  for (int j = 0; j + 1 < blk.n_tiles; ++j) {
    // K_{j+1} and V_j are visible; everyone is done with K_j (S_j) and
    // V_{j-1} (P_{j-1} V_{j-1}), whose buffers the next copies take.
    WaitTileForWgmma();
    if (j + 2 < blk.n_tiles) load_k(j + 2);
    load_v(j + 1);
    CpAsyncCommit();
    // Each product its own batch (fence, issue, commit).
    WgmmaFenceOperand(s);
    WgmmaFence();
    IssueRowProduct<HD, kN, false, LY>(s, qa, nullptr, blk.Ks + ((j + 1) & 1) * kN * HD);
    WgmmaCommit();
    WgmmaFenceOperand(s);
    WgmmaFenceOperand(o);
    WgmmaFence();
    IssueColProduct<HD, kN, LY>(o, pa, blk.Vs + (j & 1) * kN * HD);
    WgmmaCommit();
    WgmmaFenceOperand(o);
    WgmmaWait<1>();  // S_{j+1} done; P_j V_j may still run
    WgmmaFenceOperand(s);
    MaskAndSoftmax<kN>(s, j + 1, wrow0, g, t, m, l, sl2, corr);
    WgmmaWait<0>();
    WgmmaFenceOperand(o);
    RescaleAcc<HD>(o, corr);
#pragma unroll
    for (int kc = 0; kc < kN / 16; ++kc) AccToA(pa[kc], s[2 * kc], s[2 * kc + 1]);
  }
  // The last tile's P V.
  WaitTileForWgmma();  // V_{n-1} is visible
  WgmmaFenceOperand(o);
  WgmmaFence();
  IssueColProduct<HD, kN, LY>(o, pa, blk.Vs + ((blk.n_tiles - 1) & 1) * kN * HD);
  WgmmaCommit();
  WgmmaWait<0>();
  WgmmaFenceOperand(o);

  StoreForwardRows<HD>(
      out + static_cast<int64_t>(blk.b) * d.T * d.C + static_cast<int64_t>(blk.h) * HD, d.C,
      lse + static_cast<int64_t>(blk.bh) * d.T, wrow0 + g, d.T, d.scale, o, m, l, t);
}

template <int HD, WgLayout LY, int NWG>
void LaunchWgFwdPipe(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                     cudaStream_t stream) {
  using FT = WgFwdTiling<HD, 1, HD == 64 ? 128 : 64, LY, NWG>;  // the same tiles and memory
  const auto kernel = FlashFwdWgmmaPipeKernel<HD, LY, NWG>;
  AllowSmem(kernel, FT::smem, "FlashFwdWgmmaPipeKernel");
  const dim3 grid(static_cast<unsigned>(CeilDiv(d.T, FT::kRows)),
                  static_cast<unsigned>(d.B * d.NH));
  Launch(kernel, grid, FT::kThreads, FT::smem, stream, out, lse, qkv, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdWgmmaPipeKernel", stream);
}

template <int HD, typename FT>
void LaunchWgFwd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream) {
  AllowSmem(FlashFwdWgmmaKernel<HD, FT>, FT::smem, "FlashFwdWgmmaKernel");
  const dim3 grid(static_cast<unsigned>(CeilDiv(d.T, FT::kRows)),
                  static_cast<unsigned>(d.B * d.NH));
  Launch(FlashFwdWgmmaKernel<HD, FT>, grid, FT::kThreads, FT::smem, stream, out, lse, qkv, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdWgmmaKernel", stream);
}

// Tilings run on an H100 (2026-11-27): these two (128-key tiles at head dim
// 64, 64-key tiles at 128) match the CPU on every test shape and the mma
// kernels bit for bit. Those whose S = Q K^T and O += P V products had the
// same wgmma shape (64-key tiles at head dim 64, one or two m-tiles per
// block; 128-key tiles at 128) computed wrong outputs (relative L2 0.2-0.5)
// whenever a block walked more than one key tile, while the emulator ran
// them right. Their SASS (cuobjdump on the H100) shows why: ptxas gave the
// P fragments the registers of the Q fragments, which the kernel then
// loaded under `it == 0` inside the loop, so tile 2 on multiplied P by K.
// The kernels now load such fragments before the loop; the equal-shape
// tilings stay out (static_assert in WgFwdTiling) until a GPU run shows the
// hoisted code right for them too.
// pipelined: FlashFwdWgmmaPipeKernel (wgmma-pipe); two_wg: two warpgroups
// per block (wgmma-2wg, wgmma-pipe-2wg; see FlashFwdWgmmaKernel).
template <int HD, WgLayout LY>
void WgForwardHd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, bool pipelined,
                 bool two_wg, cudaStream_t stream) {
  constexpr int kN = HD == 64 ? 128 : 64;
  if (pipelined) {
    two_wg ? LaunchWgFwdPipe<HD, LY, 2>(out, lse, qkv, d, stream)
           : LaunchWgFwdPipe<HD, LY, 1>(out, lse, qkv, d, stream);
  } else if (two_wg) {
    LaunchWgFwd<HD, WgFwdTiling<HD, 1, kN, LY, 2>>(out, lse, qkv, d, stream);
  } else {
    LaunchWgFwd<HD, WgFwdTiling<HD, 1, kN, LY>>(out, lse, qkv, d, stream);
  }
}

// ---- backward ------------------------------------------------------------------------
// The two kernels of FlashBwdDkvMmaKernel / FlashBwdDqMmaKernel (the same
// seven tile products, the same deterministic work split: every output
// element written once by one thread after a fixed-order loop) with 64-row
// blocks of one warpgroup and every product one wgmma per k-chunk. The fixed
// A operands (K and V in dK/dV, Q and dO in dQ) are register fragments at
// head dim 64; at 128 they are read from shared memory by the tensor cores
// (the SS form), since there the dK/dV (or dQ) accumulators alone take 128
// (64) registers.
constexpr int kBwdN = 64;  // keys per dK/dV block, queries per dQ block, tile rows

template <int HD, WgLayout LY>
struct WgBwdSmem {
  static constexpr size_t kTileBytes = size_t{kBwdN} * HD * sizeof(bf16);
  static constexpr size_t kSlack = LY == WgLayout::kSwizzled ? kSmemAlignSlack : 0;
  // dK/dV: K, V; Q and dO double-buffered; lse and Dsum double-buffered.
  static constexpr size_t kDkv = 6 * kTileBytes + 4 * kBwdN * sizeof(float) + kSlack;
  // dQ: Q, dO; K and V double-buffered.
  static constexpr size_t kDq = 6 * kTileBytes + kSlack;
};
// The fused dK/dV/dQ kernel with NWG warpgroups: dK/dV's, K and V for
// every warpgroup, a dS tile [64 queries][64 keys] per warpgroup, and with
// two the second's dQ partial (fp32 [64][64]).
template <WgLayout LY, int NWG>
constexpr size_t kWgFusedSmem =
    WgBwdSmem<64, LY>::kDkv +
    size_t{NWG - 1} * 2 * WgBwdSmem<64, LY>::kTileBytes +  // the other K, V tiles
    size_t{NWG} * kBwdN * kBwdN * sizeof(bf16) +           // dS
    size_t{NWG - 1} * kBwdN * 64 * sizeof(float);          // the partial

// ---- ordered dQ accumulation (LLMT_ATTN_BWD=wgmma-fused) ----------------------------
// Query tile m of a head gets dQ contributions dS K from the key tiles 0..m.
// The fused kernel adds them into an fp32 accumulator in a fixed order --
// key tile m (the diagonal) first, then m - 1, ..., 0 -- so the sum is
// bit-identical run to run, unlike FlashAttention-2's atomics. A counter per
// (batch, head, query tile) holds how many have been added; a block waits for
// its turn, adds, and publishes count + 1. That order is the one the blocks
// reach the tile in: key tile n meets query tile m at its (m - n)-th step,
// one step after key tile n + 1 did, so in steady state nobody waits. The
// blocks of a (batch, kv head) take their work highest key tile first, in
// the order they start (a ticket from a global counter, as CUB's decoupled
// look-back does, rather than blockIdx: CUDA does not promise to start
// blocks in index order), so a block only ever waits for blocks that started
// before it: those are running or done, and the wait cannot deadlock.
//
// Release/acquire at GPU scope: every thread's adds, a barrier, then thread
// 0's release store (cumulative over the barrier, as CUTLASS's semaphore);
// the waiter's thread 0 acquire-loads the count, then a barrier. That load is
// issued right after the step's products, so its L2 round trip runs under
// them and, when the turn has come (the usual case), costs no wait of its
// own. The adds are reductions done in L2 (red), so the last
// contributor (key tile 0) reads the sum from L2 (ld.global.cg: an L1 line
// could be stale) and writes dQ as bf16 itself: no extra kernel converts it.

// The block's place in the grid by start order: ticket k -> (k % gridDim.x,
// k / gridDim.x), from the counter `next` (zeroed before the launch).
__device__ __forceinline__ int2 TakeTicket(int* next) {
  __shared__ int ticket;
  if (threadIdx.x == 0) {
#ifdef LLMT_CUDA_EMULATION
    ticket = (*next)++;
#else
    ticket = atomicAdd(next, 1);
#endif
  }
  __syncthreads();
  return make_int2(ticket % gridDim.x, ticket / gridDim.x);
}
__device__ __forceinline__ int LoadCountAcquire(const int* count) {
#ifdef LLMT_CUDA_EMULATION
  return *count;
#else
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(count) : "memory");
  return v;
#endif
}
// Spins until *count == want (thread 0 of the block), `seen` being an
// earlier acquire-load of it. On the emulator, whose blocks run one at a time
// to the end, the count must already be there: a wait on a block that has not
// run is an ordering bug (one a GPU could deadlock on), reported as such. On
// a GPU a wait that lasts seconds is a bug too: trap instead of hanging.
__device__ __forceinline__ void WaitCount(const int* count, int want, int seen) {
#ifdef LLMT_CUDA_EMULATION
  if (seen != want) ::llmt::emu::Fail("wgmma-fused: a block waits for one that has not run");
#else
  for (long long spins = 0; seen != want; ++spins) {
    if (spins > (1ll << 22)) __trap();  // 0.3-4 s: 64 ns sleep + an L2 round trip
    __nanosleep(64);
    seen = LoadCountAcquire(count);
  }
#endif
}
__device__ __forceinline__ void PublishCount(int* count, int value) {
#ifdef LLMT_CUDA_EMULATION
  *count = value;
#else
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(count), "r"(value) : "memory");
#endif
}
__device__ __forceinline__ float2 LoadThroughL2(const float2* p) {
#ifdef LLMT_CUDA_EMULATION
  return *p;
#else
  return __ldcg(p);
#endif
}
// Adds a pair in L2 (red: no value comes back to the SM).
__device__ __forceinline__ void RedAdd2(float2* p, float2 v) {
#ifdef LLMT_CUDA_EMULATION
  p->x += v.x;
  p->y += v.y;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(v.x), "f"(v.y)
               : "memory");
#else
  atomicAdd(&p->x, v.x);
  atomicAdd(&p->y, v.y);
#endif
}

// This block's dQ contribution `dq` (the rows of this thread: query tile
// rows 16 warp + g and + 8, columns 8 nd + 2 t) for query tile m of head
// (b, h), as key tile n (n <= m) of the fixed order above. `acc` is the
// tile's [64][HD] fp32 accumulator rows, `dst` its bf16 dQ rows (row stride
// ld, scaled by `scale` as the dQ kernel does), `count` its counter and
// `seen` thread 0's acquire-load of it (when m > n); `valid_rows` = T - first
// row of the tile. m and n count key blocks: m is the block holding the
// tile's diagonal. Called by the whole block; with two warpgroups (the
// 128-key kernel) only the first is `active`, having added the second's
// partial sum from `partner` (written before the call, read after its first
// barrier; thread-fragment order [HD / 2][128]).
template <int HD>
__device__ __forceinline__ void AddDqInOrder(float (&dq)[HD / 8][4], float* acc, bf16* dst,
                                             int64_t ld, int* count, int seen, int m, int n,
                                             int valid_rows, float scale, int warp, int g, int t,
                                             bool active = true,
                                             const float* partner = nullptr) {
  const int order = m - n;  // contributions added before this one
  if (threadIdx.x == 0 && order > 0) WaitCount(count, order, seen);
  __syncthreads();
  if (!active) {  // the other warpgroup: only the barriers
    if (n > 0) __syncthreads();
    return;
  }
  if (partner != nullptr) {  // fixed order: this warpgroup's part + the partner's
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dq[nd][i] += partner[(nd * 4 + i) * kWgThreads + threadIdx.x];
    }
  }
  const int r0 = warp * 16 + g;
  if (n == 0) {  // the last: sum, scale, bf16
    if (order > 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (r0 + 8 * r >= valid_rows) continue;
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
          const float* at = acc + (r0 + 8 * r) * HD + 8 * nd + 2 * t;
          const float2 a = LoadThroughL2(reinterpret_cast<const float2*>(at));
          dq[nd][2 * r] += a.x;
          dq[nd][2 * r + 1] += a.y;
        }
      }
    }
    StoreAcc<HD>(dst, ld, r0, valid_rows, scale, dq, t);
    return;  // nobody waits on the last
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (r0 + 8 * r >= valid_rows) continue;
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      float2* p = reinterpret_cast<float2*>(acc + (r0 + 8 * r) * HD + 8 * nd + 2 * t);
      const float2 v = make_float2(dq[nd][2 * r], dq[nd][2 * r + 1]);
      if (order == 0) {
        *p = v;  // the first: no zeroing needed
      } else {
        RedAdd2(p, v);
      }
    }
  }
  __syncthreads();  // every thread's adds are issued before the release
  if (threadIdx.x == 0) PublishCount(count, order + 1);
}

// Block: keys [k0, k0 + 64) of one (batch, kv head); warp w owns keys
// k0 + 16 w .. + 15. For each query head of the group and each 64-query tile
// from k0 on (one flat sequence, so the next tile's copy overlaps across
// heads):
//   S^T = K Q^T, dP^T = V dO^T         (K, V register A fragments; Q, dO K-major B)
//   P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - Dsum), causal mask by value
//   dV += P^T dO, dK += dS^T Q         (Q, dO read MN-major)
// Queries >= T are zero rows with lse = Dsum = 0: P^T = 1 there, but dO = 0
// makes their dV terms and dS^T exactly zero.
//
// FUSED (LLMT_ATTN_BWD=wgmma-fused, head dim 64): the block also computes
// this key tile's dQ contribution of every step, FlashAttention-2's fifth
// product, instead of the dQ kernel recomputing S and dP (five products
// instead of seven):
//   dS [queries][keys] -> shared memory (bf16, the values dK uses)
//   dQ_part = dS K                     (dS K-major A, K MN-major B: both read
//                                       by the tensor cores)
// and adds it into dq_acc in the fixed order of AddDqInOrder (dq_count: one
// zeroed counter per (batch, head, query tile)). Blocks run highest key tile
// first (see AddDqInOrder).
//
// NWG = 2 (fused only; LLMT_ATTN_BWD=wgmma-fused-2wg): two warpgroups per
// block, each owning 64 of the block's 128 keys exactly as above, sharing
// the Q/dO tiles of every step (half the L2 -> shared traffic per key) and
// one ordered dQ add per step for both (half the counter handshakes and L2
// reductions): the second warpgroup hands its dS K partial over shared
// memory, the first adds it to its own (a fixed order) and does the add.
template <int HD, bool A_SMEM, WgLayout LY, bool FUSED = false, int NWG = 1>
__global__ void __launch_bounds__(kWgThreads * NWG)
    FlashBwdDkvWgmmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                           const float* Dsum, AttnDims d, float* dq_acc, int* dq_count) {
  static_assert(!FUSED || (HD == 64 && !A_SMEM), "wgmma-fused: head dim 64, register K and V");
  static_assert(NWG == 1 || (NWG == 2 && FUSED), "two warpgroups: the fused kernel only");
  constexpr int kN = kBwdN, kNT = kWgThreads * NWG, kKeys = kN * NWG;
  LLMT_DYNAMIC_SMEM(smem_raw);
  unsigned char* smem = LY == WgLayout::kSwizzled ? AlignSmem1024(smem_raw) : smem_raw;
  bf16* Ks = reinterpret_cast<bf16*>(smem);  // [kKeys][HD]: a [kN][HD] tile per warpgroup
  bf16* Vs = Ks + kKeys * HD;
  bf16* Qs = Vs + kKeys * HD;     // [2][kN][HD]
  bf16* dOs = Qs + 2 * kN * HD;   // [2][kN][HD]
  bf16* dSs = dOs + 2 * kN * HD;  // FUSED: [NWG][kN queries][kN keys]
  // NWG = 2: the second warpgroup's dQ partial, [HD / 2][kWgThreads] fp32
  float* Xs = reinterpret_cast<float*>(dSs + (FUSED ? NWG * kN * kN : 0));
  float* Lsm = Xs + (NWG > 1 ? HD / 2 * kWgThreads : 0);  // [2][kN]
  float* Dsm = Lsm + 2 * kN;                              // [2][kN]
  const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int wg = threadIdx.x / kWgThreads;
  // Low key tiles see the most queries: first; fused, last, and in the
  // order the blocks start (TakeTicket; see AddDqInOrder).
  int2 blk = make_int2(blockIdx.x, blockIdx.y);
  if constexpr (FUSED) blk = TakeTicket(dq_count + DivUp(d.T, kN) * d.B * d.NH);
  const int k_tile = FUSED ? gridDim.x - 1 - blk.x : blk.x;  // in blocks of kKeys
  const int k0 = k_tile * kKeys;
  const int bg = blk.y, b = bg / d.NKV, kvh = bg % d.NKV;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* obase = dout + static_cast<int64_t>(b) * d.T * d.C;
  const int64_t kcol = static_cast<int64_t>(d.NH + kvh) * HD;
  const int64_t vcol = static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  const bf16* Kw = Ks + wg * kN * HD;  // this warpgroup's keys
  const bf16* Vw = Vs + wg * kN * HD;
  bf16* dSw = dSs + wg * kN * kN;
  const int wkey0 = k0 + wg * kN + warp * 16;  // this warp's first key
  const int n_qt = DivUp(d.T - k0, kN);  // query tiles per head
  const int n_it = d.group * n_qt;
  const float sl2 = d.scale * kLog2e;

  // Issues the copies of flat step `it` (query head, query tile) into buffer it & 1.
  auto issue = [&](int it) {
    const int h = kvh * d.group + it / n_qt, i0 = k0 + (it % n_qt) * kN, nb = it & 1;
    const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
    LoadTileAsync<HD, kN, LY, kNT>(Qs + nb * kN * HD, base + static_cast<int64_t>(h) * HD, d.ld,
                                   i0, d.T);
    LoadTileAsync<HD, kN, LY, kNT>(dOs + nb * kN * HD, obase + static_cast<int64_t>(h) * HD, d.C,
                                   i0, d.T);
    LoadRowStatsAsync<kNT>(Lsm + nb * kN, lse + bh * d.T, i0, kN, d.T);
    LoadRowStatsAsync<kNT>(Dsm + nb * kN, Dsum + bh * d.T, i0, kN, d.T);
    CpAsyncCommit();
  };
  // [kKeys][HD] in these layouts is the warpgroups' [kN][HD] tiles stacked.
  LoadTileAsync<HD, kKeys, LY, kNT>(Ks, base + kcol, d.ld, k0, d.T);
  LoadTileAsync<HD, kKeys, LY, kNT>(Vs, base + vcol, d.ld, k0, d.T);
  issue(0);  // same group as K, V

  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dk[nd][i] = dv[nd][i] = 0.f;
  }
  constexpr bool kASmem = A_SMEM;  // K, V read by the tensor cores (SS form)
  constexpr int kRegK = kASmem ? 1 : HD / 16;
  uint32_t kreg[kRegK][4], vreg[kRegK][4];
  WaitTileForWgmma();  // K, V and step 0 are visible
  if constexpr (!kASmem) {  // before the loop: see FlashFwdWgmmaKernel
    LoadTileFragments<HD, kN, LY>(kreg, Kw, warp * 16, lane);
    LoadTileFragments<HD, kN, LY>(vreg, Vw, warp * 16, lane);
  }

  for (int it = 0; it < n_it; ++it) {
    // Step it is visible; everyone is done with step it - 1's buffer.
    if (it > 0) WaitTileForWgmma();
    if (it + 1 < n_it) issue(it + 1);
    const int i0 = k0 + (it % n_qt) * kN, nb = it & 1;
    const bf16* Qb = Qs + nb * kN * HD;
    const bf16* dOb = dOs + nb * kN * HD;
    const float* Lb = Lsm + nb * kN;
    const float* Db = Dsm + nb * kN;

    // S^T, dP^T [64 keys x 64 queries]: B(k = dim, n = query) = Q, dO [query][dim].
    float st[kN / 8][4], dpt[kN / 8][4];
    WgmmaFence();
    IssueRowProduct<HD, kN, kASmem, LY>(st, kreg, Kw, Qb);
    IssueRowProduct<HD, kN, kASmem, LY>(dpt, vreg, Vw, dOb);
    WgmmaCommit();
    WgmmaWait<0>();
    WgmmaFenceOperand(st);
    WgmmaFenceOperand(dpt);

    // Thread element (key wkey0 + g + 8 r, query i0 + 8 nt + 2 t + j) at [nt][2 r + j].
    // (With two warpgroups the second's keys all follow the first step's
    // queries: its P^T is all zero there, computed rather than skipped, as
    // a wgmma under a condition serialises them all; see the forward.)
    const bool diag = i0 < wkey0 + 15;  // some query of the tile precedes some key of the warp
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = nt * 8 + 2 * t + j;
        const float L = Lb[c] * kLog2e, D = Db[c];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int i = 2 * r + j;
          float p = Exp2Approx(fmaf(st[nt][i], sl2, -L));
          if (diag && i0 + c < wkey0 + g + 8 * r) p = 0.f;
          st[nt][i] = p;
          dpt[nt][i] = p * (dpt[nt][i] - D);
        }
      }
    }
    uint32_t pa[kN / 16][4], sa[kN / 16][4];
#pragma unroll
    for (int kc = 0; kc < kN / 16; ++kc) {
      AccToA(pa[kc], st[2 * kc], st[2 * kc + 1]);
      AccToA(sa[kc], dpt[2 * kc], dpt[2 * kc + 1]);
    }
    if constexpr (FUSED) {
      // dS = (dS^T)^T into the [query][key] tile, one bf16 at a time (the
      // thread's pairs run along queries, the tile's rows): the rounding of
      // AccToA, so dQ and dK use the same dS. The previous step's dQ product
      // read this tile and is done (waited below).
#pragma unroll
      for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int q = nt * 8 + 2 * t + (i & 1), key = warp * 16 + g + 8 * (i >> 1);
          dSw[TileOffset<LY>(q, key, kN, kN)] = __float2bfloat16(dpt[nt][i]);
        }
      }
      FenceProxyAsyncShared();
      __syncthreads();  // the whole tile, for the tensor cores
    }

    // dV += P^T dO, dK += dS^T Q: B(k = query, n = dim) = dO, Q [query][dim], MN-major.
    // Fused: dQ_part = dS K, B(k = key, n = dim) = K [key][dim], MN-major.
    float dq[FUSED ? HD / 8 : 1][4];
    WgmmaFenceOperand(dv);
    WgmmaFenceOperand(dk);
    WgmmaFence();
    IssueColProduct<HD, kN, LY>(dv, pa, dOb);
    IssueColProduct<HD, kN, LY>(dk, sa, Qb);
    int* count = nullptr;  // fused: this step's dQ counter, its value as seen now
    int seen = 0;
    if constexpr (FUSED) {
#pragma unroll
      for (int kc = 0; kc < kN / 16; ++kc) {
        WgmmaSS<HD, 1>(dq, KMajorDesc<LY>(dSw, kc, kN, kN), MnMajorDesc<LY>(Kw, kc, kN, HD),
                       kc > 0);
      }
    }
    WgmmaCommit();
    if constexpr (FUSED) {  // the counter's round trip under the products
      const int64_t bh = static_cast<int64_t>(b) * d.NH + kvh * d.group + it / n_qt;
      count = dq_count + bh * DivUp(d.T, kN) + i0 / kN;
      if (threadIdx.x == 0 && i0 / kKeys > k_tile) seen = LoadCountAcquire(count);
    }
    WgmmaWait<0>();
    WgmmaFenceOperand(dv);
    WgmmaFenceOperand(dk);
    if constexpr (FUSED) {
      WgmmaFenceOperand(dq);
      const int h = kvh * d.group + it / n_qt;
      const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
      if (NWG > 1 && wg == 1) {  // the partial, for the first warpgroup (fragment order)
        const int lt = threadIdx.x % kWgThreads;
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
#pragma unroll
          for (int i = 0; i < 4; ++i) Xs[(nd * 4 + i) * kWgThreads + lt] = dq[nd][i];
        }
      }
      AddDqInOrder<HD>(dq, dq_acc + (bh * d.T + i0) * HD,
                       dqkv + (static_cast<int64_t>(b) * d.T + i0) * d.ld +
                           static_cast<int64_t>(h) * HD,
                       d.ld, count, seen, i0 / kKeys, k_tile, d.T - i0, d.scale, warp, g, t,
                       wg == 0, NWG > 1 ? Xs : nullptr);
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld;
  // The scores were scale * q.k, so dK carries the scale.
  StoreAcc<HD>(dbase + kcol, d.ld, wkey0 + g, d.T, d.scale, dk, t);
  StoreAcc<HD>(dbase + vcol, d.ld, wkey0 + g, d.T, 1.f, dv, t);
}

// Block: queries [q0, q0 + 64) of one (batch, head); warp w owns rows
// q0 + 16 w .. + 15. Over key tiles up to the diagonal:
//   S = Q K^T, dP = dO V^T             (Q, dO register A fragments; K, V K-major B)
//   dS = exp(scale S - lse) (dP - Dsum), causal mask by value
//   dQ += dS K                         (K read MN-major)
template <int HD, bool A_SMEM, WgLayout LY>
__global__ void __launch_bounds__(kWgThreads)
    FlashBwdDqWgmmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                          const float* Dsum, AttnDims d) {
  constexpr int kN = kBwdN;
  LLMT_DYNAMIC_SMEM(smem_raw);
  unsigned char* smem = LY == WgLayout::kSwizzled ? AlignSmem1024(smem_raw) : smem_raw;
  bf16* Qs = reinterpret_cast<bf16*>(smem);  // [kN][HD]
  bf16* dOs = Qs + kN * HD;
  bf16* Ks = dOs + kN * HD;      // [2][kN][HD]
  bf16* Vs = Ks + 2 * kN * HD;   // [2][kN][HD]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kN;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  const int wrow0 = q0 + warp * 16;
  const int n_tiles = DivUp(min(q0 + kN, d.T), kN);
  const float sl2 = d.scale * kLog2e;

  LoadTileAsync<HD, kN, LY>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  LoadTileAsync<HD, kN, LY>(
      dOs, dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD, d.C, q0,
      d.T);
  LoadTileAsync<HD, kN, LY>(Ks, kbase, d.ld, 0, d.T);
  LoadTileAsync<HD, kN, LY>(Vs, vbase, d.ld, 0, d.T);
  CpAsyncCommit();
  float L[2], D[2];  // this thread's rows g and g + 8: lse (log2 units) and Dsum
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q = wrow0 + g + 8 * r;
    L[r] = q < d.T ? lse[static_cast<int64_t>(bh) * d.T + q] * kLog2e : 0.f;
    D[r] = q < d.T ? Dsum[static_cast<int64_t>(bh) * d.T + q] : 0.f;
  }
  float dq[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.f;
  constexpr bool kASmem = A_SMEM;  // Q, dO read by the tensor cores (SS form)
  constexpr int kRegQ = kASmem ? 1 : HD / 16;
  uint32_t qreg[kRegQ][4], oreg[kRegQ][4];
  WaitTileForWgmma();  // Q, dO and tile 0 are visible
  if constexpr (!kASmem) {  // before the loop: see FlashFwdWgmmaKernel
    LoadTileFragments<HD, kN, LY>(qreg, Qs, warp * 16, lane);
    LoadTileFragments<HD, kN, LY>(oreg, dOs, warp * 16, lane);
  }

  for (int it = 0; it < n_tiles; ++it) {
    // Tile it is visible; everyone is done with tile it - 1's buffer.
    if (it > 0) WaitTileForWgmma();
    if (it + 1 < n_tiles) {
      const int nb = (it + 1) & 1;
      LoadTileAsync<HD, kN, LY>(Ks + nb * kN * HD, kbase, d.ld, (it + 1) * kN, d.T);
      LoadTileAsync<HD, kN, LY>(Vs + nb * kN * HD, vbase, d.ld, (it + 1) * kN, d.T);
      CpAsyncCommit();
    }
    const int j0 = it * kN;
    const bf16* Kb = Ks + (it & 1) * kN * HD;
    const bf16* Vb = Vs + (it & 1) * kN * HD;

    // S, dP [64 queries x 64 keys]: B(k = dim, n = key) = K, V [key][dim], K-major.
    float s[kN / 8][4], dp[kN / 8][4];
    WgmmaFence();
    IssueRowProduct<HD, kN, kASmem, LY>(s, qreg, Qs, Kb);
    IssueRowProduct<HD, kN, kASmem, LY>(dp, oreg, dOs, Vb);
    WgmmaCommit();
    WgmmaWait<0>();
    WgmmaFenceOperand(s);
    WgmmaFenceOperand(dp);

    const bool diag = j0 + kN - 1 > wrow0;  // some key of the tile follows some row of the warp
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i >> 1;
        float p = Exp2Approx(fmaf(s[nt][i], sl2, -L[r]));
        if (diag && j0 + nt * 8 + 2 * t + (i & 1) > wrow0 + g + 8 * r) p = 0.f;
        s[nt][i] = p * (dp[nt][i] - D[r]);  // dS
      }
    }
    uint32_t sa[kN / 16][4];
#pragma unroll
    for (int kc = 0; kc < kN / 16; ++kc) AccToA(sa[kc], s[2 * kc], s[2 * kc + 1]);

    // dQ += dS K: B(k = key, n = dim) = K[key][dim], MN-major.
    WgmmaFenceOperand(dq);
    WgmmaFence();
    IssueColProduct<HD, kN, LY>(dq, sa, Kb);
    WgmmaCommit();
    WgmmaWait<0>();
    WgmmaFenceOperand(dq);
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(h) * HD;
  StoreAcc<HD>(dbase, d.ld, wrow0 + g, d.T, d.scale, dq, t);
}

// The product kernel's tile (8 KB) sits at the start of this many zeroed
// bytes, which cover every byte either reading (LBO/SBO as meant or
// exchanged) of either layout can touch, so that a device reading a
// descriptor another way gets wrong values, not a fault that would poison
// the process.
constexpr int kWgmmaProductSmem = 40 * 1024;

// Commits and waits for the issued product, then stores D [64][8 NC]
// (row-major) from this thread's accumulator tiles.
template <int NC>
__device__ __forceinline__ void FinishProduct(float* d_out, float (&acc)[NC][4], int r0, int t) {
  WgmmaCommit();
  WgmmaWait<0>();
  WgmmaFenceOperand(acc);
  for (int c = 0; c < NC; ++c) {
    for (int i = 0; i < 4; ++i) {
      d_out[(r0 + 8 * (i >> 1)) * 8 * NC + 8 * c + 2 * t + (i & 1)] = acc[c][i];
    }
  }
}

// One m64nNk16 product through the attention kernels' descriptor code (see
// WgmmaProduct): A [64][16] and B [16][N] (k, n) row-major in global
// memory, D [64][N] fp32, N = 64 (K-major) or 128 (MN-major).
template <WgLayout LY>
__global__ void __launch_bounds__(kWgThreads)
    WgmmaProductKernel(float* d_out, const bf16* a, const bf16* b, int mn_major, int swap) {
  LLMT_DYNAMIC_SMEM(smem_raw);
  unsigned char* smem = LY == WgLayout::kSwizzled ? AlignSmem1024(smem_raw) : smem_raw;
  bf16* tile = reinterpret_cast<bf16*>(smem);
  for (int e = threadIdx.x; e < kWgmmaProductSmem / 2; e += kWgThreads) {
    tile[e] = __float2bfloat16(0.f);
  }
  __syncthreads();
  const int N = mn_major ? 128 : 64;
  for (int e = threadIdx.x; e < 16 * N; e += kWgThreads) {
    const int k = e / N, n = e % N;
    // Second k-chunk: K-major [64][64] tile (rows n, columns 16 + k);
    // MN-major [32][128] tile (rows 16 + k, columns n).
    tile[mn_major ? TileOffset<LY>(16 + k, n, 32, 128) : TileOffset<LY>(n, 16 + k, 64, 64)] = b[e];
  }
  FenceProxyAsyncShared();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  auto pair = [&](int r, int c) {
    uint32_t lo, hi;
    lo = __bfloat16_as_ushort(a[r * 16 + c]);
    hi = __bfloat16_as_ushort(a[r * 16 + c + 1]);
    return lo | hi << 16;
  };
  const int r0 = warp * 16 + g;
  const uint32_t af[4] = {pair(r0, 2 * t), pair(r0 + 8, 2 * t), pair(r0, 2 * t + 8),
                          pair(r0 + 8, 2 * t + 8)};
  WgmmaFence();
  if (mn_major) {
    float acc[16][4];
    Wgmma<128, 1>(acc, af, MnMajorDesc<LY>(tile, 1, 32, 128, swap != 0), false);
    FinishProduct(d_out, acc, r0, t);
  } else {
    float acc[8][4];
    Wgmma<64, 0>(acc, af, KMajorDesc<LY>(tile, 1, 64, 64, swap != 0), false);
    FinishProduct(d_out, acc, r0, t);
  }
}

// LLMT_WGMMA_LAYOUT, read once (SetWgmmaLayout overrides it).
WgLayout& LayoutSetting() {
  static WgLayout layout = [] {
    const char* env = std::getenv("LLMT_WGMMA_LAYOUT");
    const std::string v = env == nullptr ? "" : env;
    if (v.empty() || v == "swizzled") return WgLayout::kSwizzled;
    if (v == "blocked") {
      LLMT_LOG(Info) << "cuda attention: wgmma tiles in the blocked layout (LLMT_WGMMA_LAYOUT)";
      return WgLayout::kBlocked;
    }
    Fatal("LLMT_WGMMA_LAYOUT: unknown value '" + v + "' (expected swizzled or blocked)");
  }();
  return layout;
}

const char* LayoutName(WgLayout l) { return l == WgLayout::kSwizzled ? "swizzled" : "blocked"; }

}  // namespace

WgLayout GetWgmmaLayout() { return LayoutSetting(); }
void SetWgmmaLayout(WgLayout layout) { LayoutSetting() = layout; }

void WgmmaProduct(float* d, const bf16* a, const bf16* b, bool mn_major, WgLayout layout,
                  bool swap_strides, cudaStream_t stream) {
  const int m = mn_major ? 1 : 0, sw = swap_strides ? 1 : 0;
  const size_t smem = kWgmmaProductSmem + kSmemAlignSlack;
  if (layout == WgLayout::kSwizzled) {
    AllowSmem(WgmmaProductKernel<WgLayout::kSwizzled>, smem, "WgmmaProductKernel");
    Launch(WgmmaProductKernel<WgLayout::kSwizzled>, dim3(1), kWgThreads, smem, stream, d, a, b, m,
           sw);
  } else {
    AllowSmem(WgmmaProductKernel<WgLayout::kBlocked>, smem, "WgmmaProductKernel");
    Launch(WgmmaProductKernel<WgLayout::kBlocked>, dim3(1), kWgThreads, smem, stream, d, a, b, m,
           sw);
  }
  LLMT_CUDA_CHECK_LAUNCH("WgmmaProductKernel", stream);
}

namespace {

// One WgmmaProduct per B layout on small integers (exact in bf16 and in any
// fp32 summation order) against the host product. False, with a warning
// naming the failing layout, when the device disagrees or a call fails; the
// attention kernels build their descriptors exactly as WgmmaProduct does, so
// a failure here means they would compute garbage.
bool WgmmaSelfCheck(WgLayout layout) {
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);  // exact for small integers
  };
  // Small integers from a hash of the index: no period that a wrong stride
  // could step over and still read the right values.
  auto value = [](size_t i, uint32_t salt, int range) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ salt;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return static_cast<float>(static_cast<int>(h % range) - range / 2);
  };
  std::vector<uint16_t> a(64 * 16), b(16 * 128);
  std::vector<float> af(a.size()), bf(b.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = bits(af[i] = value(i, 0x9e3779b9u, 5));  // -2..2
  for (size_t i = 0; i < b.size(); ++i) b[i] = bits(bf[i] = value(i, 0x85ebca6bu, 7));  // -3..3
  void *da = nullptr, *db = nullptr, *dd = nullptr;
  bool ok = cudaMalloc(&da, a.size() * 2) == cudaSuccess &&
            cudaMalloc(&db, b.size() * 2) == cudaSuccess &&
            cudaMalloc(&dd, 64 * 128 * 4) == cudaSuccess &&
            cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess &&
            cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess;
  std::string failed;
  for (const bool mn_major : {false, true}) {
    if (!ok) break;
    const int N = mn_major ? 128 : 64;  // B is b's first 16 x N values, row-major
    std::vector<float> want(64 * N, 0.f), got(64 * N);
    for (int i = 0; i < 64; ++i) {
      for (int j = 0; j < N; ++j) {
        for (int k = 0; k < 16; ++k) want[i * N + j] += af[i * 16 + k] * bf[k * N + j];
      }
    }
    WgmmaProduct(static_cast<float*>(dd), static_cast<const bf16*>(da),
                 static_cast<const bf16*>(db), mn_major, layout, /*swap_strides=*/false, nullptr);
    ok = cudaMemcpy(got.data(), dd, got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
    if (ok && got != want) failed += mn_major ? " MN-major" : " K-major";
  }
  if (!ok) {
    failed = " (a CUDA call failed: " + std::string(cudaGetErrorString(cudaGetLastError())) + ")";
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
  if (!failed.empty()) {
    LLMT_LOG(Warning) << "cuda attention: the wgmma self-check failed for the "
                      << LayoutName(layout) << " layout, B" << failed
                      << "; the wgmma variants fall back to the mma kernels";
  }
  return failed.empty();
}

}  // namespace

bool WgmmaAvailable() {
  // The wgmma code exists only as sm_90a SASS: compute capability 9.0
  // exactly, and the device must agree with our reading of the operand
  // layouts (checked once per device and layout, on first use).
  static int cached[64][2] = {};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  const WgLayout layout = GetWgmmaLayout();
  int& c = cached[dev][layout == WgLayout::kSwizzled ? 1 : 0];
  if (c == 0) {
    cudaDeviceProp prop{};
    const bool sm90 = cudaGetDeviceProperties(&prop, dev) == cudaSuccess && prop.major == 9 &&
                      prop.minor == 0;
    c = sm90 && WgmmaSelfCheck(layout) ? 1 : 2;
  }
  return c == 1;
}

template <int HD, bool A_SMEM, WgLayout LY>
void WgBackwardHd(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                  const float* Dsum, const AttnDims& d, cudaStream_t stream) {
  using S = WgBwdSmem<HD, LY>;
  const auto dkv = FlashBwdDkvWgmmaKernel<HD, A_SMEM, LY>;
  const auto dq = FlashBwdDqWgmmaKernel<HD, A_SMEM, LY>;
  AllowSmem(dkv, S::kDkv, "FlashBwdDkvWgmmaKernel");
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, kBwdN));
  Launch(dkv, dim3(tiles, static_cast<unsigned>(d.B * d.NKV)), kWgThreads, S::kDkv, stream, dqkv,
         dout, qkv, lse, Dsum, d, static_cast<float*>(nullptr), static_cast<int*>(nullptr));
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDkvWgmmaKernel", stream);
  AllowSmem(dq, S::kDq, "FlashBwdDqWgmmaKernel");
  Launch(dq, dim3(tiles, static_cast<unsigned>(d.B * d.NH)), kWgThreads, S::kDq, stream, dqkv,
         dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqWgmmaKernel", stream);
}

// The fused backward (one kernel; dq_acc [B NH T 64] fp32 and dq_count
// [B NH ceil(T / 64) + 1] int from the caller's scratch), NWG warpgroups
// (64 keys each) per block.
template <WgLayout LY, int NWG>
void WgBackwardFused(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dsum, const AttnDims& d, float* dq_acc, int* dq_count,
                     cudaStream_t stream) {
  const auto kernel = FlashBwdDkvWgmmaKernel<64, false, LY, true, NWG>;
  const char* name = NWG == 1 ? "FlashBwdDkvWgmmaKernel<fused>"
                              : "FlashBwdDkvWgmmaKernel<fused, 2 warpgroups>";
  constexpr size_t smem = kWgFusedSmem<LY, NWG>;
  AllowSmem(kernel, smem, name);
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, kBwdN * NWG));
  LLMT_CUDA_CHECK(cudaMemsetAsync(dq_count, 0, WgFusedCountBytes(d.B, d.T, d.NH), stream));
  Launch(kernel, dim3(tiles, static_cast<unsigned>(d.B * d.NKV)), kWgThreads * NWG, smem, stream,
         dqkv, dout, qkv, lse, Dsum, d, dq_acc, dq_count);
  LLMT_CUDA_CHECK_LAUNCH(name, stream);
}

template <WgLayout LY>
void WgBackward(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                const float* Dsum, const AttnDims& d, bool a_smem, float* dq_acc, int* dq_count,
                bool two_wg, cudaStream_t stream) {
  if (d.hd == 64 && !a_smem && dq_acc != nullptr) {
    if (two_wg) {
      WgBackwardFused<LY, 2>(dqkv, dout, qkv, lse, Dsum, d, dq_acc, dq_count, stream);
    } else {
      WgBackwardFused<LY, 1>(dqkv, dout, qkv, lse, Dsum, d, dq_acc, dq_count, stream);
    }
  } else if (d.hd == 64 && a_smem) {
    WgBackwardHd<64, true, LY>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else if (d.hd == 64) {
    WgBackwardHd<64, false, LY>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else if (d.hd == 128) {
    WgBackwardHd<128, true, LY>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else {
    Fatal("FlashBackwardWgmma: unsupported head dim " + std::to_string(d.hd));
  }
}

void FlashBackwardWgmma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, const AttnDims& d, bool a_smem, float* dq_acc,
                        int* dq_count, bool two_wg, cudaStream_t stream) {
  if (GetWgmmaLayout() == WgLayout::kSwizzled) {
    WgBackward<WgLayout::kSwizzled>(dqkv, dout, qkv, lse, Dsum, d, a_smem, dq_acc, dq_count,
                                    two_wg, stream);
  } else {
    WgBackward<WgLayout::kBlocked>(dqkv, dout, qkv, lse, Dsum, d, a_smem, dq_acc, dq_count,
                                   two_wg, stream);
  }
}

template <WgLayout LY>
void WgForward(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
               AttentionForwardVariant v, cudaStream_t stream) {
  using V = AttentionForwardVariant;
  const bool pipelined = v == V::kWgmmaPipe || v == V::kWgmmaPipe2Wg;
  const bool two_wg = v == V::kWgmma2Wg || v == V::kWgmmaPipe2Wg;
  if (d.hd == 64) {
    WgForwardHd<64, LY>(out, lse, qkv, d, pipelined, two_wg, stream);
  } else if (d.hd == 128) {
    WgForwardHd<128, LY>(out, lse, qkv, d, pipelined, two_wg, stream);
  } else {
    Fatal("FlashForwardWgmma: unsupported head dim " + std::to_string(d.hd));
  }
}

void FlashForwardWgmma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                       AttentionForwardVariant v, cudaStream_t stream) {
  if (GetWgmmaLayout() == WgLayout::kSwizzled) {
    WgForward<WgLayout::kSwizzled>(out, lse, qkv, d, v, stream);
  } else {
    WgForward<WgLayout::kBlocked>(out, lse, qkv, d, v, stream);
  }
}

}  // namespace llmt::kernels::cuda::internal
