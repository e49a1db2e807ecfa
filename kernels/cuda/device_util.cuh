// Device-side helpers for kernels/cuda/*.cu (not a public header): fp32 <->
// storage-type conversion, vector loads, warp/block reductions with a fixed
// combination order (so every reduction is bit-reproducible run to run), and
// launch-size helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
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

// 2^x with the MUFU ex2 unit alone (ex2.approx.ftz). exp2f() without
// --use_fast_math is the same MUFU op wrapped in a denormal fix-up (a compare
// and two predicated multiplies): identical results for outputs >= 2^-126,
// so this only flushes those tiny ones to 0 -- irrelevant next to softmax
// sums >= 1 -- for three fewer ALU ops per element where exps bound the
// kernel (softmax, flash attention at head dim 64). exp2(-inf) = 0 as before.
__device__ __forceinline__ float Exp2Approx(float x) {
#ifdef LLMT_CUDA_EMULATION
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
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

// ---- deterministic column sums -----------------------------------------------
// Column reductions (bias and norm-parameter gradients) run on blocks seen as
// TY warps x 32 lanes (tid = 32 y + x). Lane x of warp y owns the V
// consecutive columns c0 + xV .. c0 + xV + V - 1 of a 32V-column tile (one
// 16-byte load per row when V > 1) and sums rows r0 + y, r0 + y + TY, ... of
// its chunk in row order into acc[V]; CombineColumnPartials then adds the TY
// warps' sums in y order. Every column's summation order depends only on the
// row range and TY, not on V, so vector and scalar paths (chosen by pointer
// alignment) give identical bits, and nothing depends on the device.

// Adds the TY per-warp partial sums of each of the tile's 32V columns in warp
// order through `part` (TY * 32 * V floats of shared memory). Thread
// tid < 32V gets the total of tile column tid, the others 0. Needs V <= TY
// (blockDim.x == 32 TY). Contains __syncthreads(): call from all threads.
template <int V, int TY>
__device__ __forceinline__ float CombineColumnPartials(const float (&acc)[V], float* part) {
  static_assert(V <= TY, "one thread per tile column for the final add");
  const int x = threadIdx.x & 31, y = threadIdx.x >> 5;
  __syncthreads();  // `part` may still be read by a previous combine
#pragma unroll
  for (int k = 0; k < V; ++k) part[y * 32 * V + x * V + k] = acc[k];
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x < 32 * V) {
#pragma unroll 8
    for (int j = 0; j < TY; ++j) s += part[j * 32 * V + threadIdx.x];
  }
  return s;
}

// Column sums of row-major matrices with N columns and row stride ld, split
// into row chunks of `chunk_rows`: block (bx, by, bz) sums rows
// [by chunk_rows, (by + 1) chunk_rows) of columns [bx 32V, (bx + 1) 32V) of
// plane bz (in + bz * plane), and
//   kFinal:  out_z[c] = out_z[c] + alpha * sum   (out_0 = out, out_1 = out2)
//   else:    out[(bz * gridDim.y + by) * N + c] = sum   (fp32 partials per
//            plane and chunk)
// V > 1 needs N % V == 0, ld % V == 0 and `in` (and `plane` * sizeof(T))
// 16-byte aligned.
template <typename G, typename T, int V, int TY, bool kFinal>
__global__ void __launch_bounds__(32 * TY)
    ColumnSumKernel(G* out, G* out2, const T* in, int64_t plane, int64_t rows, int64_t N,
                    int64_t ld, int64_t chunk_rows, float alpha) {
  __shared__ float part[TY * 32 * V];
  const int x = threadIdx.x & 31, y = threadIdx.x >> 5;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32 * V;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = min(rows, r0 + chunk_rows);
  const T* src = in + static_cast<int64_t>(blockIdx.z) * plane;
  const int64_t c = c0 + x * V;
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0.f;
  if (c < N) {  // V > 1: N % V == 0, so the whole vector is inside
#pragma unroll 4
    for (int64_t r = r0 + y; r < r1; r += TY) {
      const Vec<T, V> v = LoadVec<V>(src + r * ld + c);
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += ToF(v.v[k]);
    }
  }
  const float s = CombineColumnPartials<V, TY>(acc, part);
  const int64_t col = c0 + threadIdx.x;
  if (threadIdx.x < 32 * V && col < N) {
    if constexpr (kFinal) {
      G* o = blockIdx.z == 0 ? out : out2;
      o[col] = FromF<G>(ToF(o[col]) + alpha * s);
    } else {
      const int64_t slot = static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y;
      out[slot * N + col] = s;
    }
  }
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
