#include <algorithm>
#include <atomic>
#include <type_traits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/loss.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::CeilDiv;
using internal::Exp2Approx;
using internal::FromF;
using internal::ToF;

using internal::LoadVec;
using internal::StoreVec;
using internal::Vec;

// One block per row. A GPT-2 row is 50304 bf16 (~100 KB): 1024 threads each
// take ~6 16-byte vectors per pass, and with two blocks per SM the rows in
// flight (~264 x 100 KB) stay well inside the 50 MB L2, so the second read of
// a row mostly comes from L2 and DRAM sees one read and one write.
constexpr int kThreads = 1024;

// exp for the per-element work. bf16 logits: the fast __expf (ex2.approx,
// ~2 ulp in fp32), far below bf16's 2^-8 resolution of the stored gradient
// and of the inputs behind the loss. fp32 keeps the exact expf, which the
// fp32 tests compare against the CPU backend at 1e-5.
template <typename T>
__device__ __forceinline__ float Exp(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x);
  } else {
    return __expf(x);
  }
}

// Running (max, sum of exp(x - max)) pair of the online softmax.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum Combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};  // both empty
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Block-wide combine with a fixed order (warp butterflies, then warp 0 over
// the per-warp results): reproducible. Every thread gets the result.
__device__ MaxSum BlockCombine(MaxSum x) {
  __shared__ MaxSum warp_res[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum y{__shfl_xor_sync(0xffffffffu, x.m, o), __shfl_xor_sync(0xffffffffu, x.s, o)};
    x = Combine(x, y);
  }
  if (lane == 0) warp_res[warp] = x;
  __syncthreads();
  x = lane < nwarps ? warp_res[lane] : MaxSum{-INFINITY, 0.f};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum y{__shfl_xor_sync(0xffffffffu, x.m, o), __shfl_xor_sync(0xffffffffu, x.s, o)};
    x = Combine(x, y);
  }
  return x;
}

constexpr float kLog2e = 1.4426950408889634f;

// exp(x - m), given mL = m * log2(e). bf16: one FFMA + ex2 (instead of
// FADD, FMUL, ex2 of __expf(x - m)); the argument's extra rounding (~1e-6
// relative) is far below bf16's resolution. fp32: the exact expf, which the
// fp32 tests compare against the CPU backend at 1e-5.
template <typename T>
__device__ __forceinline__ float ExpShifted(float x, float m, float mL) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x - m);
  } else {
    return Exp2Approx(fmaf(x, kLog2e, -mL));
  }
}

// Folds W values into the running pair: one rescale per group (when the
// group raises the max) instead of one per element. kFast: the row kernel's
// ExpShifted instead of Exp (the two-pass kernel keeps its arithmetic).
template <typename T, int W, bool kFast = false>
__device__ __forceinline__ void Accumulate(MaxSum& acc, const float (&f)[W]) {
  float mx = f[0];
#pragma unroll
  for (int k = 1; k < W; ++k) mx = fmaxf(mx, f[k]);
  if (mx > acc.m) {
    // exp(-inf) = 0 for the first group
    acc.s *= kFast ? ExpShifted<T>(acc.m, mx, mx * kLog2e) : Exp<T>(acc.m - mx);
    acc.m = mx;
  }
  const float mL = acc.m * kLog2e;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    acc.s += kFast ? ExpShifted<T>(f[k], acc.m, mL) : Exp<T>(f[k] - acc.m);
  }
}

// Per-thread online softmax over the row's first n columns: V-wide vectors
// tid, tid + blockDim, ... over [0, n - n % V), then single columns of the
// tail. V > 1 needs a 16-byte aligned row.
template <typename T, int V>
__device__ __forceinline__ MaxSum RowMaxSum(const T* x, int n) {
  MaxSum acc{-INFINITY, 0.f};
  const int nv = n / V;
  for (int j = threadIdx.x; j < nv; j += blockDim.x) {
    const Vec<T, V> a = LoadVec<V>(x + static_cast<int64_t>(j) * V);
    float f[V];
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = ToF(a.v[k]);
    Accumulate<T, V>(acc, f);
  }
  for (int j = nv * V + threadIdx.x; j < n; j += blockDim.x) {
    const float f[1] = {ToF(x[j])};
    Accumulate<T, 1>(acc, f);
  }
  return acc;
}

// Second pass over all ld columns of the row, V at a time (V > 1 needs ld %
// V == 0 and an aligned row): x[j] = f(j, x[j]) for j < n, 0 for the
// padding j >= n.
template <typename T, int V, typename F>
__device__ __forceinline__ void RowRewrite(T* x, int n, int64_t ld, F f) {
  const int64_t nv = ld / V;
  for (int64_t j = threadIdx.x; j < nv; j += blockDim.x) {
    Vec<T, V> a = LoadVec<V>(x + j * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t c = j * V + k;
      a.v[k] = FromF<T>(c < n ? f(static_cast<int>(c), ToF(a.v[k])) : 0.f);
    }
    StoreVec<V>(x + j * V, a);
  }
  for (int64_t j = nv * V + threadIdx.x; j < ld; j += blockDim.x) {
    x[j] = FromF<T>(j < n ? f(static_cast<int>(j), ToF(x[j])) : 0.f);
  }
}

// Rows blockIdx.x, blockIdx.x + gridDim.x, ... (one row per block unless the
// caller caps the grid: SoftmaxCrossEntropy's max_blocks).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    SoftmaxCrossEntropyKernel(T* logits, const int32_t* targets, int n, int64_t ld,
                              float grad_scale, float* row_losses, int64_t rows) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    if (row != blockIdx.x) __syncthreads();  // BlockCombine's slots are free again
    T* x = logits + row * ld;
    const int y = targets[row];
    const bool valid = y >= 0 && y < n;
    // Read the target logit before any thread overwrites the row (the
    // block-wide combine below is a barrier).
    const float xy = valid ? ToF(x[y]) : 0.f;
    const MaxSum ms = BlockCombine(RowMaxSum<T, V>(x, n));
    if (threadIdx.x == 0) row_losses[row] = valid ? logf(ms.s) - (xy - ms.m) : NAN;
    const float k = valid ? grad_scale / ms.s : 0.f;
    const float m = ms.m;
    RowRewrite<T, V>(x, n, ld, [=](int j, float v) {
      float g = k * Exp<T>(v - m);
      if (j == y) g -= grad_scale;
      return g;
    });
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) SoftmaxKernel(T* logits, int n, int64_t ld) {
  T* x = logits + static_cast<int64_t>(blockIdx.x) * ld;
  const MaxSum ms = BlockCombine(RowMaxSum<T, V>(x, n));
  const float inv = 1.f / ms.s, m = ms.m;
  RowRewrite<T, V>(x, n, ld, [=](int, float v) { return Exp<T>(v - m) * inv; });
}

// 16-byte vectors when every row starts 16-byte aligned.
template <typename T>
constexpr int kVec = 16 / sizeof(T);
template <typename T>
bool UseVec(const T* x, int64_t ld) {
  return ld % kVec<T> == 0 && internal::Aligned(16, x);
}

// ---- single-read fast path ----------------------------------------------------
// The kernel above reads a row twice (max/sum, then the rewrite). At the
// GPT-2 shape (65536 rows x 50304 bf16 = 6.6 GB) the second read only partly
// hits L2 and the kernel runs at ~2.2 TB/s. This one reads the row from DRAM
// once and writes it once: the whole row is staged in shared memory, then
// max/sum, loss and gradient are computed from there.
//
// Why shared memory and not registers: a 50304-bf16 row is 100.6 KB, the
// register file 256 KB per SM. At <= 64 registers/thread an SM runs 1024
// threads, so two resident rows (two blocks per SM, so that one block's
// reductions and exp work overlap the other's memory traffic) would need ~50
// of the 64 registers as row data, leaving ~14 for everything else: not
// possible. Shared memory (227 KB per block, 228 KB per SM on Hopper) holds
// two rows (2 x (100.6 + 1) KB), and cp.async moves a thread's vectors
// global -> shared without registers, so every 16-byte load of the row is
// issued before any arithmetic (100 KB in flight per block, far above what
// Little's law asks of an SM at its ~25 GB/s share of HBM3).
//
// Each thread copies vectors tid, tid + blockDim, ... and later reads exactly
// those back, so its own cp.async wait suffices before the per-thread pass;
// no barrier is needed until the block-wide combine. GPT-2: 6288 vectors,
// 12-13 copies per thread of 512. Registers stay small (no per-thread row
// array; ptxas sm_90a: 32 registers, no spills), far inside the 64 that
// __launch_bounds__(512, 2) allows.
constexpr int kRowThreads = 512;
// Largest staged row: two blocks per SM on Hopper (228 KB of shared memory
// per SM, 1 KB reserved per block). Longer rows (e.g. Llama-3's 128256-token
// vocabulary) take the two-pass kernel.
constexpr int64_t kMaxRowBytes = 112 * 1024;

// 16 bytes global -> shared, bypassing L1 (streamed once).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src) {
#ifdef LLMT_CUDA_EMULATION
  EmuCpAsync(dst, src, 16, 16);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(src) : "memory");
#endif
}
// Commit and wait for all of this thread's copies.
__device__ __forceinline__ void CpAsyncWaitAll() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::CpAsyncCommit();
  ::llmt::emu::CpAsyncWait(0);
#else
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}

// One row of SoftmaxCrossEntropyRowKernel: x is the row, *target its target.
template <typename T, int V>
__device__ __forceinline__ void CrossEntropyStagedRow(Vec<T, V>* s, T* x, const int32_t* target,
                                                      int n, int64_t ld, float grad_scale,
                                                      float* row_loss) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int nfull = n / V;            // vectors of real columns only
  const int nread = (n + V - 1) / V;  // + the one straddling n (within ld)
  const int nld = static_cast<int>(ld / V);
  for (int j = tid; j < nread; j += nt) CpAsync16(s + j, x + static_cast<int64_t>(j) * V);
  const int y = *target;  // overlaps the copies
  const bool valid = y >= 0 && y < n;
  CpAsyncWaitAll();

  MaxSum acc{-INFINITY, 0.f};
  for (int j = tid; j < nfull; j += nt) {
    const Vec<T, V> a = s[j];
    float f[V];
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = ToF(a.v[k]);
    Accumulate<T, V, true>(acc, f);
  }
  if (nfull < nread && tid == nfull % nt) {  // the straddling vector's real columns
    const Vec<T, V> a = s[nfull];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (nfull * V + k < n) {
        const float f[1] = {ToF(a.v[k])};
        Accumulate<T, 1, true>(acc, f);
      }
    }
  }
  const MaxSum ms = BlockCombine(acc);  // a barrier: all copies now visible
  if (tid == 0) {
    const float xy = valid ? ToF(reinterpret_cast<const T*>(s)[y]) : 0.f;
    *row_loss = valid ? logf(ms.s) - (xy - ms.m) : NAN;
  }
  const float kscale = valid ? grad_scale / ms.s : 0.f;
  const float m = ms.m, mL = ms.m * kLog2e;
  const int yv = valid ? y : -1;
  for (int j = tid; j < nld; j += nt) {
    Vec<T, V> o;
    if (j < nread) {
      const Vec<T, V> a = s[j];
      float g[V];
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] = kscale * ExpShifted<T>(ToF(a.v[k]), m, mL);
      const int c0 = j * V;
      if (c0 + V > n || static_cast<unsigned>(yv - c0) < static_cast<unsigned>(V)) {  // rare
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (c0 + k == yv) g[k] -= grad_scale;
          if (c0 + k >= n) g[k] = 0.f;  // padding
        }
      }
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = FromF<T>(g[k]);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = FromF<T>(0.f);  // padding
    }
    StoreVec<V>(x + static_cast<int64_t>(j) * V, o);
  }
}

// One block per row (or rows blockIdx.x, blockIdx.x + gridDim.x, ... when
// the caller caps the grid); needs ld % V == 0 and a 16-byte aligned row
// (UseVec), dynamic shared memory of ceil(n / V) 16-byte vectors.
template <typename T>
__global__ void __launch_bounds__(kRowThreads, 2)
    SoftmaxCrossEntropyRowKernel(T* logits, const int32_t* targets, int n, int64_t ld,
                                 float grad_scale, float* row_losses, int64_t rows) {
  constexpr int V = 16 / sizeof(T);
  LLMT_DYNAMIC_SMEM(smem_raw);
  Vec<T, V>* s = reinterpret_cast<Vec<T, V>*>(smem_raw);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    // The previous row is done with the staged row (thread 0 reads the
    // target's entry, written by another thread) and with BlockCombine's
    // slots before this row's copies overwrite them. Uniform: no divergence.
    if (row != blockIdx.x) __syncthreads();
    CrossEntropyStagedRow(s, logits + row * ld, targets + row, n, ld, grad_scale,
                          row_losses + row);
  }
}

// LLMT_LEGACY_KERNELS (common.cuh) containing "xent": the two-pass
// SoftmaxCrossEntropyKernel above instead of the row kernel. Read once, at
// the first call.
std::atomic<bool>& LegacyXent() {
  static std::atomic<bool> legacy{internal::LegacyKernelRequested("xent")};
  return legacy;
}

// Launches the fast kernel if the row qualifies (aligned 16-byte vectors, a
// staged row of at most kMaxRowBytes, the shared memory granted); false:
// the caller runs the two-pass kernel.
template <typename T>
bool LaunchCERow(T* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                 float grad_scale, float* row_losses, unsigned grid, cudaStream_t stream) {
  constexpr int kV = kVec<T>;
  if (LegacyXent().load(std::memory_order_relaxed) || !UseVec(logits, ld)) return false;
  const int64_t nread = CeilDiv(V, kV);
  const size_t bytes = static_cast<size_t>(nread) * 16;
  if (bytes > static_cast<size_t>(kMaxRowBytes)) return false;
  auto kernel = SoftmaxCrossEntropyRowKernel<T>;
  // Per launch: the attributes belong to the current device's context.
  if (cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes)) != cudaSuccess ||
      cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                           cudaFuncAttributePreferredSharedMemoryCarveout,
                           cudaSharedmemCarveoutMaxShared) != cudaSuccess) {
    (void)cudaGetLastError();  // a device with less shared memory: two-pass kernel
    return false;
  }
  // Small rows: fewer threads (whole warps), every thread at least one vector.
  const int threads = static_cast<int>(
      std::min<int64_t>(kRowThreads, std::max<int64_t>(32, CeilDiv(nread, 32) * 32)));
  internal::Launch(kernel, grid, threads, bytes, stream, logits, targets, V, ld, grad_scale,
                   row_losses, rows);
  LLMT_CUDA_CHECK_LAUNCH("SoftmaxCrossEntropyRowKernel", stream);
  return true;
}

void CheckShape(const char* kernel, int64_t rows, int V, int64_t ld) {
  if (V <= 0 || ld < V || rows > 0x7fffffff) {
    Fatal(std::string(kernel) + ": need 0 < V <= ld and rows < 2^31 (V=" + std::to_string(V) +
          ", ld=" + std::to_string(ld) + ", rows=" + std::to_string(rows) + ")");
  }
}

template <typename T>
void LaunchCE(T* logits, const int32_t* targets, int64_t rows, int V, int64_t ld, float grad_scale,
              float* row_losses, cudaStream_t stream, int max_blocks) {
  if (rows <= 0) return;
  CheckShape("SoftmaxCrossEntropy", rows, V, ld);
  const auto grid =
      static_cast<unsigned>(max_blocks > 0 ? std::min<int64_t>(rows, max_blocks) : rows);
  if (LaunchCERow(logits, targets, rows, V, ld, grad_scale, row_losses, grid, stream)) return;
  if (UseVec(logits, ld)) {
    internal::Launch(SoftmaxCrossEntropyKernel<T, kVec<T>>, grid, kThreads, 0, stream, logits,
                     targets, V, ld, grad_scale, row_losses, rows);
  } else {
    internal::Launch(SoftmaxCrossEntropyKernel<T, 1>, grid, kThreads, 0, stream, logits, targets,
                     V, ld, grad_scale, row_losses, rows);
  }
  LLMT_CUDA_CHECK_LAUNCH("SoftmaxCrossEntropyKernel", stream);
}

template <typename T>
void LaunchSoftmax(T* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  if (rows <= 0) return;
  CheckShape("Softmax", rows, V, ld);
  if (UseVec(x, ld)) {
    internal::Launch(SoftmaxKernel<T, kVec<T>>, static_cast<unsigned>(rows), kThreads, 0, stream, x,
                     V, ld);
  } else {
    internal::Launch(SoftmaxKernel<T, 1>, static_cast<unsigned>(rows), kThreads, 0, stream, x, V,
                     ld);
  }
  LLMT_CUDA_CHECK_LAUNCH("SoftmaxKernel", stream);
}

}  // namespace

bool SetLegacySoftmaxCrossEntropy(bool legacy) { return LegacyXent().exchange(legacy); }

void SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream,
                         int max_blocks) {
  LaunchCE(logits, targets, rows, V, ld, grad_scale, row_losses, stream, max_blocks);
}
void SoftmaxCrossEntropy(bf16* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream,
                         int max_blocks) {
  LaunchCE(logits, targets, rows, V, ld, grad_scale, row_losses, stream, max_blocks);
}
void Softmax(float* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  LaunchSoftmax(x, rows, V, ld, stream);
}
void Softmax(bf16* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  LaunchSoftmax(x, rows, V, ld, stream);
}

}  // namespace llmt::kernels::cuda
