// Host-only check of the row-major -> column-major mapping that every GEMM
// goes through (no GPU needed): a reference GEMM with cuBLAS semantics
// (column-major storage, op(X) = X or X^T, leading dimensions) is run on the
// cuBLASLt problem description returned by ToColumnMajor and must reproduce
// the row-major product the GemmOp asks for.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/activation.h"
#include "kernels/cuda/matmul.cuh"
#include "kernels/matmul.h"

namespace llmt::kernels::cuda {
namespace {

// LLMT_GEMM_AUTOTUNE: unset = exact; 0/off, exact, 1/any; "+inplace" on the
// tuning modes; anything else an error naming the variable and the value.
TEST(GemmAutotuneEnv, Parses) {
  using A = Blas::Autotune;
  auto is = [](const char* env, A mode, bool in_place) {
    auto p = ParseAutotune(env);
    ASSERT_TRUE(p.ok()) << (env ? env : "(unset)") << ": " << p.status();
    EXPECT_EQ(p->first, mode) << (env ? env : "(unset)");
    EXPECT_EQ(p->second, in_place) << (env ? env : "(unset)");
  };
  is(nullptr, A::kExact, false);
  is("", A::kExact, false);
  is("exact", A::kExact, false);
  is("0", A::kOff, false);
  is("off", A::kOff, false);
  is("1", A::kAny, false);
  is("any", A::kAny, false);
  is("exact+inplace", A::kExact, true);
  is("any+inplace", A::kAny, true);
  for (const char* bad : {"2", "fast", "+inplace", "off+inplace", "exact+inplac"}) {
    auto p = ParseAutotune(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_NE(p.status().message().find("LLMT_GEMM_AUTOTUNE"), std::string::npos);
    EXPECT_NE(p.status().message().find(bad), std::string::npos) << p.status();
  }
}

// Element (r, c) of a stored column-major matrix.
float At(const LtMatrix& x, uint64_t r, uint64_t c) {
  EXPECT_LT(r, x.rows);
  EXPECT_LT(c, x.cols);
  return static_cast<const float*>(x.ptr)[r + c * static_cast<uint64_t>(x.ld)];
}

// LLMT_GEMM_CANDIDATES: unset or "" = 8; 1..64; anything else an error
// naming the variable and the value.
TEST(GemmCandidatesEnv, Parses) {
  for (const char* def : {static_cast<const char*>(nullptr), ""}) {
    auto p = ParseGemmCandidates(def);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(*p, Blas::kDefaultCandidates);
  }
  for (auto [env, want] : {std::pair{"1", 1}, {"24", 24}, {"64", 64}}) {
    auto p = ParseGemmCandidates(env);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(*p, want);
  }
  for (const char* bad : {"0", "65", "-3", "abc", "8x", "2.5"}) {
    auto p = ParseGemmCandidates(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_NE(p.status().message().find("LLMT_GEMM_CANDIDATES"), std::string::npos);
    EXPECT_NE(p.status().message().find(bad), std::string::npos) << p.status();
  }
}

// LLMT_BIAS_GRAD: unset, "" or "kernel" = none, "epilogue" = the GEMM
// epilogue, "norm" = from the norm backward, "dgelu" = from the DGELU GEMM,
// "qv" = the QKV bias without the key third, several joined by '+'; anything
// else an error naming the variable, the value and the part that is wrong.
TEST(GemmBiasGradEnv, Parses) {
  for (const char* off : {static_cast<const char*>(nullptr), "", "kernel"}) {
    auto p = ParseBiasGrad(off);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_FALSE(p->epilogue);
    EXPECT_FALSE(p->from_norm);
    EXPECT_FALSE(p->from_dgelu);
    EXPECT_FALSE(p->skip_keys);
  }
  struct Case {
    const char* env;
    bool epilogue, norm, dgelu, qv;
  };
  for (const Case& c :
       {Case{"epilogue", true, false, false, false}, Case{"norm", false, true, false, false},
        Case{"dgelu", false, false, true, false}, Case{"qv", false, false, false, true},
        Case{"norm+dgelu", false, true, true, false}, Case{"dgelu+norm", false, true, true, false},
        Case{"norm+dgelu+qv", false, true, true, true},
        Case{"epilogue+norm+dgelu", true, true, true, false}}) {
    SCOPED_TRACE(c.env);
    auto p = ParseBiasGrad(c.env);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->epilogue, c.epilogue);
    EXPECT_EQ(p->from_norm, c.norm);
    EXPECT_EQ(p->from_dgelu, c.dgelu);
    EXPECT_EQ(p->skip_keys, c.qv);
  }
  for (const char* bad : {"1", "fused", "Epilogue", "Norm", "norm+", "norm,dgelu", "kernel+norm",
                          "+dgelu", "qkv"}) {
    auto p = ParseBiasGrad(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_NE(p.status().message().find("LLMT_BIAS_GRAD"), std::string::npos);
    EXPECT_NE(p.status().message().find(bad), std::string::npos) << p.status();
  }
}

// The bias-gradient epilogue of MatmulBackward's weight-gradient GEMM asks
// cuBLASLt for BGRADA when bgrad_of_a is false (its A -- our B -- summed over
// k: one value per row of its column-major D, m values) and for BGRADB when
// it is true (its B -- our A -- summed over k: n values). Under those
// documented semantics, posed through ToColumnMajor, the sums must be
// dout's column sums in both weight layouts.
TEST(GemmLayout, BiasGradientEpilogueSumsDoutColumns) {
  const int64_t M = 7, K = 5, N = 6;  // dout rows, input features, output features
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> dout(M * N), inp(M * K), dw(K * N);
  for (float& v : dout) v = u(rng);
  for (float& v : inp) v = u(rng);
  std::vector<double> want(N, 0.0);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) want[n] += dout[m * N + n];
  }
  for (const WeightLayout layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    SCOPED_TRACE(layout == WeightLayout::kInOut ? "kInOut" : "kOutIn");
    GemmOp op = MatmulBackwardDweightOp(dw.data(), DType::kF32, dout.data(), inp.data(), M, K, N,
                                        layout, 1.f, DType::kF32);
    op.bgrad_of_a = layout == WeightLayout::kOutIn;  // as MatmulBackward sets it
    const LtProblem p = ToColumnMajor(op);
    const bool of_b = op.bgrad_of_a;  // BGRADB: cuBLASLt's B; BGRADA: its A
    const LtMatrix& x = of_b ? p.b : p.a;
    const uint64_t len = of_b ? p.n : p.m;
    ASSERT_EQ(len, static_cast<uint64_t>(N));
    for (uint64_t i = 0; i < len; ++i) {
      double sum = 0;
      for (uint64_t kk = 0; kk < p.k; ++kk) {
        // op(A) is m x k, op(B) is k x n.
        sum += of_b ? (x.transposed ? At(x, i, kk) : At(x, kk, i))
                    : (x.transposed ? At(x, kk, i) : At(x, i, kk));
      }
      EXPECT_NEAR(sum, want[i], 1e-5) << "bias gradient " << i;
    }
  }
}

// cublasLtMatmul's definition: D = alpha op(A) op(B) + beta C, D m x n.
void ReferenceLt(const LtProblem& p, float alpha, float beta) {
  // Shapes must be consistent with m, n, k and the transposes.
  EXPECT_EQ(p.a.transposed ? p.a.cols : p.a.rows, p.m);
  EXPECT_EQ(p.a.transposed ? p.a.rows : p.a.cols, p.k);
  EXPECT_EQ(p.b.transposed ? p.b.cols : p.b.rows, p.k);
  EXPECT_EQ(p.b.transposed ? p.b.rows : p.b.cols, p.n);
  EXPECT_EQ(p.c.rows, p.m);
  EXPECT_EQ(p.c.cols, p.n);
  EXPECT_EQ(p.d.rows, p.m);
  EXPECT_EQ(p.d.cols, p.n);
  EXPECT_GE(static_cast<uint64_t>(p.a.ld), p.a.rows);
  EXPECT_GE(static_cast<uint64_t>(p.b.ld), p.b.rows);
  EXPECT_GE(static_cast<uint64_t>(p.d.ld), p.d.rows);
  std::vector<float> out(p.m * p.n);
  for (uint64_t i = 0; i < p.m; ++i) {
    for (uint64_t j = 0; j < p.n; ++j) {
      double s = 0;
      for (uint64_t l = 0; l < p.k; ++l) {
        const float a = p.a.transposed ? At(p.a, l, i) : At(p.a, i, l);
        const float b = p.b.transposed ? At(p.b, j, l) : At(p.b, l, j);
        s += double(a) * b;
      }
      out[i + j * p.m] = static_cast<float>(alpha * s + beta * At(p.c, i, j));
    }
  }
  float* d = const_cast<float*>(static_cast<const float*>(p.d.ptr));
  for (uint64_t i = 0; i < p.m; ++i) {
    for (uint64_t j = 0; j < p.n; ++j) d[i + j * p.d.ld] = out[i + j * p.m];
  }
}

TEST(MatmulLayoutTest, ColumnMajorProblemComputesTheRowMajorProduct) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  const int M = 5, N = 7, K = 3, pad = 2;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << ta << " trans_b " << tb);
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + 1;
      std::vector<float> A((ta ? K : M) * lda), B((tb ? N : K) * ldb), C(M * ldc);
      for (auto* v : {&A, &B, &C}) {
        for (auto& x : *v) x = nd(rng);
      }
      // Row-major reference: D[m][n] = 0.5 sum_k op(A)[m][k] op(B)[k][n] + 0.25 C[m][n].
      std::vector<float> want = C;
      for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
          double s = 0;
          for (int k = 0; k < K; ++k) {
            const float a = ta ? A[k * lda + m] : A[m * lda + k];
            const float b = tb ? B[n * ldb + k] : B[k * ldb + n];
            s += double(a) * b;
          }
          want[m * ldc + n] = static_cast<float>(0.5 * s + 0.25 * C[m * ldc + n]);
        }
      }
      GemmOp op;
      op.trans_a = ta;
      op.trans_b = tb;
      op.M = M;
      op.N = N;
      op.K = K;
      op.alpha = 0.5f;
      op.beta = 0.25f;
      op.A = A.data();
      op.lda = lda;
      op.B = B.data();
      op.ldb = ldb;
      op.C = C.data();
      op.ldc = ldc;
      op.D = C.data();  // in place, as the weight-gradient GEMMs run
      op.ldd = ldc;
      const LtProblem p = ToColumnMajor(op);
      EXPECT_EQ(p.a.ptr, B.data());  // cuBLASLt's A is our B
      EXPECT_EQ(p.b.ptr, A.data());
      ReferenceLt(p, op.alpha, op.beta);
      for (size_t i = 0; i < C.size(); ++i) EXPECT_NEAR(C[i], want[i], 1e-5) << i;
    }
  }
}

// beta == 0 reads no C: the problem's C is D itself (cuBLASLt needs a valid
// pointer with D's layout).
TEST(MatmulLayoutTest, NoBetaUsesDAsC) {
  float a[6] = {}, b[6] = {}, d[4] = {};
  GemmOp op;
  op.M = 2;
  op.N = 2;
  op.K = 3;
  op.A = a;
  op.lda = 3;
  op.B = b;
  op.ldb = 2;
  op.D = d;
  op.ldd = 2;
  const LtProblem p = ToColumnMajor(op);
  EXPECT_EQ(p.c.ptr, static_cast<const void*>(d));
  EXPECT_EQ(p.c.ld, 2);
  EXPECT_EQ(p.m, 2u);
  EXPECT_EQ(p.k, 3u);
}

// Executes a GemmOp's documented semantics on the CPU (fp32):
//   x = alpha op(A) op(B) + beta C + bias;  D = x, or D = gelu(x) and aux = x,
//   or (dgelu) D = gelu'(aux) * alpha op(A) op(B).
void RunOnCpu(const GemmOp& op) {
  std::vector<float> prod(op.M * op.N);
  cpu::Gemm(op.trans_a, op.trans_b, op.M, op.N, op.K, op.alpha, static_cast<const float*>(op.A),
            op.lda, static_cast<const float*>(op.B), op.ldb, 0.f, prod.data(), op.N);
  float* D = static_cast<float*>(op.D);
  float* aux = static_cast<float*>(op.aux);
  const float* C = static_cast<const float*>(op.C);
  const float* bias = static_cast<const float*>(op.bias);
  for (int64_t m = 0; m < op.M; ++m) {
    for (int64_t n = 0; n < op.N; ++n) {
      float x = prod[m * op.N + n];
      if (op.dgelu) {
        const float pre = aux[m * op.ldaux + n];
        cpu::GeluBackward(&D[m * op.ldd + n], &pre, &x, 1);
        continue;
      }
      if (op.beta != 0.f) x += op.beta * C[m * op.ldc + n];
      if (bias != nullptr) x += bias[n];
      if (op.gelu) {
        aux[m * op.ldaux + n] = x;
        cpu::GeluForward(&D[m * op.ldd + n], &x, 1);
      } else {
        D[m * op.ldd + n] = x;
      }
    }
  }
}

std::vector<float> Rand(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

void ExpectNear(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4) << what << " at " << i;
}

// The ops MatmulForward/MatmulBackward build reproduce cpu::MatmulForward /
// cpu::MatmulBackward for both weight layouts, with bias, residual, fused
// GELU, dGELU, alpha and both dinp modes.
TEST(MatmulLayoutTest, MatmulOpsMatchCpuMatmul) {
  const int M = 6, K = 5, N = 4;
  for (const auto layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    SCOPED_TRACE(static_cast<int>(layout));
    const std::vector<float> x = Rand(M * K, 1), w = Rand(K * N, 2), b = Rand(N, 3),
                             r = Rand(M * N, 4), dy = Rand(M * N, 5), pre = Rand(M * K, 6);
    // Forward with bias and residual.
    std::vector<float> want(M * N), got(M * N);
    cpu::MatmulForward(want.data(), x.data(), w.data(), b.data(), M, K, N, layout, r.data());
    RunOnCpu(MatmulForwardOp(got.data(), x.data(), w.data(), b.data(), M, K, N, layout, r.data(),
                             nullptr, DType::kF32));
    ExpectNear(got, want, "forward");
    // Forward with fused GELU.
    std::vector<float> want_pre(M * N), want_act(M * N), got_pre(M * N), got_act(M * N);
    cpu::MatmulForward(want_pre.data(), x.data(), w.data(), b.data(), M, K, N, layout);
    cpu::GeluForward(want_act.data(), want_pre.data(), M * N);
    RunOnCpu(MatmulForwardOp(got_act.data(), x.data(), w.data(), b.data(), M, K, N, layout, nullptr,
                             got_pre.data(), DType::kF32));
    ExpectNear(got_pre, want_pre, "pre_gelu");
    ExpectNear(got_act, want_act, "gelu");
    // Backward: dinp overwrite and accumulate, dweight accumulate.
    for (bool acc : {false, true}) {
      std::vector<float> dx = Rand(M * K, 7), dw = Rand(K * N, 8);
      std::vector<float> gdx = dx, gdw = dw;
      cpu::MatmulBackward(dx.data(), dw.data(), nullptr, dy.data(), x.data(), w.data(), M, K, N,
                          layout, 0.5f, acc);
      RunOnCpu(MatmulBackwardDinpOp(gdx.data(), dy.data(), w.data(), M, K, N, layout, 0.5f, acc,
                                    nullptr, DType::kF32));
      RunOnCpu(MatmulBackwardDweightOp(gdw.data(), DType::kF32, dy.data(), x.data(), M, K, N,
                                       layout, 0.5f, DType::kF32));
      ExpectNear(gdx, dx, "dinp");
      ExpectNear(gdw, dw, "dweight");
    }
    // Backward through a GELU: dinp = gelu'(pre) * (dout W^T).
    std::vector<float> dact(M * K), want_dx(M * K), got_dx(M * K);
    cpu::MatmulBackward(dact.data(), nullptr, nullptr, dy.data(), nullptr, w.data(), M, K, N,
                        layout);
    cpu::GeluBackward(want_dx.data(), pre.data(), dact.data(), M * K);
    RunOnCpu(MatmulBackwardDinpOp(got_dx.data(), dy.data(), w.data(), M, K, N, layout, 1.f, false,
                                  pre.data(), DType::kF32));
    ExpectNear(got_dx, want_dx, "dinp through gelu");
  }
}

}  // namespace
}  // namespace llmt::kernels::cuda
