#include <type_traits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/loss.cuh"

namespace llmt::kernels::cuda {
namespace {

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

// Folds W values into the running pair: one rescale per group (when the
// group raises the max) instead of one per element.
template <typename T, int W>
__device__ __forceinline__ void Accumulate(MaxSum& acc, const float (&f)[W]) {
  float mx = f[0];
#pragma unroll
  for (int k = 1; k < W; ++k) mx = fmaxf(mx, f[k]);
  if (mx > acc.m) {
    acc.s *= Exp<T>(acc.m - mx);  // exp(-inf) = 0 for the first group
    acc.m = mx;
  }
#pragma unroll
  for (int k = 0; k < W; ++k) acc.s += Exp<T>(f[k] - acc.m);
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

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    SoftmaxCrossEntropyKernel(T* logits, const int32_t* targets, int n, int64_t ld,
                              float grad_scale, float* row_losses) {
  const int64_t row = blockIdx.x;
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

void CheckShape(const char* kernel, int64_t rows, int V, int64_t ld) {
  if (V <= 0 || ld < V || rows > 0x7fffffff) {
    Fatal(std::string(kernel) + ": need 0 < V <= ld and rows < 2^31 (V=" + std::to_string(V) +
          ", ld=" + std::to_string(ld) + ", rows=" + std::to_string(rows) + ")");
  }
}

template <typename T>
void LaunchCE(T* logits, const int32_t* targets, int64_t rows, int V, int64_t ld, float grad_scale,
              float* row_losses, cudaStream_t stream) {
  if (rows <= 0) return;
  CheckShape("SoftmaxCrossEntropy", rows, V, ld);
  if (UseVec(logits, ld)) {
    internal::Launch(SoftmaxCrossEntropyKernel<T, kVec<T>>, static_cast<unsigned>(rows), kThreads,
                     0, stream, logits, targets, V, ld, grad_scale, row_losses);
  } else {
    internal::Launch(SoftmaxCrossEntropyKernel<T, 1>, static_cast<unsigned>(rows), kThreads, 0,
                     stream, logits, targets, V, ld, grad_scale, row_losses);
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

void SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream) {
  LaunchCE(logits, targets, rows, V, ld, grad_scale, row_losses, stream);
}
void SoftmaxCrossEntropy(bf16* logits, const int32_t* targets, int64_t rows, int V, int64_t ld,
                         float grad_scale, float* row_losses, cudaStream_t stream) {
  LaunchCE(logits, targets, rows, V, ld, grad_scale, row_losses, stream);
}
void Softmax(float* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  LaunchSoftmax(x, rows, V, ld, stream);
}
void Softmax(bf16* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  LaunchSoftmax(x, rows, V, ld, stream);
}

}  // namespace llmt::kernels::cuda
