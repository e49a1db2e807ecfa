// Flash attention on tensor cores for bf16 (head dim 64 or 128), with the
// portable WMMA API (16x16x16 bf16 x bf16 -> fp32 fragments).
//
// Layout of the work. Every kernel uses 4 warps and tiles of 64 rows; warp w
// owns 16 of the block's 64 rows. Operand tiles are copied from global memory
// into shared memory as bf16 (rows padded by 8 elements to spread banks;
// every WMMA pointer stays 32-byte aligned as the API requires). Matrix
// products go through WMMA fragments; the softmax bookkeeping works on fp32
// score tiles that the warp stores to its own shared-memory scratch, two lanes
// per row (lane 2r and 2r+1 take the two halves of row r).
//
// Forward (one block per 64 query rows of one (batch, head)):
//   for each key tile up to the diagonal: S = Q K^T (fp32), online softmax on
//   the warp's 16 rows, P (bf16) = exp(scale S - m); O = O * corr + P V.
//   WMMA accumulator fragments have an unspecified element <-> row mapping,
//   so the per-row rescale of O goes through shared memory: O lives there as
//   fp32 and is loaded into / stored from fragments around each P V product.
// Backward (FlashAttention-2): Dsum = rowsum(dO * O) first (attention.cu); then
//   dK/dV kernel: one block per 64 keys of one (batch, kv head); per query
//     tile (and per query head of the GQA group) S^T = K Q^T, dP^T = V dO^T,
//     P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - Dsum), and
//     dV += P^T dO, dK += dS^T Q accumulate in fragments (no rescaling is
//     needed in the backward, so they stay in registers for the whole loop);
//   dQ kernel: one block per 64 queries: dQ += dS K over key tiles.
// P and dS are rounded to bf16 for their products (as FlashAttention does);
// all accumulation is fp32.
#ifndef LLMT_CUDA_EMULATION
#include <mma.h>  // the emulator provides its own nvcuda::wmma
#endif

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/device_util.cuh"

namespace llmt::kernels::cuda::internal {
namespace {

using namespace nvcuda;  // NOLINT: wmma

constexpr int kTileRows = 64;  // query and key tiles
constexpr int kWarpsTc = 4;    // 16 rows per warp
constexpr int kThreadsTc = kWarpsTc * 32;
constexpr int kPad = 8;              // bf16 elements of row padding (16 bytes)
constexpr int kSLd = kTileRows + 4;  // fp32 score tiles [16][kSLd]
constexpr int kPLd = kTileRows + 8;  // bf16 probability tiles [16][kPLd]

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared-memory layouts (byte offsets; every region starts 32-byte aligned).
template <int HD>
struct FwdSmem {
  static constexpr int kLd = HD + kPad;  // bf16 operand tiles [64][kLd]
  static constexpr int kOLd = HD + 4;    // fp32 output accumulator [16][kOLd] per warp
  static constexpr size_t kTile = size_t{kTileRows} * kLd * sizeof(bf16);
  static constexpr size_t q = 0;
  static constexpr size_t k = q + kTile;
  static constexpr size_t v = k + kTile;
  static constexpr size_t s = v + kTile;
  static constexpr size_t p = s + size_t{kWarpsTc} * 16 * kSLd * sizeof(float);
  static constexpr size_t o = p + size_t{kWarpsTc} * 16 * kPLd * sizeof(bf16);
  static constexpr size_t bytes = o + size_t{kWarpsTc} * 16 * kOLd * sizeof(float);
};

template <int HD>
struct BwdSmem {
  static constexpr int kLd = HD + kPad;
  static constexpr int kStageLd = HD + 4;  // fp32 staging of result fragments [16][kStageLd]
  static constexpr size_t kTile = size_t{kTileRows} * kLd * sizeof(bf16);
  static constexpr size_t kScore = size_t{kWarpsTc} * 16 * kSLd * sizeof(float);
  static constexpr size_t own0 = 0;             // K (dK/dV kernel) or Q (dQ kernel)
  static constexpr size_t own1 = own0 + kTile;  // V or dO
  static constexpr size_t str0 = own1 + kTile;  // streamed Q or K
  static constexpr size_t str1 = str0 + kTile;  // streamed dO or V
  static constexpr size_t s = str1 + kTile;
  static constexpr size_t dp = s + kScore;
  static constexpr size_t p = dp + kScore;
  static constexpr size_t ds = p + size_t{kWarpsTc} * 16 * kPLd * sizeof(bf16);
  static constexpr size_t lse = ds + size_t{kWarpsTc} * 16 * kPLd * sizeof(bf16);
  static constexpr size_t dsum = lse + kTileRows * sizeof(float);
  static constexpr size_t bytes = dsum + kTileRows * sizeof(float);
  // The final fragments are staged over the (then unused) s and dp regions.
  static_assert(size_t{kWarpsTc} * 16 * kStageLd * sizeof(float) <= 2 * kScore,
                "staging must fit in the score scratch");
};

// Copies rows [row0, row0 + 64) x HD bf16 of a strided global matrix (src
// points at column 0 of the head, rows `ld` elements apart) into a padded
// shared tile; rows >= T become zeros. 16-byte vector accesses: the host only
// takes this path when the global pointers are 16-byte aligned, and ld and
// the head's column offset are multiples of 8 elements.
template <int HD>
__device__ __forceinline__ void LoadTile(bf16* dst, const bf16* src, int64_t ld, int row0, int T) {
  constexpr int kChunks = HD / 8;
  constexpr int kLd = HD + kPad;
  for (int e = threadIdx.x; e < kTileRows * kChunks; e += blockDim.x) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const int row = row0 + r;
    int4 v = make_int4(0, 0, 0, 0);
    if (row < T) v = *reinterpret_cast<const int4*>(src + static_cast<int64_t>(row) * ld + c);
    *reinterpret_cast<int4*>(dst + r * kLd + c) = v;
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreadsTc)
    FlashFwdTcKernel(bf16* out, float* lse, const bf16* qkv, AttnDims d) {
  using L = FwdSmem<HD>;
  constexpr int kLd = L::kLd, kOLd = L::kOLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L::q);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L::k);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L::v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = reinterpret_cast<float*>(smem + L::s) + warp * 16 * kSLd;
  bf16* Pw = reinterpret_cast<bf16*>(smem + L::p) + warp * 16 * kPLd;
  float* Ow = reinterpret_cast<float*>(smem + L::o) + warp * 16 * kOLd;

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTileRows;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, g = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + g) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + g) * HD;

  LoadTile<HD>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  for (int e = lane; e < 16 * HD; e += 32) Ow[(e / HD) * kOLd + e % HD] = 0.f;
  // This lane's share of the row statistics: row r of the warp, half `half`.
  const int r = lane >> 1, half = lane & 1;
  const int t = q0 + warp * 16 + r;
  float m = -INFINITY, l = 0.f;

  for (int j0 = 0; j0 <= q0; j0 += kTileRows) {
    __syncthreads();  // previous K/V tile fully consumed
    LoadTile<HD>(Ks, kbase, d.ld, j0, d.T);
    LoadTile<HD>(Vs, vbase, d.ld, j0, d.T);
    __syncthreads();
    // S_w [16 x 64] = Q_w K^T
#pragma unroll
    for (int j = 0; j < kTileRows / 16; ++j) {
      FragC acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        FragA a;
        FragBCol bt;
        wmma::load_matrix_sync(a, Qs + warp * 16 * kLd + kk * 16, kLd);
        wmma::load_matrix_sync(bt, Ks + j * 16 * kLd + kk * 16, kLd);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(Sw + j * 16, acc, kSLd, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax on row r, columns [32 half, 32 half + 32). Key j is
    // visible to query t when j <= t and j < T. Key j0 <= t is always visible
    // (j0 <= q0 <= t), so m_new is finite.
    float* srow = Sw + r * kSLd;
    float mt = -INFINITY;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const int j = j0 + c;
      const float s = (j <= t && j < d.T) ? srow[c] * d.scale : -INFINITY;
      srow[c] = s;
      mt = fmaxf(mt, s);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float m_new = fmaxf(m, mt);
    const float corr = expf(m - m_new);
    float sum = 0.f;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const float p = expf(srow[c] - m_new);
      Pw[r * kPLd + c] = __float2bfloat16_rn(p);
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * corr + sum;
    m = m_new;
    for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c) Ow[r * kOLd + c] *= corr;
    __syncwarp();
    // O_w [16 x HD] += P_w [16 x 64] V [64 x HD]
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) {
      FragC acc;
      wmma::load_matrix_sync(acc, Ow + n * 16, kOLd, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTileRows / 16; ++kk) {
        FragA a;
        FragBRow bv;
        wmma::load_matrix_sync(a, Pw + kk * 16, kPLd);
        wmma::load_matrix_sync(bv, Vs + kk * 16 * kLd + n * 16, kLd);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(Ow + n * 16, acc, kOLd, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (t < d.T) {
    const float inv = 1.f / l;
    bf16* o = out + (static_cast<int64_t>(b) * d.T + t) * d.C + static_cast<int64_t>(h) * HD;
    for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c) {
      o[c] = __float2bfloat16_rn(Ow[r * kOLd + c] * inv);
    }
    if (half == 0) lse[static_cast<int64_t>(bh) * d.T + t] = m + logf(l);
  }
}

// Stores `frags` (the warp's 16 x HD result) scaled by `scale` into rows
// row0 + 0..15 (those < T) of a strided bf16 matrix, through fp32 staging.
template <int HD>
__device__ __forceinline__ void StoreRows(bf16* dst, int64_t ld, int row0, int T, float scale,
                                          FragC (&frags)[HD / 16], float* stage) {
  constexpr int kStageLd = HD + 4;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) {
    wmma::store_matrix_sync(stage + n * 16, frags[n], kStageLd, wmma::mem_row_major);
  }
  __syncwarp();
  for (int e = lane; e < 16 * HD; e += 32) {
    const int rr = e / HD, c = e % HD;
    if (row0 + rr < T) {
      dst[static_cast<int64_t>(row0 + rr) * ld + c] =
          __float2bfloat16_rn(stage[rr * kStageLd + c] * scale);
    }
  }
  __syncwarp();
}

template <int HD>
__global__ void __launch_bounds__(kThreadsTc)
    FlashBwdDkvTcKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, AttnDims d) {
  using L = BwdSmem<HD>;
  constexpr int kLd = L::kLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L::own0);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L::own1);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L::str0);
  bf16* dOs = reinterpret_cast<bf16*>(smem + L::str1);
  float* Lsm = reinterpret_cast<float*>(smem + L::lse);
  float* Dsm = reinterpret_cast<float*>(smem + L::dsum);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = reinterpret_cast<float*>(smem + L::s) + warp * 16 * kSLd;
  float* dPw = reinterpret_cast<float*>(smem + L::dp) + warp * 16 * kSLd;
  bf16* Pw = reinterpret_cast<bf16*>(smem + L::p) + warp * 16 * kPLd;
  bf16* dSw = reinterpret_cast<bf16*>(smem + L::ds) + warp * 16 * kPLd;

  const int k0 = blockIdx.x * kTileRows;  // low key tiles see the most queries: first
  const int bg = blockIdx.y, b = bg / d.NKV, g = bg % d.NKV;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const int64_t kcol = static_cast<int64_t>(d.NH + g) * HD;
  const int64_t vcol = static_cast<int64_t>(d.NH + d.NKV + g) * HD;
  LoadTile<HD>(Ks, base + kcol, d.ld, k0, d.T);
  LoadTile<HD>(Vs, base + vcol, d.ld, k0, d.T);

  FragC dk[HD / 16], dv[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) {
    wmma::fill_fragment(dk[n], 0.f);
    wmma::fill_fragment(dv[n], 0.f);
  }
  const int r = lane >> 1, half = lane & 1;
  const int key = k0 + warp * 16 + r;

  for (int h = g * d.group; h < (g + 1) * d.group; ++h) {
    const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
    for (int i0 = k0; i0 < d.T; i0 += kTileRows) {
      __syncthreads();  // previous Q/dO tiles consumed
      LoadTile<HD>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, i0, d.T);
      LoadTile<HD>(dOs, dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD,
                   d.C, i0, d.T);
      for (int e = threadIdx.x; e < kTileRows; e += blockDim.x) {
        const int q = i0 + e;
        Lsm[e] = q < d.T ? lse[bh * d.T + q] : 0.f;
        Dsm[e] = q < d.T ? Dsum[bh * d.T + q] : 0.f;
      }
      __syncthreads();
      // S^T_w = K_w Q^T and dP^T_w = V_w dO^T  [16 keys x 64 queries]
#pragma unroll
      for (int j = 0; j < kTileRows / 16; ++j) {
        FragC acc_s, acc_dp;
        wmma::fill_fragment(acc_s, 0.f);
        wmma::fill_fragment(acc_dp, 0.f);
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
          FragA a;
          FragBCol bt;
          wmma::load_matrix_sync(a, Ks + warp * 16 * kLd + kk * 16, kLd);
          wmma::load_matrix_sync(bt, Qs + j * 16 * kLd + kk * 16, kLd);
          wmma::mma_sync(acc_s, a, bt, acc_s);
          wmma::load_matrix_sync(a, Vs + warp * 16 * kLd + kk * 16, kLd);
          wmma::load_matrix_sync(bt, dOs + j * 16 * kLd + kk * 16, kLd);
          wmma::mma_sync(acc_dp, a, bt, acc_dp);
        }
        wmma::store_matrix_sync(Sw + j * 16, acc_s, kSLd, wmma::mem_row_major);
        wmma::store_matrix_sync(dPw + j * 16, acc_dp, kSLd, wmma::mem_row_major);
      }
      __syncwarp();
      // Row r = this lane's key; column c = query i0 + c.
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const int q = i0 + c;
        const float p = (q >= key && q < d.T) ? expf(Sw[r * kSLd + c] * d.scale - Lsm[c]) : 0.f;
        const float ds = p * (dPw[r * kSLd + c] - Dsm[c]);
        Pw[r * kPLd + c] = __float2bfloat16_rn(p);
        dSw[r * kPLd + c] = __float2bfloat16_rn(ds);
      }
      __syncwarp();
      // dV_w += P^T_w dO,  dK_w += dS^T_w Q   ([16 x 64] x [64 x HD])
#pragma unroll
      for (int n = 0; n < HD / 16; ++n) {
#pragma unroll
        for (int kk = 0; kk < kTileRows / 16; ++kk) {
          FragA a;
          FragBRow bm;
          wmma::load_matrix_sync(a, Pw + kk * 16, kPLd);
          wmma::load_matrix_sync(bm, dOs + kk * 16 * kLd + n * 16, kLd);
          wmma::mma_sync(dv[n], a, bm, dv[n]);
          wmma::load_matrix_sync(a, dSw + kk * 16, kPLd);
          wmma::load_matrix_sync(bm, Qs + kk * 16 * kLd + n * 16, kLd);
          wmma::mma_sync(dk[n], a, bm, dk[n]);
        }
      }
    }
  }
  __syncthreads();  // the staging area overlaps every warp's score scratch
  float* stage = reinterpret_cast<float*>(smem + L::s) + warp * 16 * L::kStageLd;
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld;
  // dK = scale * sum dS^T q (the scores were scale * q.k).
  StoreRows<HD>(dbase + kcol, d.ld, k0 + warp * 16, d.T, d.scale, dk, stage);
  StoreRows<HD>(dbase + vcol, d.ld, k0 + warp * 16, d.T, 1.f, dv, stage);
}

template <int HD>
__global__ void __launch_bounds__(kThreadsTc)
    FlashBwdDqTcKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                       const float* Dsum, AttnDims d) {
  using L = BwdSmem<HD>;
  constexpr int kLd = L::kLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L::own0);
  bf16* dOs = reinterpret_cast<bf16*>(smem + L::own1);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L::str0);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L::str1);
  float* Lsm = reinterpret_cast<float*>(smem + L::lse);
  float* Dsm = reinterpret_cast<float*>(smem + L::dsum);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* Sw = reinterpret_cast<float*>(smem + L::s) + warp * 16 * kSLd;
  float* dPw = reinterpret_cast<float*>(smem + L::dp) + warp * 16 * kSLd;
  bf16* dSw = reinterpret_cast<bf16*>(smem + L::ds) + warp * 16 * kPLd;

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTileRows;
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, g = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + g) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + g) * HD;
  LoadTile<HD>(Qs, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  LoadTile<HD>(dOs, dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD, d.C,
               q0, d.T);
  for (int e = threadIdx.x; e < kTileRows; e += blockDim.x) {
    const int q = q0 + e;
    Lsm[e] = q < d.T ? lse[static_cast<int64_t>(bh) * d.T + q] : 0.f;
    Dsm[e] = q < d.T ? Dsum[static_cast<int64_t>(bh) * d.T + q] : 0.f;
  }
  FragC dq[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) wmma::fill_fragment(dq[n], 0.f);
  const int r = lane >> 1, half = lane & 1;
  const int t = q0 + warp * 16 + r;

  for (int j0 = 0; j0 <= q0; j0 += kTileRows) {
    __syncthreads();
    LoadTile<HD>(Ks, kbase, d.ld, j0, d.T);
    LoadTile<HD>(Vs, vbase, d.ld, j0, d.T);
    __syncthreads();
    // S_w = Q_w K^T and dP_w = dO_w V^T  [16 queries x 64 keys]
#pragma unroll
    for (int j = 0; j < kTileRows / 16; ++j) {
      FragC acc_s, acc_dp;
      wmma::fill_fragment(acc_s, 0.f);
      wmma::fill_fragment(acc_dp, 0.f);
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        FragA a;
        FragBCol bt;
        wmma::load_matrix_sync(a, Qs + warp * 16 * kLd + kk * 16, kLd);
        wmma::load_matrix_sync(bt, Ks + j * 16 * kLd + kk * 16, kLd);
        wmma::mma_sync(acc_s, a, bt, acc_s);
        wmma::load_matrix_sync(a, dOs + warp * 16 * kLd + kk * 16, kLd);
        wmma::load_matrix_sync(bt, Vs + j * 16 * kLd + kk * 16, kLd);
        wmma::mma_sync(acc_dp, a, bt, acc_dp);
      }
      wmma::store_matrix_sync(Sw + j * 16, acc_s, kSLd, wmma::mem_row_major);
      wmma::store_matrix_sync(dPw + j * 16, acc_dp, kSLd, wmma::mem_row_major);
    }
    __syncwarp();
    const float Lr = Lsm[warp * 16 + r], Dr = Dsm[warp * 16 + r];
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const int key = j0 + c;
      const float p = (key <= t && key < d.T) ? expf(Sw[r * kSLd + c] * d.scale - Lr) : 0.f;
      dSw[r * kPLd + c] = __float2bfloat16_rn(p * (dPw[r * kSLd + c] - Dr));
    }
    __syncwarp();
    // dQ_w += dS_w [16 x 64] K [64 x HD]
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) {
#pragma unroll
      for (int kk = 0; kk < kTileRows / 16; ++kk) {
        FragA a;
        FragBRow bk;
        wmma::load_matrix_sync(a, dSw + kk * 16, kPLd);
        wmma::load_matrix_sync(bk, Ks + kk * 16 * kLd + n * 16, kLd);
        wmma::mma_sync(dq[n], a, bk, dq[n]);
      }
    }
  }
  __syncthreads();
  float* stage = reinterpret_cast<float*>(smem + L::s) + warp * 16 * L::kStageLd;
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(h) * HD;
  StoreRows<HD>(dbase, d.ld, q0 + warp * 16, d.T, d.scale, dq, stage);
}

template <int HD>
void ForwardHd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream) {
  constexpr size_t bytes = FwdSmem<HD>::bytes;
  AllowSmem(FlashFwdTcKernel<HD>, bytes, "FlashFwdTcKernel");
  const dim3 grid(static_cast<unsigned>(CeilDiv(d.T, kTileRows)),
                  static_cast<unsigned>(d.B * d.NH));
  internal::Launch(FlashFwdTcKernel<HD>, grid, kThreadsTc, bytes, stream, out, lse, qkv, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdTcKernel", stream);
}

template <int HD>
void BackwardHd(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dsum,
                const AttnDims& d, cudaStream_t stream) {
  constexpr size_t bytes = BwdSmem<HD>::bytes;
  AllowSmem(FlashBwdDkvTcKernel<HD>, bytes, "FlashBwdDkvTcKernel");
  AllowSmem(FlashBwdDqTcKernel<HD>, bytes, "FlashBwdDqTcKernel");
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, kTileRows));
  internal::Launch(FlashBwdDkvTcKernel<HD>, dim3(tiles, static_cast<unsigned>(d.B * d.NKV)),
                   kThreadsTc, bytes, stream, dqkv, dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDkvTcKernel", stream);
  internal::Launch(FlashBwdDqTcKernel<HD>, dim3(tiles, static_cast<unsigned>(d.B * d.NH)),
                   kThreadsTc, bytes, stream, dqkv, dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqTcKernel", stream);
}

}  // namespace

bool FlashTcSupports(int hd) { return hd == 64 || hd == 128; }

void FlashForwardTc(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                    cudaStream_t stream) {
  if (d.hd == 64) {
    ForwardHd<64>(out, lse, qkv, d, stream);
  } else if (d.hd == 128) {
    ForwardHd<128>(out, lse, qkv, d, stream);
  } else {
    Fatal("FlashForwardTc: unsupported head dim " + std::to_string(d.hd));
  }
}

void FlashBackwardTc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Dsum, const AttnDims& d, cudaStream_t stream) {
  if (d.hd == 64) {
    BackwardHd<64>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else if (d.hd == 128) {
    BackwardHd<128>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else {
    Fatal("FlashBackwardTc: unsupported head dim " + std::to_string(d.hd));
  }
}

}  // namespace llmt::kernels::cuda::internal
