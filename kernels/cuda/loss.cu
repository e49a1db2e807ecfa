#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/loss.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::FromF;
using internal::ToF;

constexpr int kThreads = 512;

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

// Per-thread online softmax over columns tid, tid + blockDim, ...
template <typename T>
__device__ __forceinline__ MaxSum RowMaxSum(const T* x, int V) {
  MaxSum acc{-INFINITY, 0.f};
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float v = ToF(x[j]);
    if (v > acc.m) {
      acc.s = acc.s * expf(acc.m - v) + 1.f;  // exp(-inf) = 0 for the first element
      acc.m = v;
    } else {
      acc.s += expf(v - acc.m);
    }
  }
  return acc;
}

template <typename T>
__global__ void SoftmaxCrossEntropyKernel(T* logits, const int32_t* targets, int V, int64_t ld,
                                          float grad_scale, float* row_losses) {
  const int64_t row = blockIdx.x;
  T* x = logits + row * ld;
  const int y = targets[row];
  const bool valid = y >= 0 && y < V;
  // Read the target logit before any thread overwrites the row (the
  // block-wide combine below is a barrier).
  const float xy = valid ? ToF(x[y]) : 0.f;
  const MaxSum ms = BlockCombine(RowMaxSum(x, V));
  if (threadIdx.x == 0) row_losses[row] = valid ? logf(ms.s) - (xy - ms.m) : NAN;
  const float k = valid ? grad_scale / ms.s : 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float g = k * expf(ToF(x[j]) - ms.m);
    if (j == y) g -= grad_scale;
    x[j] = FromF<T>(g);
  }
  for (int64_t j = V + threadIdx.x; j < ld; j += blockDim.x) x[j] = FromF<T>(0.f);
}

template <typename T>
__global__ void SoftmaxKernel(T* logits, int V, int64_t ld) {
  T* x = logits + static_cast<int64_t>(blockIdx.x) * ld;
  const MaxSum ms = BlockCombine(RowMaxSum(x, V));
  const float inv = 1.f / ms.s;
  for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = FromF<T>(expf(ToF(x[j]) - ms.m) * inv);
  for (int64_t j = V + threadIdx.x; j < ld; j += blockDim.x) x[j] = FromF<T>(0.f);
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
  internal::Launch(SoftmaxCrossEntropyKernel<T>, static_cast<unsigned>(rows), kThreads, 0, stream,
                   logits, targets, V, ld, grad_scale, row_losses);
  LLMT_CUDA_CHECK_LAUNCH("SoftmaxCrossEntropyKernel", stream);
}

template <typename T>
void LaunchSoftmax(T* x, int64_t rows, int V, int64_t ld, cudaStream_t stream) {
  if (rows <= 0) return;
  CheckShape("Softmax", rows, V, ld);
  internal::Launch(SoftmaxKernel<T>, static_cast<unsigned>(rows), kThreads, 0, stream, x, V, ld);
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
