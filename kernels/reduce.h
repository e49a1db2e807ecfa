// Reductions and whole-buffer maintenance ops. (Backend convention: see matmul.h.)
#pragma once

#include <cstdint>

namespace llmt::kernels::cpu {

// sum(x^2) accumulated in double (deterministic for a fixed thread count).
double SumSquares(const float* x, int64_t n);
// Global L2 norm sqrt(sum(x^2)), double accumulation.
double L2Norm(const float* x, int64_t n);
// x *= s in place.
void Scale(float* x, int64_t n, float s);
// True when no element is NaN or +-Inf.
bool AllFinite(const float* x, int64_t n);
// x = 0.
void Zero(float* x, int64_t n);

}  // namespace llmt::kernels::cpu
