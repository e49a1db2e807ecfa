#include "kernels/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/runtime.h"
#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {
namespace {

// Below this many flops a product is not worth a parallel region.
constexpr double kParallelMinFlops = 4e6;

inline void Sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

}  // namespace

void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const int nt = NumThreads();
  const double flops = 2.0 * M * N * K;
  if (nt <= 1 || flops < kParallelMinFlops || omp_in_parallel()) {
    Sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Split the output along its larger dimension into one block per thread.
  // Column blocks are multiples of 16 floats (whole cache lines of C and B).
  const bool split_n = N >= M;
  const int64_t extent = split_n ? N : M;
  const int64_t align = split_n ? 16 : 4;
  int64_t chunk = (extent + nt - 1) / nt;
  chunk = (chunk + align - 1) / align * align;
#pragma omp parallel num_threads(nt)
  {
    const int64_t lo = omp_get_thread_num() * chunk;
    const int64_t hi = std::min(extent, lo + chunk);
    if (hi > lo) {
      if (split_n) {
        const float* b = trans_b ? B + lo * ldb : B + lo;
        Sgemm(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
      } else {
        const float* a = trans_a ? A + lo : A + lo * lda;
        Sgemm(trans_a, trans_b, hi - lo, N, K, alpha, a, lda, B, ldb, beta, C + lo * ldc, ldc);
      }
    }
  }
}

void MatmulForward(float* out, const float* inp, const float* weight, const float* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout, const float* residual) {
  float beta = 0.f;
  if (bias != nullptr || residual != nullptr) {
    beta = 1.f;
#pragma omp parallel for schedule(static) if (internal::Par(M * N))
    for (int64_t m = 0; m < M; ++m) {
      float* o = out + m * N;
      if (residual != nullptr && bias != nullptr) {
        const float* r = residual + m * N;
        for (int64_t n = 0; n < N; ++n) o[n] = r[n] + bias[n];
      } else if (residual != nullptr) {
        if (o != residual + m * N) std::memcpy(o, residual + m * N, N * sizeof(float));
      } else {
        std::memcpy(o, bias, N * sizeof(float));
      }
    }
  }
  // kInOut: W [K,N] -> inp * W.  kOutIn: W [N,K] -> inp * W^T.
  const bool tw = layout == WeightLayout::kOutIn;
  Gemm(false, tw, M, N, K, 1.f, inp, K, weight, tw ? K : N, beta, out, N);
}

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t M, int64_t K, int64_t N, WeightLayout layout,
                    float alpha, bool accumulate_dinp) {
  const bool in_out = layout == WeightLayout::kInOut;
  if (dinp != nullptr) {
    // dinp[M,K] = dout[M,N] * W^T: W [K,N] -> transpose; W [N,K] -> as is.
    Gemm(false, in_out, M, K, N, alpha, dout, N, weight, in_out ? N : K,
         accumulate_dinp ? 1.f : 0.f, dinp, K);
  }
  if (dweight != nullptr) {
    if (in_out) {
      // dW[K,N] += inp^T[K,M] * dout[M,N]
      Gemm(true, false, K, N, M, alpha, inp, K, dout, N, 1.f, dweight, N);
    } else {
      // dW[N,K] += dout^T[N,M] * inp[M,K]
      Gemm(true, false, N, K, M, alpha, dout, N, inp, K, 1.f, dweight, K);
    }
  }
  if (dbias != nullptr) {
    // Column sums: threads own column slices, rows are streamed in order.
#pragma omp parallel if (internal::Par(M * N))
    {
      const int t = omp_get_thread_num();
      const int nth = omp_get_num_threads();
      int64_t chunk = (N + nth - 1) / nth;
      chunk = (chunk + 15) / 16 * 16;
      const int64_t lo = std::min(N, t * chunk), hi = std::min(N, lo + chunk);
      for (int64_t m = 0; m < M; ++m) {
        const float* d = dout + m * N;
        for (int64_t n = lo; n < hi; ++n) dbias[n] += alpha * d[n];
      }
    }
  }
}

}  // namespace llmt::kernels::cpu
