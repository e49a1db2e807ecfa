#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/device_util.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::Aligned;
using internal::FromF;
using internal::GridFor;
using internal::LoadVec;
using internal::StoreVec;
using internal::ToF;
using internal::Vec;

constexpr int kThreads = 256;
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

// 0.5 x (1 + tanh(u)) == x * sigmoid(2u). expf (not __expf) keeps the result
// within a few ulp of the CPU backend; for x -> -inf, expf overflows to inf
// and the quotient is -0, the correct limit.
__device__ __forceinline__ float Gelu(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  return x / (1.f + expf(-2.f * u));
}
// d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = sqrt(2/pi) (1 + 3a x^2).
__device__ __forceinline__ float GeluGrad(float x) {
  const float u = kGeluC * (x + kGeluA * x * x * x);
  const float s = 1.f / (1.f + expf(-2.f * u));
  const float du = kGeluC * (1.f + 3.f * kGeluA * x * x);
  return s + 2.f * x * s * (1.f - s) * du;
}
__device__ __forceinline__ float Sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Elementwise kernels walk "packs" of V elements with a grid-stride loop
// (vector loads when the host found every pointer aligned), then finish the
// n % V tail element by element.
template <typename T, int V>
__global__ void GeluForwardKernel(T* out, const T* inp, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / V;
  for (int64_t p = tid; p < npack; p += stride) {
    const Vec<T, V> x = LoadVec<V>(inp + p * V);
    Vec<T, V> y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = FromF<T>(Gelu(ToF(x.v[j])));
    StoreVec<V>(out + p * V, y);
  }
  for (int64_t i = npack * V + tid; i < n; i += stride) out[i] = FromF<T>(Gelu(ToF(inp[i])));
}

template <typename T, int V>
__global__ void GeluBackwardKernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / V;
  for (int64_t p = tid; p < npack; p += stride) {
    const Vec<T, V> x = LoadVec<V>(inp + p * V);
    const Vec<T, V> d = LoadVec<V>(dout + p * V);
    Vec<T, V> y;
#pragma unroll
    for (int j = 0; j < V; ++j) y.v[j] = FromF<T>(ToF(d.v[j]) * GeluGrad(ToF(x.v[j])));
    StoreVec<V>(dinp + p * V, y);
  }
  for (int64_t i = npack * V + tid; i < n; i += stride) {
    dinp[i] = FromF<T>(ToF(dout[i]) * GeluGrad(ToF(inp[i])));
  }
}

// Packs never straddle rows: the host only picks V > 1 when V divides F.
template <typename T, int V>
__global__ void SwiGLUForwardKernel(T* out, const T* gate_up, int64_t rows, int F) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t npack = rows * F / V;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < npack;
       p += stride) {
    const int64_t i = p * V;
    const int64_t r = i / F;
    const int64_t j = i - r * F;
    const T* g_ptr = gate_up + r * 2 * F + j;
    const Vec<T, V> g = LoadVec<V>(g_ptr);
    const Vec<T, V> u = LoadVec<V>(g_ptr + F);
    Vec<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float gf = ToF(g.v[k]);
      y.v[k] = FromF<T>(gf * Sigmoid(gf) * ToF(u.v[k]));
    }
    StoreVec<V>(out + i, y);
  }
}

// h = silu(g) u;  dg = dh u silu'(g) with silu'(g) = s (1 + g (1 - s));  du = dh silu(g).
template <typename T, int V>
__global__ void SwiGLUBackwardKernel(T* dgate_up, const T* gate_up, const T* dout, int64_t rows,
                                     int F) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t npack = rows * F / V;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < npack;
       p += stride) {
    const int64_t i = p * V;
    const int64_t r = i / F;
    const int64_t j = i - r * F;
    const int64_t gi = r * 2 * F + j;
    const Vec<T, V> g = LoadVec<V>(gate_up + gi);
    const Vec<T, V> u = LoadVec<V>(gate_up + gi + F);
    const Vec<T, V> dh = LoadVec<V>(dout + i);
    Vec<T, V> dg, du;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float gf = ToF(g.v[k]), uf = ToF(u.v[k]), d = ToF(dh.v[k]);
      const float s = Sigmoid(gf);
      dg.v[k] = FromF<T>(d * uf * s * (1.f + gf * (1.f - s)));
      du.v[k] = FromF<T>(d * gf * s);
    }
    StoreVec<V>(dgate_up + gi, dg);
    StoreVec<V>(dgate_up + gi + F, du);
  }
}

template <typename T>
void LaunchGeluForward(T* out, const T* inp, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int V = 16 / sizeof(T);
  if (Aligned(16, out, inp)) {
    internal::Launch(GeluForwardKernel<T, V>, GridFor(n / V + 1, kThreads), kThreads, 0, stream,
                     out, inp, n);
  } else {
    internal::Launch(GeluForwardKernel<T, 1>, GridFor(n, kThreads), kThreads, 0, stream, out, inp,
                     n);
  }
  LLMT_CUDA_CHECK_LAUNCH("GeluForwardKernel", stream);
}

template <typename T>
void LaunchGeluBackward(T* dinp, const T* inp, const T* dout, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int V = 16 / sizeof(T);
  if (Aligned(16, dinp, inp, dout)) {
    internal::Launch(GeluBackwardKernel<T, V>, GridFor(n / V + 1, kThreads), kThreads, 0, stream,
                     dinp, inp, dout, n);
  } else {
    internal::Launch(GeluBackwardKernel<T, 1>, GridFor(n, kThreads), kThreads, 0, stream, dinp, inp,
                     dout, n);
  }
  LLMT_CUDA_CHECK_LAUNCH("GeluBackwardKernel", stream);
}

template <typename T>
void LaunchSwiGLUForward(T* out, const T* gate_up, int64_t rows, int F, cudaStream_t stream) {
  if (rows <= 0 || F <= 0) return;
  constexpr int V = 16 / sizeof(T);
  if (F % V == 0 && Aligned(16, out, gate_up)) {
    internal::Launch(SwiGLUForwardKernel<T, V>, GridFor(rows * F / V, kThreads), kThreads, 0,
                     stream, out, gate_up, rows, F);
  } else {
    internal::Launch(SwiGLUForwardKernel<T, 1>, GridFor(rows * F, kThreads), kThreads, 0, stream,
                     out, gate_up, rows, F);
  }
  LLMT_CUDA_CHECK_LAUNCH("SwiGLUForwardKernel", stream);
}

template <typename T>
void LaunchSwiGLUBackward(T* dgate_up, const T* gate_up, const T* dout, int64_t rows, int F,
                          cudaStream_t stream) {
  if (rows <= 0 || F <= 0) return;
  constexpr int V = 16 / sizeof(T);
  if (F % V == 0 && Aligned(16, dgate_up, gate_up, dout)) {
    internal::Launch(SwiGLUBackwardKernel<T, V>, GridFor(rows * F / V, kThreads), kThreads, 0,
                     stream, dgate_up, gate_up, dout, rows, F);
  } else {
    internal::Launch(SwiGLUBackwardKernel<T, 1>, GridFor(rows * F, kThreads), kThreads, 0, stream,
                     dgate_up, gate_up, dout, rows, F);
  }
  LLMT_CUDA_CHECK_LAUNCH("SwiGLUBackwardKernel", stream);
}

}  // namespace

void GeluForward(float* out, const float* inp, int64_t n, cudaStream_t stream) {
  LaunchGeluForward(out, inp, n, stream);
}
void GeluForward(bf16* out, const bf16* inp, int64_t n, cudaStream_t stream) {
  LaunchGeluForward(out, inp, n, stream);
}
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n,
                  cudaStream_t stream) {
  LaunchGeluBackward(dinp, inp, dout, n, stream);
}
void GeluBackward(bf16* dinp, const bf16* inp, const bf16* dout, int64_t n, cudaStream_t stream) {
  LaunchGeluBackward(dinp, inp, dout, n, stream);
}
void SwiGLUForward(float* out, const float* gate_up, int64_t rows, int F, cudaStream_t stream) {
  LaunchSwiGLUForward(out, gate_up, rows, F, stream);
}
void SwiGLUForward(bf16* out, const bf16* gate_up, int64_t rows, int F, cudaStream_t stream) {
  LaunchSwiGLUForward(out, gate_up, rows, F, stream);
}
void SwiGLUBackward(float* dgate_up, const float* gate_up, const float* dout, int64_t rows, int F,
                    cudaStream_t stream) {
  LaunchSwiGLUBackward(dgate_up, gate_up, dout, rows, F, stream);
}
void SwiGLUBackward(bf16* dgate_up, const bf16* gate_up, const bf16* dout, int64_t rows, int F,
                    cudaStream_t stream) {
  LaunchSwiGLUBackward(dgate_up, gate_up, dout, rows, F, stream);
}

}  // namespace llmt::kernels::cuda
