#include "kernels/optimizer.h"

#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {

void AdamW(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2,
           float eps, float wd, int64_t step, float grad_scale) {
  // Same order of operations as torch.optim.AdamW's single-tensor path.
  const double bc1 = 1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step));
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = 1.f - lr * wd;
  const float one_m_b1 = 1.f - b1, one_m_b2 = 1.f - b2;
#pragma omp parallel for simd schedule(static) if (parallel : internal::Par(n))
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * grad_scale;
    const float mi = b1 * m[i] + one_m_b1 * gi;
    const float vi = b2 * v[i] + one_m_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
  }
}

}  // namespace llmt::kernels::cpu
