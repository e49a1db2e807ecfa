// Branch-free float math that GCC auto-vectorises (AVX2/FMA with
// -march=native). glibc's vector libm is only used under -ffast-math, which
// the engine avoids because it breaks NaN/Inf checks, so exp is done here.
// Internal to kernels/cpu.
#pragma once

#include <bit>
#include <cstdint>

namespace llmt::kernels::cpu::internal {

// Loops with less work than this (elements touched) run on the calling
// thread: a parallel region costs microseconds to open, far more when the
// machine is oversubscribed, and tiny ops (small models, tests) gain nothing.
constexpr int64_t kMinParallelWork = int64_t{1} << 15;
inline bool Par(int64_t work) { return work >= kMinParallelWork; }

// Clamp bounds of ExpF. They are defined out of line (runtime.cc) on purpose:
// when GCC sees constant bounds it splits the vectorised loop into a
// constant-folded "saturated" path blended with the normal one, and in GELU /
// SiLU that path divides every lane by exp(88) ~ 2e38, producing subnormals
// whose microcode assists made those loops 4x slower. Opaque bounds keep one
// straight-line path. exp(kExpMin = -87) is still a normal float.
extern const float kExpMin;
extern const float kExpMax;

// exp(x) for x in [-87, 88.3] (clamped outside), relative error ~2e-7
// (Cephes expf polynomial after range reduction by ln 2).
inline float ExpF(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  x = x < kExpMin ? kExpMin : x;
  x = x > kExpMax ? kExpMax : x;
  float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

// 1 / (1 + exp(-x))
inline float SigmoidF(float x) { return 1.f / (1.f + ExpF(-x)); }

}  // namespace llmt::kernels::cpu::internal
