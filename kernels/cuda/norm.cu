#include <algorithm>
#include <atomic>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/norm.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::CeilDiv;
using internal::FromF;
using internal::LoadVec;
using internal::StoreVec;
using internal::ToF;
using internal::Vec;
using internal::WarpSum;

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kParamSlots = 32;  // warps over the partials in the final sum

// One warp per row; each lane takes V consecutive channels at a time (V = 8
// bf16 / 4 fp32 16-byte vector accesses when the host found C divisible and
// the pointers aligned, else V = 1), lanes striding over the row (coalesced).
// The row is read up to three times (sum, variance, output); the re-reads hit
// L1/L2. With kRes the row is first built as residual = inp1 + inp2 (rounded
// to T and stored), and the statistics are taken of the stored values so that
// the backward, which reads `residual`, sees exactly the normalised input.
template <typename T, int V, bool kLN, bool kRes>
__global__ void NormForwardKernel(T* residual, T* out, float* mean, float* rstd, const T* inp1,
                                  const T* inp2, const T* weight, const T* bias, int64_t rows,
                                  int C, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // uniform per warp
  const int64_t off = row * C;
  const T* x;
  float sum = 0.f, sumsq = 0.f;
  if constexpr (kRes) {
    // residual may alias inp1/inp2: each element is read, then written, by
    // the same lane; the later passes re-read the lane's own writes.
    T* r = residual + off;
    for (int c = lane * V; c < C; c += 32 * V) {
      const Vec<T, V> a = LoadVec<V>(inp1 + off + c), b = LoadVec<V>(inp2 + off + c);
      Vec<T, V> v;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v.v[k] = FromF<T>(ToF(a.v[k]) + ToF(b.v[k]));
        const float f = ToF(v.v[k]);
        sum += f;
        sumsq += f * f;
      }
      StoreVec<V>(r + c, v);
    }
    x = r;
  } else {
    x = inp1 + off;
    for (int c = lane * V; c < C; c += 32 * V) {
      const Vec<T, V> a = LoadVec<V>(x + c);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float f = ToF(a.v[k]);
        sum += f;
        sumsq += f * f;
      }
    }
  }
  float m = 0.f, rs;
  if constexpr (kLN) {
    m = WarpSum(sum) / C;
    // Two-pass variance (no cancellation for large means), as the CPU backend.
    float var = 0.f;
    for (int c = lane * V; c < C; c += 32 * V) {
      const Vec<T, V> a = LoadVec<V>(x + c);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float dv = ToF(a.v[k]) - m;
        var += dv * dv;
      }
    }
    rs = 1.f / sqrtf(WarpSum(var) / C + eps);
  } else {
    rs = 1.f / sqrtf(WarpSum(sumsq) / C + eps);
  }
  T* o = out + off;
  for (int c = lane * V; c < C; c += 32 * V) {
    const Vec<T, V> a = LoadVec<V>(x + c), w = LoadVec<V>(weight + c);
    Vec<T, V> bb;
    if constexpr (kLN) {
      if (bias != nullptr) bb = LoadVec<V>(bias + c);
    }
    Vec<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float f = (ToF(a.v[k]) - m) * rs * ToF(w.v[k]);
      if constexpr (kLN) {
        if (bias != nullptr) f += ToF(bb.v[k]);
      }
      y.v[k] = FromF<T>(f);
    }
    StoreVec<V>(o + c, y);
  }
  if (lane == 0) {
    if constexpr (kLN) mean[row] = m;
    rstd[row] = rs;
  }
}

// sum_dn += dout w and sum_dn_n += dout w n over V channels, n = (x - m) rs.
template <typename T, int V>
__device__ __forceinline__ void RowSums(const Vec<T, V>& xi, const Vec<T, V>& dy,
                                        const Vec<T, V>& w, float m, float rs, float& sum_dn,
                                        float& sum_dn_n) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float n = (ToF(xi.v[k]) - m) * rs;
    const float dn = ToF(dy.v[k]) * ToF(w.v[k]);
    sum_dn += dn;
    sum_dn_n += dn * n;
  }
}

// Block b handles rows [b R, b R + R), R = kNormRowsPerBlock.
// Phase 1 (warp per row, V channels per lane step as in the forward):
//   dinp += rstd (dn - mean(dn) - n mean(dn n)) with n = (x - mean) rstd,
//   dn = dout w (LayerNorm; RMSNorm drops the mean(dn) term, mean = 0).
// Phase 2: the block's partial weight (and bias) gradients, per 32V-channel
//   tile: lane x of warp y sums dout * n (and dout) over channels
//   [xV, xV + V) of the tile for rows r0 + y, r0 + y + 8, ... -- the rows
//   this warp just normalised, so the re-reads hit L1 -- with 16-byte loads,
//   and the 8 warps' sums are added in warp order (CombineColumnPartials).
//   Results go to partial[b][c] (weight) and partial[nblocks + b][c] (bias).
// The order of every addition depends only on (rows, C), not on V.
template <typename T, int V, bool kLN>
__global__ void __launch_bounds__(kThreads)
    NormBackwardKernel(T* dinp, float* partial, const T* dout, const T* inp, const T* weight,
                       const float* mean, const float* rstd, int64_t rows, int C) {
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kNormRowsPerBlock;
  const int64_t r1 = min(rows, r0 + kNormRowsPerBlock);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const int64_t off = r * C;
    const float m = kLN ? mean[r] : 0.f, rs = rstd[r];
    float sum_dn = 0.f, sum_dn_n = 0.f;
    for (int c = lane * V; c < C; c += 32 * V) {
      RowSums<T, V>(LoadVec<V>(inp + off + c), LoadVec<V>(dout + off + c),
                    LoadVec<V>(weight + c), m, rs, sum_dn, sum_dn_n);
    }
    const float a = kLN ? WarpSum(sum_dn) / C : 0.f;
    const float b = WarpSum(sum_dn_n) / C;
    for (int c = lane * V; c < C; c += 32 * V) {
      const Vec<T, V> xi = LoadVec<V>(inp + off + c), dy = LoadVec<V>(dout + off + c),
                      w = LoadVec<V>(weight + c);
      Vec<T, V> dx = LoadVec<V>(dinp + off + c);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float n = (ToF(xi.v[k]) - m) * rs;
        const float dn = ToF(dy.v[k]) * ToF(w.v[k]);
        dx.v[k] = FromF<T>(ToF(dx.v[k]) + (dn - a - n * b) * rs);
      }
      StoreVec<V>(dinp + off + c, dx);
    }
  }

  __shared__ float part[kWarps * 32 * V];
  const int64_t nblocks = gridDim.x;
  float* pw = partial + blockIdx.x * static_cast<int64_t>(C);
  float* pb = partial + (nblocks + blockIdx.x) * static_cast<int64_t>(C);
  for (int c0 = 0; c0 < C; c0 += 32 * V) {  // uniform over the block
    const int c = c0 + lane * V;
    float gw[V], gb[V];
#pragma unroll
    for (int k = 0; k < V; ++k) gw[k] = gb[k] = 0.f;
    if (c < C) {  // V > 1: C % V == 0, so the whole vector is inside
#pragma unroll 4
      for (int64_t r = r0 + warp; r < r1; r += kWarps) {
        const float m = kLN ? mean[r] : 0.f, rs = rstd[r];
        const Vec<T, V> xi = LoadVec<V>(inp + r * C + c), dy = LoadVec<V>(dout + r * C + c);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          // Explicit fma: the compiler may not contract the two
          // instantiations (V = 1 / vector) differently.
          const float d = ToF(dy.v[k]);
          gw[k] = fmaf(d, (ToF(xi.v[k]) - m) * rs, gw[k]);
          gb[k] += d;
        }
      }
    }
    const float sw = internal::CombineColumnPartials<V, kWarps>(gw, part);
    if (threadIdx.x < 32 * V && c0 + threadIdx.x < C) pw[c0 + threadIdx.x] = sw;
    if constexpr (kLN) {
      const float sb = internal::CombineColumnPartials<V, kWarps>(gb, part);
      if (threadIdx.x < 32 * V && c0 + threadIdx.x < C) pb[c0 + threadIdx.x] = sb;
    }
  }
}

// 16-byte vectors when every row starts aligned (C divisible by the vector
// width and all pointers aligned).
template <typename T>
constexpr int kVec = 16 / sizeof(T);
template <typename T>
bool UseVec(int C, const void* a, const void* b, const void* c, const void* d, const void* e) {
  return C % kVec<T> == 0 && internal::Aligned(16, a, b, c, d) && internal::Aligned(16, e);
}

// ---- single-read backward ------------------------------------------------------
// NormBackwardKernel above reads x and dy twice in phase 1 and a third time in
// phase 2 (the weight/bias partials, by channel tiles), mostly from L1/L2,
// and writes one fp32 partial row per 32 rows. At GPT-2's 65536 x 768 bf16
// the DRAM minimum (read x, dy, dinp; write dinp: ~400 MB, ~0.13 ms) is far
// below its ~0.22 ms. This kernel touches every input element once:
//  * warp per row as before (the row's statistics are warp reductions), lane
//    holding the channels c = lane V + i 32V, i < NV, of x and dy in
//    registers: all 2 NV 16-byte loads of the row are issued together, then
//    both loops of phase 1 run from registers; dinp is loaded in the second
//    loop (holding it too pushed NV = 3 past 80 registers). NV = ceil(C /
//    32V) <= 4: C <= 1024 bf16 (GPT-2 768: NV = 3, 24 data registers; Llama
//    1024: NV = 4, 32). NV = 0: the same computation with phase 1's loops
//    re-reading (L1) for wider or odd C (also V = 1 for misaligned views).
//  * the weight/bias gradients accumulate while the row is in registers:
//    each warp adds dy n and dy of its rows, in row order, into its own fp32
//    slice of shared memory (kWarps x planes x C floats; a lane only touches
//    its own channels, so no synchronisation); at the end the block adds the
//    8 slices in warp order and writes one partial row. Phase 2's re-reads
//    are gone.
//  * kFastRows = 64 rows per block halves the partial rows (and the column
//    sum's reads) against 32; a larger block lengthens the serial chain of
//    rows per warp (R/8 dependent round trips) and so the end-of-grid drain.
// Every channel's sum is fmaf(dy, (x - m) rs, acc) over the warp's rows in
// order, then warps in order, then blocks (ColumnSumKernel): fixed by (rows,
// C), the same for every V and NV, so the vector and scalar paths agree bit
// for bit. The bits differ from NormBackwardKernel's (32-row partials).
constexpr int kFastRows = 64;
static_assert(kFastRows % kNormRowsPerBlock == 0,
              "fewer partial rows than NormBackwardScratchBytes provides for");
constexpr int kMaxFastNV = 4;
// Shared memory cap: at most ~96 KB per block keeps >= 2 blocks per SM
// (LayerNorm C <= 1536, RMSNorm C <= 3072); wider rows run the old kernel.
constexpr size_t kMaxFastSmem = 96 * 1024;

// p[k] = fmaf(a[k], b[k], p[k]) (kFma) or p[k] + a[k] for the V floats at p
// (16-byte aligned when V % 4 == 0: one LDS.128/STS.128 per 4 floats).
template <int V, bool kFma>
__device__ __forceinline__ void AddToSmem(float* p, const float (&a)[V], const float (&b)[V]) {
  constexpr int F = V % 4 == 0 ? 4 : 1;
#pragma unroll
  for (int k0 = 0; k0 < V; k0 += F) {
    Vec<float, F> s = LoadVec<F>(p + k0);
#pragma unroll
    for (int k = 0; k < F; ++k) {
      s.v[k] = kFma ? fmaf(a[k0 + k], b[k0 + k], s.v[k]) : s.v[k] + a[k0 + k];
    }
    StoreVec<F>(p + k0, s);
  }
}

// Phase 2 of one vector of one row: the updated dinp, and the row's terms of
// the weight (dy n) and bias (dy) gradients added to this warp's slices.
template <typename T, int V, bool kLN>
__device__ __forceinline__ Vec<T, V> FinishVector(const Vec<T, V>& xi, const Vec<T, V>& dy,
                                                  const Vec<T, V>& w, const Vec<T, V>& dx, float m,
                                                  float rs, float a, float b, float* aw,
                                                  float* ab) {
  Vec<T, V> out;
  float d[V], n[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    n[k] = (ToF(xi.v[k]) - m) * rs;
    d[k] = ToF(dy.v[k]);
    const float dn = d[k] * ToF(w.v[k]);
    out.v[k] = FromF<T>(ToF(dx.v[k]) + (dn - a - n[k] * b) * rs);
  }
  AddToSmem<V, true>(aw, d, n);
  if constexpr (kLN) AddToSmem<V, false>(ab, d, n);
  return out;
}

// p[k] += o[k] for the V values of a finished vector (its column sums).
template <typename T, int V>
__device__ __forceinline__ void AddVecToSmem(float* p, const Vec<T, V>& o) {
  float f[V];
#pragma unroll
  for (int k = 0; k < V; ++k) f[k] = ToF(o.v[k]);
  AddToSmem<V, false>(p, f, f);
}

// Block b handles rows [b kFastRows, (b + 1) kFastRows); warp y its rows
// r0 + y, r0 + y + 8, ...; partial[b][c] (weight), partial[nblocks + b][c]
// (bias), and with kSum partial[(kLN ? 2 : 1) nblocks + b][c] the column
// sums of the updated dinp (as stored, after rounding to T): the gradient's
// column sums that a bias feeding this residual stream needs, taken while
// the values are in registers instead of in a separate pass over dinp.
// Dynamic shared memory: kWarps x planes x C floats.
// Registers (ptxas, sm_90a): 3 blocks per SM (<= 80 registers) hold NV <= 3
// without spills (bf16 C = 768: 80); NV = 4 (C = 1024) spills at 80 and gets
// 2 blocks (113 RMSNorm / 120 LayerNorm). Either way an SM keeps >= 16 warps
// x one row of x and dy (>= 3 KB) in flight, 48+ KB, more than its share of
// HBM bandwidth x latency (~25 GB/s x ~1 us = ~25 KB).
template <typename T, int V, int NV, bool kLN, bool kSum>
__global__ void __launch_bounds__(kThreads, NV >= 4 ? 2 : 3)
    NormBackwardFastKernel(T* dinp, float* partial, const T* dout, const T* inp, const T* weight,
                           const float* mean, const float* rstd, int64_t rows, int C) {
  constexpr int kPlanes = (kLN ? 2 : 1) + (kSum ? 1 : 0);
  LLMT_DYNAMIC_SMEM(smem_raw);
  float* acc = reinterpret_cast<float*>(smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int i = threadIdx.x; i < kWarps * kPlanes * C; i += kThreads) acc[i] = 0.f;
  __syncthreads();
  float* aw = acc + warp * kPlanes * C;  // this warp's weight slice
  float* ab = aw + C;                    // and bias slice (LayerNorm)
  float* as = aw + (kLN ? 2 : 1) * C;    // and dinp's column sums (kSum)
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kFastRows;
  const int64_t r1 = min(rows, r0 + kFastRows);
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const int64_t off = r * C;
    const float m = kLN ? mean[r] : 0.f, rs = rstd[r];
    float sum_dn = 0.f, sum_dn_n = 0.f;
    if constexpr (NV > 0) {
      Vec<T, V> xi[NV], dy[NV];
#pragma unroll
      for (int i = 0; i < NV; ++i) {  // every load of x and dy before any math
        const int c = i * 32 * V + lane * V;
        if (c < C) {  // V divides C: whole vectors
          xi[i] = LoadVec<V>(inp + off + c);
          dy[i] = LoadVec<V>(dout + off + c);
        } else {
          xi[i] = dy[i] = Vec<T, V>{};
        }
      }
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int c = i * 32 * V + lane * V;
        if (c < C) RowSums<T, V>(xi[i], dy[i], LoadVec<V>(weight + c), m, rs, sum_dn, sum_dn_n);
      }
      const float a = kLN ? WarpSum(sum_dn) / C : 0.f;
      const float b = WarpSum(sum_dn_n) / C;
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int c = i * 32 * V + lane * V;
        if (c < C) {
          const Vec<T, V> o = FinishVector<T, V, kLN>(xi[i], dy[i], LoadVec<V>(weight + c),
                                                      LoadVec<V>(dinp + off + c), m, rs, a, b,
                                                      aw + c, ab + c);
          if constexpr (kSum) AddVecToSmem(as + c, o);
          StoreVec<V>(dinp + off + c, o);
        }
      }
    } else {
      for (int c = lane * V; c < C; c += 32 * V) {
        RowSums<T, V>(LoadVec<V>(inp + off + c), LoadVec<V>(dout + off + c), LoadVec<V>(weight + c),
                      m, rs, sum_dn, sum_dn_n);
      }
      const float a = kLN ? WarpSum(sum_dn) / C : 0.f;
      const float b = WarpSum(sum_dn_n) / C;
      for (int c = lane * V; c < C; c += 32 * V) {
        const Vec<T, V> o =
            FinishVector<T, V, kLN>(LoadVec<V>(inp + off + c), LoadVec<V>(dout + off + c),
                                    LoadVec<V>(weight + c), LoadVec<V>(dinp + off + c), m, rs, a,
                                    b, aw + c, ab + c);
        if constexpr (kSum) AddVecToSmem(as + c, o);
        StoreVec<V>(dinp + off + c, o);
      }
    }
  }
  __syncthreads();
  // The warps' slices, added in warp order (as CombineColumnPartials).
  const int64_t nblocks = gridDim.x;
  for (int p = 0; p < kPlanes; ++p) {
    float* out = partial + (p * nblocks + blockIdx.x) * static_cast<int64_t>(C);
    for (int c = threadIdx.x; c < C; c += kThreads) {
      float s = 0.f;
#pragma unroll
      for (int y = 0; y < kWarps; ++y) s += acc[(y * kPlanes + p) * C + c];
      out[c] = s;
    }
  }
}

// LLMT_LEGACY_KERNELS (common.cuh) containing "norm_bwd": NormBackwardKernel
// (32-row partials) instead of NormBackwardFastKernel. Read once.
std::atomic<bool>& LegacyNormBackward() {
  static std::atomic<bool> legacy{internal::LegacyKernelRequested("norm_bwd")};
  return legacy;
}

// Launches NormBackwardFastKernel (with dinp's column sums: kSum) when C's
// slices fit kMaxFastSmem and the shared memory is granted; returns the
// number of partial rows it writes, 0 when the caller must run
// NormBackwardKernel.
template <typename T, bool kLN, bool kSum>
int64_t LaunchBackwardFast(T* dinp, float* partial, const T* dout, const T* inp, const T* weight,
                           const float* mean, const float* rstd, int64_t rows, int C,
                           cudaStream_t stream) {
  if (LegacyNormBackward().load(std::memory_order_relaxed)) return 0;
  const size_t smem =
      static_cast<size_t>(kWarps) * ((kLN ? 2 : 1) + (kSum ? 1 : 0)) * C * sizeof(float);
  if (smem > kMaxFastSmem) return 0;
  constexpr int kV = kVec<T>;
  using Kernel =
      void (*)(T*, float*, const T*, const T*, const T*, const float*, const float*, int64_t, int);
  Kernel kernel = NormBackwardFastKernel<T, 1, 0, kLN, kSum>;
  if (UseVec<T>(C, dinp, dout, inp, weight, nullptr)) {
    switch (CeilDiv(C, 32 * kV)) {
      case 1:
        kernel = NormBackwardFastKernel<T, kV, 1, kLN, kSum>;
        break;
      case 2:
        kernel = NormBackwardFastKernel<T, kV, 2, kLN, kSum>;
        break;
      case 3:
        kernel = NormBackwardFastKernel<T, kV, 3, kLN, kSum>;
        break;
      case kMaxFastNV:
        kernel = NormBackwardFastKernel<T, kV, kMaxFastNV, kLN, kSum>;
        break;
      default:
        kernel = NormBackwardFastKernel<T, kV, 0, kLN, kSum>;
        break;
    }
  }
  if (smem > 48 * 1024 && cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)) != cudaSuccess) {
    (void)cudaGetLastError();  // not granted: the old kernel needs no opt-in
    return 0;
  }
  const int64_t nblocks = CeilDiv(rows, kFastRows);
  internal::Launch(kernel, static_cast<unsigned>(nblocks), kThreads, smem, stream, dinp, partial,
                   dout, inp, weight, mean, rstd, rows, C);
  return nblocks;
}

template <typename T, bool kLN, bool kRes>
void LaunchForward(T* residual, T* out, float* mean, float* rstd, const T* inp1, const T* inp2,
                   const T* weight, const T* bias, int64_t rows, int C, float eps,
                   cudaStream_t stream) {
  if (rows <= 0 || C <= 0) return;
  const unsigned grid = static_cast<unsigned>(CeilDiv(rows, kWarps));
  if (UseVec<T>(C, residual, out, inp1, inp2, weight) && internal::Aligned(16, bias)) {
    internal::Launch(NormForwardKernel<T, kVec<T>, kLN, kRes>, grid, kThreads, 0, stream, residual,
                     out, mean, rstd, inp1, inp2, weight, bias, rows, C, eps);
  } else {
    internal::Launch(NormForwardKernel<T, 1, kLN, kRes>, grid, kThreads, 0, stream, residual, out,
                     mean, rstd, inp1, inp2, weight, bias, rows, C, eps);
  }
  LLMT_CUDA_CHECK_LAUNCH(kLN ? (kRes ? "FusedResidualLayerNormForward" : "LayerNormForward")
                             : (kRes ? "FusedResidualRMSNormForward" : "RMSNormForward"),
                         stream);
}

template <typename T, typename G, bool kLN>
void LaunchBackward(T* dinp, G* dweight, G* dbias, G* dsum, const T* dout, const T* inp,
                    const T* weight, const float* mean, const float* rstd, int64_t rows, int C,
                    void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  if (rows <= 0 || C <= 0) return;
  const char* name = kLN ? "LayerNormBackward" : "RMSNormBackward";
  CheckScratch(name, scratch, scratch_bytes, NormBackwardScratchBytes(rows, C));
  float* partial = static_cast<float*>(scratch);
  int64_t nblocks =
      dsum != nullptr
          ? LaunchBackwardFast<T, kLN, true>(dinp, partial, dout, inp, weight, mean, rstd, rows,
                                             C, stream)
          : LaunchBackwardFast<T, kLN, false>(dinp, partial, dout, inp, weight, mean, rstd, rows,
                                              C, stream);
  const bool summed = nblocks != 0 && dsum != nullptr;  // dinp's column sums in the partials
  if (nblocks == 0) {
    nblocks = CeilDiv(rows, kNormRowsPerBlock);
    if (UseVec<T>(C, dinp, dout, inp, weight, nullptr)) {
      internal::Launch(NormBackwardKernel<T, kVec<T>, kLN>, static_cast<unsigned>(nblocks),
                       kThreads, 0, stream, dinp, partial, dout, inp, weight, mean, rstd, rows, C);
    } else {
      internal::Launch(NormBackwardKernel<T, 1, kLN>, static_cast<unsigned>(nblocks), kThreads, 0,
                       stream, dinp, partial, dout, inp, weight, mean, rstd, rows, C);
    }
  }
  LLMT_CUDA_CHECK_LAUNCH(name, stream);
  // dweight (and dbias) += the blocks' partials, added per channel in block
  // order by 32-channel x 1024-thread tiles (24 x 2 blocks for C = 768, each
  // thread adding nblocks / 32 partials) rather than one thread per channel
  // walking all nblocks partials.
  const dim3 grid(static_cast<unsigned>(CeilDiv(C, 32)), 1, kLN && dbias != nullptr ? 2 : 1);
  internal::Launch(internal::ColumnSumKernel<G, float, 1, kParamSlots, true>, grid,
                   32 * kParamSlots, 0, stream, dweight, dbias, partial, nblocks * C, nblocks,
                   static_cast<int64_t>(C), static_cast<int64_t>(C), nblocks, 1.f);
  LLMT_CUDA_CHECK_LAUNCH(
      kLN ? "LayerNormBackward/NormParamGradKernel" : "RMSNormBackward/NormParamGradKernel",
      stream);
  if (summed) {
    // dsum += the blocks' column sums of dinp, in block order as above.
    const float* plane = partial + (kLN ? 2 : 1) * nblocks * static_cast<int64_t>(C);
    internal::Launch(internal::ColumnSumKernel<G, float, 1, kParamSlots, true>,
                     dim3(static_cast<unsigned>(CeilDiv(C, 32))), 32 * kParamSlots, 0, stream,
                     dsum, static_cast<G*>(nullptr), plane, nblocks * C, nblocks,
                     static_cast<int64_t>(C), static_cast<int64_t>(C), nblocks, 1.f);
    LLMT_CUDA_CHECK_LAUNCH(
        kLN ? "LayerNormBackward/DinpColumnSums" : "RMSNormBackward/DinpColumnSums", stream);
  } else if (dsum != nullptr) {
    // The legacy kernel has no third plane: a separate pass over dinp.
    BiasBackward(dsum, dinp, rows, C, 1.f, stream);
  }
}

}  // namespace

bool SetLegacyNormBackward(bool legacy) { return LegacyNormBackward().exchange(legacy); }

size_t NormBackwardScratchBytes(int64_t rows, int C) {
  // Two planes (weight, bias) for LayerNorm; RMSNorm uses the first. Sized
  // for NormBackwardKernel's 32-row partials; the fast kernel writes half as
  // many rows per plane, in up to three planes (dinp's column sums).
  const size_t slow = static_cast<size_t>(CeilDiv(rows, kNormRowsPerBlock)) * 2;
  const size_t fast = static_cast<size_t>(CeilDiv(rows, kFastRows)) * 3;
  return std::max(slow, fast) * static_cast<size_t>(C) * sizeof(float);
}

#define LLMT_NORM_FWD(T)                                                                           \
  void LayerNormForward(T* out, float* mean, float* rstd, const T* inp, const T* weight,           \
                        const T* bias, int64_t rows, int C, float eps, cudaStream_t stream) {      \
    LaunchForward<T, true, false>(nullptr, out, mean, rstd, inp, nullptr, weight, bias, rows, C,   \
                                  eps, stream);                                                    \
  }                                                                                                \
  void FusedResidualLayerNormForward(T* residual, T* out, float* mean, float* rstd, const T* inp1, \
                                     const T* inp2, const T* weight, const T* bias, int64_t rows,  \
                                     int C, float eps, cudaStream_t stream) {                      \
    LaunchForward<T, true, true>(residual, out, mean, rstd, inp1, inp2, weight, bias, rows, C,     \
                                 eps, stream);                                                     \
  }                                                                                                \
  void RMSNormForward(T* out, float* rstd, const T* inp, const T* weight, int64_t rows, int C,     \
                      float eps, cudaStream_t stream) {                                            \
    LaunchForward<T, false, false>(nullptr, out, nullptr, rstd, inp, nullptr, weight, nullptr,     \
                                   rows, C, eps, stream);                                          \
  }                                                                                                \
  void FusedResidualRMSNormForward(T* residual, T* out, float* rstd, const T* inp1, const T* inp2, \
                                   const T* weight, int64_t rows, int C, float eps,                \
                                   cudaStream_t stream) {                                          \
    LaunchForward<T, false, true>(residual, out, nullptr, rstd, inp1, inp2, weight, nullptr, rows, \
                                  C, eps, stream);                                                 \
  }
LLMT_NORM_FWD(float)
LLMT_NORM_FWD(bf16)
#undef LLMT_NORM_FWD

#define LLMT_NORM_BWD(T, G)                                                                   \
  void LayerNormBackward(T* dinp, G* dweight, G* dbias, const T* dout, const T* inp,          \
                         const T* weight, const float* mean, const float* rstd, int64_t rows, \
                         int C, void* scratch, size_t scratch_bytes, cudaStream_t stream,     \
                         G* dinp_colsum) {                                                    \
    LaunchBackward<T, G, true>(dinp, dweight, dbias, dinp_colsum, dout, inp, weight, mean,    \
                               rstd, rows, C, scratch, scratch_bytes, stream);                \
  }                                                                                           \
  void RMSNormBackward(T* dinp, G* dweight, const T* dout, const T* inp, const T* weight,     \
                       const float* rstd, int64_t rows, int C, void* scratch,                 \
                       size_t scratch_bytes, cudaStream_t stream, G* dinp_colsum) {           \
    LaunchBackward<T, G, false>(dinp, dweight, static_cast<G*>(nullptr), dinp_colsum, dout,   \
                                inp, weight, nullptr, rstd, rows, C, scratch, scratch_bytes,  \
                                stream);                                                      \
  }
LLMT_NORM_BWD(float, float)
LLMT_NORM_BWD(bf16, bf16)
LLMT_NORM_BWD(bf16, float)
#undef LLMT_NORM_BWD

}  // namespace llmt::kernels::cuda
