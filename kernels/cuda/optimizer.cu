#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/optimizer.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::GridFor;
using internal::HashBits;
using internal::LoadVec;
using internal::StochasticRoundBf16;
using internal::StoreVec;
using internal::ToF;
using internal::Vec;

constexpr int kThreads = 256;
constexpr int kPack = 4;  // consecutive elements per thread and iteration

struct AdamWArgs {
  float lr, b1, b2, eps;
  float step_size;  // lr / (1 - b1^step)
  float bc2_sqrt;   // sqrt(1 - b2^step)
  float grad_scale;
  float uniform_wd;  // used when there is no segment table
  bool sr;
  uint64_t seed;
};

// Index of the segment containing element i: the last one with offset <= i
// (empty segments share their offset with the next one and are skipped).
__device__ __forceinline__ int FindSegment(const AdamWSegment* segs, int nsegs, int64_t i) {
  int lo = 0, hi = nsegs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segs[mid].offset <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// One element's update; same order of operations as cpu::AdamW (torch's
// single-tensor path).
__device__ __forceinline__ void AdamWElement(float& p, float g, float& m, float& v, float wd,
                                             const AdamWArgs& a) {
  const float decay = 1.f - a.lr * wd;
  const float gi = g * a.grad_scale;
  m = a.b1 * m + (1.f - a.b1) * gi;
  v = a.b2 * v + (1.f - a.b2) * gi * gi;
  p = p * decay - a.step_size * m / (sqrtf(v) / a.bc2_sqrt + a.eps);
}

// Each thread updates kPack consecutive elements per step of a grid-stride
// loop; with kVector they are moved as one 16-byte (fp32) / 8-byte (bf16)
// vector each, so a warp's accesses are contiguous. The weight decay comes
// from the segment containing the element (one binary search per pack, then
// a forward walk).
template <typename G, bool kVector>
__global__ void AdamWKernel(float* p, const G* g, float* m, float* v, int64_t n,
                            const AdamWSegment* segs, int nsegs, AdamWArgs a, bf16* p_bf16) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kPack;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kPack; i0 < n;
       i0 += stride) {
    int seg = segs != nullptr ? FindSegment(segs, nsegs, i0) : 0;
    float wd[kPack];
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      wd[k] = a.uniform_wd;
      if (segs != nullptr) {
        while (i0 + k >= segs[seg].offset + segs[seg].n && seg + 1 < nsegs) ++seg;
        wd[k] = segs[seg].weight_decay;
      }
    }
    if (kVector && i0 + kPack <= n) {
      Vec<float, kPack> pv = LoadVec<kPack>(p + i0), mv = LoadVec<kPack>(m + i0),
                        vv = LoadVec<kPack>(v + i0);
      const Vec<G, kPack> gv = LoadVec<kPack>(g + i0);
      Vec<bf16, kPack> out;
#pragma unroll
      for (int k = 0; k < kPack; ++k) {
        AdamWElement(pv.v[k], ToF(gv.v[k]), mv.v[k], vv.v[k], wd[k], a);
        out.v[k] = a.sr ? StochasticRoundBf16(pv.v[k], HashBits(a.seed, i0 + k))
                        : __float2bfloat16_rn(pv.v[k]);
      }
      StoreVec<kPack>(p + i0, pv);
      StoreVec<kPack>(m + i0, mv);
      StoreVec<kPack>(v + i0, vv);
      if (p_bf16 != nullptr) StoreVec<kPack>(p_bf16 + i0, out);
    } else {
      for (int64_t i = i0; i < min(n, i0 + kPack); ++i) {
        float pi = p[i], mi = m[i], vi = v[i];
        AdamWElement(pi, ToF(g[i]), mi, vi, wd[i - i0], a);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (p_bf16 != nullptr) {
          p_bf16[i] = a.sr ? StochasticRoundBf16(pi, HashBits(a.seed, static_cast<uint64_t>(i)))
                           : __float2bfloat16_rn(pi);
        }
      }
    }
  }
}

AdamWArgs MakeArgs(float lr, float b1, float b2, float eps, float wd, int64_t step,
                   float grad_scale, bool sr, uint64_t seed) {
  // Bias corrections in double, like the CPU backend.
  const double bc1 = 1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step));
  AdamWArgs a;
  a.lr = lr;
  a.b1 = b1;
  a.b2 = b2;
  a.eps = eps;
  a.step_size = static_cast<float>(lr / bc1);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.grad_scale = grad_scale;
  a.uniform_wd = wd;
  a.sr = sr;
  a.seed = seed;
  return a;
}

template <typename G>
void Launch(float* p, const G* g, float* m, float* v, int64_t n, const AdamWSegment* segs,
            int nsegs, const AdamWArgs& a, bf16* p_bf16, cudaStream_t stream) {
  if (n <= 0) return;
  if (segs != nullptr && nsegs <= 0) Fatal("AdamWMultiTensor: empty segment table");
  const unsigned grid = GridFor(internal::CeilDiv(n, kPack), kThreads);
  // Vector accesses need every pointer aligned to the vector size.
  if (internal::Aligned(16, p, m, v) && internal::Aligned(kPack * sizeof(G), g) &&
      internal::Aligned(kPack * sizeof(bf16), p_bf16)) {
    internal::Launch(AdamWKernel<G, true>, grid, kThreads, 0, stream, p, g, m, v, n, segs, nsegs, a,
                     p_bf16);
  } else {
    internal::Launch(AdamWKernel<G, false>, grid, kThreads, 0, stream, p, g, m, v, n, segs, nsegs,
                     a, p_bf16);
  }
  LLMT_CUDA_CHECK_LAUNCH(segs != nullptr ? "AdamWMultiTensor" : "AdamW", stream);
}

__global__ void F32ToBf16Kernel(bf16* dst, const float* src, int64_t n, bool sr, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = sr ? StochasticRoundBf16(src[i], HashBits(seed, static_cast<uint64_t>(i)))
                : __float2bfloat16_rn(src[i]);
  }
}

__global__ void Bf16ToF32Kernel(float* dst, const bf16* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = __bfloat162float(src[i]);
  }
}

}  // namespace

void AdamW(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale, bf16* p_bf16,
           bool stochastic_rounding, uint64_t seed, cudaStream_t stream) {
  Launch(p, g, m, v, n, nullptr, 0,
         MakeArgs(lr, b1, b2, eps, wd, step, grad_scale, stochastic_rounding, seed), p_bf16,
         stream);
}
void AdamW(float* p, const bf16* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale, bf16* p_bf16,
           bool stochastic_rounding, uint64_t seed, cudaStream_t stream) {
  Launch(p, g, m, v, n, nullptr, 0,
         MakeArgs(lr, b1, b2, eps, wd, step, grad_scale, stochastic_rounding, seed), p_bf16,
         stream);
}
void AdamWMultiTensor(float* p, const float* g, float* m, float* v, int64_t n,
                      const AdamWSegment* segments, int num_segments, float lr, float b1, float b2,
                      float eps, int64_t step, float grad_scale, bf16* p_bf16,
                      bool stochastic_rounding, uint64_t seed, cudaStream_t stream) {
  if (segments == nullptr) Fatal("AdamWMultiTensor: null segment table");
  Launch(p, g, m, v, n, segments, num_segments,
         MakeArgs(lr, b1, b2, eps, 0.f, step, grad_scale, stochastic_rounding, seed), p_bf16,
         stream);
}
void AdamWMultiTensor(float* p, const bf16* g, float* m, float* v, int64_t n,
                      const AdamWSegment* segments, int num_segments, float lr, float b1, float b2,
                      float eps, int64_t step, float grad_scale, bf16* p_bf16,
                      bool stochastic_rounding, uint64_t seed, cudaStream_t stream) {
  if (segments == nullptr) Fatal("AdamWMultiTensor: null segment table");
  Launch(p, g, m, v, n, segments, num_segments,
         MakeArgs(lr, b1, b2, eps, 0.f, step, grad_scale, stochastic_rounding, seed), p_bf16,
         stream);
}

void ConvertF32ToBf16(bf16* dst, const float* src, int64_t n, bool stochastic_rounding,
                      uint64_t seed, cudaStream_t stream) {
  if (n <= 0) return;
  internal::Launch(F32ToBf16Kernel, GridFor(n, kThreads), kThreads, 0, stream, dst, src, n,
                   stochastic_rounding, seed);
  LLMT_CUDA_CHECK_LAUNCH("ConvertF32ToBf16", stream);
}
void ConvertBf16ToF32(float* dst, const bf16* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  internal::Launch(Bf16ToF32Kernel, GridFor(n, kThreads), kThreads, 0, stream, dst, src, n);
  LLMT_CUDA_CHECK_LAUNCH("ConvertBf16ToF32", stream);
}

}  // namespace llmt::kernels::cuda
