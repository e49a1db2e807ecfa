#include "kernels/activation.h"

#include <cstdint>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {
namespace {
using internal::ExpF;
using internal::Par;
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;
}  // namespace

// 0.5 x (1 + tanh(u)) == x * sigmoid(2u): one exp, no tanh.
void GeluForward(float* out, const float* inp, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : Par(n))
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kGeluC * (x + kGeluA * x * x * x);
    out[i] = x / (1.f + ExpF(-2.f * u));
  }
}

// d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = sqrt(2/pi) (1 + 3a x^2).
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : Par(n))
  for (int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kGeluC * (x + kGeluA * x * x * x);
    const float s = 1.f / (1.f + ExpF(-2.f * u));
    const float du = kGeluC * (1.f + 3.f * kGeluA * x * x);
    dinp[i] = dout[i] * (s + 2.f * x * s * (1.f - s) * du);
  }
}

void SwiGLUForward(float* out, const float* gate_up, int64_t rows, int F) {
#pragma omp parallel for schedule(static) if (Par(rows * F))
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * F;
    const float* u = g + F;
    float* o = out + r * F;
#pragma omp simd
    for (int j = 0; j < F; ++j) o[j] = g[j] / (1.f + ExpF(-g[j])) * u[j];
  }
}

// h = silu(g) u; dg = dh u silu'(g), silu'(g) = s (1 + g (1 - s)); du = dh silu(g).
void SwiGLUBackward(float* dgate_up, const float* gate_up, const float* dout, int64_t rows, int F) {
#pragma omp parallel for schedule(static) if (Par(rows * F))
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * F;
    const float* u = g + F;
    const float* dh = dout + r * F;
    float* dg = dgate_up + r * 2 * F;
    float* du = dg + F;
#pragma omp simd
    for (int j = 0; j < F; ++j) {
      const float s = 1.f / (1.f + ExpF(-g[j]));
      dg[j] = dh[j] * u[j] * s * (1.f + g[j] * (1.f - s));
      du[j] = dh[j] * g[j] * s;
    }
  }
}

}  // namespace llmt::kernels::cpu
