#include "kernels/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/vec_math.h"

namespace llmt::kernels::cpu {
namespace {

using internal::ExpF;
using internal::Par;

// Rows of the causal score matrix are processed in blocks: block [r0, r1)
// only needs key columns [0, r1), so long sequences skip the upper triangle
// (about half the flops) while every product stays one sgemm.
constexpr int kRowBlock = 128;

// Called inside OpenMP parallel loops: OpenBLAS is pinned to one thread
// (runtime.h), so each call runs on the calling thread.
inline void Sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

void AttentionForward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV,
                      int hd) {
  const int ld = (NH + 2 * NKV) * hd;
  const int C = NH * hd;
  const int group = NH / NKV;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(dynamic, 1) if (Par(int64_t{B} * NH * T * T * hd / 8))
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH, g = h / group;
    const float* base = qkv + static_cast<int64_t>(b) * T * ld;
    const float* q = base + h * hd;
    const float* k = base + (NH + g) * hd;
    const float* v = base + (NH + NKV + g) * hd;
    float* p = att + static_cast<int64_t>(bh) * T * T;
    float* y = out + static_cast<int64_t>(b) * T * C + h * hd;
    for (int r0 = 0; r0 < T; r0 += kRowBlock) {
      const int r1 = std::min(T, r0 + kRowBlock);
      // S[r0:r1, 0:r1] = scale * Q[r0:r1] K[0:r1]^T
      Sgemm(false, true, r1 - r0, r1, hd, scale, q + static_cast<int64_t>(r0) * ld, ld, k, ld, 0.f,
            p + static_cast<int64_t>(r0) * T, T);
      for (int t = r0; t < r1; ++t) {
        float* row = p + static_cast<int64_t>(t) * T;
        float mx = row[0];
        for (int s = 1; s <= t; ++s) mx = std::max(mx, row[s]);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int s = 0; s <= t; ++s) {
          const float e = ExpF(row[s] - mx);
          row[s] = e;
          sum += e;
        }
        const float inv = 1.f / sum;
        for (int s = 0; s <= t; ++s) row[s] *= inv;
        std::memset(row + t + 1, 0, sizeof(float) * (T - t - 1));
      }
      // Y[r0:r1] = P[r0:r1, 0:r1] V[0:r1]
      Sgemm(false, false, r1 - r0, hd, r1, 1.f, p + static_cast<int64_t>(r0) * T, T, v, ld, 0.f,
            y + static_cast<int64_t>(r0) * C, C);
    }
  }
}

void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                       const float* att, int B, int T, int NH, int NKV, int hd) {
  const int ld = (NH + 2 * NKV) * hd;
  const int C = NH * hd;
  const int group = NH / NKV;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  // One task per (batch, kv head): the query heads of a group all accumulate
  // into the same dK / dV, so they run in order on one thread.
#pragma omp parallel for schedule(dynamic, 1) if (Par(int64_t{B} * NH * T * T * hd / 8))
  for (int bg = 0; bg < B * NKV; ++bg) {
    const int b = bg / NKV, g = bg % NKV;
    const float* base = qkv + static_cast<int64_t>(b) * T * ld;
    float* dbase = dqkv + static_cast<int64_t>(b) * T * ld;
    const float* k = base + (NH + g) * hd;
    const float* v = base + (NH + NKV + g) * hd;
    float* dk = dbase + (NH + g) * hd;
    float* dv = dbase + (NH + NKV + g) * hd;
    for (int t = 0; t < T; ++t) {
      std::memset(dk + static_cast<int64_t>(t) * ld, 0, sizeof(float) * hd);
      std::memset(dv + static_cast<int64_t>(t) * ld, 0, sizeof(float) * hd);
    }
    for (int h = g * group; h < (g + 1) * group; ++h) {
      const float* q = base + h * hd;
      float* dq = dbase + h * hd;
      const int64_t bh = static_cast<int64_t>(b) * NH + h;
      const float* p = att + bh * T * T;
      float* dp = datt + bh * T * T;
      const float* dy = dout + static_cast<int64_t>(b) * T * C + h * hd;
      for (int r0 = 0; r0 < T; r0 += kRowBlock) {
        const int r1 = std::min(T, r0 + kRowBlock);
        const float* p_blk = p + static_cast<int64_t>(r0) * T;
        float* dp_blk = dp + static_cast<int64_t>(r0) * T;
        const float* dy_blk = dy + static_cast<int64_t>(r0) * C;
        // dV[0:r1] += P[r0:r1, 0:r1]^T dY[r0:r1]
        Sgemm(true, false, r1, hd, r1 - r0, 1.f, p_blk, T, dy_blk, C, 1.f, dv, ld);
        // dP[r0:r1, 0:r1] = dY[r0:r1] V[0:r1]^T
        Sgemm(false, true, r1 - r0, r1, hd, 1.f, dy_blk, C, v, ld, 0.f, dp_blk, T);
        // dS = P * (dP - rowsum(P * dP)), zero above the diagonal.
        for (int t = r0; t < r1; ++t) {
          const float* pr = p + static_cast<int64_t>(t) * T;
          float* dr = dp + static_cast<int64_t>(t) * T;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int s = 0; s <= t; ++s) dot += pr[s] * dr[s];
#pragma omp simd
          for (int s = 0; s <= t; ++s) dr[s] = pr[s] * (dr[s] - dot);
          for (int s = t + 1; s < r1; ++s) dr[s] = 0.f;
        }
        // dQ[r0:r1] = scale * dS K[0:r1];  dK[0:r1] += scale * dS^T Q[r0:r1]
        Sgemm(false, false, r1 - r0, hd, r1, scale, dp_blk, T, k, ld, 0.f,
              dq + static_cast<int64_t>(r0) * ld, ld);
        Sgemm(true, false, r1, hd, r1 - r0, scale, dp_blk, T, q + static_cast<int64_t>(r0) * ld,
              ld, 1.f, dk, ld);
      }
    }
  }
}

void RopeTable(float* cos, float* sin, int T, int hd, float theta) {
  const int half = hd / 2;
  for (int i = 0; i < half; ++i) {
    // HF: inv_freq = 1 / theta^(arange(0, hd, 2) / hd)
    const double inv_freq = 1.0 / std::pow(static_cast<double>(theta), (2.0 * i) / hd);
    for (int t = 0; t < T; ++t) {
      const double a = t * inv_freq;
      cos[static_cast<int64_t>(t) * half + i] = static_cast<float>(std::cos(a));
      sin[static_cast<int64_t>(t) * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

namespace {
// sign = +1: forward rotation by +angle; -1: inverse rotation (the transpose),
// which is the backward of the forward.
void Rope(float* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
          int64_t ld, float sign) {
  const int half = hd / 2;
#pragma omp parallel for schedule(static) if (Par(int64_t{B} * T * n_heads * hd))
  for (int64_t r = 0; r < static_cast<int64_t>(B) * T; ++r) {
    const int t = static_cast<int>(r % T);
    const float* c = cos + static_cast<int64_t>(t) * half;
    const float* s = sin + static_cast<int64_t>(t) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* x1 = x + r * ld + h * hd;
      float* x2 = x1 + half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i], sn = sign * s[i];
        x1[i] = a * c[i] - b * sn;
        x2[i] = b * c[i] + a * sn;
      }
    }
  }
}
}  // namespace

void RopeForward(float* x, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                 int64_t ld) {
  Rope(x, cos, sin, B, T, n_heads, hd, ld, 1.f);
}

void RopeBackward(float* dx, const float* cos, const float* sin, int B, int T, int n_heads, int hd,
                  int64_t ld) {
  Rope(dx, cos, sin, B, T, n_heads, hd, ld, -1.f);
}

}  // namespace llmt::kernels::cpu
