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
// So a thread owns rows g and g+8 of its warp's 16-row tile; row statistics
// are reduced over the 4 threads (a "quad") sharing g. A B operand whose
// 2 consecutive k elements must be adjacent in memory is read from a
// transposed shared tile (V^T, Q^T, dO^T, K^T), filled while loading.
//
// Work decomposition is that of attention_tc.cu: 4 warps x 16 rows, 64-row
// tiles; forward and dQ own query tiles, dK/dV owns key tiles and loops over
// the queries (and the GQA group's query heads). The backward processes a
// 64-row tile in two 32-column halves to bound register use at head dim 128.
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/device_util.cuh"

namespace llmt::kernels::cuda::internal {
namespace {

constexpr int kTile = 64;  // rows per block and per streamed tile
constexpr int kWarps = 4;  // 16 rows each
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;             // bf16 padding per row (16 bytes): conflict-free fragments
constexpr int kLdT = kTile + kPad;  // row length of transposed tiles [HD][kLdT]
static_assert(kTile == kWarps * 16, "one 16-row MMA tile per warp");

// ---- primitives ------------------------------------------------------------------
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef LLMT_CUDA_EMULATION
  EmuMmaM16N8K16Bf16(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two adjacent bf16 (4-byte aligned) as one register.
__device__ __forceinline__ uint32_t Ld2(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// A operand (16 x 16) from a row-major shared tile: rows r0 + {g, g+8},
// columns c0 + {2t, 2t+8}.
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const bf16* tile, int ld, int r0, int c0,
                                      int g, int t) {
  a[0] = Ld2(tile + (r0 + g) * ld + c0 + 2 * t);
  a[1] = Ld2(tile + (r0 + g + 8) * ld + c0 + 2 * t);
  a[2] = Ld2(tile + (r0 + g) * ld + c0 + 2 * t + 8);
  a[3] = Ld2(tile + (r0 + g + 8) * ld + c0 + 2 * t + 8);
}

// B operand (16 x 8) whose n index is a row of `tile` and k runs along it:
// n = n0 + g, k = k0 + {2t, 2t+8}.
__device__ __forceinline__ void LoadB(uint32_t (&b)[2], const bf16* tile, int ld, int n0, int k0,
                                      int g, int t) {
  b[0] = Ld2(tile + (n0 + g) * ld + k0 + 2 * t);
  b[1] = Ld2(tile + (n0 + g) * ld + k0 + 2 * t + 8);
}

// The A operand for k-chunk kc (16 columns) of a 16 x (8 * nt) accumulator:
// n-tiles 2kc and 2kc+1 hold exactly the A fragment's columns.
__device__ __forceinline__ void AccToA(uint32_t (&a)[4], const float (&lo)[4],
                                       const float (&hi)[4]) {
  a[0] = Pack(lo[0], lo[1]);
  a[1] = Pack(lo[2], lo[3]);
  a[2] = Pack(hi[0], hi[1]);
  a[3] = Pack(hi[2], hi[3]);
}

// Rows [row0, row0 + 64) x HD of a strided global bf16 matrix (src points at
// the head's column 0) into a padded row-major tile [64][HD + 8], and, when
// dst_t is given, also transposed into [HD][kLdT]. Rows >= T become zeros.
// 16-byte global loads (the host checked the alignment).
template <int HD>
__device__ __forceinline__ void LoadTile(bf16* dst, bf16* dst_t, const bf16* src, int64_t ld,
                                         int row0, int T) {
  constexpr int kChunks = HD / 8;
  constexpr int kLd = HD + kPad;
  for (int e = threadIdx.x; e < kTile * kChunks; e += blockDim.x) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    Vec<bf16, 8> v;
    if (row0 + r < T) {
      v = LoadVec<8>(src + static_cast<int64_t>(row0 + r) * ld + c);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v.v[i] = __float2bfloat16_rn(0.f);
    }
    if (dst != nullptr) StoreVec<8>(dst + r * kLd + c, v);
    if (dst_t != nullptr) {
#pragma unroll
      for (int i = 0; i < 8; ++i) dst_t[(c + i) * kLdT + r] = v.v[i];
    }
  }
}

// Writes rows (row_lo, row_lo + 8) of a thread's accumulators, scaled, as
// bf16 pairs into a strided global matrix (columns 8 nd + 2t).
template <int HD>
__device__ __forceinline__ void StoreAcc(bf16* dst, int64_t ld, int row_lo, int T, float scale,
                                         const float (&acc)[HD / 8][4], int t) {
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    const int c = 8 * nd + 2 * t;
    if (row_lo < T) {
      *reinterpret_cast<uint32_t*>(dst + static_cast<int64_t>(row_lo) * ld + c) =
          Pack(acc[nd][0] * scale, acc[nd][1] * scale);
    }
    if (row_lo + 8 < T) {
      *reinterpret_cast<uint32_t*>(dst + static_cast<int64_t>(row_lo + 8) * ld + c) =
          Pack(acc[nd][2] * scale, acc[nd][3] * scale);
    }
  }
}

template <int HD>
struct Smem {
  static constexpr int kLd = HD + kPad;
  static constexpr size_t kRowTile = size_t{kTile} * kLd * sizeof(bf16);
  static constexpr size_t kColTile = size_t{HD} * kLdT * sizeof(bf16);
  static constexpr size_t kStats = 2 * kTile * sizeof(float);
  // forward: Q, K, V^T
  static constexpr size_t fwd = 2 * kRowTile + kColTile;
  // dK/dV: K, V, Q, dO, Q^T, dO^T, lse, Dsum
  static constexpr size_t dkv = 4 * kRowTile + 2 * kColTile + kStats;
  // dQ: Q, dO, K, V, K^T, lse, Dsum
  static constexpr size_t dq = 4 * kRowTile + kColTile + kStats;
};

// ---- forward -------------------------------------------------------------------------
template <int HD>
__global__ void __launch_bounds__(kThreads)
    FlashFwdMmaKernel(bf16* out, float* lse, const bf16* qkv, AttnDims d) {
  constexpr int kLd = Smem<HD>::kLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + kTile * kLd;
  bf16* Vt = Ks + kTile * kLd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;  // longest rows first
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;

  LoadTile<HD>(Qs, nullptr, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  __syncthreads();
  uint32_t qa[HD / 16][4];
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) LoadA(qa[kc], Qs, kLd, warp * 16, kc * 16, g, t);

  float o[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  const int tq[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};  // this thread's two rows
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int j0 = 0; j0 <= q0; j0 += kTile) {
    __syncthreads();  // the previous K / V^T tiles are consumed
    LoadTile<HD>(Ks, nullptr, kbase, d.ld, j0, d.T);
    LoadTile<HD>(nullptr, Vt, vbase, d.ld, j0, d.T);
    __syncthreads();
    // S [16 x 64] = Q_w K^T: B(k = dim, n = key) = K[key][dim].
    float s[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc) {
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt) {
        uint32_t bk[2];
        LoadB(bk, Ks, kLd, nt * 8, kc * 16, g, t);
        Mma(s[nt], qa[kc], bk);
      }
    }
    // Scale and mask (key j visible to query q when j <= q and j < T), then
    // the online softmax for rows tq[0] (elements 0, 1) and tq[1] (2, 3).
    // Key j0 <= q0 <= tq is always visible, so the new max is finite.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = j0 + nt * 8 + 2 * t + (i & 1);
        const int r = i >> 1;
        const float v = (j <= tq[r] && j < d.T) ? s[nt][i] * d.scale : -INFINITY;
        s[nt][i] = v;
        mx[r] = fmaxf(mx[r], v);
      }
    }
    float corr[2], psum[2] = {0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], QuadMax(mx[r]));
      corr[r] = expf(m[r] - m_new);  // 0 for the initial -inf
      m[r] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float p = expf(s[nt][i] - m[i >> 1]);
        s[nt][i] = p;
        psum[i >> 1] += p;
      }
    }
    // l is kept per thread (its own columns) and summed over the quad at the
    // end; corr is uniform over the quad, so that is exact.
    l[0] = l[0] * corr[0] + psum[0];
    l[1] = l[1] * corr[1] + psum[1];
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd) {
      o[nd][0] *= corr[0];
      o[nd][1] *= corr[0];
      o[nd][2] *= corr[1];
      o[nd][3] *= corr[1];
    }
    // O [16 x HD] += P [16 x 64] V: B(k = key, n = dim) = V^T[dim][key].
#pragma unroll
    for (int kc = 0; kc < kTile / 16; ++kc) {
      uint32_t pa[4];
      AccToA(pa, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
      for (int nd = 0; nd < HD / 8; ++nd) {
        uint32_t bv[2];
        LoadB(bv, Vt, kLdT, nd * 8, kc * 16, g, t);
        Mma(o[nd], pa, bv);
      }
    }
  }
  const float lsum[2] = {QuadSum(l[0]), QuadSum(l[1])};
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    o[nd][0] /= lsum[0];
    o[nd][1] /= lsum[0];
    o[nd][2] /= lsum[1];
    o[nd][3] /= lsum[1];
  }
  bf16* obase = out + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD;
  StoreAcc<HD>(obase, d.C, tq[0], d.T, 1.f, o, t);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (tq[r] < d.T) lse[static_cast<int64_t>(bh) * d.T + tq[r]] = m[r] + logf(lsum[r]);
    }
  }
}

// ---- backward: dK, dV ---------------------------------------------------------------
// Block: 64 keys of one (batch, kv head); warp w owns keys 16w..16w+15. For
// each query head of the group and each query tile from the diagonal on:
//   S^T = K Q^T, dP^T = V dO^T            (16 keys x 32 queries per half)
//   P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - Dsum)
//   dV += P^T dO,  dK += dS^T Q            (accumulated in registers)
template <int HD>
__global__ void __launch_bounds__(kThreads)
    FlashBwdDkvMmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                         const float* Dsum, AttnDims d) {
  constexpr int kLd = Smem<HD>::kLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + kTile * kLd;
  bf16* Qs = Vs + kTile * kLd;
  bf16* dOs = Qs + kTile * kLd;
  bf16* Qt = dOs + kTile * kLd;
  bf16* dOt = Qt + HD * kLdT;
  float* Lsm = reinterpret_cast<float*>(dOt + HD * kLdT);
  float* Dsm = Lsm + kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int k0 = blockIdx.x * kTile;  // low key tiles see the most queries: first
  const int bg = blockIdx.y, b = bg / d.NKV, kvh = bg % d.NKV;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const int64_t kcol = static_cast<int64_t>(d.NH + kvh) * HD;
  const int64_t vcol = static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  LoadTile<HD>(Ks, nullptr, base + kcol, d.ld, k0, d.T);
  LoadTile<HD>(Vs, nullptr, base + vcol, d.ld, k0, d.T);

  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dk[nd][i] = dv[nd][i] = 0.f;
  }
  const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

  for (int h = kvh * d.group; h < (kvh + 1) * d.group; ++h) {
    const int64_t bh = static_cast<int64_t>(b) * d.NH + h;
    const bf16* qsrc = base + static_cast<int64_t>(h) * HD;
    const bf16* dosrc = dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD;
    for (int i0 = k0; i0 < d.T; i0 += kTile) {
      __syncthreads();  // the previous query tiles are consumed
      LoadTile<HD>(Qs, Qt, qsrc, d.ld, i0, d.T);
      LoadTile<HD>(dOs, dOt, dosrc, d.C, i0, d.T);
      for (int e = threadIdx.x; e < kTile; e += blockDim.x) {
        const int q = i0 + e;
        Lsm[e] = q < d.T ? lse[bh * d.T + q] : 0.f;
        Dsm[e] = q < d.T ? Dsum[bh * d.T + q] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int qb = half * 32;  // query columns [qb, qb + 32) of the tile
        float st[4][4], dpt[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) st[nt][i] = dpt[nt][i] = 0.f;
        }
#pragma unroll
        for (int kc = 0; kc < HD / 16; ++kc) {
          uint32_t ka[4], va[4];
          LoadA(ka, Ks, kLd, warp * 16, kc * 16, g, t);
          LoadA(va, Vs, kLd, warp * 16, kc * 16, g, t);
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            uint32_t bq[2], bo[2];
            LoadB(bq, Qs, kLd, qb + nt * 8, kc * 16, g, t);   // B(k=dim, n=query) = Q[q][dim]
            LoadB(bo, dOs, kLd, qb + nt * 8, kc * 16, g, t);  // = dO[q][dim]
            Mma(st[nt], ka, bq);
            Mma(dpt[nt], va, bo);
          }
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int c = qb + nt * 8 + 2 * t + (i & 1);
            const int q = i0 + c;
            const float p =
                (q >= key[i >> 1] && q < d.T) ? expf(st[nt][i] * d.scale - Lsm[c]) : 0.f;
            st[nt][i] = p;
            dpt[nt][i] = p * (dpt[nt][i] - Dsm[c]);
          }
        }
#pragma unroll
        for (int kc = 0; kc < 2; ++kc) {
          uint32_t pa[4], sa[4];
          AccToA(pa, st[2 * kc], st[2 * kc + 1]);
          AccToA(sa, dpt[2 * kc], dpt[2 * kc + 1]);
#pragma unroll
          for (int nd = 0; nd < HD / 8; ++nd) {
            uint32_t bo[2], bq[2];
            LoadB(bo, dOt, kLdT, nd * 8, qb + kc * 16, g, t);  // B(k=query, n=dim) = dO^T[dim][q]
            LoadB(bq, Qt, kLdT, nd * 8, qb + kc * 16, g, t);
            Mma(dv[nd], pa, bo);
            Mma(dk[nd], sa, bq);
          }
        }
      }
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld;
  // The scores were scale * q.k, so dK carries the scale.
  StoreAcc<HD>(dbase + kcol, d.ld, key[0], d.T, d.scale, dk, t);
  StoreAcc<HD>(dbase + vcol, d.ld, key[0], d.T, 1.f, dv, t);
}

// ---- backward: dQ ---------------------------------------------------------------------
// Block: 64 queries of one (batch, head); warp w owns queries 16w..16w+15.
// Over key tiles up to the diagonal: S = Q K^T, dP = dO V^T,
// dS = exp(scale S - lse) (dP - Dsum), dQ += dS K.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    FlashBwdDqMmaKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                        const float* Dsum, AttnDims d) {
  constexpr int kLd = Smem<HD>::kLd;
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* dOs = Qs + kTile * kLd;
  bf16* Ks = dOs + kTile * kLd;
  bf16* Vs = Ks + kTile * kLd;
  bf16* Kt = Vs + kTile * kLd;
  float* Lsm = reinterpret_cast<float*>(Kt + HD * kLdT);
  float* Dsm = Lsm + kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int bh = blockIdx.y, b = bh / d.NH, h = bh % d.NH, kvh = h / d.group;
  const bf16* base = qkv + static_cast<int64_t>(b) * d.T * d.ld;
  const bf16* kbase = base + static_cast<int64_t>(d.NH + kvh) * HD;
  const bf16* vbase = base + static_cast<int64_t>(d.NH + d.NKV + kvh) * HD;
  LoadTile<HD>(Qs, nullptr, base + static_cast<int64_t>(h) * HD, d.ld, q0, d.T);
  LoadTile<HD>(dOs, nullptr,
               dout + static_cast<int64_t>(b) * d.T * d.C + static_cast<int64_t>(h) * HD, d.C, q0,
               d.T);
  for (int e = threadIdx.x; e < kTile; e += blockDim.x) {
    const int q = q0 + e;
    Lsm[e] = q < d.T ? lse[static_cast<int64_t>(bh) * d.T + q] : 0.f;
    Dsm[e] = q < d.T ? Dsum[static_cast<int64_t>(bh) * d.T + q] : 0.f;
  }
  float dq[HD / 8][4];
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.f;
  const int tq[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

  for (int j0 = 0; j0 <= q0; j0 += kTile) {
    __syncthreads();  // the previous key tiles are consumed (and Q, dO, stats visible)
    LoadTile<HD>(Ks, Kt, kbase, d.ld, j0, d.T);
    LoadTile<HD>(Vs, nullptr, vbase, d.ld, j0, d.T);
    __syncthreads();
    const float L[2] = {Lsm[warp * 16 + g], Lsm[warp * 16 + g + 8]};
    const float D[2] = {Dsm[warp * 16 + g], Dsm[warp * 16 + g + 8]};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int kb = half * 32;  // key columns [kb, kb + 32) of the tile
      float s[4][4], dp[4][4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.f;
      }
#pragma unroll
      for (int kc = 0; kc < HD / 16; ++kc) {
        uint32_t qa[4], oa[4];
        LoadA(qa, Qs, kLd, warp * 16, kc * 16, g, t);
        LoadA(oa, dOs, kLd, warp * 16, kc * 16, g, t);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          uint32_t bk[2], bv[2];
          LoadB(bk, Ks, kLd, kb + nt * 8, kc * 16, g, t);  // B(k=dim, n=key) = K[key][dim]
          LoadB(bv, Vs, kLd, kb + nt * 8, kc * 16, g, t);
          Mma(s[nt], qa, bk);
          Mma(dp[nt], oa, bv);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int j = j0 + kb + nt * 8 + 2 * t + (i & 1);
          const int r = i >> 1;
          const float p = (j <= tq[r] && j < d.T) ? expf(s[nt][i] * d.scale - L[r]) : 0.f;
          s[nt][i] = p * (dp[nt][i] - D[r]);  // dS
        }
      }
#pragma unroll
      for (int kc = 0; kc < 2; ++kc) {
        uint32_t sa[4];
        AccToA(sa, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
          uint32_t bk[2];
          LoadB(bk, Kt, kLdT, nd * 8, kb + kc * 16, g, t);  // B(k=key, n=dim) = K^T[dim][key]
          Mma(dq[nd], sa, bk);
        }
      }
    }
  }
  bf16* dbase = dqkv + static_cast<int64_t>(b) * d.T * d.ld + static_cast<int64_t>(h) * HD;
  StoreAcc<HD>(dbase, d.ld, tq[0], d.T, d.scale, dq, t);
}

// Opts a kernel into more than 48 KiB of dynamic shared memory (a property of
// the current device's context, so set on every launch; it is a cheap call).
template <typename K>
void AllowSmem(K kernel, size_t bytes, const char* name) {
  const cudaError_t err =
      cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) {
    Fatal(std::string("cudaFuncSetAttribute(MaxDynamicSharedMemorySize=") + std::to_string(bytes) +
          ") for " + name + " failed: " + CudaErrorString(err));
  }
}

template <int HD>
void ForwardHd(bf16* out, float* lse, const bf16* qkv, const AttnDims& d, cudaStream_t stream) {
  constexpr size_t bytes = Smem<HD>::fwd;
  AllowSmem(FlashFwdMmaKernel<HD>, bytes, "FlashFwdMmaKernel");
  const dim3 grid(static_cast<unsigned>(CeilDiv(d.T, kTile)), static_cast<unsigned>(d.B * d.NH));
  Launch(FlashFwdMmaKernel<HD>, grid, kThreads, bytes, stream, out, lse, qkv, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashFwdMmaKernel", stream);
}

template <int HD>
void BackwardHd(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dsum,
                const AttnDims& d, cudaStream_t stream) {
  const unsigned tiles = static_cast<unsigned>(CeilDiv(d.T, kTile));
  AllowSmem(FlashBwdDkvMmaKernel<HD>, Smem<HD>::dkv, "FlashBwdDkvMmaKernel");
  Launch(FlashBwdDkvMmaKernel<HD>, dim3(tiles, static_cast<unsigned>(d.B * d.NKV)), kThreads,
         Smem<HD>::dkv, stream, dqkv, dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDkvMmaKernel", stream);
  AllowSmem(FlashBwdDqMmaKernel<HD>, Smem<HD>::dq, "FlashBwdDqMmaKernel");
  Launch(FlashBwdDqMmaKernel<HD>, dim3(tiles, static_cast<unsigned>(d.B * d.NH)), kThreads,
         Smem<HD>::dq, stream, dqkv, dout, qkv, lse, Dsum, d);
  LLMT_CUDA_CHECK_LAUNCH("FlashBwdDqMmaKernel", stream);
}

}  // namespace

void FlashForwardMma(bf16* out, float* lse, const bf16* qkv, const AttnDims& d,
                     cudaStream_t stream) {
  if (d.hd == 64) {
    ForwardHd<64>(out, lse, qkv, d, stream);
  } else if (d.hd == 128) {
    ForwardHd<128>(out, lse, qkv, d, stream);
  } else {
    Fatal("FlashForwardMma: unsupported head dim " + std::to_string(d.hd));
  }
}

void FlashBackwardMma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                      const float* Dsum, const AttnDims& d, cudaStream_t stream) {
  if (d.hd == 64) {
    BackwardHd<64>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else if (d.hd == 128) {
    BackwardHd<128>(dqkv, dout, qkv, lse, Dsum, d, stream);
  } else {
    Fatal("FlashBackwardMma: unsupported head dim " + std::to_string(d.hd));
  }
}

}  // namespace llmt::kernels::cuda::internal
