// Device-side helpers for kernels/cuda/*.cu (not a public header): fp32 <->
// storage-type conversion, vector loads, warp/block reductions with a fixed
// combination order (so every reduction is bit-reproducible run to run), and
// launch-size helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda::internal {

// ---- conversions: all arithmetic in fp32, storage in T --------------------
__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(bf16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 FromF<bf16>(float x) {
  return __float2bfloat16_rn(x);  // round to nearest even
}

// ---- stochastic rounding ----------------------------------------------------
// Counter-based random bits (SplitMix64 finaliser of seed and index): the same
// (seed, i) always gives the same bits, so stochastically rounded results are
// reproducible and independent of the launch shape.
__device__ __forceinline__ uint32_t HashBits(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

// fp32 -> bf16 rounding up or down in magnitude with probability proportional
// to the distance (unbiased in expectation): add 16 random bits below the
// bf16 mantissa, then truncate. Inf/NaN use round-to-nearest.
__device__ __forceinline__ bf16 StochasticRoundBf16(float x, uint32_t rnd) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
  u += rnd & 0xffffu;
  return __ushort_as_bfloat16(static_cast<unsigned short>(u >> 16));
}

// ---- vector (up to 128-bit) loads and stores ------------------------------
// Vec<T, V> is V consecutive elements, aligned to its size so that a load is
// one LDG.64/LDG.128. Callers only use V > 1 after checking on the host that
// every pointer is aligned to sizeof(T) * V (see Aligned()).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Vec<T, V> LoadVec(const T* p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void StoreVec(T* p, const Vec<T, V>& x) {
  *reinterpret_cast<Vec<T, V>*>(p) = x;
}

// Host: true when every non-null pointer is aligned to `bytes`.
inline bool Aligned(int64_t bytes, const void* a, const void* b = nullptr, const void* c = nullptr,
                    const void* d = nullptr) {
  auto ok = [bytes](const void* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
  };
  return ok(a) && ok(b) && ok(c) && ok(d);
}

// ---- reductions ------------------------------------------------------------
__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double WarpSum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `smem` holds at least 32 values. The order is fixed
// by the block shape, so results are reproducible. Contains __syncthreads():
// call from all threads.
template <typename F>
__device__ __forceinline__ F BlockSum(F x, F* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  x = WarpSum(x);
  __syncthreads();  // smem may still be read by a previous BlockSum
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  x = lane < nwarps ? smem[lane] : F(0);
  return WarpSum(x);
}

__device__ __forceinline__ float BlockMax(float x, float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  x = WarpMax(x);
  __syncthreads();
  if (lane == 0) smem[warp] = x;
  __syncthreads();
  x = lane < nwarps ? smem[lane] : -INFINITY;
  return WarpMax(x);
}

// ---- launches ------------------------------------------------------------------
// Every kernel is launched through Launch(kernel, grid, block, smem_bytes,
// stream, args...) rather than with <<<...>>> directly, and kernels that use
// dynamic shared memory declare it with LLMT_DYNAMIC_SMEM(name). With nvcc
// these are exactly the triple-chevron launch and `extern __shared__`; under
// LLMT_CUDA_EMULATION (tests/unit/cuda/emu: the same kernel code compiled by
// the host compiler and run on CPU threads, so that kernel logic is tested
// where there is no GPU) they map to the emulator.
#ifdef LLMT_CUDA_EMULATION
template <typename... KArgs, typename... Args>
inline void Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t /*stream*/, Args&&... args) {
  ::llmt::emu::Launch(kernel, grid, block, smem, std::forward<Args>(args)...);
}
#define LLMT_DYNAMIC_SMEM(name) unsigned char* name = ::llmt::emu::DynamicSmem()
#else
template <typename... KArgs, typename... Args>
inline void Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  // clang-format off
  kernel<<<grid, block, smem, stream>>>(static_cast<KArgs>(args)...);
  // clang-format on
}
#define LLMT_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

// ---- launch helpers ----------------------------------------------------------
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items with `threads` per block,
// capped (grid-stride loops stay correct for any grid size).
inline unsigned GridFor(int64_t work, int threads, int64_t cap = 65535 * 4) {
  int64_t g = CeilDiv(work, threads);
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

}  // namespace llmt::kernels::cuda::internal
