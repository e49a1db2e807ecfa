// CPU kernels against double-precision references. Each op's forward is
// compared with a plain double implementation written here; each backward is
// compared with central finite differences (h = 1e-5, in double) of that
// reference for the scalar L = sum(w * op(x)) with random w, i.e. dout = w.
// Errors are relative L2: ||kernel - ref||_2 / ||ref||_2. fp32 kernels land at
// ~1e-7..1e-6; tolerances are 1e-5 (forward) and 1e-4 (backward) unless noted.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/cpu/runtime.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/optimizer.h"
#include "kernels/reduce.h"

namespace llmt::kernels::cpu {
namespace {

using Vec = std::vector<double>;
using FVec = std::vector<float>;

FVec Randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  FVec v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

Vec ToD(const FVec& v) { return Vec(v.begin(), v.end()); }

template <typename A, typename B>
double RelErr(const A& a, const B& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// d/dx_i of sum(w * f(x)) by central differences.
Vec NumGrad(const std::function<Vec(const Vec&)>& f, Vec x, const Vec& w, double h = 1e-5) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    Vec yp = f(x);
    x[i] = x0 - h;
    Vec ym = f(x);
    x[i] = x0;
    double s = 0;
    for (size_t j = 0; j < yp.size(); ++j) s += w[j] * (yp[j] - ym[j]);
    g[i] = s / (2 * h);
  }
  return g;
}

class KernelsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetNumThreads(2); }
};

// ---------------------------------------------------------------- matmul ----

Vec RefMatmul(const Vec& x, const Vec& w, const Vec* b, int M, int K, int N, WeightLayout lay) {
  Vec y(size_t(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = b ? (*b)[n] : 0.0;
      for (int k = 0; k < K; ++k)
        s += x[m * K + k] * (lay == WeightLayout::kInOut ? w[k * N + n] : w[n * K + k]);
      y[m * N + n] = s;
    }
  return y;
}

TEST_F(KernelsTest, MatmulForwardBackwardBothLayouts) {
  const int M = 6, K = 5, N = 7;
  for (WeightLayout lay : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    FVec x = Randn(M * K, 1), w = Randn(K * N, 2), b = Randn(N, 3), res = Randn(M * N, 4);
    FVec out(M * N);
    MatmulForward(out.data(), x.data(), w.data(), b.data(), M, K, N, lay);
    Vec bd = ToD(b);
    Vec ref = RefMatmul(ToD(x), ToD(w), &bd, M, K, N, lay);
    EXPECT_LT(RelErr(out, ref), 1e-6);
    // fused residual
    MatmulForward(out.data(), x.data(), w.data(), b.data(), M, K, N, lay, res.data());
    for (int i = 0; i < M * N; ++i) ref[i] += res[i];
    EXPECT_LT(RelErr(out, ref), 1e-6);

    // backward: dweight / dbias accumulate, dinp overwrites, all scaled by alpha.
    const float alpha = 0.5f;
    FVec dout = Randn(M * N, 5);
    Vec wd = ToD(dout);
    FVec dx(M * K, 99.f), dw(K * N, 0.25f), db(N, -1.f);
    MatmulBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), M, K, N, lay,
                   alpha);
    Vec xd = ToD(x), wdd = ToD(w);
    auto f_x = [&](const Vec& xx) { return RefMatmul(xx, wdd, &bd, M, K, N, lay); };
    auto f_w = [&](const Vec& ww) { return RefMatmul(xd, ww, &bd, M, K, N, lay); };
    auto f_b = [&](const Vec& bb) { return RefMatmul(xd, wdd, &bb, M, K, N, lay); };
    Vec gx = NumGrad(f_x, xd, wd), gw = NumGrad(f_w, wdd, wd), gb = NumGrad(f_b, bd, wd);
    for (auto& v : gx) v *= alpha;
    for (size_t i = 0; i < gw.size(); ++i) gw[i] = 0.25 + alpha * gw[i];
    for (size_t i = 0; i < gb.size(); ++i) gb[i] = -1.0 + alpha * gb[i];
    EXPECT_LT(RelErr(dx, gx), 1e-4);
    EXPECT_LT(RelErr(dw, gw), 1e-4);
    EXPECT_LT(RelErr(db, gb), 1e-4);
    // accumulate_dinp adds on top.
    FVec dx2 = dx;
    MatmulBackward(dx2.data(), nullptr, nullptr, dout.data(), x.data(), w.data(), M, K, N, lay,
                   alpha, /*accumulate_dinp=*/true);
    for (int i = 0; i < M * K; ++i) ASSERT_NEAR(dx2[i], 2 * dx[i], 1e-5);
  }
}

// Large enough to take the multi-threaded split path, in every transpose
// combination and both split directions (N >= M and M > N).
TEST_F(KernelsTest, GemmParallelSplitMatchesReference) {
  struct Shape { int M, N, K; };
  for (Shape s : {Shape{37, 501, 129}, Shape{290, 45, 161}}) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        FVec A = Randn(size_t(s.M) * s.K, 7), B = Randn(size_t(s.K) * s.N, 8);
        FVec C = Randn(size_t(s.M) * s.N, 9);
        Vec ref(C.size());
        for (int m = 0; m < s.M; ++m)
          for (int n = 0; n < s.N; ++n) {
            double acc = 0;
            for (int k = 0; k < s.K; ++k) {
              const double a = ta ? A[size_t(k) * s.M + m] : A[size_t(m) * s.K + k];
              const double b = tb ? B[size_t(n) * s.K + k] : B[size_t(k) * s.N + n];
              acc += a * b;
            }
            ref[size_t(m) * s.N + n] = 0.75 * acc + 0.5 * C[size_t(m) * s.N + n];
          }
        Gemm(ta, tb, s.M, s.N, s.K, 0.75f, A.data(), ta ? s.M : s.K, B.data(), tb ? s.K : s.N,
             0.5f, C.data(), s.N);
        EXPECT_LT(RelErr(C, ref), 1e-6) << s.M << "x" << s.N << " ta=" << ta << " tb=" << tb;
      }
  }
}

// ----------------------------------------------------------------- norms ----

Vec RefLayerNorm(const Vec& x, const Vec& w, const Vec& b, int R, int C, double eps) {
  Vec y(x.size());
  for (int r = 0; r < R; ++r) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[r * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[r * C + c] - m) * (x[r * C + c] - m);
    v /= C;
    for (int c = 0; c < C; ++c) {
      y[r * C + c] = (x[r * C + c] - m) / std::sqrt(v + eps) * w[c] + b[c];
    }
  }
  return y;
}

Vec RefRMSNorm(const Vec& x, const Vec& w, int R, int C, double eps) {
  Vec y(x.size());
  for (int r = 0; r < R; ++r) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += x[r * C + c] * x[r * C + c];
    const double rs = 1 / std::sqrt(ss / C + eps);
    for (int c = 0; c < C; ++c) y[r * C + c] = x[r * C + c] * rs * w[c];
  }
  return y;
}

TEST_F(KernelsTest, LayerNorm) {
  const int R = 5, C = 40;  // C > one 16-wide column slice per thread
  const float eps = 1e-5f;
  FVec x = Randn(R * C, 1, 2.f), w = Randn(C, 2), b = Randn(C, 3);
  for (auto& v : x) v += 3.f;  // non-zero mean
  FVec y(R * C), mean(R), rstd(R);
  LayerNormForward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), R, C, eps);
  Vec xd = ToD(x), wd = ToD(w), bd = ToD(b);
  EXPECT_LT(RelErr(y, RefLayerNorm(xd, wd, bd, R, C, eps)), 1e-5);

  FVec dout = Randn(R * C, 4);
  Vec dd = ToD(dout);
  FVec dx(R * C, 0.5f), dw(C, 0.f), db(C, 0.f);  // dx accumulates onto 0.5
  LayerNormBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                    rstd.data(), R, C);
  Vec gx = NumGrad([&](const Vec& v) { return RefLayerNorm(v, wd, bd, R, C, eps); }, xd, dd);
  Vec gw = NumGrad([&](const Vec& v) { return RefLayerNorm(xd, v, bd, R, C, eps); }, wd, dd);
  Vec gb = NumGrad([&](const Vec& v) { return RefLayerNorm(xd, wd, v, R, C, eps); }, bd, dd);
  for (auto& v : gx) v += 0.5;
  EXPECT_LT(RelErr(dx, gx), 1e-4);
  EXPECT_LT(RelErr(dw, gw), 1e-4);
  EXPECT_LT(RelErr(db, gb), 1e-4);
}

TEST_F(KernelsTest, RMSNorm) {
  const int R = 5, C = 40;
  const float eps = 1e-5f;
  FVec x = Randn(R * C, 5, 2.f), w = Randn(C, 6);
  FVec y(R * C), rstd(R);
  RMSNormForward(y.data(), rstd.data(), x.data(), w.data(), R, C, eps);
  Vec xd = ToD(x), wd = ToD(w);
  EXPECT_LT(RelErr(y, RefRMSNorm(xd, wd, R, C, eps)), 1e-5);
  FVec dout = Randn(R * C, 7);
  Vec dd = ToD(dout);
  FVec dx(R * C, 0.f), dw(C, 1.f);  // dw accumulates onto 1
  RMSNormBackward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), R, C);
  Vec gx = NumGrad([&](const Vec& v) { return RefRMSNorm(v, wd, R, C, eps); }, xd, dd);
  Vec gw = NumGrad([&](const Vec& v) { return RefRMSNorm(xd, v, R, C, eps); }, wd, dd);
  for (auto& v : gw) v += 1.0;
  EXPECT_LT(RelErr(dx, gx), 1e-4);
  EXPECT_LT(RelErr(dw, gw), 1e-4);
}

// ----------------------------------------------------------- activations ----

Vec RefGelu(const Vec& x) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    y[i] = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  }
  return y;
}

TEST_F(KernelsTest, Gelu) {
  FVec x = Randn(1000, 8, 2.f);
  // extremes: saturated tails must not produce NaN / Inf
  x[0] = -30.f;
  x[1] = 30.f;
  x[2] = 0.f;
  x[3] = -9.f;
  FVec y(x.size());
  GeluForward(y.data(), x.data(), x.size());
  Vec xd = ToD(x);
  Vec ref = RefGelu(xd);
  EXPECT_LT(RelErr(y, ref), 1e-6);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-6 + 1e-6 * std::abs(ref[i]));
  FVec dout = Randn(x.size(), 9);
  FVec dx(x.size());
  GeluBackward(dx.data(), x.data(), dout.data(), x.size());
  EXPECT_LT(RelErr(dx, NumGrad(RefGelu, xd, ToD(dout))), 1e-5);
  // in place (dinp aliases dout)
  GeluBackward(dout.data(), x.data(), dout.data(), x.size());
  EXPECT_EQ(dout, dx);
}

Vec RefSwiGLU(const Vec& gu, int R, int F) {
  Vec y(size_t(R) * F);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < F; ++j) {
      const double g = gu[r * 2 * F + j], u = gu[r * 2 * F + F + j];
      y[r * F + j] = g / (1 + std::exp(-g)) * u;
    }
  return y;
}

TEST_F(KernelsTest, SwiGLU) {
  const int R = 6, F = 21;
  FVec gu = Randn(R * 2 * F, 10, 2.f);
  FVec y(R * F);
  SwiGLUForward(y.data(), gu.data(), R, F);
  Vec gd = ToD(gu);
  EXPECT_LT(RelErr(y, RefSwiGLU(gd, R, F)), 1e-6);
  FVec dout = Randn(R * F, 11);
  FVec dgu(R * 2 * F);
  SwiGLUBackward(dgu.data(), gu.data(), dout.data(), R, F);
  EXPECT_LT(RelErr(dgu, NumGrad([&](const Vec& v) { return RefSwiGLU(v, R, F); }, gd, ToD(dout))),
            1e-5);
}

// ------------------------------------------------------ RoPE / attention ----

// HF Llama: q * cos + rotate_half(q) * sin on each head of each row.
Vec RefRope(const Vec& x, int B, int T, int H, int hd, int ld, double theta) {
  Vec y = x;
  const int half = hd / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < half; ++i) {
          const double a = t / std::pow(theta, 2.0 * i / hd);
          const size_t o = (size_t(b) * T + t) * ld + h * hd;
          const double x1 = x[o + i], x2 = x[o + half + i];
          y[o + i] = x1 * std::cos(a) - x2 * std::sin(a);
          y[o + half + i] = x2 * std::cos(a) + x1 * std::sin(a);
        }
  return y;
}

TEST_F(KernelsTest, Rope) {
  const int B = 2, T = 7, H = 3, hd = 8, ld = 3 * hd + 5;  // extra columns left untouched
  const float theta = 10000.f;
  FVec cs(T * hd / 2), sn(T * hd / 2);
  RopeTable(cs.data(), sn.data(), T, hd, theta);
  FVec x = Randn(B * T * ld, 12);
  FVec y = x;
  RopeForward(y.data(), cs.data(), sn.data(), B, T, H, hd, ld);
  Vec xd = ToD(x);
  EXPECT_LT(RelErr(y, RefRope(xd, B, T, H, hd, ld, theta)), 1e-6);
  FVec dout = Randn(B * T * ld, 13);
  FVec dx = dout;
  RopeBackward(dx.data(), cs.data(), sn.data(), B, T, H, hd, ld);
  EXPECT_LT(RelErr(dx, NumGrad([&](const Vec& v) { return RefRope(v, B, T, H, hd, ld, theta); },
                               xd, ToD(dout))),
            1e-5);
}

Vec RefAttention(const Vec& qkv, int B, int T, int NH, int NKV, int hd) {
  const int ld = (NH + 2 * NKV) * hd, C = NH * hd;
  Vec y(size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const int g = h / (NH / NKV);
      for (int t = 0; t < T; ++t) {
        Vec s(t + 1);
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          double d = 0;
          for (int i = 0; i < hd; ++i)
            d += qkv[(size_t(b) * T + t) * ld + h * hd + i] *
                 qkv[(size_t(b) * T + u) * ld + (NH + g) * hd + i];
          s[u] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (auto& v : s) z += (v = std::exp(v - mx));
        for (int u = 0; u <= t; ++u)
          for (int i = 0; i < hd; ++i)
            y[(size_t(b) * T + t) * C + h * hd + i] +=
                s[u] / z * qkv[(size_t(b) * T + u) * ld + (NH + NKV + g) * hd + i];
      }
    }
  return y;
}

struct AttnCase { int B, T, NH, NKV, hd; };
class AttentionTest : public KernelsTest, public ::testing::WithParamInterface<AttnCase> {};

TEST_P(AttentionTest, ForwardBackward) {
  const auto [B, T, NH, NKV, hd] = GetParam();
  const int ld = (NH + 2 * NKV) * hd, C = NH * hd;
  FVec qkv = Randn(size_t(B) * T * ld, 14, 1.5f);
  FVec y(size_t(B) * T * C), att(size_t(B) * NH * T * T);
  AttentionForward(y.data(), att.data(), qkv.data(), B, T, NH, NKV, hd);
  Vec qd = ToD(qkv);
  EXPECT_LT(RelErr(y, RefAttention(qd, B, T, NH, NKV, hd)), 1e-5);
  // probabilities: rows sum to one, zero above the diagonal
  for (int r = 0; r < B * NH * T; ++r) {
    const int t = r % T;
    double s = 0;
    for (int u = 0; u < T; ++u) {
      if (u > t) {
        ASSERT_EQ(att[size_t(r) * T + u], 0.f);
      }
      s += att[size_t(r) * T + u];
    }
    ASSERT_NEAR(s, 1.0, 1e-5);
  }
  FVec dout = Randn(y.size(), 15);
  FVec dqkv(qkv.size(), 123.f), datt(att.size());  // dqkv is overwritten
  AttentionBackward(dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), B, T, NH, NKV,
                    hd);
  Vec g = NumGrad([&](const Vec& v) { return RefAttention(v, B, T, NH, NKV, hd); }, qd, ToD(dout));
  EXPECT_LT(RelErr(dqkv, g), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Values(AttnCase{2, 5, 2, 2, 4},     // multi-head (gpt2)
                      AttnCase{2, 6, 4, 2, 4},     // grouped-query
                      AttnCase{1, 5, 3, 1, 2},     // multi-query
                      AttnCase{1, 131, 1, 1, 2}),  // > one 128-row causal block
    [](const auto& info) {
      const AttnCase& c = info.param;
      char name[64];
      std::snprintf(name, sizeof(name), "B%dT%dH%dKV%d", c.B, c.T, c.NH, c.NKV);
      return std::string(name);
    });

// ------------------------------------------------------------- embedding ----

TEST_F(KernelsTest, EmbeddingWithPositions) {
  const int B = 3, T = 4, C = 37, V = 5;
  std::vector<int32_t> tok = {0, 4, 4, 1, 2, 2, 2, 0, 3, 4, 1, 1};  // repeats
  FVec wte = Randn(V * C, 16), wpe = Randn(T * C, 17);
  FVec out(B * T * C);
  EmbeddingForward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  auto ref = [&](const Vec& e, const Vec& p) {
    Vec y(size_t(B) * T * C);
    for (int r = 0; r < B * T; ++r)
      for (int c = 0; c < C; ++c) y[r * C + c] = e[tok[r] * C + c] + p[(r % T) * C + c];
    return y;
  };
  Vec ed = ToD(wte), pd = ToD(wpe);
  EXPECT_LT(RelErr(out, ref(ed, pd)), 1e-7);
  FVec dout = Randn(B * T * C, 18);
  FVec dwte(V * C, 0.f), dwpe(T * C, 2.f);
  EmbeddingBackward(dwte.data(), dwpe.data(), dout.data(), tok.data(), B, T, C);
  Vec ge = NumGrad([&](const Vec& v) { return ref(v, pd); }, ed, ToD(dout));
  Vec gp = NumGrad([&](const Vec& v) { return ref(ed, v); }, pd, ToD(dout));
  for (auto& v : gp) v += 2.0;
  EXPECT_LT(RelErr(dwte, ge), 1e-5);
  EXPECT_LT(RelErr(dwpe, gp), 1e-5);
  // no positions (llama)
  EmbeddingForward(out.data(), tok.data(), wte.data(), nullptr, B, T, C);
  for (int r = 0; r < B * T; ++r) ASSERT_EQ(out[r * C + 7], wte[tok[r] * C + 7]);
}

// ------------------------------------------------------------------ loss ----

TEST_F(KernelsTest, FusedSoftmaxCrossEntropy) {
  const int R = 6, V = 301;
  FVec logits = Randn(R * V, 19, 3.f);
  logits[5] = 80.f;  // large logit: must stay finite
  std::vector<int32_t> tg = {3, 300, 0, 150, 3, 77};
  const float scale = 0.37f;
  auto ref = [&](const Vec& x) {
    Vec l(R);
    for (int r = 0; r < R; ++r) {
      double mx = -1e300, z = 0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, x[r * V + j]);
      for (int j = 0; j < V; ++j) z += std::exp(x[r * V + j] - mx);
      l[r] = std::log(z) + mx - x[r * V + tg[r]];
    }
    return l;
  };
  Vec xd = ToD(logits);
  Vec lr = ref(xd);
  double mean = 0;
  for (double v : lr) mean += v / R;
  FVec x = logits, row_loss(R);
  const float loss = SoftmaxCrossEntropy(x.data(), tg.data(), R, V, scale, row_loss.data());
  EXPECT_NEAR(loss, mean, 1e-5 * std::abs(mean));
  EXPECT_LT(RelErr(row_loss, lr), 1e-6);
  // x now holds d(scale * sum_r CE_r)/dlogits
  Vec g = NumGrad(ref, xd, Vec(R, scale));
  EXPECT_LT(RelErr(x, g), 1e-4);

  FVec sm = logits;
  Softmax(sm.data(), R, V);
  for (int r = 0; r < R; ++r) {
    double s = 0;
    for (int j = 0; j < V; ++j) s += sm[r * V + j];
    ASSERT_NEAR(s, 1.0, 1e-5);
  }
}

// ------------------------------------------------------------- optimizer ----

TEST_F(KernelsTest, AdamWMatchesScalarFormula) {
  const int n = 1037;
  const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  FVec p = Randn(n, 20), m(n, 0.f), v(n, 0.f);
  Vec pd = ToD(p), md(n, 0.0), vd(n, 0.0);
  for (int step = 1; step <= 5; ++step) {
    FVec g = Randn(n, 100 + step);
    AdamW(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, step, gs);
    for (int i = 0; i < n; ++i) {
      const double gi = double(g[i]) * gs;
      pd[i] *= 1 - double(lr) * wd;
      md[i] = b1 * md[i] + (1 - double(b1)) * gi;
      vd[i] = b2 * vd[i] + (1 - double(b2)) * gi * gi;
      const double mh = md[i] / (1 - std::pow(double(b1), step));
      const double vh = vd[i] / (1 - std::pow(double(b2), step));
      pd[i] -= lr * mh / (std::sqrt(vh) + eps);
    }
  }
  EXPECT_LT(RelErr(p, pd), 1e-6);
  EXPECT_LT(RelErr(m, md), 1e-6);
  EXPECT_LT(RelErr(v, vd), 1e-5);
  // wd = 0 leaves decay out: a zero gradient keeps p exactly.
  FVec q(8, 1.5f), zg(8, 0.f), zm(8, 0.f), zv(8, 0.f);
  AdamW(q.data(), zg.data(), zm.data(), zv.data(), 8, lr, b1, b2, eps, 0.f, 1);
  for (float x : q) EXPECT_EQ(x, 1.5f);
}

// --------------------------------------------------------------- reduce ----

TEST_F(KernelsTest, GlobalNormScaleFinite) {
  const int64_t n = 100003;
  FVec x = Randn(n, 21, 3.f);
  double ref = 0;
  for (float v : x) ref += double(v) * v;
  EXPECT_NEAR(SumSquares(x.data(), n), ref, 1e-12 * ref);
  EXPECT_NEAR(L2Norm(x.data(), n), std::sqrt(ref), 1e-12 * std::sqrt(ref));
  EXPECT_EQ(SumSquares(x.data(), n), SumSquares(x.data(), n));  // reproducible
  EXPECT_EQ(L2Norm(x.data(), 0), 0.0);
  FVec y = x;
  Scale(y.data(), n, 0.25f);
  for (int64_t i = 0; i < n; i += 997) ASSERT_EQ(y[i], x[i] * 0.25f);
  EXPECT_TRUE(AllFinite(x.data(), n));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (int64_t pos : {int64_t{0}, int64_t{4095}, int64_t{4096}, n - 1}) {
      FVec z = x;
      z[pos] = bad;
      EXPECT_FALSE(AllFinite(z.data(), n)) << bad << " at " << pos;
    }
  }
  FVec big(3, std::numeric_limits<float>::max());
  EXPECT_TRUE(AllFinite(big.data(), 3));
  Zero(y.data(), n);
  EXPECT_EQ(SumSquares(y.data(), n), 0.0);
}

TEST_F(KernelsTest, HostBufferIsZeroedAndMovable) {
  HostBuffer a(1000);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.data()[i], 0.f);
  a.data()[3] = 5.f;
  HostBuffer b = std::move(a);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.data()[3], 5.f);
  EXPECT_EQ(b.size(), 1000);
}

}  // namespace
}  // namespace llmt::kernels::cpu
