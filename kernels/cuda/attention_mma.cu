// Flash attention for bf16 on tensor cores with mma.sync (m16n8k16, bf16 x
// bf16 -> fp32), FlashAttention-2 style: score, probability and output
// accumulators live in registers, and an accumulator tile is reused directly
// as the A operand of the next product (the m16n8 accumulator layout of two
// adjacent n-tiles is exactly the m16k16 A layout), so nothing but the
// operand tiles goes through shared memory.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; g = lane / 4, t = lane % 4;
// each 32-bit register holds two bf16, the lower index in the low half):
//   A (16 x 16): a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8, f32): c0, c1 = (g, 2t), (g, 2t+1);  c2, c3 = (g+8, 2t), (g+8, 2t+1)
// So a thread owns rows g and g+8 of each 16-row tile of its warp; row
// statistics are reduced over the 4 threads (a "quad") sharing g.
//
// Operands come from row-major shared tiles through ldmatrix: the plain form
// gives A fragments and the B fragments whose k runs along a tile row (K for
// Q K^T), the .trans form the B fragments whose k runs down the tile (V for
// P V), so no transposed copy is ever stored. Tiles are copied global ->
// shared with cp.async into two buffers: the copy of tile i+1 is in flight
// while tile i is multiplied, with one __syncthreads per tile.
//
// Shared-memory traffic, not the tensor cores, bounds mma.sync kernels: each
// B fragment read from shared memory feeds one mma per 16-row tile a warp
// owns. The forward at head dim 64 therefore gives each warp 32 query rows
// (two m-tiles share every K and V fragment), and so does the dQ kernel; at
// 128 the accumulators would not fit the registers, so they stay at 16.
//
// Causal masking is applied only on tiles that straddle the diagonal, and a
// warp skips the (parts of) tiles that lie entirely above its rows.
// Probabilities use exp2 with log2(e) folded into the score scale.
//
// Work decomposition: forward and dQ own query tiles, dK/dV owns a key tile
// and loops over the queries (and the GQA group's query heads). Every output
// element is written by one thread after a fixed-order loop: deterministic.
#include <algorithm>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"

namespace llmt::kernels::cuda::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // bf16 padding per row (16 bytes): conflict-free ldmatrix rows

// Starts copying rows [row0, row0 + ROWS) x HD of a strided global bf16
// matrix (src points at the head's column 0) into a padded row-major tile
// [ROWS][HD + 8]. Rows >= T become zeros. Does not commit.
template <int HD, int ROWS, int NT = kThreads>
__device__ __forceinline__ void LoadTileAsync(bf16* dst, const bf16* src, int64_t ld, int row0,
                                              int T) {
  constexpr int kChunks = HD / 8;
#pragma unroll
  for (int e = threadIdx.x; e < ROWS * kChunks; e += NT) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const bool ok = row0 + r < T;
    CpAsync16(dst + r * (HD + kPad) + c, src + static_cast<int64_t>(ok ? row0 + r : 0) * ld + c,
              ok);
  }
}

template <int HD>
struct Cfg {
  static constexpr int kLd = HD + kPad;
  static constexpr int kN = 64;  // rows of a streamed tile (keys, or queries in dK/dV)
  // forward: 16-row m-tiles per warp (see the file comment)
  static constexpr int kFwdMt = HD == 64 ? 2 : 1;
  // backward: 16 rows per warp, 64 per block; at head dim 64 the fixed
  // operand (K and V in dK/dV, Q and dO in dQ) stays in registers as A
  // fragments, at 128 it is re-read from shared memory.
  static constexpr int kBwdRows = kWarps * 16;
  static constexpr bool kFixedInRegs = HD == 64;
  static constexpr size_t kTileBytes = size_t{kN} * kLd * sizeof(bf16);
  // dK/dV: K, V (`keys` rows); Q, dO double-buffered; lse, Dsum double-buffered
  static constexpr size_t Dkv(int keys) {
    return 2 * size_t(keys) * kLd * sizeof(bf16) + 4 * kTileBytes + 4 * kN * sizeof(float);
  }
  // dQ: 16-row m-tiles per warp (two at head dim 64 by default, like the
  // forward; one with the dq64 variant)
  static constexpr int kDqMt = HD == 64 ? 2 : 1;
  static constexpr int DqRows(int mt) { return kWarps * 16 * mt; }
  // dQ: Q, dO; K, V double-buffered
  static constexpr size_t Dq(int mt) {
    return 2 * size_t(DqRows(mt)) * kLd * sizeof(bf16) + 4 * kTileBytes;
  }
  static_assert(kBwdRows == kN, "dK/dV walks query tiles from its own key tile on");
};

// dK/dV tiling: WARPS warps owning MT 16-key m-tiles each (WARPS * 16 * MT
// keys per block), query tiles walked in steps of QC columns, K and V held
// as A fragments in registers when KVREG, and with DS the kernel also writes
// every dS tile it computes to global memory for FlashBwdDqFromDsKernel (the
// ds variant). The default is 4 x 1 x 32 with K/V in registers at head dim
// 64; the dkdv8 variant is DkvWide below.
template <int HD, int WARPS, int MT, int QC, bool KVREG, bool DS = false>
struct DkvTiling {
  static constexpr int kMt = MT, kQc = QC;
  static constexpr bool kKvRegs = KVREG, kStoreDs = DS;
  static constexpr int kThreadsN = WARPS * 32;
  static constexpr int kKeys = WARPS * 16 * MT;
  static constexpr size_t smem = Cfg<HD>::Dkv(kKeys);
  static_assert(!DS || (kKeys == Cfg<HD>::kN && MT == 1),
                "dS tiles are stored per 64-key block, one m-tile per warp");
};
template <int HD>
using DkvDefault = DkvTiling<HD, kWarps, 1, 32, Cfg<HD>::kFixedInRegs>;
// dkdv8 (hd 64 only): 8 warps x 32 keys; see the kernel's comment.
using DkvWide = DkvTiling<64, 8, 2, 16, true>;
// ds: the default tiling, storing dS.
template <int HD>
using DkvStoreDs = DkvTiling<HD, kWarps, 1, 32, Cfg<HD>::kFixedInRegs, true>;

// dS tile (key tile kt, query tile qt >= kt) of (batch, head) bh in the ds
// variant's scratch: per bh the causal tile pairs in the order (qt, kt) =
// (0,0), (1,0), (1,1), (2,0), ..., each kDsTile x kDsTile bf16 row-major with
// keys as rows (the dK/dV kernel's dS^T orientation). For a fixed query tile
// its key tiles 0..qt are consecutive, which is the order the dQ kernel reads.
__device__ __forceinline__ bf16* DsTile(bf16* ds, int64_t bh, int n_qt, int qt, int kt) {
  const int64_t pairs = static_cast<int64_t>(n_qt) * (n_qt + 1) / 2;
  return ds + (bh * pairs + static_cast<int64_t>(qt) * (qt + 1) / 2 + kt) * kDsTile * kDsTile;
}

// Forward tiling: MT 16-row m-tiles per warp (4 warps: 64 MT query rows per
// block) and key/value tiles of NK rows. The default is Cfg's (MT 2 at head
// dim 64, 64-key tiles); the A/B variants (LLMT_ATTN_FWD, head dim 64):
// m64 = 1 x 64 (about half the registers, so twice the blocks per SM to
// overlap one warp's softmax with another's mmas), m64n128 = 1 x 128 (half
// the tiles, so half the per-tile rescales, reductions and barriers).
// Registers (sm_90a, no spills): default 252 (2 blocks per SM), m64 128 (4),
// m64n128 171 (2; asking for 3 spills).
template <int HD, int MT, int NK>
struct FwdTiling {
  static constexpr int kMt = MT, kN = NK, kRows = kWarps * 16 * MT;
  static constexpr size_t smem =
      (size_t{kRows} + 4 * size_t{NK}) * Cfg<HD>::kLd * sizeof(bf16);  // Q; K, V double-buffered
};
template <int HD>
using FwdDefault = FwdTiling<HD, Cfg<HD>::kFwdMt, Cfg<HD>::kN>;

// ---- forward -------------------------------------------------------------------------
// Block: FT::kRows queries of one (batch, head); warp w owns rows
// [16 kMt w, 16 kMt (w + 1)). Key tiles 0.. up to the block's last row.
template <int HD, typename FT>
__global__ void __launch_bounds__(kThreads)
    FlashFwdMmaKernel(bf16* out, float* lse, const bf16* qkv, AttnDims d) {
  using C = Cfg<HD>;
  constexpr int kLd = C::kLd, kN = FT::kN, kMt = FT::kMt, kRows = FT::kRows;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + kRows * kLd;  // [2][kN][kLd]
  bf16* Vs = Ks + 2 * kN * kLd;  // [2][kN][kLd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  const int wrow0 = q0 + warp * 16 * kMt;  // this warp's first and last query rows
  const int wrow1 = wrow0 + 16 * kMt - 1;
  const int n_tiles = DivUp(min(q0 + kRows, d.T), kN);
  const float sl2 = d.scale * kLog2e;

  LoadTileAsync<HD, kRows>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  LoadTileAsync<HD, kN>(Ks, kbase, d.ld, 0, d.T);
  LoadTileAsync<HD, kN>(Vs, vbase, d.ld, 0, d.T);
  CpAsyncCommit();

  uint32_t qa[kMt][HD / 16][4];
  float o[kMt][HD / 8][4];
  float m[kMt][2], l[kMt][2];  // running max (raw score units) and partial row sums
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  for (int it = 0; it < n_tiles; ++it) {
    CpAsyncWaitAll();
    __syncthreads();  // tile it is visible; everyone is done with tile it - 1's buffer
    if (it == 0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int kc = 0; kc < HD / 16; ++kc) {
          LdMatrixX4(qa[mt][kc], RowsAddr(Qs, kLd, warp * 16 * kMt + mt * 16, kc * 16, lane));
        }
      }
    }
    if (it + 1 < n_tiles) {
      const int nb = (it + 1) & 1;
      LoadTileAsync<HD, kN>(Ks + nb * kN * kLd, kbase, d.ld, (it + 1) * kN, d.T);
      LoadTileAsync<HD, kN>(Vs + nb * kN * kLd, vbase, d.ld, (it + 1) * kN, d.T);
      CpAsyncCommit();
    }
    const int j0 = it * kN;
    if (j0 > wrow1) continue;  // every key of the tile is after every row of this warp
    const bf16* Kb = Ks + (it & 1) * kN * kLd;
    const bf16* Vb = Vs + (it & 1) * kN * kLd;

    // S [16 kMt x kN] = Q_w K^T: B(k = dim, n = key) = K[key][dim].
    float s[kMt][kN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kN / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
    }
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc) {
#pragma unroll
      for (int np = 0; np < kN / 16; ++np) {
        uint32_t bk[4];
        LdMatrixX4(bk, ColsAddr(Kb, kLd, np * 16, kc * 16, lane));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          Mma(s[mt][2 * np], qa[mt][kc], bk);
          Mma(s[mt][2 * np + 1], qa[mt][kc], bk + 2);
        }
      }
    }
    // Causal mask, only where the tile crosses the warp's diagonal: key j
    // visible to query q when j <= q. (Keys >= T are zero-filled and only
    // ever visible to rows >= T, which are not stored.)
    if (j0 + kN - 1 > wrow0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int j = j0 + nt * 8 + 2 * t + (i & 1);
            const int q = wrow0 + mt * 16 + g + 8 * (i >> 1);
            if (j > q) s[mt][nt][i] = -INFINITY;
          }
        }
      }
    }
    // Online softmax for rows g and g + 8 of each m-tile.
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) OnlineSoftmax<kN / 8, HD>(s[mt], o[mt], m[mt], l[mt], sl2);
    // O [16 kMt x HD] += P [16 kMt x kN] V: B(k = key, n = dim) = V[key][dim] (.trans).
#pragma unroll
    for (int kc = 0; kc < kN / 16; ++kc) {
      uint32_t pa[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) AccToA(pa[mt], s[mt][2 * kc], s[mt][2 * kc + 1]);
#pragma unroll
      for (int ndp = 0; ndp < HD / 16; ++ndp) {
        uint32_t bv[4];
        LdMatrixX4Trans(bv, RowsAddr(Vb, kLd, kc * 16, ndp * 16, lane));
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          Mma(o[mt][2 * ndp], pa[mt], bv);
          Mma(o[mt][2 * ndp + 1], pa[mt], bv + 2);
        }
      }
    }
  }
  bf16* obase = out + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    StoreForwardRows<HD>(obase, d.C, lse + static_cast<int64_t>(bh) * d.T, wrow0 + mt * 16 + g,
                         d.T, d.scale, o[mt], m[mt], l[mt], t);
  }
}

// ---- backward: dK, dV ---------------------------------------------------------------
// Block: TL::kKeys keys of one (batch, kv head); warp w owns the kMt 16-key
// m-tiles from key 16 kMt w. For each query head of the group and each
// 64-query tile from the block's first key on (one flat sequence, so the
// copy of the next tile overlaps across heads), in steps of kQc queries:
//   S^T = K Q^T, dP^T = V dO^T            (16 kMt keys x kQc queries)
//   P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - Dsum)
//   dV += P^T dO,  dK += dS^T Q            (accumulated in registers)
// Queries >= T are zero-filled with lse = Dsum = 0: P^T is then 1, but dO = 0
// makes their dV terms and dS^T (hence dK terms) exactly zero.
// With kMt = 2 every Q / dO fragment read from shared memory feeds both key
// m-tiles, halving the shared-memory reads per mma that bound this kernel;
// the price is twice the dK/dV accumulators, hence the narrower query steps.
// Masking is by value (p = 0), so an m-tile whose keys all follow the step's
// queries still runs its mmas but adds exact zeros.
template <int HD, typename TL>
__global__ void __launch_bounds__(TL::kThreadsN)
    FlashBwdDkvMmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                         const float* Dsum, bf16* ds, AttnDims d) {
  using C = Cfg<HD>;
  constexpr int kLd = C::kLd, kN = C::kN, kNT = TL::kThreadsN, kKeys = TL::kKeys;
  constexpr int kMt = TL::kMt, kQc = TL::kQc, kCt = kQc / 8;
  constexpr bool kKvRegs = TL::kKvRegs;
  static_assert(kKeys % kN == 0, "query tiles start at the block's first key");
  static_assert(kQc % 16 == 0 && kN % kQc == 0, "query steps are whole k-chunks of a tile");
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + kKeys * kLd;
  bf16* Qs = Vs + kKeys * kLd;    // [2][kN][kLd]
  bf16* dOs = Qs + 2 * kN * kLd;  // [2][kN][kLd]
  float* Lsm = reinterpret_cast<float*>(dOs + 2 * kN * kLd);  // [2][kN]
  float* Dsm = Lsm + 2 * kN;                                   // [2][kN]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int k0 = blockIdx.x * kKeys;  // low key tiles see the most queries: first
  const int bg = blockIdx.y, b = bg / d.NKV, kvh = bg % d.NKV;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* obase = dout + static_cast<int64_t>(b) * d.T * d.C;
  const int64_t kcol = static_cast<int64_t>(d.NH + kvh) * HD;
  const int64_t vcol = static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  const int wr0 = warp * 16 * kMt;  // this warp's first key row in Ks / Vs
  const int wkey0 = k0 + wr0;       // and its first key
  const int n_qt = DivUp(d.T - k0, kN);  // query tiles per head
  const int n_it = d.group * n_qt;
  const float sl2 = d.scale * kLog2e;

  // Issues the copies of flat step `it` (query head, query tile) into buffer it & 1.
  auto issue = [&](int it) {
    const int h = kvh * d.group + it / n_qt, i0 = k0 + (it % n_qt) * kN, nb = it & 1;
    const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
    LoadTileAsync<HD, kN, kNT>(Qs + nb * kN * kLd, base + static_cast<int64_t>(h) * HD, d.ld, i0,
                               d.T);
    LoadTileAsync<HD, kN, kNT>(dOs + nb * kN * kLd, obase + static_cast<int64_t>(h) * HD, d.C, i0,
                               d.T);
    LoadRowStatsAsync<kNT>(Lsm + nb * kN, lse + bh * d.T, i0, kN, d.T);
    LoadRowStatsAsync<kNT>(Dsm + nb * kN, Dsum + bh * d.T, i0, kN, d.T);
    CpAsyncCommit();
  };
  LoadTileAsync<HD, kKeys, kNT>(Ks, base + kcol, d.ld, k0, d.T);
  LoadTileAsync<HD, kKeys, kNT>(Vs, base + vcol, d.ld, k0, d.T);
  issue(0);  // same group as K, V

  float dk[kMt][HD / 8][4], dv[kMt][HD / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dk[mt][nd][i] = dv[mt][nd][i] = 0.f;
    }
  }
  constexpr int kRegK = kKvRegs ? HD / 16 : 1;
  uint32_t kreg[kMt][kRegK][4], vreg[kMt][kRegK][4];

  for (int it = 0; it < n_it; ++it) {
    CpAsyncWaitAll();
    __syncthreads();  // step it is visible; everyone is done with step it - 1's buffer
    if (kKvRegs && it == 0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int kc = 0; kc < kRegK; ++kc) {
          LdMatrixX4(kreg[mt][kc], RowsAddr(Ks, kLd, wr0 + mt * 16, kc * 16, lane));
          LdMatrixX4(vreg[mt][kc], RowsAddr(Vs, kLd, wr0 + mt * 16, kc * 16, lane));
        }
      }
    }
    if (it + 1 < n_it) issue(it + 1);
    const int i0 = k0 + (it % n_qt) * kN, nb = it & 1;
    const bf16* Qb = Qs + nb * kN * kLd;
    const bf16* dOb = dOs + nb * kN * kLd;
    const float* Lb = Lsm + nb * kN;
    const float* Db = Dsm + nb * kN;
#pragma unroll
    for (int step = 0; step < kN / kQc; ++step) {
      const int qb = step * kQc;  // query columns [qb, qb + kQc) of the tile
      // ds: where this warp's 16 x kQc block of the dS^T tile goes (row =
      // key wr0 + g (+8), column = query qb + 8 nt + 2t (+1)).
      [[maybe_unused]] bf16* ds_out = nullptr;
      if constexpr (TL::kStoreDs) {
        const int h = kvh * d.group + it / n_qt;
        const int qt = blockIdx.x + it % n_qt;  // kKeys == kN: the key tile is blockIdx.x
        ds_out = DsTile(ds, static_cast<int64_t>(b) * d.NH + h, DivUp(d.T, kN), qt, blockIdx.x) +
                 (wr0 + g) * kDsTile + qb + 2 * t;
      }
      if (i0 + qb + kQc - 1 < wkey0) {  // all these queries precede all the warp's keys
        if constexpr (TL::kStoreDs) {  // dS is 0 there; the dQ kernel reads the whole tile
#pragma unroll
          for (int nt = 0; nt < kCt; ++nt) {
            *reinterpret_cast<uint32_t*>(ds_out + nt * 8) = 0u;
            *reinterpret_cast<uint32_t*>(ds_out + 8 * kDsTile + nt * 8) = 0u;
          }
        }
        continue;
      }
      float st[kMt][kCt][4], dpt[kMt][kCt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kCt; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) st[mt][nt][i] = dpt[mt][nt][i] = 0.f;
        }
      }
#pragma unroll
      for (int kc = 0; kc < HD / 16; ++kc) {
        uint32_t kar[kMt][4], var[kMt][4];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          if constexpr (kKvRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              kar[mt][i] = kreg[mt][kc][i];
              var[mt][i] = vreg[mt][kc][i];
            }
          } else {
            LdMatrixX4(kar[mt], RowsAddr(Ks, kLd, wr0 + mt * 16, kc * 16, lane));
            LdMatrixX4(var[mt], RowsAddr(Vs, kLd, wr0 + mt * 16, kc * 16, lane));
          }
        }
#pragma unroll
        for (int np = 0; np < kCt / 2; ++np) {
          uint32_t bq[4], bo[4];
          // B(k = dim, n = query) = Q[q][dim], dO[q][dim]
          LdMatrixX4(bq, ColsAddr(Qb, kLd, qb + np * 16, kc * 16, lane));
          LdMatrixX4(bo, ColsAddr(dOb, kLd, qb + np * 16, kc * 16, lane));
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            Mma(st[mt][2 * np], kar[mt], bq);
            Mma(st[mt][2 * np + 1], kar[mt], bq + 2);
            Mma(dpt[mt][2 * np], var[mt], bo);
            Mma(dpt[mt][2 * np + 1], var[mt], bo + 2);
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < kCt; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = qb + nt * 8 + 2 * t + j;
          const float L = Lb[c] * kLog2e, D = Db[c];
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            const int mkey0 = wkey0 + mt * 16;
            const bool diag = i0 + qb < mkey0 + 15;  // some query of the step precedes some key
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int i = 2 * r + j;
              float p = Exp2Approx(fmaf(st[mt][nt][i], sl2, -L));
              if (diag && i0 + c < mkey0 + g + 8 * r) p = 0.f;
              st[mt][nt][i] = p;
              dpt[mt][nt][i] = p * (dpt[mt][nt][i] - D);
            }
          }
        }
      }
      if constexpr (TL::kStoreDs) {
        // The same bf16 rounding AccToA applies below, so dQ = dS K uses
        // exactly the dS that dK = dS^T Q uses (as in FlashAttention-2).
#pragma unroll
        for (int nt = 0; nt < kCt; ++nt) {
          *reinterpret_cast<uint32_t*>(ds_out + nt * 8) = Pack(dpt[0][nt][0], dpt[0][nt][1]);
          *reinterpret_cast<uint32_t*>(ds_out + 8 * kDsTile + nt * 8) =
              Pack(dpt[0][nt][2], dpt[0][nt][3]);
        }
      }
#pragma unroll
      for (int kc = 0; kc < kCt / 2; ++kc) {
        uint32_t pa[kMt][4], sa[kMt][4];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          AccToA(pa[mt], st[mt][2 * kc], st[mt][2 * kc + 1]);
          AccToA(sa[mt], dpt[mt][2 * kc], dpt[mt][2 * kc + 1]);
        }
#pragma unroll
        for (int ndp = 0; ndp < HD / 16; ++ndp) {
          uint32_t bo[4], bq[4];
          // B(k = query, n = dim) = dO[q][dim], Q[q][dim] (.trans)
          LdMatrixX4Trans(bo, RowsAddr(dOb, kLd, qb + kc * 16, ndp * 16, lane));
          LdMatrixX4Trans(bq, RowsAddr(Qb, kLd, qb + kc * 16, ndp * 16, lane));
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            Mma(dv[mt][2 * ndp], pa[mt], bo);
            Mma(dv[mt][2 * ndp + 1], pa[mt], bo + 2);
            Mma(dk[mt][2 * ndp], sa[mt], bq);
            Mma(dk[mt][2 * ndp + 1], sa[mt], bq + 2);
          }
        }
      }
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    // The scores were scale * q.k, so dK carries the scale.
    StoreAcc<HD>(dbase + kcol, d.ld, wkey0 + mt * 16 + g, d.T, d.scale, dk[mt], t);
    StoreAcc<HD>(dbase + vcol, d.ld, wkey0 + mt * 16 + g, d.T, 1.f, dv[mt], t);
  }
}

// ---- backward: dQ ---------------------------------------------------------------------
// Block: 64 MT queries of one (batch, head); warp w owns rows
// [16 MT w, 16 MT (w + 1)). Over key tiles up to the diagonal:
// S = Q K^T, dP = dO V^T, dS = exp(scale S - lse) (dP - Dsum), dQ += dS K.
// At head dim 64 the default is MT = 2 (each K / V fragment feeds two
// m-tiles, as in the forward; 230 registers, 2 blocks per SM), the dq64
// variant MT = 1 (159 registers, 3 blocks per SM: more warps to hide
// latency, twice the K/V shared-memory reads per mma); Q and dO are held as
// A fragments in registers.
template <int HD, int MT>
__global__ void __launch_bounds__(kThreads)
    FlashBwdDqMmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, AttnDims d) {
  using C = Cfg<HD>;
  constexpr int kLd = C::kLd, kN = C::kN, kMt = MT, kRows = C::DqRows(MT);
  // Keys per inner chunk: the score and dP accumulators of a chunk are
  // kMt x kCk / 8 n-tiles each, kept at 16 to bound registers.
  constexpr int kCk = 32 / kMt, kCt = kCk / 8;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* dOs = Qs + kRows * kLd;
  bf16* Ks = dOs + kRows * kLd;  // [2][kN][kLd]
  bf16* Vs = Ks + 2 * kN * kLd;  // [2][kN][kLd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  const int wrow0 = q0 + warp * 16 * kMt, wrow1 = wrow0 + 16 * kMt - 1;
  const int n_tiles = DivUp(min(q0 + kRows, d.T), kN);
  const float sl2 = d.scale * kLog2e;

  LoadTileAsync<HD, kRows>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  LoadTileAsync<HD, kRows>(
      dOs, dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD, d.C, q0,
      d.T);
  LoadTileAsync<HD, kN>(Ks, kbase, d.ld, 0, d.T);
  LoadTileAsync<HD, kN>(Vs, vbase, d.ld, 0, d.T);
  CpAsyncCommit();
  // This thread's rows g and g + 8 of each m-tile: lse (log2 units) and Dsum.
  float L[kMt][2], D[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = wrow0 + mt * 16 + g + 8 * r;
      L[mt][r] = q < d.T ? lse[static_cast<int64_t>(bh) * d.T + q] * kLog2e : 0.f;
      D[mt][r] = q < d.T ? Dsum[static_cast<int64_t>(bh) * d.T + q] : 0.f;
    }
  }
  float dq[kMt][HD / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) dq[mt][nd][0] = dq[mt][nd][1] = dq[mt][nd][2] = dq[mt][nd][3] = 0.f;
  }
  constexpr int kRegQ = C::kFixedInRegs ? HD / 16 : 1;
  uint32_t qreg[kMt][kRegQ][4], oreg[kMt][kRegQ][4];

  for (int it = 0; it < n_tiles; ++it) {
    CpAsyncWaitAll();
    __syncthreads();  // tile it is visible; everyone is done with tile it - 1's buffer
    if (C::kFixedInRegs && it == 0) {
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int kc = 0; kc < kRegQ; ++kc) {
          const int r0 = warp * 16 * kMt + mt * 16;
          LdMatrixX4(qreg[mt][kc], RowsAddr(Qs, kLd, r0, kc * 16, lane));
          LdMatrixX4(oreg[mt][kc], RowsAddr(dOs, kLd, r0, kc * 16, lane));
        }
      }
    }
    if (it + 1 < n_tiles) {
      const int nb = (it + 1) & 1;
      LoadTileAsync<HD, kN>(Ks + nb * kN * kLd, kbase, d.ld, (it + 1) * kN, d.T);
      LoadTileAsync<HD, kN>(Vs + nb * kN * kLd, vbase, d.ld, (it + 1) * kN, d.T);
      CpAsyncCommit();
    }
    const int j0 = it * kN;
    const bf16* Kb = Ks + (it & 1) * kN * kLd;
    const bf16* Vb = Vs + (it & 1) * kN * kLd;
#pragma unroll
    for (int chunk = 0; chunk < kN / kCk; ++chunk) {
      const int kb = chunk * kCk;  // key columns [kb, kb + kCk) of the tile
      if (j0 + kb > wrow1) continue;  // all these keys follow all the warp's rows
      float s[kMt][kCt][4], dp[kMt][kCt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kCt; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) s[mt][nt][i] = dp[mt][nt][i] = 0.f;
        }
      }
#pragma unroll
      for (int kc = 0; kc < HD / 16; ++kc) {
        uint32_t qa[kMt][4], oa[kMt][4];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          if constexpr (C::kFixedInRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              qa[mt][i] = qreg[mt][kc][i];
              oa[mt][i] = oreg[mt][kc][i];
            }
          } else {
            const int r0 = warp * 16 * kMt + mt * 16;
            LdMatrixX4(qa[mt], RowsAddr(Qs, kLd, r0, kc * 16, lane));
            LdMatrixX4(oa[mt], RowsAddr(dOs, kLd, r0, kc * 16, lane));
          }
        }
#pragma unroll
        for (int np = 0; np < kCt / 2; ++np) {
          uint32_t bk[4], bv[4];
          // B(k = dim, n = key) = K[key][dim], V[key][dim]
          LdMatrixX4(bk, ColsAddr(Kb, kLd, kb + np * 16, kc * 16, lane));
          LdMatrixX4(bv, ColsAddr(Vb, kLd, kb + np * 16, kc * 16, lane));
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            Mma(s[mt][2 * np], qa[mt], bk);
            Mma(s[mt][2 * np + 1], qa[mt], bk + 2);
            Mma(dp[mt][2 * np], oa[mt], bv);
            Mma(dp[mt][2 * np + 1], oa[mt], bv + 2);
          }
        }
      }
      const bool diag = j0 + kb + kCk - 1 > wrow0;  // some key of the chunk follows some row
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kCt; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int r = i >> 1;
            float p = Exp2Approx(fmaf(s[mt][nt][i], sl2, -L[mt][r]));
            if (diag && j0 + kb + nt * 8 + 2 * t + (i & 1) > wrow0 + mt * 16 + g + 8 * r) p = 0.f;
            s[mt][nt][i] = p * (dp[mt][nt][i] - D[mt][r]);  // dS
          }
        }
      }
#pragma unroll
      for (int kc = 0; kc < kCt / 2; ++kc) {
        uint32_t sa[kMt][4];
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) AccToA(sa[mt], s[mt][2 * kc], s[mt][2 * kc + 1]);
#pragma unroll
        for (int ndp = 0; ndp < HD / 16; ++ndp) {
          uint32_t bk[4];
          // B(k = key, n = dim) = K[key][dim] (.trans)
          LdMatrixX4Trans(bk, RowsAddr(Kb, kLd, kb + kc * 16, ndp * 16, lane));
#pragma unroll
          for (int mt = 0; mt < kMt; ++mt) {
            Mma(dq[mt][2 * ndp], sa[mt], bk);
            Mma(dq[mt][2 * ndp + 1], sa[mt], bk + 2);
          }
        }
      }
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(h) * HD;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    StoreAcc<HD>(dbase, d.ld, wrow0 + mt * 16 + g, d.T, d.scale, dq[mt], t);
  }
}

// ---- backward: dQ from stored dS (the ds variant) ----------------------------------
// Block: the 64 queries of query tile qt of one (batch, head); warp w owns
// rows [16 w, 16 w + 16). For key tiles 0..qt: dQ += dS K, reading the dS^T
// tiles FlashBwdDkvMmaKernel<DkvStoreDs> wrote (keys as rows, so the A
// fragment of dS comes from ldmatrix.trans) and the K tile, both through
// double-buffered cp.async. One tile product per tile pair instead of the
// three of FlashBwdDqMmaKernel (which recomputes S and dP), at the price of
// writing and reading dS (bf16, the causal half of T x T per head).
template <int HD>
__global__ void __launch_bounds__(kThreads)
    FlashBwdDqFromDsKernel(bf16* dqkv, const bf16* qkv, const bf16* ds, AttnDims d) {
  using C = Cfg<HD>;
  constexpr int kLd = C::kLd, kN = C::kN, kLdS = kDsTile + kPad;
  static_assert(kN == kDsTile && kN == kWarps * 16, "one 16-row m-tile per warp per query tile");
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Ss = reinterpret_cast<bf16*>(smem);  // [2][kN][kLdS]: dS^T, rows = keys
  bf16* Ks = Ss + 2 * kN * kLdS;             // [2][kN][kLd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int n_qt = DivUp(d.T, kN);
  const int qt = gridDim.x - 1 - blockIdx.x;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* kbase =
      qkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* dsb = DsTile(const_cast<bf16*>(ds), bh, n_qt, qt, 0);  // tiles kt = 0..qt follow

  auto issue = [&](int kt) {
    const int nb = kt & 1;
    LoadTileAsync<kDsTile, kN>(Ss + nb * kN * kLdS, dsb + static_cast<int64_t>(kt) * kN * kN, kN,
                               0, kN);
    LoadTileAsync<HD, kN>(Ks + nb * kN * kLd, kbase, d.ld, kt * kN, d.T);
    CpAsyncCommit();
  };
  issue(0);
  float dq[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.f;

  for (int kt = 0; kt <= qt; ++kt) {
    CpAsyncWaitAll();
    __syncthreads();  // tile kt is visible; everyone is done with tile kt - 1's buffer
    if (kt < qt) issue(kt + 1);
    const bf16* Sb = Ss + (kt & 1) * kN * kLdS;
    const bf16* Kb = Ks + (kt & 1) * kN * kLd;
#pragma unroll
    for (int kc = 0; kc < kN / 16; ++kc) {
      // On the diagonal tile, keys 16 kc.. all follow this warp's rows: dS = 0.
      if (kt == qt && kc > warp) break;
      // A(m = query, k = key) = dS^T[key][query]: the .trans load of the
      // transposed pair layout (ColsAddr with n = keys, k = queries).
      uint32_t sa[4];
      LdMatrixX4Trans(sa, ColsAddr(Sb, kLdS, kc * 16, warp * 16, lane));
#pragma unroll
      for (int ndp = 0; ndp < HD / 16; ++ndp) {
        uint32_t bk[4];
        // B(k = key, n = dim) = K[key][dim] (.trans)
        LdMatrixX4Trans(bk, RowsAddr(Kb, kLd, kc * 16, ndp * 16, lane));
        Mma(dq[2 * ndp], sa, bk);
        Mma(dq[2 * ndp + 1], sa, bk + 2);
      }
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(h) * HD;
  StoreAcc<HD>(dbase, d.ld, qt * kN + warp * 16 + g, d.T, d.scale, dq, t);
}

template <int HD, typename FT>
void LaunchFwd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream) {
  AllowSmem(FlashFwdMmaKernel<HD, FT>, FT::smem, "FlashFwdMmaKernel");
  const dim3 grid(static_cast<unsigned>(CeilDiv(d.T, FT::kRows)),
                  static_cast<unsigned>(d.B * d.NH));
  Launch(FlashFwdMmaKernel<HD, FT>, grid, kThreads, FT::smem, stream, out, lse, qkv, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdMmaKernel", stream);
}

// The forward variants exist at head dim 64 only (128 already runs one
// m-tile per warp).
template <int HD>
void ForwardHd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
               AttentionForwardVariant v, cudaStream_t stream) {
  if constexpr (HD == 64) {
    if (v == AttentionForwardVariant::kM64) {
      LaunchFwd<HD, FwdTiling<HD, 1, 64>>(out, lse, qkv, d, stream);
      return;
    }
    if (v == AttentionForwardVariant::kM64N128) {
      LaunchFwd<HD, FwdTiling<HD, 1, 128>>(out, lse, qkv, d, stream);
      return;
    }
  }
  LaunchFwd<HD, FwdDefault<HD>>(out, lse, qkv, d, stream);
}

template <int HD, typename TL>
void LaunchDkv(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dsum,
               bf16* ds, const AttnDims& d, cudaStream_t stream) {
  AllowSmem(FlashBwdDkvMmaKernel<HD, TL>, TL::smem, "FlashBwdDkvMmaKernel");
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, TL::kKeys));
  Launch(FlashBwdDkvMmaKernel<HD, TL>, dim3(tiles, static_cast<unsigned>(d.B * d.NKV)),
         TL::kThreadsN, TL::smem, stream, dqkv, dout, qkv, lse, Dsum, ds, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDkvMmaKernel", stream);
}

template <int HD>
void LaunchDqFromDs(bf16* dqkv, const bf16* qkv, const bf16* ds, const AttnDims& d,
                    cudaStream_t stream) {
  constexpr size_t bytes = 2 * size_t{kDsTile} * (kDsTile + kPad) * sizeof(bf16) +
                           2 * Cfg<HD>::kTileBytes;
  AllowSmem(FlashBwdDqFromDsKernel<HD>, bytes, "FlashBwdDqFromDsKernel");
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, kDsTile));
  Launch(FlashBwdDqFromDsKernel<HD>, dim3(tiles, static_cast<unsigned>(d.B * d.NH)), kThreads,
         bytes, stream, dqkv, qkv, ds, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqFromDsKernel", stream);
}

template <int HD, int MT>
void LaunchDq(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dsum,
              const AttnDims& d, cudaStream_t stream) {
  constexpr size_t bytes = Cfg<HD>::Dq(MT);
  AllowSmem(FlashBwdDqMmaKernel<HD, MT>, bytes, "FlashBwdDqMmaKernel");
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, Cfg<HD>::DqRows(MT)));
  Launch(FlashBwdDqMmaKernel<HD, MT>, dim3(tiles, static_cast<unsigned>(d.B * d.NH)), kThreads,
         bytes, stream, dqkv, dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqMmaKernel", stream);
}

// The variants exist at head dim 64 only (at 128 the dQ kernel already uses
// one m-tile per warp and wider dK/dV accumulators would not fit).
// The ds variant (both head dims) takes precedence over the other two and
// runs in batch chunks of ds_batch so that dS fits its scratch.
template <int HD>
void BackwardHd(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dsum,
                const AttnDims& d, AttentionBackwardVariant v, bf16* ds, int ds_batch,
                cudaStream_t stream) {
  if (v.ds) {
    for (int b0 = 0; b0 < d.B; b0 += ds_batch) {
      AttnDims dc = d;
      dc.B = std::min(ds_batch, d.B - b0);
      const int64_t qkv_off = static_cast<int64_t>(b0) * d.T * d.ld;
      const int64_t row_off = static_cast<int64_t>(b0) * d.NH * d.T;
      LaunchDkv<HD, DkvStoreDs<HD>>(dqkv + qkv_off, dout + static_cast<int64_t>(b0) * d.T * d.C,
                                    qkv + qkv_off, lse + row_off, Dsum + row_off, ds, dc, stream);
      LaunchDqFromDs<HD>(dqkv + qkv_off, qkv + qkv_off, ds, dc, stream);
    }
    return;
  }
  if (HD == 64 && v.dkdv8) {
    LaunchDkv<64, DkvWide>(dqkv, dout, qkv, lse, Dsum, nullptr, d, stream);
  } else {
    LaunchDkv<HD, DkvDefault<HD>>(dqkv, dout, qkv, lse, Dsum, nullptr, d, stream);
  }
  if (HD == 64 && v.dq64) {
    LaunchDq<HD, 1>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else {
    LaunchDq<HD, Cfg<HD>::kDqMt>(dqkv, dout, qkv, lse, Dsum, d, stream);
  }
}

}  // namespace

void FlashForwardMma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                     AttentionForwardVariant variant, cudaStream_t stream) {
  if (d.hd == 64) {
    ForwardHd<64>(out, lse, qkv, d, variant, stream);
  } else if (d.hd == 128) {
    ForwardHd<128>(out, lse, qkv, d, variant, stream);
  } else {
    Fatal("FlashForwardMma: unsupported head dim " + std::to_string(d.hd));
  }
}

void FlashBackwardMma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                      const float* Dsum, const AttnDims& d, AttentionBackwardVariant variant,
                      bf16* ds, int ds_batch, cudaStream_t stream) {
  if (variant.ds && (ds == nullptr || ds_batch < 1)) {
    Fatal("FlashBackwardMma: the ds variant needs its dS scratch");
  }
  if (d.hd == 64) {
    BackwardHd<64>(dqkv, dout, qkv, lse, Dsum, d, variant, ds, ds_batch, stream);
  } else if (d.hd == 128) {
    BackwardHd<128>(dqkv, dout, qkv, lse, Dsum, d, variant, ds, ds_batch, stream);
  } else {
    Fatal("FlashBackwardMma: unsupported head dim " + std::to_string(d.hd));
  }
}

}  // namespace llmt::kernels::cuda::internal
