#include "kernels/embedding.h"

#include <omp.h>

#include <algorithm>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int T, int C) {
#pragma omp parallel for schedule(static) if (internal::Par(int64_t{B} * T * C))
  for (int64_t r = 0; r < static_cast<int64_t>(B) * T; ++r) {
    const float* e = wte + static_cast<int64_t>(tokens[r]) * C;
    float* o = out + r * C;
    if (wpe != nullptr) {
      const float* p = wpe + (r % T) * C;
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    } else {
      for (int c = 0; c < C; ++c) o[c] = e[c];
    }
  }
}

void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C) {
  // A token may repeat within the batch, so threads own channel slices and
  // scatter every row into their slice: race-free and order-deterministic.
#pragma omp parallel if (internal::Par(int64_t{B} * T * C))
  {
    const int t = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    int chunk = (C + nth - 1) / nth;
    chunk = (chunk + 15) / 16 * 16;
    const int lo = std::min(C, t * chunk), hi = std::min(C, lo + chunk);
    for (int64_t r = 0; r < static_cast<int64_t>(B) * T && hi > lo; ++r) {
      const float* d = dout + r * C;
      float* e = dwte + static_cast<int64_t>(tokens[r]) * C;
      for (int c = lo; c < hi; ++c) e[c] += d[c];
      if (dwpe != nullptr) {
        float* p = dwpe + (r % T) * C;
        for (int c = lo; c < hi; ++c) p[c] += d[c];
      }
    }
  }
}

}  // namespace llmt::kernels::cpu
