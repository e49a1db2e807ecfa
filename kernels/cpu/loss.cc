#include "kernels/loss.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {
namespace {
using internal::ExpF;
using internal::Par;

// Writes exp(x - max) into the row and returns (max, sum).
inline void ExpRow(float* x, int V, float* mx_out, float* sum_out) {
  float mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < V; ++j) mx = std::max(mx, x[j]);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < V; ++j) {
    const float e = ExpF(x[j] - mx);
    x[j] = e;
    sum += e;
  }
  *mx_out = mx;
  *sum_out = sum;
}
}  // namespace

float SoftmaxCrossEntropy(float* logits, const int32_t* targets, int64_t rows, int V,
                          float grad_scale, float* row_losses) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (Par(rows * V))
  for (int64_t r = 0; r < rows; ++r) {
    float* x = logits + r * V;
    const int y = targets[r];
    const float xy = x[y];
    float mx, sum;
    ExpRow(x, V, &mx, &sum);
    // CE = log(sum exp(x - max)) - (x_y - max), computed before x is overwritten.
    const float loss = std::log(sum) - (xy - mx);
    if (row_losses != nullptr) row_losses[r] = loss;
    total += loss;
    const float k = grad_scale / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) x[j] *= k;
    x[y] -= grad_scale;
  }
  return static_cast<float>(total / static_cast<double>(rows));
}

void Softmax(float* x, int64_t rows, int V) {
#pragma omp parallel for schedule(static) if (Par(rows * V))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * V;
    float mx, sum;
    ExpRow(row, V, &mx, &sum);
    const float inv = 1.f / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) row[j] *= inv;
  }
}

}  // namespace llmt::kernels::cpu
