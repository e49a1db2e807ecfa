// CUDA kernels against the CPU backend on random inputs: activations, norms
// (plain and fused with the residual add), the fused classifier, embedding,
// RoPE, reductions, AdamW and conversions. Every test runs for fp32 and bf16
// storage where the kernel has both; bf16 inputs are rounded to bf16 before
// the CPU sees them, so both backends compute from identical values.
//
// Tolerances (testing::TolFor): |gpu - cpu| <= rtol (|cpu| + max|cpu|) with
// rtol = 1e-5 for fp32 and 1e-2 for bf16, unless a test states otherwise.
// Reductions that must be reproducible are also run twice and compared
// bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/matmul_internal.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/optimizer.h"
#include "kernels/reduce.h"
#include "tests/unit/cuda/cuda_test_util.h"

namespace llmt::kernels::cuda {
namespace {

using testing::Dev;
using testing::ExpectClose;
using testing::FVec;
using testing::Prep;
using testing::Randn;
using testing::RandTokens;
using testing::RoundBf16;
using testing::Tol;
using testing::TolFor;
using testing::Uniform;

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU (cudaGetDeviceCount reports none)";
    ASSERT_TRUE(SetDevice(0).ok());
    // The default forward (auto) runs cuDNN's attention where it loads: the
    // attention tests are about the own kernels (CudnnAttentionTest covers
    // cuDNN and auto), so auto means the own default here; a variant named
    // in LLMT_ATTN_FWD runs as named. (The backward's is set per check.)
    if (GetAttentionForwardVariant() == AttentionForwardVariant::kAuto) {
      SetAttentionForwardVariant(AttentionForwardVariant::kDefault);
    }
  }
};

template <typename T>
class TypedGpuTest : public GpuTest {};
using Types = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(TypedGpuTest, Types);

// A scratch buffer of at least `bytes`.
Dev<char> Scratch(size_t bytes) { return Dev<char>(std::max<size_t>(bytes, 1), "scratch"); }

bool BitEqual(const FVec& a, const FVec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ------------------------------------------------------------ activations ----

TYPED_TEST(TypedGpuTest, GeluForwardBackward) {
  using T = TypeParam;
  // Odd n (vector tail) and a misaligned view (scalar path).
  for (int offset : {0, 1}) {
    const int64_t n = 4099;
    const FVec x = Prep<T>(Randn(n + offset, 1, 2.f));
    const FVec dy = Prep<T>(Randn(n + offset, 2));
    FVec want(n), dwant(n);
    cpu::GeluForward(want.data(), x.data() + offset, n);
    cpu::GeluBackward(dwant.data(), x.data() + offset, dy.data() + offset, n);
    Dev<T> gx(x), gdy(dy), gy(n + offset), gdx(n + offset);
    GeluForward(gy.get() + offset, gx.get() + offset, n, nullptr);
    GeluBackward(gdx.get() + offset, gx.get() + offset, gdy.get() + offset, n, nullptr);
    FVec y = gy.Download(), dx = gdx.Download();
    y.erase(y.begin(), y.begin() + offset);
    dx.erase(dx.begin(), dx.begin() + offset);
    ExpectClose(y, want, TolFor<T>(want), "gelu");
    ExpectClose(dx, dwant, TolFor<T>(dwant), "gelu backward");
  }
  // In place (dinp aliases dout).
  const int64_t n = 1000;
  const FVec x = Prep<T>(Randn(n, 3)), dy = Prep<T>(Randn(n, 4));
  FVec dwant(n);
  cpu::GeluBackward(dwant.data(), x.data(), dy.data(), n);
  Dev<T> gx(x), gdy(dy);
  GeluBackward(gdy.get(), gx.get(), gdy.get(), n, nullptr);
  ExpectClose(gdy.Download(), dwant, TolFor<T>(dwant), "gelu backward in place");
}

TYPED_TEST(TypedGpuTest, SwiGLUForwardBackward) {
  using T = TypeParam;
  for (int F : {64, 37}) {  // vectorised and scalar paths
    const int64_t rows = 33;
    const FVec gu = Prep<T>(Randn(rows * 2 * F, 5, 2.f));
    const FVec dy = Prep<T>(Randn(rows * F, 6));
    FVec want(rows * F), dwant(rows * 2 * F);
    cpu::SwiGLUForward(want.data(), gu.data(), rows, F);
    cpu::SwiGLUBackward(dwant.data(), gu.data(), dy.data(), rows, F);
    Dev<T> ggu(gu), gdy(dy), gy(rows * F), gdgu(rows * 2 * F);
    SwiGLUForward(gy.get(), ggu.get(), rows, F, nullptr);
    SwiGLUBackward(gdgu.get(), ggu.get(), gdy.get(), rows, F, nullptr);
    ExpectClose(gy.Download(), want, TolFor<T>(want), "swiglu");
    ExpectClose(gdgu.Download(), dwant, TolFor<T>(dwant), "swiglu backward");
  }
}

// ------------------------------------------------ GEMM epilogue kernels ----

// The deterministic bias gradient (dbias += alpha * column sums) for every
// (activation, gradient) type pair, against cpu::MatmulBackward's dbias.
TYPED_TEST(TypedGpuTest, BiasBackward) {
  using T = TypeParam;
  const int64_t M = 77, N = 45;
  const FVec dy = Prep<T>(Randn(M * N, 46)), db0 = Prep<T>(Randn(N, 47));
  FVec db = db0;
  cpu::MatmulBackward(nullptr, nullptr, db.data(), dy.data(), nullptr, nullptr, M, 1, N,
                      WeightLayout::kInOut, 0.5f);
  Dev<T> gdy(dy), gdb(db0);
  BiasBackward(gdb.get(), gdy.get(), M, N, 0.5f, nullptr);
  ExpectClose(gdb.Download(), db, TolFor<T>(db), "dbias");
  if constexpr (std::is_same_v<T, bf16>) {
    Dev<float> gdb32(db0);  // bf16 activations, fp32 gradient
    BiasBackward(gdb32.get(), gdy.get(), M, N, 0.5f, nullptr);
    ExpectClose(gdb32.Download(), db, TolFor<float>(db), "dbias f32");
  }
}

// D = beta C + bias (the unfused epilogue's seeding), strided and in place.
TYPED_TEST(TypedGpuTest, BiasResidualFill) {
  using T = TypeParam;
  const int64_t M = 9, N = 13, ld = 16;
  const FVec c = Prep<T>(Randn(M * ld, 48)), bias = Prep<T>(Randn(N, 49));
  FVec want = c;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) want[m * ld + n] = 0.5f * c[m * ld + n] + bias[n];
  }
  want = Prep<T>(want);
  Dev<T> gc(c), gbias(bias);
  BiasResidualFill(gc.get(), DTypeOf<T>::value, ld, gc.get(), ld, 0.5f, gbias.get(), M, N, nullptr);
  ExpectClose(gc.Download(), want, TolFor<T>(want), "beta C + bias in place");
  Dev<T> gd(M * ld);
  BiasResidualFill(gd.get(), DTypeOf<T>::value, ld, nullptr, ld, 0.f, gbias.get(), M, N, nullptr);
  const FVec got = gd.Download();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(got[m * ld + n], bias[n]);
  }
}

// ------------------------------------------------------------------ norms ----

TYPED_TEST(TypedGpuTest, LayerNormForwardBackward) {
  using T = TypeParam;
  const int64_t rows = 70;  // not a multiple of the 32-row backward blocks
  for (int C : {96, 50}) {
    const FVec x = Prep<T>(Randn(rows * C, 7, 3.f));
    const FVec w = Prep<T>(Uniform(C, 8, 0.5f, 1.5f)), b = Prep<T>(Randn(C, 9));
    const FVec dy = Prep<T>(Randn(rows * C, 10));
    const FVec dx0 = Prep<T>(Randn(rows * C, 11)), dw0 = Prep<T>(Randn(C, 12)),
               db0 = Prep<T>(Randn(C, 13));
    FVec y(rows * C), mean(rows), rstd(rows);
    cpu::LayerNormForward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C,
                          1e-5f);
    FVec dx = dx0, dw = dw0, db = db0;
    cpu::LayerNormBackward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), rows, C);

    Dev<T> gx(x), gw(w), gb(b), gdy(dy), gy(rows * C), gdx(dx0), gdw(dw0), gdb(db0);
    Dev<float> gmean(rows), grstd(rows);
    LayerNormForward(gy.get(), gmean.get(), grstd.get(), gx.get(), gw.get(), gb.get(), rows, C,
                     1e-5f, nullptr);
    ExpectClose(gy.Download(), y, TolFor<T>(y), "layernorm out");
    ExpectClose(gmean.Download(), mean, TolFor<float>(mean), "mean");
    ExpectClose(grstd.Download(), rstd, TolFor<float>(rstd), "rstd");
    auto scratch = Scratch(NormBackwardScratchBytes(rows, C));
    // Backward from the CPU's statistics so that only the backward is tested.
    Dev<float> cmean(mean), crstd(rstd);
    LayerNormBackward(gdx.get(), gdw.get(), gdb.get(), gdy.get(), gx.get(), gw.get(), cmean.get(),
                      crstd.get(), rows, C, scratch.get(), scratch.size(), nullptr);
    ExpectClose(gdx.Download(), dx, TolFor<T>(dx), "layernorm dinp (accumulated)");
    ExpectClose(gdw.Download(), dw, TolFor<T>(dw), "layernorm dweight");
    ExpectClose(gdb.Download(), db, TolFor<T>(db), "layernorm dbias");
  }
}

TYPED_TEST(TypedGpuTest, RMSNormForwardBackward) {
  using T = TypeParam;
  const int64_t rows = 45, C = 128;
  const FVec x = Prep<T>(Randn(rows * C, 14, 2.f));
  const FVec w = Prep<T>(Uniform(C, 15, 0.5f, 1.5f));
  const FVec dy = Prep<T>(Randn(rows * C, 16));
  const FVec dx0 = Prep<T>(Randn(rows * C, 17)), dw0 = Prep<T>(Randn(C, 18));
  FVec y(rows * C), rstd(rows);
  cpu::RMSNormForward(y.data(), rstd.data(), x.data(), w.data(), rows, C, 1e-6f);
  FVec dx = dx0, dw = dw0;
  cpu::RMSNormBackward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, C);

  Dev<T> gx(x), gw(w), gdy(dy), gy(rows * C), gdx(dx0), gdw(dw0);
  Dev<float> grstd(rows);
  RMSNormForward(gy.get(), grstd.get(), gx.get(), gw.get(), rows, C, 1e-6f, nullptr);
  ExpectClose(gy.Download(), y, TolFor<T>(y), "rmsnorm out");
  ExpectClose(grstd.Download(), rstd, TolFor<float>(rstd), "rstd");
  auto scratch = Scratch(NormBackwardScratchBytes(rows, C));
  Dev<float> crstd(rstd);
  RMSNormBackward(gdx.get(), gdw.get(), gdy.get(), gx.get(), gw.get(), crstd.get(), rows, C,
                  scratch.get(), scratch.size(), nullptr);
  ExpectClose(gdx.Download(), dx, TolFor<T>(dx), "rmsnorm dinp (accumulated)");
  ExpectClose(gdw.Download(), dw, TolFor<T>(dw), "rmsnorm dweight");
}

// residual = a + b (rounded to T) and its norm in one kernel, in place over a.
TYPED_TEST(TypedGpuTest, FusedResidualNormsForward) {
  using T = TypeParam;
  const int64_t rows = 40, C = 64;
  const FVec a = Prep<T>(Randn(rows * C, 19)), b2 = Prep<T>(Randn(rows * C, 20));
  const FVec w = Prep<T>(Uniform(C, 21, 0.5f, 1.5f)), bias = Prep<T>(Randn(C, 22));
  FVec res(rows * C);
  for (size_t i = 0; i < res.size(); ++i) res[i] = a[i] + b2[i];
  res = Prep<T>(res);
  FVec ln(rows * C), mean(rows), rstd(rows), rms(rows * C), rrstd(rows);
  cpu::LayerNormForward(ln.data(), mean.data(), rstd.data(), res.data(), w.data(), bias.data(),
                        rows, C, 1e-5f);
  cpu::RMSNormForward(rms.data(), rrstd.data(), res.data(), w.data(), rows, C, 1e-5f);

  Dev<T> ga(a), gb(b2), gw(w), gbias(bias), gout(rows * C);
  Dev<float> gmean(rows), grstd(rows);
  FusedResidualLayerNormForward(ga.get(), gout.get(), gmean.get(), grstd.get(), ga.get(), gb.get(),
                                gw.get(), gbias.get(), rows, C, 1e-5f, nullptr);
  ExpectClose(ga.Download(), res, TolFor<T>(res, 1e-6, 1e-6), "residual (exact)");
  ExpectClose(gout.Download(), ln, TolFor<T>(ln), "fused layernorm out");
  ExpectClose(grstd.Download(), rstd, TolFor<float>(rstd), "fused layernorm rstd");

  Dev<T> ga2(a), gres(rows * C);
  FusedResidualRMSNormForward(gres.get(), gout.get(), grstd.get(), ga2.get(), gb.get(), gw.get(),
                              rows, C, 1e-5f, nullptr);
  ExpectClose(gres.Download(), res, TolFor<T>(res, 1e-6, 1e-6), "residual (exact)");
  ExpectClose(gout.Download(), rms, TolFor<T>(rms), "fused rmsnorm out");
}

// bf16 activations with fp32 weight gradients, and bit-reproducibility.
TEST_F(GpuTest, NormBackwardMixedPrecisionAndDeterminism) {
  const int64_t rows = 100, C = 80;
  const FVec x = RoundBf16(Randn(rows * C, 23)), w = RoundBf16(Uniform(C, 24, 0.5f, 1.5f));
  const FVec dy = RoundBf16(Randn(rows * C, 25));
  FVec y(rows * C), mean(rows), rstd(rows), dx(rows * C, 0.f), dw(C, 0.f), db(C, 0.f);
  const FVec bias(C, 0.f);
  cpu::LayerNormForward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), rows,
                        C, 1e-5f);
  cpu::LayerNormBackward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                         mean.data(), rstd.data(), rows, C);
  Dev<bf16> gx(x), gw(w), gdy(dy);
  Dev<float> cmean(mean), crstd(rstd);
  auto scratch = Scratch(NormBackwardScratchBytes(rows, C));
  FVec first_dw;
  for (int run = 0; run < 2; ++run) {
    Dev<bf16> gdx(FVec(rows * C, 0.f));
    Dev<float> gdw(FVec(C, 0.f)), gdb(FVec(C, 0.f));
    LayerNormBackward(gdx.get(), gdw.get(), gdb.get(), gdy.get(), gx.get(), gw.get(), cmean.get(),
                      crstd.get(), rows, C, scratch.get(), scratch.size(), nullptr);
    const FVec got_dw = gdw.Download();
    // fp32 gradients from exact bf16 inputs: fp32 tolerance.
    ExpectClose(got_dw, dw, TolFor<float>(dw), "dweight f32");
    ExpectClose(gdb.Download(), db, TolFor<float>(db), "dbias f32");
    ExpectClose(gdx.Download(), dx, TolFor<bf16>(dx), "dinp bf16");
    if (run == 0) {
      first_dw = got_dw;
    } else {
      EXPECT_TRUE(BitEqual(first_dw, got_dw)) << "norm weight gradient not reproducible";
    }
  }
}

// ----------------------------------------------------------- classifier ----

TYPED_TEST(TypedGpuTest, SoftmaxCrossEntropyInPlace) {
  using T = TypeParam;
  const int64_t rows = 37;
  const int V = 1000;
  for (int64_t ld : {int64_t{V}, int64_t{1008}}) {  // dense and padded vocabulary
    const FVec logits = Prep<T>(Randn(rows * V, 26, 3.f));
    const std::vector<int32_t> targets = RandTokens(rows, V, 27);
    FVec want = logits, row_loss(rows);
    const float grad_scale = 1.f / rows;
    const float mean =
        cpu::SoftmaxCrossEntropy(want.data(), targets.data(), rows, V, grad_scale, row_loss.data());
    FVec padded(rows * ld, 7.f);  // padding columns must come back as 0
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(logits.begin() + r * V, logits.begin() + (r + 1) * V, padded.begin() + r * ld);
    }
    Dev<T> gl(padded);
    Dev<int32_t> gt(rows);
    ASSERT_EQ(cudaMemcpy(gt.get(), targets.data(), rows * 4, cudaMemcpyHostToDevice), cudaSuccess);
    Dev<float> gloss(rows);
    Dev<double> gmean(1);
    auto scratch = Scratch(ReduceScratchBytes());
    SoftmaxCrossEntropy(gl.get(), gt.get(), rows, V, ld, grad_scale, gloss.get(), nullptr);
    Sum(gloss.get(), rows, gmean.get(), scratch.get(), scratch.size(), nullptr);
    const FVec got = gl.Download();
    FVec got_dense(rows * V);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(got.begin() + r * ld, got.begin() + r * ld + V, got_dense.begin() + r * V);
      for (int64_t j = V; j < ld; ++j) ASSERT_EQ(got[r * ld + j], 0.f) << "padding column " << j;
    }
    ExpectClose(got_dense, want, TolFor<T>(want), "dlogits");
    // Losses are computed in fp32 from the same (bf16-rounded) logits.
    ExpectClose(gloss.Download(), row_loss, TolFor<float>(row_loss), "row losses");
    double sum = 0;
    ASSERT_EQ(cudaMemcpy(&sum, gmean.get(), sizeof(double), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_NEAR(sum / rows, mean, 1e-5 * std::fabs(mean));
  }
}

TEST_F(GpuTest, SoftmaxCrossEntropyBadTargetIsNaN) {
  const int64_t rows = 2;
  const int V = 10;
  Dev<float> gl(Randn(rows * V, 28)), gloss(rows);
  const std::vector<int32_t> targets = {3, 12};  // 12 is out of range
  Dev<int32_t> gt(rows);
  ASSERT_EQ(cudaMemcpy(gt.get(), targets.data(), rows * 4, cudaMemcpyHostToDevice), cudaSuccess);
  SoftmaxCrossEntropy(gl.get(), gt.get(), rows, V, V, 1.f, gloss.get(), nullptr);
  const FVec loss = gloss.Download(), grad = gl.Download();
  EXPECT_TRUE(std::isfinite(loss[0]));
  EXPECT_TRUE(std::isnan(loss[1]));
  for (int j = 0; j < V; ++j) EXPECT_EQ(grad[V + j], 0.f);
}

TYPED_TEST(TypedGpuTest, Softmax) {
  using T = TypeParam;
  const int64_t rows = 9;
  const int V = 777;
  const FVec x = Prep<T>(Randn(rows * V, 29, 4.f));
  FVec want = x;
  cpu::Softmax(want.data(), rows, V);
  Dev<T> gx(x);
  Softmax(gx.get(), rows, V, V, nullptr);
  ExpectClose(gx.Download(), want, TolFor<T>(want), "softmax");
}

// ------------------------------------------------------------- embedding ----

// Shapes: few tokens (long runs after the sort: a token's rows span several
// 32-position chunks, some chunks lie wholly inside one run), a frequent
// token among many (40% of the positions, as "the" or "," in text), C with
// 16-byte vectors (40, 48) and without (42: the scalar kernels).
TYPED_TEST(TypedGpuTest, EmbeddingForwardBackward) {
  using T = TypeParam;
  struct Shape {
    int B, Tn, C, V;
    double frequent;  // share of positions forced to token 3
  };
  for (const Shape sh : {Shape{3, 17, 40, 11, 0.0}, Shape{5, 64, 48, 7, 0.0},
                         Shape{4, 75, 42, 50, 0.4}, Shape{2, 130, 40, 400, 0.4}}) {
    const int B = sh.B, Tn = sh.Tn, C = sh.C, V = sh.V;
    SCOPED_TRACE(::testing::Message() << "B=" << B << " T=" << Tn << " C=" << C << " V=" << V);
    std::vector<int32_t> tokens = RandTokens(B * Tn, V, 30);
    std::mt19937 rng(31);
    std::uniform_real_distribution<double> u(0, 1);
    for (auto& t : tokens) t = u(rng) < sh.frequent ? 3 : t;
    const FVec wte = Prep<T>(Randn(V * C, 31)), wpe = Prep<T>(Randn(Tn * C, 32));
    const FVec dy = Prep<T>(Randn(B * Tn * C, 33));
    const FVec dwte0 = Prep<T>(Randn(V * C, 34)), dwpe0 = Prep<T>(Randn(Tn * C, 35));
    FVec y(B * Tn * C), dwte = dwte0, dwpe = dwpe0;
    cpu::EmbeddingForward(y.data(), tokens.data(), wte.data(), wpe.data(), B, Tn, C);
    cpu::EmbeddingBackward(dwte.data(), dwpe.data(), dy.data(), tokens.data(), B, Tn, C);

    Dev<int32_t> gt(tokens.size());
    ASSERT_EQ(cudaMemcpy(gt.get(), tokens.data(), tokens.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    Dev<T> gwte(wte), gwpe(wpe), gy(B * Tn * C), gdy(dy);
    EmbeddingForward(gy.get(), gt.get(), gwte.get(), gwpe.get(), B, Tn, C, nullptr);
    ExpectClose(gy.Download(), y, TolFor<T>(y), "embedding out");
    EmbeddingForward(gy.get(), gt.get(), gwte.get(), static_cast<T*>(nullptr), B, Tn, C, nullptr);
    const FVec y_tok = gy.Download();
    for (int64_t r = 0; r < B * Tn; ++r) {
      for (int c = 0; c < C; ++c) ASSERT_EQ(y_tok[r * C + c], wte[tokens[r] * C + c]);
    }

    auto scratch = Scratch(EmbeddingBackwardScratchBytes(B, Tn, C));
    FVec first;
    for (int run = 0; run < 2; ++run) {
      Dev<T> gdwte(dwte0), gdwpe(dwpe0);
      EmbeddingBackward(gdwte.get(), gdwpe.get(), gdy.get(), gt.get(), B, Tn, C, scratch.get(),
                        scratch.size(), nullptr);
      const FVec got = gdwte.Download();
      // Sums of up to ~100 rows: fp32 order, 3e-5 of the scale.
      ExpectClose(got, dwte, TolFor<T>(dwte, 3e-5), "dwte");
      ExpectClose(gdwpe.Download(), dwpe, TolFor<T>(dwpe), "dwpe");
      if (run == 0) {
        first = got;
      } else {
        EXPECT_TRUE(BitEqual(first, got)) << "embedding backward not reproducible";
      }
    }
  }
}

TEST_F(GpuTest, EmbeddingBackwardBf16ToFp32Grads) {
  const int B = 2, Tn = 64, C = 24, V = 50;
  const std::vector<int32_t> tokens = RandTokens(B * Tn, V, 36);
  const FVec dy = RoundBf16(Randn(B * Tn * C, 37));
  FVec dwte(V * C, 0.f), dwpe(Tn * C, 0.f);
  cpu::EmbeddingBackward(dwte.data(), dwpe.data(), dy.data(), tokens.data(), B, Tn, C);
  Dev<int32_t> gt(tokens.size());
  ASSERT_EQ(cudaMemcpy(gt.get(), tokens.data(), tokens.size() * 4, cudaMemcpyHostToDevice),
            cudaSuccess);
  Dev<bf16> gdy(dy);
  Dev<float> gdwte(FVec(V * C, 0.f)), gdwpe(FVec(Tn * C, 0.f));
  auto scratch = Scratch(EmbeddingBackwardScratchBytes(B, Tn, C));
  EmbeddingBackward(gdwte.get(), gdwpe.get(), gdy.get(), gt.get(), B, Tn, C, scratch.get(),
                    scratch.size(), nullptr);
  ExpectClose(gdwte.Download(), dwte, TolFor<float>(dwte), "dwte f32");
  ExpectClose(gdwpe.Download(), dwpe, TolFor<float>(dwpe), "dwpe f32");
}

// ------------------------------------------------------------------ RoPE ----

TYPED_TEST(TypedGpuTest, RopeTableForwardBackward) {
  using T = TypeParam;
  const int B = 2, Tn = 33, NH = 4, NKV = 2, hd = 16;
  const int64_t ld = (NH + 2 * NKV) * hd;
  FVec cos_t(Tn * hd / 2), sin_t(Tn * hd / 2);
  cpu::RopeTable(cos_t.data(), sin_t.data(), Tn, hd, 10000.f);
  Dev<float> gcos(Tn * hd / 2), gsin(Tn * hd / 2);
  RopeTable(gcos.get(), gsin.get(), Tn, hd, 10000.f, nullptr);
  ExpectClose(gcos.Download(), cos_t, Tol{0, 1e-6}, "cos table");
  ExpectClose(gsin.Download(), sin_t, Tol{0, 1e-6}, "sin table");

  const FVec x = Prep<T>(Randn(B * Tn * ld, 38));
  FVec fwd = x;
  cpu::RopeForward(fwd.data(), cos_t.data(), sin_t.data(), B, Tn, NH + NKV, hd, ld);
  FVec bwd = x;
  cpu::RopeBackward(bwd.data(), cos_t.data(), sin_t.data(), B, Tn, NH + NKV, hd, ld);
  Dev<float> ccos(cos_t), csin(sin_t);
  Dev<T> gx(x), gx2(x);
  RopeForward(gx.get(), ccos.get(), csin.get(), B, Tn, NH + NKV, hd, ld, nullptr);
  RopeBackward(gx2.get(), ccos.get(), csin.get(), B, Tn, NH + NKV, hd, ld, nullptr);
  const FVec got = gx.Download();
  ExpectClose(got, fwd, TolFor<T>(fwd), "rope forward");
  ExpectClose(gx2.Download(), bwd, TolFor<T>(bwd), "rope backward");
  // Value heads (columns past (NH+NKV)*hd) are untouched.
  for (int64_t r = 0; r < B * Tn; ++r) {
    for (int64_t c = (NH + NKV) * hd; c < ld; ++c) ASSERT_EQ(got[r * ld + c], x[r * ld + c]);
  }
}

// ------------------------------------------------------------ reductions ----

TYPED_TEST(TypedGpuTest, SumSquaresNormAndDeterminism) {
  using T = TypeParam;
  const int64_t n = 1000003, n2 = 4321;
  const FVec x = Prep<T>(Randn(n, 39)), y = Prep<T>(Randn(n2, 40));
  const double want = cpu::SumSquares(x.data(), n), want2 = cpu::SumSquares(y.data(), n2);
  Dev<T> gx(x), gy(y);
  Dev<double> out(2);
  auto scratch = Scratch(ReduceScratchBytes());
  double got[2], again[2];
  SumSquares(gx.get(), n, out.get(), false, scratch.get(), scratch.size(), nullptr);
  L2Norm(gx.get(), n, out.get() + 1, scratch.get(), scratch.size(), nullptr);
  ASSERT_EQ(cudaMemcpy(got, out.get(), 16, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_NEAR(got[0], want, 1e-10 * want);
  EXPECT_NEAR(got[1], std::sqrt(want), 1e-10 * std::sqrt(want));
  SumSquares(gx.get(), n, out.get(), false, scratch.get(), scratch.size(), nullptr);
  ASSERT_EQ(cudaMemcpy(again, out.get(), 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(std::memcmp(&got[0], &again[0], 8), 0) << "SumSquares not reproducible";
  // accumulate = true adds a second buffer into the same global sum.
  SumSquares(gy.get(), n2, out.get(), true, scratch.get(), scratch.size(), nullptr);
  ASSERT_EQ(cudaMemcpy(got, out.get(), 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_NEAR(got[0], want + want2, 1e-10 * (want + want2));
}

TEST_F(GpuTest, SumScaleZeroAndNonFinite) {
  const int64_t n = 70001;
  const FVec x = Randn(n, 41);
  double want = 0;
  for (float v : x) want += v;
  Dev<float> gx(x);
  Dev<double> out(1);
  auto scratch = Scratch(ReduceScratchBytes());
  Sum(gx.get(), n, out.get(), scratch.get(), scratch.size(), nullptr);
  double got = 0;
  ASSERT_EQ(cudaMemcpy(&got, out.get(), 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_NEAR(got, want, 1e-9 * n);

  Dev<int> flag(1);
  ASSERT_EQ(cudaMemset(flag.get(), 0, 4), cudaSuccess);
  AnyNonFinite(gx.get(), n, flag.get(), nullptr);
  int f = -1;
  ASSERT_EQ(cudaMemcpy(&f, flag.get(), 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(f, 0);
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    FVec y = x;
    y[n - 2] = bad;
    Dev<bf16> gy(y);
    ASSERT_EQ(cudaMemset(flag.get(), 0, 4), cudaSuccess);
    AnyNonFinite(gy.get(), n, flag.get(), nullptr);
    ASSERT_EQ(cudaMemcpy(&f, flag.get(), 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(f, 1) << bad;
  }

  FVec scaled = x;
  for (auto& v : scaled) v *= 0.25f;
  Scale(gx.get(), n, 0.25f, nullptr);
  EXPECT_EQ(gx.Download(), scaled);
  Zero(gx.get(), n, nullptr);
  for (float v : gx.Download()) ASSERT_EQ(v, 0.f);
}

// --------------------------------------------------------------- AdamW ----

struct AdamState {
  FVec p, g, m, v;
};
AdamState RandomAdamState(int64_t n, uint32_t seed, bool bf16_grads) {
  AdamState s{Randn(n, seed), Randn(n, seed + 1, 0.1f), Randn(n, seed + 2, 0.01f),
              Uniform(n, seed + 3, 0.f, 1e-3f)};
  if (bf16_grads) s.g = RoundBf16(s.g);
  return s;
}

TEST_F(GpuTest, AdamWMatchesCpuFp32AndBf16Grads) {
  const int64_t n = 10003;
  for (bool bf16_grads : {false, true}) {
    SCOPED_TRACE(bf16_grads ? "bf16 grads" : "fp32 grads");
    AdamState s = RandomAdamState(n, 42, bf16_grads);
    AdamState want = s;
    cpu::AdamW(want.p.data(), want.g.data(), want.m.data(), want.v.data(), n, 1e-3f, 0.9f, 0.95f,
               1e-8f, 0.1f, 7, 0.5f);
    Dev<float> gp(s.p), gm(s.m), gv(s.v);
    Dev<bf16> pcopy(n);
    if (bf16_grads) {
      Dev<bf16> gg(s.g);
      AdamW(gp.get(), gg.get(), gm.get(), gv.get(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f,
            pcopy.get(), false, 0, nullptr);
    } else {
      Dev<float> gg(s.g);
      AdamW(gp.get(), gg.get(), gm.get(), gv.get(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f,
            pcopy.get(), false, 0, nullptr);
    }
    const FVec p = gp.Download();
    ExpectClose(p, want.p, TolFor<float>(want.p), "p");
    ExpectClose(gm.Download(), want.m, TolFor<float>(want.m), "m");
    ExpectClose(gv.Download(), want.v, TolFor<float>(want.v), "v");
    // Round-to-nearest copy of the GPU's own master weights, exactly.
    EXPECT_EQ(pcopy.Download(), RoundBf16(p));
  }
}

// Misaligned views (the scalar path) and the stochastically rounded bf16
// copy: every copy value is one of the two bf16 neighbours of the fp32
// master value, and the same seed reproduces the same bits.
TEST_F(GpuTest, AdamWUnalignedAndStochasticCopy) {
  const int64_t n = 4001;
  AdamState s = RandomAdamState(n + 1, 50, true);
  AdamState want = s;
  cpu::AdamW(want.p.data() + 1, want.g.data() + 1, want.m.data() + 1, want.v.data() + 1, n, 1e-3f,
             0.9f, 0.95f, 1e-8f, 0.1f, 5, 1.f);
  FVec copies[2];
  for (int run = 0; run < 2; ++run) {
    Dev<float> gp(s.p), gm(s.m), gv(s.v);
    Dev<bf16> gg(s.g), pcopy(n + 1);
    AdamW(gp.get() + 1, gg.get() + 1, gm.get() + 1, gv.get() + 1, n, 1e-3f, 0.9f, 0.95f, 1e-8f,
          0.1f, 5, 1.f, pcopy.get() + 1, true, 77, nullptr);
    const FVec p = gp.Download();
    ExpectClose(FVec(p.begin() + 1, p.end()), FVec(want.p.begin() + 1, want.p.end()),
                TolFor<float>(want.p), "p");
    copies[run] = pcopy.Download();
    for (int64_t i = 1; i <= n; ++i) {
      const float c = copies[run][i], lo = RoundBf16({p[i]})[0];
      // c is p rounded down or up in magnitude to a bf16 neighbour.
      const float other = testing::Bf16BitsToF32(static_cast<uint16_t>(
          testing::F32ToBf16Bits(lo) + ((std::fabs(lo) < std::fabs(p[i])) ? 1 : -1)));
      ASSERT_TRUE(c == lo || c == other) << i << ": " << c << " for " << p[i];
    }
  }
  EXPECT_TRUE(BitEqual(copies[0], copies[1]));
}

TEST_F(GpuTest, AdamWMultiTensorMatchesPerRangeCpu) {
  const int64_t n = 9000;
  const std::vector<AdamWSegment> segs = {
      {0, 3000, 0.1f}, {3000, 0, 0.f}, {3000, 500, 0.f}, {3500, 5499, 0.1f}, {8999, 1, 0.f}};
  ASSERT_TRUE(ValidateAdamWSegments(segs, n).ok());
  AdamState s = RandomAdamState(n, 43, false);
  AdamState want = s;
  for (const AdamWSegment& sg : segs) {
    cpu::AdamW(want.p.data() + sg.offset, want.g.data() + sg.offset, want.m.data() + sg.offset,
               want.v.data() + sg.offset, sg.n, 3e-4f, 0.9f, 0.999f, 1e-8f, sg.weight_decay, 3);
  }
  Dev<float> gp(s.p), gg(s.g), gm(s.m), gv(s.v);
  Dev<AdamWSegment> gsegs(segs.size());
  ASSERT_EQ(cudaMemcpy(gsegs.get(), segs.data(), segs.size() * sizeof(AdamWSegment),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  AdamWMultiTensor(gp.get(), gg.get(), gm.get(), gv.get(), n, gsegs.get(),
                   static_cast<int>(segs.size()), 3e-4f, 0.9f, 0.999f, 1e-8f, 3, 1.f, nullptr,
                   false, 0, nullptr);
  ExpectClose(gp.Download(), want.p, TolFor<float>(want.p), "p");
  ExpectClose(gm.Download(), want.m, TolFor<float>(want.m), "m");
  ExpectClose(gv.Download(), want.v, TolFor<float>(want.v), "v");
}

// Stochastic rounding: every result is one of the two bf16 neighbours, the
// mean is unbiased, and the bits are a pure function of (seed, index).
TEST_F(GpuTest, StochasticRoundingIsUnbiasedAndReproducible) {
  const int64_t n = 1 << 20;
  const float x = 1.f + 0.3f * (1.f / 128.f);  // 30% of the way from 1 to the next bf16
  Dev<float> src(FVec(n, x));
  Dev<bf16> a(n), b(n), c(n);
  ConvertF32ToBf16(a.get(), src.get(), n, true, 1234, nullptr);
  ConvertF32ToBf16(b.get(), src.get(), n, true, 1234, nullptr);
  ConvertF32ToBf16(c.get(), src.get(), n, true, 99, nullptr);
  const FVec va = a.Download(), vb = b.Download(), vc = c.Download();
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  double mean = 0;
  int64_t up = 0;
  for (float v : va) {
    ASSERT_TRUE(v == 1.f || v == 1.f + 1.f / 128.f) << v;
    up += v > 1.f;
    mean += v;
  }
  mean /= n;
  EXPECT_NEAR(static_cast<double>(up) / n, 0.3, 0.005);
  EXPECT_NEAR(mean, x, 1e-4);
  // Round-to-nearest and the way back.
  ConvertF32ToBf16(a.get(), src.get(), n, false, 0, nullptr);
  Dev<float> back(n);
  ConvertBf16ToF32(back.get(), a.get(), n, nullptr);
  for (float v : back.Download()) ASSERT_EQ(v, 1.f);
}

// ------------------------------------------------------------- attention ----

struct AttnShape {
  int B, T, NH, NKV, hd;
};

void PrintTo(const AttnShape& s, std::ostream* os) {
  *os << "B" << s.B << "_T" << s.T << "_NH" << s.NH << "_NKV" << s.NKV << "_hd" << s.hd;
}

// CPU reference: out and dqkv through the CPU backend (which materialises att).
void CpuAttention(const AttnShape& s, const FVec& qkv, const FVec& dout, FVec* out, FVec* dqkv) {
  const int64_t ld = int64_t(s.NH + 2 * s.NKV) * s.hd;
  FVec att(int64_t(s.B) * s.NH * s.T * s.T), datt(att.size());
  out->assign(int64_t(s.B) * s.T * s.NH * s.hd, 0.f);
  dqkv->assign(int64_t(s.B) * s.T * ld, 0.f);
  cpu::AttentionForward(out->data(), att.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.hd);
  cpu::AttentionBackward(dqkv->data(), datt.data(), dout.data(), qkv.data(), att.data(), s.B, s.T,
                         s.NH, s.NKV, s.hd);
}

// reproducible: the backward must give bit-identical results run to run
// (every variant except cuDNN's, which adds dQ with atomics).
template <typename T>
void CheckAttention(const AttnShape& s, AttentionImpl impl, AttentionBackwardVariant variant = {},
                    bool reproducible = true) {
  SetAttentionImpl(impl);
  const AttentionBackwardVariant saved_variant = GetAttentionBackwardVariant();
  SetAttentionBackwardVariant(variant);
  const int64_t ld = int64_t(s.NH + 2 * s.NKV) * s.hd;
  const int64_t n_qkv = int64_t(s.B) * s.T * ld, n_out = int64_t(s.B) * s.T * s.NH * s.hd;
  const FVec qkv = Prep<T>(Randn(n_qkv, 44));
  const FVec dout = Prep<T>(Randn(n_out, 45));
  FVec out, dqkv;
  CpuAttention(s, Prep<T>(qkv), dout, &out, &dqkv);
  Dev<T> gqkv(qkv), gdout(dout), gout(n_out), gdqkv(n_qkv);
  Dev<float> glse(int64_t(s.B) * s.NH * s.T);
  AttentionForward(gout.get(), glse.get(), gqkv.get(), s.B, s.T, s.NH, s.NKV, s.hd, nullptr);
  const FVec got_out = gout.Download();
  ExpectClose(got_out, out, TolFor<T>(out), "attention out");
  const double out_bound = std::is_same_v<T, float> ? 1e-5 : 1e-2;
  EXPECT_LT(testing::RelL2(got_out, out), out_bound) << "attention out relative L2 error";
  auto scratch = Scratch(AttentionBackwardScratchBytes(s.B, s.T, s.NH, s.hd));
  FVec first;
  for (int run = 0; run < 2; ++run) {
    AttentionBackward(gdqkv.get(), gdout.get(), gqkv.get(), gout.get(), glse.get(), s.B, s.T, s.NH,
                      s.NKV, s.hd, scratch.get(), scratch.size(), nullptr);
    const FVec got = gdqkv.Download();
    if (run == 0) {
      // Gradients: fp32 2e-5 (sums over up to T scores), bf16 2e-2 (P and dS
      // are rounded to bf16 before their products, as in FlashAttention).
      ExpectClose(got, dqkv, TolFor<T>(dqkv, 2e-5, 2e-2), "attention dqkv");
      // dQ, dK and dV have different scales, so the scale-aware elementwise
      // bound alone could miss an error confined to one of them: each section
      // must also match in relative L2 (fp32 1e-5, bf16 1e-2).
      const double bound = std::is_same_v<T, float> ? 1e-5 : 1e-2;
      const int64_t widths[3] = {int64_t(s.NH) * s.hd, int64_t(s.NKV) * s.hd,
                                 int64_t(s.NKV) * s.hd};
      const char* names[3] = {"dq", "dk", "dv"};
      int64_t col0 = 0;
      for (int sec = 0; sec < 3; ++sec) {
        FVec g_sec, w_sec;
        for (int64_t r = 0; r < int64_t(s.B) * s.T; ++r) {
          for (int64_t c = col0; c < col0 + widths[sec]; ++c) {
            g_sec.push_back(got[r * ld + c]);
            w_sec.push_back(dqkv[r * ld + c]);
          }
        }
        const double rel = testing::RelL2(g_sec, w_sec);
        EXPECT_LT(rel, bound) << names[sec] << " relative L2 error";
        col0 += widths[sec];
      }
      first = got;
    } else if (reproducible) {
      EXPECT_TRUE(BitEqual(first, got)) << "attention backward not reproducible";
    } else {
      ExpectClose(got, first, TolFor<T>(first, 2e-5, 2e-2), "attention dqkv, second run");
    }
  }
  SetAttentionImpl(AttentionImpl::kAuto);
  SetAttentionBackwardVariant(saved_variant);
}

class AttentionTest : public GpuTest, public ::testing::WithParamInterface<AttnShape> {};

TEST_P(AttentionTest, Fp32MatchesCpu) { CheckAttention<float>(GetParam(), AttentionImpl::kAuto); }
TEST_P(AttentionTest, Bf16SimtMatchesCpu) {
  CheckAttention<bf16>(GetParam(), AttentionImpl::kSimt);
}
// Head dims without tensor-core kernels (16, 32 below) fall back to SIMT
// inside; 64 and 128 run the named implementation.
TEST_P(AttentionTest, Bf16WmmaMatchesCpu) {
  CheckAttention<bf16>(GetParam(), AttentionImpl::kWmma);
}
// Every backward variant (LLMT_ATTN_BWD) on every shape: they only change
// the tiling at head dim 64, so each must meet the same tolerances and be
// reproducible run to run; other head dims run the default kernels.
TEST_P(AttentionTest, Bf16MmaMatchesCpu) {
  for (const bool dq64 : {false, true}) {
    for (const bool dkdv8 : {false, true}) {
      SCOPED_TRACE(std::string("backward variant dq64=") + (dq64 ? "1" : "0") +
                   " dkdv8=" + (dkdv8 ? "1" : "0"));
      AttentionBackwardVariant v;
      v.dq64 = dq64;
      v.dkdv8 = dkdv8;
      CheckAttention<bf16>(GetParam(), AttentionImpl::kMma, v);
    }
  }
}
// Runs `body` once per wgmma tile layout (internal::SetWgmmaLayout), with
// the layout's name in the failure trace; restores the setting.
template <typename F>
void ForEachWgmmaLayout(F body) {
  const internal::WgLayout saved = internal::GetWgmmaLayout();
  for (const auto layout : {internal::WgLayout::kSwizzled, internal::WgLayout::kBlocked}) {
    SCOPED_TRACE(layout == internal::WgLayout::kSwizzled ? "wgmma tiles swizzled"
                                                         : "wgmma tiles blocked");
    internal::SetWgmmaLayout(layout);
    body();
  }
  internal::SetWgmmaLayout(saved);
}

// The forward variants (LLMT_ATTN_FWD) on every shape: m64 (64-row blocks)
// and m64n128 (64-row blocks, 128-key tiles) at head dim 64, other head dims
// running the default; and the wgmma forwards, plain and pipelined (Hopper
// warpgroup MMA, also with two warpgroups per block; on the emulator, which
// implements wgmma, and on sm_90 GPUs -- elsewhere they fall back to the
// default) at head dims 64 and 128, in both tile layouts. Same tolerances;
// the backward runs from their lse.
TEST_P(AttentionTest, Bf16MmaForwardVariantsMatchCpu) {
  const AttentionForwardVariant saved = GetAttentionForwardVariant();
  const std::pair<AttentionForwardVariant, const char*> variants[] = {
      {AttentionForwardVariant::kM64, "m64"},
      {AttentionForwardVariant::kM64N128, "m64n128"}};
  for (const auto& [v, name] : variants) {
    SCOPED_TRACE(std::string("forward ") + name);
    SetAttentionForwardVariant(v);
    CheckAttention<bf16>(GetParam(), AttentionImpl::kMma);
  }
  ForEachWgmmaLayout([&] {
    const std::pair<AttentionForwardVariant, const char*> wg[] = {
        {AttentionForwardVariant::kWgmma, "wgmma"},
        {AttentionForwardVariant::kWgmmaPipe, "wgmma-pipe"},
        {AttentionForwardVariant::kWgmma2Wg, "wgmma-2wg"},
        {AttentionForwardVariant::kWgmmaPipe2Wg, "wgmma-pipe-2wg"}};
    for (const auto& [v, name] : wg) {
      SCOPED_TRACE(std::string("forward ") + name);
      SetAttentionForwardVariant(v);
      CheckAttention<bf16>(GetParam(), AttentionImpl::kMma);
    }
  });
  SetAttentionForwardVariant(saved);
}
// The wgmma backward (LLMT_ATTN_BWD=wgmma; head dim 64 on sm_90 and the
// emulator, the mma kernels elsewhere) on every shape, after the default and
// after the wgmma forward, in both tile layouts: same tolerances,
// reproducible run to run. `names`: LLMT_ATTN_BWD values (wgmma; wgmma-ss:
// K, V / Q, dO from shared memory; wgmma-fused, wgmma-fused-2wg).
void CheckWgmmaBackward(const AttnShape& shape, std::initializer_list<const char*> names) {
  const AttentionForwardVariant saved = GetAttentionForwardVariant();
  ForEachWgmmaLayout([&] {
    for (const char* name : names) {
      const AttentionBackwardVariant v = ParseAttentionBackwardVariant(name);
      for (const auto fwd :
           {AttentionForwardVariant::kDefault, AttentionForwardVariant::kWgmma}) {
        SCOPED_TRACE(std::string(name) +
                     (fwd == AttentionForwardVariant::kWgmma ? " after the wgmma forward"
                                                             : " after the default forward"));
        SetAttentionForwardVariant(fwd);
        CheckAttention<bf16>(shape, AttentionImpl::kMma, v);
      }
    }
  });
  SetAttentionForwardVariant(saved);
}
TEST_P(AttentionTest, Bf16WgmmaBackwardMatchesCpu) {
  CheckWgmmaBackward(GetParam(), {"wgmma", "wgmma-ss"});
}
// wgmma-fused: one kernel, dQ added in a fixed order, so reproducible too;
// also with 128-key blocks of two warpgroups. On the emulator a block that
// would wait for one that has not run aborts the test (a GPU could deadlock
// there). Its own test, so that bench/gpu/run.sh can run it in a process of
// its own.
TEST_P(AttentionTest, Bf16WgmmaFusedBackwardMatchesCpu) {
  CheckWgmmaBackward(GetParam(), {"wgmma-fused", "wgmma-fused-2wg"});
}

// cuDNN's fused attention (LLMT_ATTN_FWD=cudnn, LLMT_ATTN_BWD=cudnn and
// cudnn-det): the cuDNN forward with the own backward, the own forward with
// the cuDNN backward (the two share the lse), both, both with the
// deterministic backward, and auto (the default: the latter where cuDNN
// runs), against the CPU with the own kernels' tolerances;
// the plain cuDNN backward is close but not bit-identical run to run (cuDNN
// sums dQ with atomics), the deterministic one must be bit-identical. Where
// libcudnn or a GPU is missing (the emulator) the own kernels run instead and
// must pass the same checks; with LLMT_REQUIRE_CUDNN=1 (bench/gpu/run.sh)
// every call must have run cuDNN.
class CudnnAttentionTest : public AttentionTest {};

TEST_P(CudnnAttentionTest, Bf16MatchesCpu) {
  const char* req = std::getenv("LLMT_REQUIRE_CUDNN");
  const bool require = req != nullptr && std::string(req) == "1";
  std::cout << "cuDNN: " << cudnn::Describe() << "\n";
  const AttentionForwardVariant saved = GetAttentionForwardVariant();
  const AttentionBackwardVariant saved_bwd = GetAttentionBackwardVariant();
  // What the model does at creation: plans and workspace before the first
  // call (0 bytes where cuDNN cannot run; then the calls fall back).
  {
    const AttnShape& sh = GetParam();
    SetAttentionForwardVariant(AttentionForwardVariant::kCudnn);
    AttentionBackwardVariant v;
    v.cudnn = true;
    SetAttentionBackwardVariant(v);
    const AttentionPrepared ap = PrepareAttention(sh.B, sh.T, sh.NH, sh.NKV, sh.hd);
    EXPECT_EQ(ap.error, "");
    // The backward's fp32 dQ accumulator alone is B NH T hd floats.
    if (require) {
      EXPECT_GE(ap.bytes, size_t(sh.B) * sh.NH * sh.T * sh.hd * 4);
    }
    // The default: auto plans cuDNN's forward and deterministic backward.
    SetAttentionForwardVariant(AttentionForwardVariant::kAuto);
    SetAttentionBackwardVariant(ParseAttentionBackwardVariant("auto"));
    const AttentionPrepared au = PrepareAttention(sh.B, sh.T, sh.NH, sh.NKV, sh.hd);
    EXPECT_EQ(au.error, "");
    if (require) {
      EXPECT_NE(au.what.find("forward and deterministic backward (auto)"), std::string::npos)
          << au.what;
    } else if (au.bytes == 0) {
      EXPECT_NE(au.what.find("the own kernels (cuDNN not used: "), std::string::npos) << au.what;
    }
    SetAttentionBackwardVariant(saved_bwd);
  }
  const int64_t before = cudnn::Executions();
  int expected = 0;  // graphs cuDNN runs: 1 per forward, 2 per CheckAttention backward
  struct Combo {
    bool fwd, bwd, det, automatic;
  };
  for (const Combo c : {Combo{true, true, false, false}, Combo{true, false, false, false},
                        Combo{false, true, false, false}, Combo{true, true, true, false},
                        Combo{true, true, true, true}}) {
    SCOPED_TRACE(c.automatic ? std::string("auto (LLMT_ATTN_FWD/BWD unset)")
                             : std::string("cuDNN forward ") + (c.fwd ? "on" : "off") +
                                   ", backward " +
                                   (c.bwd ? (c.det ? "deterministic" : "on") : "off"));
    SetAttentionForwardVariant(c.automatic ? AttentionForwardVariant::kAuto
                               : c.fwd     ? AttentionForwardVariant::kCudnn
                                           : AttentionForwardVariant::kDefault);
    AttentionBackwardVariant v = ParseAttentionBackwardVariant(c.automatic ? "auto" : "own");
    v.cudnn = c.bwd && !c.automatic;
    v.cudnn_det = c.det && !c.automatic;
    CheckAttention<bf16>(GetParam(), AttentionImpl::kMma, v,
                         /*reproducible=*/!c.bwd || c.det);
    expected += (c.fwd ? 1 : 0) + (c.bwd ? 2 : 0);
    // Without cuDNN every combination is the same fallback: checked once.
    if (!require && cudnn::Executions() == before) break;
  }
  SetAttentionForwardVariant(saved);
  const int64_t ran = cudnn::Executions() - before;
  if (require) {
    EXPECT_EQ(ran, expected) << "LLMT_REQUIRE_CUDNN=1 but cuDNN ran " << ran << " of " << expected
                             << " attention calls (" << cudnn::Describe()
                             << "); the log's warning says why";
  } else if (ran == 0) {
    std::cout << "cuDNN attention did not run here (fallback checked): " << cudnn::Describe()
              << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudnnAttentionTest,
    ::testing::Values(AttnShape{2, 256, 4, 4, 64},    // MHA, hd 64 (GPT-2)
                      AttnShape{1, 384, 4, 2, 64},    // GQA groups of 2
                      AttnShape{2, 128, 4, 1, 128},   // multi-query, hd 128
                      AttnShape{1, 256, 8, 4, 128}));  // Llama-style GQA, hd 128

// One wgmma (Hopper warpgroup MMA) per tile layout with B read K-major
// (m64n64k16) and MN-major (m64n128k16), staged as the second k-chunk of a
// tile as the attention kernels do, against the CPU product of the same
// bf16 values: tells a wrong descriptor convention apart from a kernel bug.
// 16-term fp32 dot products: |got - want| <= 1e-5 (1 + |want|).
// On an sm_90 device (and the emulator) the library's own self-check must
// pass too, for both layouts: it decides whether LLMT_ATTN_FWD/BWD=wgmma run
// wgmma at all, so a failure there would otherwise only show as the mma
// kernels' timings.
TEST_F(GpuTest, WgmmaProductLayouts) {
  const auto info = GetDeviceInfo(0);
  ASSERT_TRUE(info.ok()) << info.status();
  if (info->cc_major != 9 || info->cc_minor != 0) {
    GTEST_SKIP() << "wgmma needs a compute-capability-9.0 device, this is " << info->ToString();
  }
  ForEachWgmmaLayout([] {
    EXPECT_TRUE(internal::WgmmaAvailable()) << "the wgmma self-check failed (see the log)";
  });
  const FVec a = RoundBf16(Randn(64 * 16, 5)), b = RoundBf16(Randn(16 * 128, 6));
  Dev<bf16> da(a), db(b);
  for (const auto layout : {internal::WgLayout::kSwizzled, internal::WgLayout::kBlocked}) {
    for (const bool mn_major : {false, true}) {
      SCOPED_TRACE(std::string(layout == internal::WgLayout::kSwizzled ? "swizzled" : "blocked") +
                   (mn_major ? ", B MN-major (n128)" : ", B K-major (n64)"));
      const int N = mn_major ? 128 : 64;  // B is b's first 16 x N values, row-major
      FVec want(64 * N, 0.f);
      for (int i = 0; i < 64; ++i) {
        for (int j = 0; j < N; ++j) {
          for (int k = 0; k < 16; ++k) want[i * N + j] += a[i * 16 + k] * b[k * N + j];
        }
      }
      auto mismatches = [&](bool swap) {
        Dev<float> dd(64 * N);
        internal::WgmmaProduct(dd, da, db, mn_major, layout, swap, nullptr);
        const FVec got = dd.Download();
        std::vector<std::string> bad;
        for (size_t i = 0; i < got.size(); ++i) {
          if (!(std::fabs(got[i] - want[i]) <= 1e-5f * (1.f + std::fabs(want[i])))) {
            bad.push_back("D[" + std::to_string(i / N) + "][" + std::to_string(i % N) +
                          "] = " + std::to_string(got[i]) + ", want " + std::to_string(want[i]));
          }
        }
        return bad;
      };
      const std::vector<std::string> bad = mismatches(false);
      for (size_t i = 0; i < std::min<size_t>(bad.size(), 5); ++i) ADD_FAILURE() << bad[i];
      EXPECT_EQ(bad.size(), 0u);
      // On a failure, say whether the GPU reads the layout with LBO and SBO
      // exchanged (the convention the PTX ISA's text leaves room to misread).
      if (!bad.empty()) {
        ADD_FAILURE() << "with LBO/SBO swapped: " << mismatches(true).size() << " mismatches of "
                      << 64 * N;
      }
    }
  }
}

// Unset, "" and "auto" select auto (cuDNN where it runs); "own" and
// "default" the own kernels; names combine.
TEST(AttentionSwitches, AutoAndOwnNames) {
  for (const char* name : {"", "auto", "auto,wgmma"}) {
    EXPECT_TRUE(ParseAttentionBackwardVariant(name).cudnn_auto) << "'" << name << "'";
  }
  EXPECT_TRUE(ParseAttentionBackwardVariant("auto,wgmma").wgmma);
  for (const char* name : {"own", "default", "wgmma", "cudnn-det"}) {
    EXPECT_FALSE(ParseAttentionBackwardVariant(name).cudnn_auto) << "'" << name << "'";
  }
  EXPECT_FALSE(AttentionBackwardVariant{}.cudnn_auto);
}

// The attention switches read their environment variables once, on first
// use; an unknown value stops the process with a message naming the
// variable and the value; each accepted forward name selects its variant.
// (Threadsafe death tests re-run this binary, so the child reads the
// variables afresh whatever this process read.)
TEST(AttentionSwitches, UnknownValuesAreFatalAndNamed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        setenv("LLMT_WGMMA_LAYOUT", "diagonal", 1);
        internal::GetWgmmaLayout();
      },
      "LLMT_WGMMA_LAYOUT: unknown value 'diagonal'");
  EXPECT_DEATH(
      {
        setenv("LLMT_ATTN_FWD", "wgmma-n128", 1);
        GetAttentionForwardVariant();
      },
      "LLMT_ATTN_FWD: unknown variant 'wgmma-n128'");
  // The forward's names, read from the environment in a child process.
  for (const auto& [value, want] :
       {std::pair{"", AttentionForwardVariant::kAuto},
        std::pair{"auto", AttentionForwardVariant::kAuto},
        std::pair{"own", AttentionForwardVariant::kDefault},
        std::pair{"default", AttentionForwardVariant::kDefault},
        std::pair{"cudnn", AttentionForwardVariant::kCudnn}}) {
    EXPECT_EXIT(
        {
          setenv("LLMT_ATTN_FWD", value, 1);
          std::exit(GetAttentionForwardVariant() == want ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "")
        << "LLMT_ATTN_FWD='" << value << "'";
  }
}

// The ds variant (dS stored by the dK/dV kernel, dQ = dS K from it) at head
// dims 64 and 128: with a scratch cap that holds the whole batch, and with
// one so small that every batch element is its own chunk (the B = 2 shapes
// then run two chunks through the same scratch).
TEST_P(AttentionTest, Bf16MmaStoredDsMatchesCpu) {
  for (const size_t cap : {size_t{512} << 20, size_t{1}}) {
    SCOPED_TRACE("ds variant, scratch cap " + std::to_string(cap));
    AttentionBackwardVariant v;
    v.ds = true;
    v.ds_max_bytes = cap;
    CheckAttention<bf16>(GetParam(), AttentionImpl::kMma, v);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Values(AttnShape{2, 67, 4, 2, 16},   // GQA, partial tiles, small hd
                      AttnShape{1, 130, 2, 2, 64},  // MHA, hd 64 (GPT-2)
                      AttnShape{2, 150, 4, 1, 64},  // multi-query, 3 tiles of 64
                      AttnShape{1, 96, 2, 1, 128},  // hd 128 (Llama-style)
                      AttnShape{1, 5, 3, 3, 32},    // fewer rows than a tile
                      // mma forward at hd 64 owns 128-row query tiles: three
                      // of them, the last partial, with GQA groups of 2
                      AttnShape{1, 300, 4, 2, 64},
                      // hd 128 GQA over several 64-row tiles, the last partial
                      AttnShape{1, 200, 4, 2, 128},
                      // tensor-core path with fewer rows than one m-tile
                      AttnShape{2, 5, 2, 1, 64},
                      // dkdv8 owns 256-key blocks: two of them, the last
                      // partial, with GQA groups of 3
                      AttnShape{1, 290, 6, 2, 64}));

// ------------------------------------- memory-bound kernels: odd shapes ----
// The vectorised (16-byte) paths of the column sums, norm backward and fused
// classifier against scalar references, with shapes that leave vector tails
// and views that force the scalar fallback. Both paths sum in the same order,
// so their parameter gradients must agree bit for bit.

}  // namespace
namespace {

// The exact-autotune fingerprint (matmul_internal.cuh): a pure function of
// the matrix's values (padding past `cols` ignored, independent of the grid
// split), sensitive to one flipped bit and to moving a value, and counting
// non-zero elements with -0 as zero.
TYPED_TEST(TypedGpuTest, MatrixFingerprint) {
  using T = TypeParam;
  const int64_t rows = 37, cols = 300, ld = 304;  // > one block's worth, padded rows
  FVec m = Randn(rows * ld, 91);
  Dev<T> a(m), b(m);
  FVec other = m;
  for (int64_t r = 0; r < rows; ++r) other[r * ld + cols + 1] = 5.f;  // padding only
  Dev<T> c(other);
  Dev<unsigned long long> words(internal::kFingerprintWords);
  auto print = [&](const T* p, int64_t rw, int64_t cl) {
    unsigned long long out[2];
    internal::Fingerprint(words.get(), out, p, rw, cl, ld, sizeof(T), nullptr);
    return std::pair<unsigned long long, unsigned long long>(out[0], out[1]);
  };
  const auto pa = print(a.get(), rows, cols);
  EXPECT_EQ(pa, print(b.get(), rows, cols));
  EXPECT_EQ(pa, print(c.get(), rows, cols)) << "padding columns must not count";
  EXPECT_EQ(pa.second, static_cast<unsigned long long>(rows * cols)) << "Randn has no zeros";
  EXPECT_NE(pa, print(a.get(), rows - 1, cols));  // fewer rows: another matrix
  // One value changed in its last bit, and two values swapped.
  FVec tweak = m;
  tweak[5 * ld + 7] = std::nextafter(tweak[5 * ld + 7], 1e30f);
  if constexpr (!std::is_same_v<T, float>) tweak[5 * ld + 7] = m[5 * ld + 7] * (1 + 1.f / 64);
  Dev<T> d(tweak);
  EXPECT_NE(pa.first, print(d.get(), rows, cols).first);
  FVec swapped = m;
  std::swap(swapped[3], swapped[4]);
  Dev<T> e(swapped);
  EXPECT_NE(pa.first, print(e.get(), rows, cols).first);
  // Zeros (and -0) do not count as non-zero.
  FVec zeros = m;
  zeros[0] = 0.f;
  zeros[1] = -0.f;
  Dev<T> z(zeros);
  EXPECT_EQ(print(z.get(), rows, cols).second, static_cast<unsigned long long>(rows * cols - 2));
}

// dbias + alpha * column sums of dout[M, N] (row stride ld), in double.
FVec ColumnSumRef(const FVec& dy, const FVec& db0, int64_t M, int64_t N, int64_t ld, float alpha) {
  FVec want(N);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t m = 0; m < M; ++m) s += dy[m * ld + n];
    want[n] = static_cast<float>(db0[n] + alpha * s);
  }
  return want;
}

// G: gradient type; T: activation type (G = float, T = bf16 is the mixed
// overload). Single stage and two stages (with a scratch that fits all
// chunks, and one so small that the chunks grow), aligned and misaligned.
template <typename G, typename T>
void CheckBiasBackward(int64_t M, int64_t N) {
  SCOPED_TRACE(::testing::Message() << "M=" << M << " N=" << N << " " << testing::TypeName<T>()
                                    << " -> " << testing::TypeName<G>());
  const float alpha = 0.75f;
  // One leading element so that offset 1 is a misaligned (scalar) view.
  const FVec dy = Prep<T>(Randn(M * N + 1, 60, 2.f)), db0 = Prep<G>(Randn(N, 61));
  for (int offset : {0, 1}) {
    const FVec view(dy.begin() + offset, dy.begin() + offset + M * N);
    FVec want = ColumnSumRef(view, db0, M, N, N, alpha);
    if constexpr (std::is_same_v<G, bf16>) want = RoundBf16(want);
    // Column sums of M values: fp32 accumulation error grows like sqrt(M) ulp.
    const Tol tol = TolFor<G>(want, 2e-5);
    Dev<T> gdy(dy);
    FVec first;
    for (int mode = 0; mode < 3; ++mode) {
      Dev<G> gdb(db0);
      if (mode == 0) {
        BiasBackward(gdb.get(), gdy.get() + offset, M, N, alpha, nullptr);
      } else {
        // mode 1: room for every 256-row chunk; mode 2: room for 3 chunks only.
        const size_t bytes = mode == 1 ? (M / 256 + 2) * N * sizeof(float) : 3 * N * sizeof(float);
        auto scratch = Scratch(bytes);
        internal::BiasBackwardTwoStage(gdb.get(), gdy.get() + offset, M, N, alpha, scratch.get(),
                                       bytes, nullptr);
      }
      const FVec got = gdb.Download();
      ExpectClose(got, want, tol, "dbias mode " + std::to_string(mode));
      // Same call twice: bit-identical.
      Dev<G> gdb2(db0);
      if (mode == 0) {
        BiasBackward(gdb2.get(), gdy.get() + offset, M, N, alpha, nullptr);
        EXPECT_TRUE(BitEqual(got, gdb2.Download())) << "BiasBackward not reproducible";
      }
    }
  }
  // Vector (offset 0) and scalar (a copy at offset 1) paths: same bits.
  Dev<T> galigned(FVec(dy.begin() + 1, dy.end())), gshift(dy);
  Dev<G> a(db0), b(db0);
  BiasBackward(a.get(), galigned.get(), M, N, alpha, nullptr);
  BiasBackward(b.get(), gshift.get() + 1, M, N, alpha, nullptr);
  EXPECT_TRUE(BitEqual(a.Download(), b.Download())) << "vector and scalar bias paths differ";
}

TEST_F(GpuTest, BiasBackwardShapesAndPaths) {
  // N = 96: full 16-byte vectors; 45: no vectors; 20: fp32 vectors only;
  // 3: narrower than a vector. M = 1000: several 256-row chunks.
  for (auto [M, N] : {std::pair<int64_t, int64_t>{1000, 96}, {333, 45}, {517, 20}, {1, 3}}) {
    CheckBiasBackward<float, float>(M, N);
    CheckBiasBackward<bf16, bf16>(M, N);
    CheckBiasBackward<float, bf16>(M, N);
  }
}

// BiasBackwardColumns: the query and value thirds of a QKV-shaped matrix
// (row stride ld = 3N, or padded), in one pass: against the double
// reference per block, single stage and two stages (room for every chunk,
// and for three only); the key third is NaN, so a sum that read it would
// show; with room for every chunk each block's sums are bit-identical to
// BiasBackwardTwoStage on a dense copy of that block (same chunks, same
// order); with dbias2 null only the first block is summed.
template <typename G, typename T>
void CheckBiasBackwardColumns(int64_t M, int64_t N, int64_t ld) {
  SCOPED_TRACE(::testing::Message() << "M=" << M << " N=" << N << " ld=" << ld << " "
                                    << testing::TypeName<T>() << " -> " << testing::TypeName<G>());
  const float alpha = 0.75f;
  const FVec db0q = Prep<G>(Randn(N, 63)), db0v = Prep<G>(Randn(N, 64));
  for (int offset : {0, 1}) {
    FVec dy = Prep<T>(Randn(M * ld + 1, 62, 2.f));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = N; n < 2 * N; ++n) dy[offset + m * ld + n] = NAN;
    }
    const FVec view(dy.begin() + offset, dy.begin() + offset + M * ld);
    const FVec vview(view.begin() + 2 * N, view.end());
    FVec want_q = ColumnSumRef(view, db0q, M, N, ld, alpha);
    FVec want_v = ColumnSumRef(vview, db0v, M, N, ld, alpha);
    if constexpr (std::is_same_v<G, bf16>) {
      want_q = RoundBf16(want_q);
      want_v = RoundBf16(want_v);
    }
    Dev<T> gdy(dy);
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE(::testing::Message() << "offset " << offset << " mode " << mode);
      // mode 0: no scratch (single stage); 1: room for every 256-row chunk of
      // both blocks; 2: room for 3 chunks.
      const size_t bytes = mode == 0   ? 0
                           : mode == 1 ? 2 * (M / 256 + 2) * N * sizeof(float)
                                       : 3 * 2 * N * sizeof(float);
      auto scratch = Scratch(bytes);
      Dev<G> gq(db0q), gv(db0v);
      BiasBackwardColumns(gq.get(), gv.get(), gdy.get() + offset, M, N, ld, 2 * N, alpha,
                          mode == 0 ? nullptr : scratch.get(), bytes, nullptr);
      const FVec got_q = gq.Download(), got_v = gv.Download();
      ExpectClose(got_q, want_q, TolFor<G>(want_q, 2e-5), "query block");
      ExpectClose(got_v, want_v, TolFor<G>(want_v, 2e-5), "value block");
      if (mode == 1) {
        for (int b = 0; b < 2; ++b) {
          FVec dense(M * N);
          for (int64_t m = 0; m < M; ++m) {
            for (int64_t n = 0; n < N; ++n) dense[m * N + n] = view[m * ld + 2 * N * b + n];
          }
          Dev<T> gdense(dense);
          Dev<G> gd(b == 0 ? db0q : db0v);
          internal::BiasBackwardTwoStage(gd.get(), gdense.get(), M, N, alpha, scratch.get(), bytes,
                                         nullptr);
          EXPECT_TRUE(BitEqual(gd.Download(), b == 0 ? got_q : got_v))
              << "block " << b << " differs from the dense two-stage sum";
        }
      }
      Dev<G> gq1(db0q);
      BiasBackwardColumns(gq1.get(), static_cast<G*>(nullptr), gdy.get() + offset, M, N, ld,
                          2 * N, alpha, mode == 0 ? nullptr : scratch.get(), bytes, nullptr);
      ExpectClose(gq1.Download(), want_q, TolFor<G>(want_q, 2e-5), "query block alone");
    }
  }
}

TEST_F(GpuTest, BiasBackwardColumnBlocks) {
  // GPT-2-like (N a multiple of the vectors, ld = 3N), a padded row stride,
  // and N = 45 (no vectors).
  for (auto [M, N, ld] : {std::tuple<int64_t, int64_t, int64_t>{1000, 96, 288}, {517, 64, 200},
                          {333, 45, 135}}) {
    CheckBiasBackwardColumns<float, float>(M, N, ld);
    CheckBiasBackwardColumns<bf16, bf16>(M, N, ld);
    CheckBiasBackwardColumns<float, bf16>(M, N, ld);
  }
}

// MatVecAdd: y += A x and y += A^T x against a double reference, fp32 and
// bf16 A, sizes off the warp and block widths; reproducible bit for bit.
template <typename T>
void CheckMatVecAdd(int64_t m, int64_t n) {
  SCOPED_TRACE(::testing::Message() << "m=" << m << " n=" << n << " " << testing::TypeName<T>());
  const FVec A = Prep<T>(Randn(m * n, 70)), xr = Randn(n, 71), xc = Randn(m, 72);
  const FVec y0r = Randn(m, 73), y0c = Randn(n, 74);
  FVec want_r(m), want_c(n);
  for (int64_t i = 0; i < m; ++i) {
    double s = y0r[i];
    for (int64_t j = 0; j < n; ++j) s += double(A[i * n + j]) * xr[j];
    want_r[i] = static_cast<float>(s);
  }
  for (int64_t j = 0; j < n; ++j) {
    double s = y0c[j];
    for (int64_t i = 0; i < m; ++i) s += double(A[i * n + j]) * xc[i];
    want_c[j] = static_cast<float>(s);
  }
  Dev<T> gA(A);
  Dev<float> gxr(xr), gxc(xc);
  FVec first_r, first_c;
  for (int rep = 0; rep < 2; ++rep) {
    Dev<float> gyr(y0r), gyc(y0c);
    MatVecAdd(gyr.get(), gA.get(), gxr.get(), m, n, false, nullptr);
    MatVecAdd(gyc.get(), gA.get(), gxc.get(), m, n, true, nullptr);
    const FVec got_r = gyr.Download(), got_c = gyc.Download();
    // Dot products of up to ~300 terms in fp32: 1e-5 of the vector's scale.
    ExpectClose(got_r, want_r, TolFor<float>(want_r), "A x");
    ExpectClose(got_c, want_c, TolFor<float>(want_c), "A^T x");
    if (rep == 0) {
      first_r = got_r;
      first_c = got_c;
    } else {
      EXPECT_TRUE(BitEqual(first_r, got_r) && BitEqual(first_c, got_c)) << "not reproducible";
    }
  }
}

TEST_F(GpuTest, MatVecAddBothOrientations) {
  for (auto [m, n] : {std::pair<int64_t, int64_t>{96, 96}, {37, 300}, {300, 45}, {1, 1}}) {
    CheckMatVecAdd<float>(m, n);
    CheckMatVecAdd<bf16>(m, n);
  }
}

// Norm backward with rows not a multiple of the 32-row blocks, C with and
// without 16-byte vectors, C wider than one 256-channel tile; the misaligned
// view runs the scalar kernel and must give the same weight/bias gradient
// bits.
template <typename T, typename G>
void CheckNormBackwardPaths(int64_t rows, int C, bool ln) {
  SCOPED_TRACE(::testing::Message() << "rows=" << rows << " C=" << C << (ln ? " LN " : " RMS ")
                                    << testing::TypeName<T>() << " -> " << testing::TypeName<G>());
  const int64_t n = rows * C;
  const FVec x = Prep<T>(Randn(n, 70, 2.f)), dy = Prep<T>(Randn(n, 71));
  const FVec w = Prep<T>(Uniform(C, 72, 0.5f, 1.5f)), b(C, 0.f);
  const FVec dx0 = Prep<T>(Randn(n, 73)), dw0 = Prep<G>(Randn(C, 74)), db0 = Prep<G>(Randn(C, 75));
  FVec y(n), mean(rows), rstd(rows), dx = dx0, dw = dw0, db = db0;
  if (ln) {
    cpu::LayerNormForward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, C,
                          1e-5f);
    cpu::LayerNormBackward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), rows, C);
  } else {
    cpu::RMSNormForward(y.data(), rstd.data(), x.data(), w.data(), rows, C, 1e-5f);
    cpu::RMSNormBackward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, C);
  }
  if constexpr (std::is_same_v<G, bf16>) {
    dw = RoundBf16(dw);
    db = RoundBf16(db);
  }
  // The same values behind `offset` leading elements.
  auto shifted = [](const FVec& v, int offset) {
    FVec out(offset, 0.f);
    out.insert(out.end(), v.begin(), v.end());
    return out;
  };
  auto scratch = Scratch(NormBackwardScratchBytes(rows, C));
  Dev<T> gw(w);
  Dev<float> gmean(mean), grstd(rstd);
  const FVec ds0 = Prep<G>(Randn(C, 76));
  FVec dx_bits[2], dw_bits[2], db_bits[2];
  for (int offset : {0, 1}) {
    // Without and with (twice) the column sums of the updated dinp
    // (dinp_colsum): asking for them must not change a bit of the other
    // outputs, and they must be the same bits run to run.
    FVec ds_first;
    for (const int run : {0, 1, 2}) {
      const bool colsum = run > 0;
      SCOPED_TRACE(::testing::Message() << "offset " << offset << ", run " << run);
      Dev<T> gx(shifted(x, offset)), gdy(shifted(dy, offset));
      Dev<T> gdx(shifted(dx0, offset));
      Dev<G> gdw(dw0), gdb(db0), gds(ds0);
      G* ds = colsum ? gds.get() : nullptr;
      if (ln) {
        LayerNormBackward(gdx.get() + offset, gdw.get(), gdb.get(), gdy.get() + offset,
                          gx.get() + offset, gw.get(), gmean.get(), grstd.get(), rows, C,
                          scratch.get(), scratch.size(), nullptr, ds);
      } else {
        RMSNormBackward(gdx.get() + offset, gdw.get(), gdy.get() + offset, gx.get() + offset,
                        gw.get(), grstd.get(), rows, C, scratch.get(), scratch.size(), nullptr, ds);
      }
      FVec got_dx = gdx.Download();
      got_dx.erase(got_dx.begin(), got_dx.begin() + offset);
      const FVec got_dw = gdw.Download(), got_db = gdb.Download();
      if (colsum) {
        EXPECT_TRUE(BitEqual(got_dx, dx_bits[offset])) << "dinp changed by colsum";
        EXPECT_TRUE(BitEqual(got_dw, dw_bits[offset])) << "dweight changed by colsum";
        EXPECT_TRUE(BitEqual(got_db, db_bits[offset])) << "dbias changed by colsum";
        // ds0 + the column sums of dinp as stored (double reference); fp32
        // sums over `rows` values: summation-order differences only.
        FVec want = ds0;
        for (int c = 0; c < C; ++c) {
          double sum = 0;
          for (int64_t r = 0; r < rows; ++r) sum += got_dx[r * C + c];
          want[c] = static_cast<float>(ds0[c] + sum);
        }
        if constexpr (std::is_same_v<G, bf16>) want = RoundBf16(want);
        const FVec got_ds = gds.Download();
        ExpectClose(got_ds, want, TolFor<G>(want, 2e-5), "dinp column sums");
        if (run == 1) {
          ds_first = got_ds;
        } else {
          EXPECT_TRUE(BitEqual(got_ds, ds_first)) << "dinp column sums not reproducible";
        }
        continue;
      }
      EXPECT_TRUE(BitEqual(gds.Download(), ds0)) << "dinp_colsum written when not asked for";
      ExpectClose(got_dx, dx, TolFor<T>(dx), "dinp");
      dx_bits[offset] = got_dx;
      dw_bits[offset] = got_dw;
      db_bits[offset] = got_db;
      // Sums over `rows` products: allow for fp32 summation-order differences.
      ExpectClose(dw_bits[offset], dw, TolFor<G>(dw, 2e-5), "dweight");
      if (ln) ExpectClose(db_bits[offset], db, TolFor<G>(db, 2e-5), "dbias");
    }
  }
  EXPECT_TRUE(BitEqual(dw_bits[0], dw_bits[1])) << "vector and scalar dweight differ";
  EXPECT_TRUE(BitEqual(db_bits[0], db_bits[1])) << "vector and scalar dbias differ";
}

TEST_F(GpuTest, NormBackwardShapesAndPaths) {
  for (auto [rows, C] : {std::pair<int64_t, int>{100, 272}, {33, 36}, {7, 5}, {65, 520}}) {
    for (bool ln : {true, false}) {
      CheckNormBackwardPaths<float, float>(rows, C, ln);
      CheckNormBackwardPaths<bf16, bf16>(rows, C, ln);
      CheckNormBackwardPaths<bf16, float>(rows, C, ln);
    }
  }
}

// Sets a legacy-kernel switch (SetLegacyNormBackward,
// SetLegacySoftmaxCrossEntropy: each returns the previous setting) and
// restores the previous selection when it goes out of scope.
class LegacyKernelScope {
 public:
  LegacyKernelScope(bool (*set)(bool), bool legacy) : set_(set), prev_(set(legacy)) {}
  ~LegacyKernelScope() { set_(prev_); }

 private:
  bool (*set_)(bool);
  bool prev_;
};

// The single-read backward (register rows: C = 768 NV = 3, C = 1024 NV = 4,
// C = 264 with a partial last vector; the loop variant: fp32 C = 768, C = 100
// not a multiple of 8, and every misaligned view) and its fallback, the
// previous kernel (C = 1600 LayerNorm: the per-warp slices exceed the shared
// memory cap), each also with the legacy switch on. Row counts are odd and
// span several 64-row blocks. CheckNormBackwardPaths also requires the
// vector and scalar (misaligned) runs to give the same weight/bias bits.
TEST_F(GpuTest, NormBackwardFastAndLegacyPaths) {
  for (bool legacy : {false, true}) {
    SCOPED_TRACE(legacy ? "legacy kernel" : "default kernel");
    LegacyKernelScope scope(SetLegacyNormBackward, legacy);
    for (auto [rows, C] : {std::pair<int64_t, int>{131, 768}, {33, 1024}, {65, 264}, {45, 100}}) {
      for (bool ln : {true, false}) {
        CheckNormBackwardPaths<bf16, bf16>(rows, C, ln);
        CheckNormBackwardPaths<bf16, float>(rows, C, ln);
      }
    }
    CheckNormBackwardPaths<float, float>(70, 768, true);
    CheckNormBackwardPaths<float, float>(70, 768, false);
    CheckNormBackwardPaths<bf16, float>(9, 1600, true);
  }
}

// Vocabularies that are not a multiple of the vector width (the last vector
// straddles V), padded and unpadded rows, targets in the vector tail, and
// a misaligned view (scalar kernel); run twice for reproducibility.
template <typename T>
void CheckCrossEntropyShape(int64_t rows, int V, int64_t ld, int offset) {
  SCOPED_TRACE(::testing::Message() << "rows=" << rows << " V=" << V << " ld=" << ld
                                    << " offset=" << offset << " " << testing::TypeName<T>());
  const FVec logits = Prep<T>(Randn(rows * V, 80, 4.f));
  std::vector<int32_t> targets = RandTokens(rows, V, 81);
  targets[0] = V - 1;  // the last (tail) column
  if (rows > 1) targets[1] = 0;
  FVec want = logits, row_loss(rows);
  const float grad_scale = 0.5f;
  cpu::SoftmaxCrossEntropy(want.data(), targets.data(), rows, V, grad_scale, row_loss.data());
  FVec padded(rows * ld + offset, 3.f);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(logits.begin() + r * V, logits.begin() + (r + 1) * V,
              padded.begin() + offset + r * ld);
  }
  Dev<int32_t> gt(rows);
  ASSERT_EQ(cudaMemcpy(gt.get(), targets.data(), rows * 4, cudaMemcpyHostToDevice), cudaSuccess);
  FVec first_loss, first_grad;
  for (int run = 0; run < 2; ++run) {
    Dev<T> gl(padded);
    Dev<float> gloss(rows);
    SoftmaxCrossEntropy(gl.get() + offset, gt.get(), rows, V, ld, grad_scale, gloss.get(), nullptr);
    const FVec got = gl.Download(), loss = gloss.Download();
    FVec dense(rows * V);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = got.data() + offset + r * ld;
      std::copy(row, row + V, dense.begin() + r * V);
      for (int64_t j = V; j < ld; ++j) ASSERT_EQ(row[j], 0.f) << "padding column " << j;
    }
    ExpectClose(dense, want, TolFor<T>(want), "dlogits");
    ExpectClose(loss, row_loss, TolFor<float>(row_loss), "row losses");
    if (run == 0) {
      first_loss = loss;
      first_grad = got;
    } else {
      EXPECT_TRUE(BitEqual(first_loss, loss)) << "row losses not reproducible";
      EXPECT_TRUE(BitEqual(first_grad, got)) << "dlogits not reproducible";
    }
  }
}

TYPED_TEST(TypedGpuTest, SoftmaxCrossEntropyOddShapes) {
  using T = TypeParam;
  CheckCrossEntropyShape<T>(5, 10001, 10008, 0);  // > 1024 vectors' worth, padded
  CheckCrossEntropyShape<T>(3, 1001, 1001, 0);    // ld not a multiple of 8
  CheckCrossEntropyShape<T>(3, 1001, 1008, 1);    // misaligned: scalar
  CheckCrossEntropyShape<T>(4, 5, 8, 0);          // one partial vector
  CheckCrossEntropyShape<T>(2, 3, 3, 0);
}

// The single-read kernel (row staged in shared memory: 16-byte aligned rows
// of at most 112 KB) and its fallback, the two-pass kernel, each also with
// the legacy switch on: GPT-2's padded vocabulary (bf16 staged; fp32, 201 KB,
// too long), a vocabulary longer than the staging capacity (bf16 140 KB), V
// not a multiple of the vector width with an odd row count, and the padding
// columns written as 0 (CheckCrossEntropyShape).
TYPED_TEST(TypedGpuTest, SoftmaxCrossEntropyFastAndLegacyPaths) {
  using T = TypeParam;
  for (bool legacy : {false, true}) {
    SCOPED_TRACE(legacy ? "legacy kernel" : "default kernel");
    LegacyKernelScope scope(SetLegacySoftmaxCrossEntropy, legacy);
    CheckCrossEntropyShape<T>(2, 50257, 50304, 0);  // GPT-2
    CheckCrossEntropyShape<T>(1, 70001, 70008, 0);  // > 112 KB in bf16
    CheckCrossEntropyShape<T>(33, 1003, 1008, 0);   // straddling vector, odd rows
    CheckCrossEntropyShape<T>(3, 1003, 1008, 1);    // misaligned: two-pass, scalar
  }
}

// A capped grid (max_blocks: each block takes rows b, b + grid, ... in
// turn, as the CUDA model's classifier uses it beside the logits GEMM) gives
// bit for bit what one block per row gives, on both kernels (staged rows,
// the two-pass kernel by the legacy switch and by a misaligned view), with
// caps of 1, 2 and 5 blocks and one above the row count.
TYPED_TEST(TypedGpuTest, SoftmaxCrossEntropyCappedGridIsBitIdentical) {
  using T = TypeParam;
  for (bool legacy : {false, true}) {
    SCOPED_TRACE(legacy ? "legacy kernel" : "default kernel");
    LegacyKernelScope scope(SetLegacySoftmaxCrossEntropy, legacy);
    for (auto [rows, V, ld, offset] : {std::tuple<int64_t, int, int64_t, int>{33, 1003, 1008, 0},
                                       {7, 50257, 50304, 0},
                                       {9, 1003, 1008, 1}}) {
      SCOPED_TRACE(::testing::Message() << "rows=" << rows << " V=" << V << " offset=" << offset);
      FVec padded(rows * ld + offset, 3.f);
      const FVec logits = Prep<T>(Randn(rows * V, 83, 4.f));
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(logits.begin() + r * V, logits.begin() + (r + 1) * V,
                  padded.begin() + offset + r * ld);
      }
      const std::vector<int32_t> targets = RandTokens(rows, V, 84);
      Dev<int32_t> gt(rows);
      ASSERT_EQ(cudaMemcpy(gt.get(), targets.data(), rows * 4, cudaMemcpyHostToDevice),
                cudaSuccess);
      FVec want_grad, want_loss;
      for (int cap : {0, 1, 2, 5, 1000}) {
        SCOPED_TRACE(cap);
        Dev<T> gl(padded);
        Dev<float> gloss(rows);
        SoftmaxCrossEntropy(gl.get() + offset, gt.get(), rows, V, ld, 0.25f, gloss.get(), nullptr,
                            cap);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const FVec grad = gl.Download(), loss = gloss.Download();
        if (cap == 0) {
          want_grad = grad;
          want_loss = loss;
          ASSERT_TRUE(std::all_of(loss.begin(), loss.end(), [](float l) { return l > 0.f; }));
        } else {
          EXPECT_TRUE(BitEqual(grad, want_grad)) << "dlogits differ";
          EXPECT_TRUE(BitEqual(loss, want_loss)) << "row losses differ";
        }
      }
    }
  }
}

TYPED_TEST(TypedGpuTest, SoftmaxOddShapes) {
  using T = TypeParam;
  for (auto [V, ld] : {std::pair<int, int64_t>{1001, 1008}, {13, 13}, {2051, 2056}}) {
    const int64_t rows = 3;
    const FVec x = Prep<T>(Randn(rows * V, 82, 3.f));
    FVec want = x;
    cpu::Softmax(want.data(), rows, V);
    FVec padded(rows * ld, 9.f);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(x.begin() + r * V, x.begin() + (r + 1) * V, padded.begin() + r * ld);
    }
    Dev<T> gx(padded);
    Softmax(gx.get(), rows, V, ld, nullptr);
    const FVec got = gx.Download();
    FVec dense(rows * V);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(got.begin() + r * ld, got.begin() + r * ld + V, dense.begin() + r * V);
      for (int64_t j = V; j < ld; ++j) ASSERT_EQ(got[r * ld + j], 0.f);
    }
    ExpectClose(dense, want, TolFor<T>(want), "softmax V=" + std::to_string(V));
  }
}

}  // namespace
}  // namespace llmt::kernels::cuda
