// Helpers for the CUDA kernel tests: GPU presence check, typed device
// buffers, host bf16 rounding and tolerance comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.cuh"

// Skips the test (reported as SKIPPED) when no CUDA device is usable, and
// otherwise selects device 0.
#define LLMT_REQUIRE_GPU()                                             \
  do {                                                                 \
    if (!::llmt::kernels::cuda::HaveGpu()) {                           \
      GTEST_SKIP() << "no CUDA GPU (cudaGetDeviceCount reports none)"; \
    }                                                                  \
    ASSERT_TRUE(::llmt::kernels::cuda::SetDevice(0).ok());             \
  } while (0)

namespace llmt::kernels::cuda::testing {

using FVec = std::vector<float>;

inline FVec Randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  FVec v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

inline FVec Uniform(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> ud(lo, hi);
  FVec v(n);
  for (auto& x : v) x = ud(rng);
  return v;
}

inline std::vector<int32_t> RandTokens(size_t n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> ud(0, V - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = ud(rng);
  return v;
}

// Host float -> bf16 bits with round-to-nearest-even (what __float2bfloat16
// does on the device), and back.
inline uint16_t F32ToBf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float Bf16BitsToF32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Rounds every element to the nearest bf16 value (so CPU and GPU see the same
// inputs in bf16 tests).
inline FVec RoundBf16(FVec v) {
  for (auto& x : v) x = Bf16BitsToF32(F32ToBf16Bits(x));
  return v;
}

// A device buffer holding a host vector's values as T (float or bf16).
template <typename T>
class Dev {
 public:
  explicit Dev(size_t n, const std::string& name = "test") {
    auto b = DeviceBuffer::Allocate(name, static_cast<int64_t>(n * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) buf_ = std::move(*b);
    n_ = n;
  }
  explicit Dev(const FVec& host, const std::string& name = "test") : Dev(host.size(), name) {
    Upload(host);
  }
  T* get() const { return buf_.as<T>(); }
  operator T*() const { return get(); }  // NOLINT: test convenience
  size_t size() const { return n_; }

  void Upload(const FVec& host) {
    EXPECT_EQ(host.size(), n_);
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_TRUE(buf_.CopyFromHost(host.data(), n_ * sizeof(float)).ok());
    } else {
      std::vector<uint16_t> bits(n_);
      for (size_t i = 0; i < n_; ++i) bits[i] = F32ToBf16Bits(host[i]);
      EXPECT_TRUE(buf_.CopyFromHost(bits.data(), n_ * sizeof(uint16_t)).ok());
    }
  }
  FVec Download() const {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    FVec out(n_);
    if constexpr (std::is_same_v<T, float>) {
      EXPECT_TRUE(buf_.CopyToHost(out.data(), n_ * sizeof(float)).ok());
    } else {
      std::vector<uint16_t> bits(n_);
      EXPECT_TRUE(buf_.CopyToHost(bits.data(), n_ * sizeof(uint16_t)).ok());
      for (size_t i = 0; i < n_; ++i) out[i] = Bf16BitsToF32(bits[i]);
    }
    return out;
  }

 private:
  DeviceBuffer buf_;
  size_t n_ = 0;
};

// Per-dtype tolerances: element i passes when
//   |got - want| <= atol + rtol * |want|.
// fp32 kernels differ from the CPU only by summation order (~1e-6 relative);
// bf16 results carry one bf16 rounding (2^-8 relative) of outputs plus bf16
// intermediates.
// rel_l2 additionally bounds ||got - want|| / ||want|| over the whole tensor,
// so that an error confined to a small-valued part of a tensor with a wide
// range (which the max-scaled atol would tolerate) still fails.
struct Tol {
  double rtol, atol;
  double rel_l2 = INFINITY;
};
template <typename T>
constexpr Tol DefaultTol() {
  if constexpr (std::is_same_v<T, float>) {
    return {1e-5, 1e-6};
  } else {
    return {1e-2, 1e-2};
  }
}

// Checks every element and reports the worst one; also returns the relative
// L2 error ||got - want|| / ||want|| for additional bounds.
inline double ExpectClose(const FVec& got, const FVec& want, Tol tol, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  if (got.size() != want.size()) return 1e30;
  size_t bad = 0, worst = 0;
  double worst_excess = -1, num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(double(got[i]) - double(want[i]));
    const double lim = tol.atol + tol.rtol * std::fabs(double(want[i]));
    num += d * d;
    den += double(want[i]) * double(want[i]);
    if (!(d <= lim)) {  // also catches NaN
      ++bad;
      if (!(d - lim <= worst_excess)) {
        worst_excess = std::isnan(d) ? 1e30 : d - lim;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size()
                     << " elements out of tolerance (rtol " << tol.rtol << ", atol " << tol.atol
                     << "); worst at " << worst << ": got " << got[worst] << ", want "
                     << want[worst];
  const double rel = std::sqrt(num / std::max(den, 1e-300));
  EXPECT_LE(rel, tol.rel_l2) << what << ": relative L2 error";
  return rel;
}

inline double MaxAbs(const FVec& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

// ||got - want||_2 / ||want||_2.
inline double RelL2(const FVec& got, const FVec& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The per-dtype tolerance used by the kernel tests: element i passes when
//   |got - want| <= rtol * (|want| + max_j |want_j|)
// with rtol = 1e-5 for fp32 (summation order and libm differences) and 1e-2
// for bf16 (outputs and some intermediates carry bf16 rounding, 2^-9). The
// max term makes the bound scale-aware for elements that cancel to ~0.
template <typename T>
Tol TolFor(const FVec& want, double rtol_f32 = 1e-5, double rtol_bf16 = 1e-2) {
  const double r = std::is_same_v<T, float> ? rtol_f32 : rtol_bf16;
  return {r, r * MaxAbs(want), r};
}

// Rounds to bf16 when T is bf16 (so the CPU reference sees the GPU's inputs).
template <typename T>
FVec Prep(FVec v) {
  if constexpr (!std::is_same_v<T, float>) v = RoundBf16(std::move(v));
  return v;
}

template <typename T>
constexpr const char* TypeName() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

}  // namespace llmt::kernels::cuda::testing
