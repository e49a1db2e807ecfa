#include "kernels/reduce.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/runtime.h"
#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {

double SumSquares(const float* x, int64_t n) {
  // Per-thread partials over fixed static ranges, summed in thread order, so
  // the result is bit-reproducible for a given thread count (an OpenMP
  // reduction clause combines in arrival order).
  const int nt = internal::Par(n) ? NumThreads() : 1;
  std::vector<double> part(nt, 0.0);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    const int64_t chunk = (n + nth - 1) / nth;
    const int64_t lo = std::min(n, t * chunk), hi = std::min(n, lo + chunk);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(x[i]) * x[i];
    part[t] = acc;
  }
  double s = 0.0;
  for (double p : part) s += p;
  return s;
}

double L2Norm(const float* x, int64_t n) { return std::sqrt(SumSquares(x, n)); }

void Scale(float* x, int64_t n, float s) {
#pragma omp parallel for simd schedule(static) if (parallel : internal::Par(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

bool AllFinite(const float* x, int64_t n) {
  // x - x is 0 for finite x and NaN for NaN/Inf; NaN poisons the sum.
  // Branch-free so the loop vectorises.
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (internal::Par(n))
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const int64_t i1 = std::min(n, i0 + 4096);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = i0; i < i1; ++i) acc += x[i] - x[i];
    bad |= (acc != 0.f) ? 1 : 0;  // NaN != 0 is true
  }
  return bad == 0;
}

void Zero(float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (internal::Par(n))
  for (int64_t i0 = 0; i0 < n; i0 += 65536) {
    std::memset(x + i0, 0, sizeof(float) * std::min<int64_t>(65536, n - i0));
  }
}

}  // namespace llmt::kernels::cpu
