#include "kernels/norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {
namespace {

// Weight/bias gradients are sums over rows. Threads own column slices (and
// walk all rows in order), which needs no per-thread partial buffers and is
// deterministic. `f(r, lo, hi)` accumulates rows r's columns [lo, hi).
template <typename F>
void ForColumnSlices(int64_t rows, int C, F f) {
#pragma omp parallel if (internal::Par(rows * C))
  {
    const int t = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    int chunk = (C + nth - 1) / nth;
    chunk = (chunk + 15) / 16 * 16;
    const int lo = std::min(C, t * chunk), hi = std::min(C, lo + chunk);
    if (hi > lo) {
      for (int64_t r = 0; r < rows; ++r) f(r, lo, hi);
    }
  }
}

}  // namespace

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t rows, int C, float eps) {
#pragma omp parallel for schedule(static) if (internal::Par(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * C;
    float* o = out + r * C;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; ++c) s += x[c];
    const float m = s / C;
    float v = 0.f;  // two-pass variance: no cancellation for large means
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; ++c) {
      const float d = x[c] - m;
      v += d * d;
    }
    const float rs = 1.f / std::sqrt(v / C + eps);
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * rs * weight[c] + bias[c];
    mean[r] = m;
    rstd[r] = rs;
  }
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t rows, int C) {
  // dx = rstd * (dn - mean(dn) - n * mean(dn * n)), n = normalised x, dn = dout * w.
#pragma omp parallel for schedule(static) if (internal::Par(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * C;
    const float* dy = dout + r * C;
    float* dx = dinp + r * C;
    const float m = mean[r], rs = rstd[r];
    float sum_dn = 0.f, sum_dn_n = 0.f;
#pragma omp simd reduction(+ : sum_dn, sum_dn_n)
    for (int c = 0; c < C; ++c) {
      const float n = (x[c] - m) * rs;
      const float dn = dy[c] * weight[c];
      sum_dn += dn;
      sum_dn_n += dn * n;
    }
    const float a = sum_dn / C, b = sum_dn_n / C;
    for (int c = 0; c < C; ++c) {
      const float n = (x[c] - m) * rs;
      dx[c] += (dy[c] * weight[c] - a - n * b) * rs;
    }
  }
  ForColumnSlices(rows, C, [&](int64_t r, int lo, int hi) {
    const float* x = inp + r * C;
    const float* dy = dout + r * C;
    const float m = mean[r], rs = rstd[r];
    for (int c = lo; c < hi; ++c) dweight[c] += dy[c] * (x[c] - m) * rs;
    if (dbias != nullptr) {
      for (int c = lo; c < hi; ++c) dbias[c] += dy[c];
    }
  });
}

void RMSNormForward(float* out, float* rstd, const float* inp, const float* weight, int64_t rows,
                    int C, float eps) {
#pragma omp parallel for schedule(static) if (internal::Par(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * C;
    float* o = out + r * C;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += x[c] * x[c];
    const float rs = 1.f / std::sqrt(ss / C + eps);
    for (int c = 0; c < C; ++c) o[c] = x[c] * rs * weight[c];
    rstd[r] = rs;
  }
}

void RMSNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int64_t rows, int C) {
  // n = x * rstd; dx = rstd * (dn - n * mean(dn * n)), dn = dout * w.
#pragma omp parallel for schedule(static) if (internal::Par(rows * C))
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * C;
    const float* dy = dout + r * C;
    float* dx = dinp + r * C;
    const float rs = rstd[r];
    float sum_dn_n = 0.f;
#pragma omp simd reduction(+ : sum_dn_n)
    for (int c = 0; c < C; ++c) sum_dn_n += dy[c] * weight[c] * x[c] * rs;
    const float b = sum_dn_n / C;
    for (int c = 0; c < C; ++c) dx[c] += (dy[c] * weight[c] - x[c] * rs * b) * rs;
  }
  ForColumnSlices(rows, C, [&](int64_t r, int lo, int hi) {
    const float* x = inp + r * C;
    const float* dy = dout + r * C;
    const float rs = rstd[r];
    for (int c = lo; c < hi; ++c) dweight[c] += dy[c] * x[c] * rs;
  });
}

}  // namespace llmt::kernels::cpu
