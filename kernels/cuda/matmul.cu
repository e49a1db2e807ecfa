// Device kernels of the GEMM layer: bias/residual seeding (the fallback for
// fused epilogues) and the deterministic bias-gradient column sum.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/matmul.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::FromF;
using internal::GridFor;
using internal::ToF;

template <typename T>
__global__ void BiasResidualFillKernel(T* D, int64_t ldd, const T* C, int64_t ldc, float beta,
                                       const T* bias, int64_t M, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += stride) {
    const int64_t m = i / N, n = i - m * N;
    float v = bias != nullptr ? ToF(bias[n]) : 0.f;
    if (C != nullptr) v += beta * ToF(C[m * ldc + n]);
    D[m * ldd + n] = FromF<T>(v);
  }
}

// One block per 32 output columns; thread (x, y) sums rows y, y + 32, ... of
// column x, then row 0 of the block adds the 32 partials in order. The order
// of every addition is fixed by (M, N), so the result is reproducible.
constexpr int kBiasTile = 32;
template <typename G, typename T>
__global__ void BiasBackwardKernel(G* dbias, const T* dout, int64_t M, int64_t N, float alpha) {
  __shared__ float part[kBiasTile][kBiasTile + 1];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kBiasTile + threadIdx.x;
  float acc = 0.f;
  if (n < N) {
    for (int64_t m = threadIdx.y; m < M; m += kBiasTile) acc += ToF(dout[m * N + n]);
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && n < N) {
    float s = 0.f;
    for (int k = 0; k < kBiasTile; ++k) s += part[k][threadIdx.x];
    dbias[n] = FromF<G>(ToF(dbias[n]) + alpha * s);
  }
}

template <typename G, typename T>
void LaunchBiasBackward(G* dbias, const T* dout, int64_t M, int64_t N, float alpha,
                        cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const dim3 block(kBiasTile, kBiasTile);
  const unsigned grid = static_cast<unsigned>(internal::CeilDiv(N, kBiasTile));
  internal::Launch(BiasBackwardKernel<G, T>, grid, block, 0, stream, dbias, dout, M, N, alpha);
  LLMT_CUDA_CHECK_LAUNCH("BiasBackwardKernel", stream);
}

}  // namespace

void BiasResidualFill(void* D, DType t, int64_t ldd, const void* C, int64_t ldc, float beta,
                      const void* bias, int64_t M, int64_t N, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  constexpr int kThreads = 256;
  if (t == DType::kF32) {
    internal::Launch(BiasResidualFillKernel<float>, GridFor(M * N, kThreads), kThreads, 0, stream,
                     static_cast<float*>(D), ldd, static_cast<const float*>(C), ldc, beta,
                     static_cast<const float*>(bias), M, N);
  } else {
    internal::Launch(BiasResidualFillKernel<bf16>, GridFor(M * N, kThreads), kThreads, 0, stream,
                     static_cast<bf16*>(D), ldd, static_cast<const bf16*>(C), ldc, beta,
                     static_cast<const bf16*>(bias), M, N);
  }
  LLMT_CUDA_CHECK_LAUNCH("BiasResidualFillKernel", stream);
}

void BiasBackward(float* dbias, const float* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, dout, M, N, alpha, stream);
}
void BiasBackward(bf16* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, dout, M, N, alpha, stream);
}
void BiasBackward(float* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, dout, M, N, alpha, stream);
}

}  // namespace llmt::kernels::cuda
