// cuBLASLt GEMMs against the CPU backend (OpenBLAS) on random inputs.
// Tolerances (|gpu - cpu| <= atol + rtol |cpu|):
//   fp32: rtol 1e-5, atol 1e-5 (sums of K products in a different order);
//   bf16: rtol 1e-2, atol 2e-2 (inputs are rounded to bf16 for both backends,
//         accumulation is fp32, outputs carry one bf16 rounding, 2^-9).
#include "kernels/cuda/matmul.cuh"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "kernels/activation.h"
#include "kernels/matmul.h"
#include "tests/unit/cuda/cuda_test_util.h"

namespace llmt::kernels::cuda {
namespace {

using testing::Dev;
using testing::ExpectClose;
using testing::FVec;
using testing::MaxAbs;
using testing::Prep;
using testing::Randn;
using testing::RoundBf16;
using testing::Tol;

bool SameBits(const FVec& a, const FVec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <typename T>
Tol GemmTol() {
  if constexpr (std::is_same_v<T, float>) {
    return {1e-5, 1e-5, 1e-5};
  } else {
    return {1e-2, 2e-2, 1e-2};
  }
}

template <typename T>
class MatmulTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU (cudaGetDeviceCount reports none)";
    ASSERT_TRUE(SetDevice(0).ok());
    auto b = Blas::Create();
    ASSERT_TRUE(b.ok()) << b.status();
    blas_ = std::move(*b);
  }
  std::unique_ptr<Blas> blas_;
};

using Types = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(MatmulTest, Types);

// Forward with every combination of layout, bias and residual; odd sizes to
// exercise unaligned leading dimensions.
TYPED_TEST(MatmulTest, ForwardMatchesCpu) {
  using T = TypeParam;
  for (const auto layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    for (int variant = 0; variant < 4; ++variant) {
      for (const auto& [M, K, N] : {std::tuple{64, 48, 80}, std::tuple{37, 29, 53}}) {
        const bool with_bias = variant & 1, with_res = variant & 2;
        SCOPED_TRACE(::testing::Message()
                     << "layout " << static_cast<int>(layout) << " bias " << with_bias
                     << " residual " << with_res << " M=" << M << " K=" << K << " N=" << N);
        const FVec x = Prep<T>(Randn(size_t(M) * K, 1));
        const FVec w = Prep<T>(Randn(size_t(K) * N, 2, 0.2f));
        const FVec b = Prep<T>(Randn(N, 3));
        const FVec r = Prep<T>(Randn(size_t(M) * N, 4));
        FVec want(size_t(M) * N);
        cpu::MatmulForward(want.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, M, K, N,
                           layout, with_res ? r.data() : nullptr);
        Dev<T> dx(x), dw(w), db(b), dr(r), dout(size_t(M) * N);
        MatmulForward(*this->blas_, dout.get(), dx.get(), dw.get(), with_bias ? db.get() : nullptr,
                      M, K, N, layout, with_res ? dr.get() : nullptr, nullptr, nullptr);
        ExpectClose(dout.Download(), want, GemmTol<T>(), "out");
      }
    }
  }
}

// out may alias the residual (in-place residual stream update).
TYPED_TEST(MatmulTest, ForwardResidualInPlace) {
  using T = TypeParam;
  const int M = 32, K = 64, N = 48;
  const FVec x = Prep<T>(Randn(size_t(M) * K, 5));
  const FVec w = Prep<T>(Randn(size_t(N) * K, 6, 0.2f));
  const FVec b = Prep<T>(Randn(N, 7));
  const FVec r = Prep<T>(Randn(size_t(M) * N, 8));
  FVec want = r;
  cpu::MatmulForward(want.data(), x.data(), w.data(), b.data(), M, K, N, WeightLayout::kOutIn,
                     want.data());
  Dev<T> dx(x), dw(w), db(b), dr(r);
  MatmulForward(*this->blas_, dr.get(), dx.get(), dw.get(), db.get(), M, K, N, WeightLayout::kOutIn,
                dr.get(), nullptr, nullptr);
  ExpectClose(dr.Download(), want, GemmTol<T>(), "out");
}

// Fused GELU epilogue (and its fallback) against CPU matmul + GeluForward.
TYPED_TEST(MatmulTest, ForwardGeluEpilogue) {
  using T = TypeParam;
  const int M = 64, K = 32, N = 96;
  const FVec x = Prep<T>(Randn(size_t(M) * K, 9));
  const FVec w = Prep<T>(Randn(size_t(K) * N, 10, 0.3f));
  const FVec b = Prep<T>(Randn(N, 11));
  FVec pre(size_t(M) * N), want(size_t(M) * N);
  cpu::MatmulForward(pre.data(), x.data(), w.data(), b.data(), M, K, N, WeightLayout::kInOut);
  cpu::GeluForward(want.data(), pre.data(), M * N);
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "fallback");
    this->blas_->set_fuse_epilogues(fuse);
    Dev<T> dx(x), dw(w), db(b), dpre(size_t(M) * N), dout(size_t(M) * N);
    MatmulForward(*this->blas_, dout.get(), dx.get(), dw.get(), db.get(), M, K, N,
                  WeightLayout::kInOut, nullptr, dpre.get(), nullptr);
    ExpectClose(dpre.Download(), pre, GemmTol<T>(), "pre_gelu");
    ExpectClose(dout.Download(), want, GemmTol<T>(), "gelu out");
  }
}

// Autotune kExact keeps results bit-identical to no autotuning (GPT-2-sized
// GEMMs, so the tuner actually runs: outputs of >= 2^20 elements): forward
// with bias, with the GELU-aux epilogue (both outputs), and dinp with the
// DGELU epilogue. kAny must still be correct within the usual tolerance.
TYPED_TEST(MatmulTest, AutotuneExactIsBitIdentical) {
  using T = TypeParam;
  const int M = 2048, K = 768, N = 3072;
  const FVec x = Prep<T>(Randn(size_t(M) * K, 21));
  const FVec w = Prep<T>(Randn(size_t(K) * N, 22, 0.05f));
  const FVec b = Prep<T>(Randn(N, 23));
  const FVec dy = Prep<T>(Randn(size_t(M) * N, 24));
  const FVec r0 = Prep<T>(Randn(size_t(M) * N, 25));
  const FVec dw0 = Randn(size_t(K) * N, 26, 0.01f);  // fp32 gradient accumulator
  struct Out {
    FVec plain, gelu, pre, dinp, resid, dweight;
  };
  // in_place: also tune the accumulate-into-output GEMMs (the residual add
  // and dweight +=), which otherwise keep the heuristic's first candidate.
  auto run = [&](Blas::Autotune mode, bool in_place = false,
                 int candidates = Blas::kDefaultCandidates) {
    auto blas = Blas::Create();
    EXPECT_TRUE(blas.ok()) << blas.status();
    (*blas)->set_autotune(mode);
    (*blas)->set_autotune_in_place(in_place);
    (*blas)->set_max_candidates(candidates);
    Dev<T> dx(x), dw(w), db(b), ddy(dy), dplain(size_t(M) * N), dgelu(size_t(M) * N),
        dpre(size_t(M) * N), ddinp(size_t(M) * K), dres(r0);
    Dev<float> ddw(dw0);
    Out o;
    // Twice each: the first call tunes, the second runs the chosen algorithm
    // (the accumulating ones thus add twice, the same in every mode).
    for (int rep = 0; rep < 2; ++rep) {
      MatmulForward(**blas, dplain.get(), dx.get(), dw.get(), db.get(), M, K, N,
                    WeightLayout::kInOut, nullptr, nullptr, nullptr);
      MatmulForward(**blas, dgelu.get(), dx.get(), dw.get(), db.get(), M, K, N,
                    WeightLayout::kInOut, nullptr, dpre.get(), nullptr);
      MatmulBackward(**blas, ddinp.get(), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                     ddy.get(), dx.get(), dw.get(), M, K, N, WeightLayout::kInOut, 1.f, false,
                     dpre.get(), nullptr);
      MatmulForward(**blas, dres.get(), dx.get(), dw.get(), db.get(), M, K, N,
                    WeightLayout::kInOut, dres.get(), nullptr, nullptr);
      if constexpr (std::is_same_v<T, bf16>) {
        MatmulBackward(**blas, static_cast<bf16*>(nullptr), ddw.get(), static_cast<float*>(nullptr),
                       ddy.get(), dx.get(), dw.get(), M, K, N, WeightLayout::kInOut, 1.f, false,
                       nullptr, nullptr);
      } else {
        MatmulBackward(**blas, static_cast<float*>(nullptr), ddw.get(), static_cast<float*>(nullptr),
                       ddy.get(), dx.get(), dw.get(), M, K, N, WeightLayout::kInOut, 1.f, false,
                       nullptr, nullptr);
      }
    }
    o.plain = dplain.Download();
    o.gelu = dgelu.Download();
    o.pre = dpre.Download();
    o.dinp = ddinp.Download();
    o.resid = dres.Download();
    o.dweight = ddw.Download();
    return o;
  };
  const Out off = run(Blas::Autotune::kOff);
  const Out exact = run(Blas::Autotune::kExact);
  EXPECT_TRUE(SameBits(off.plain, exact.plain)) << "bias GEMM";
  EXPECT_TRUE(SameBits(off.gelu, exact.gelu)) << "GELU-aux GEMM output";
  EXPECT_TRUE(SameBits(off.pre, exact.pre)) << "GELU-aux GEMM pre-activation";
  EXPECT_TRUE(SameBits(off.dinp, exact.dinp)) << "DGELU GEMM";
  EXPECT_TRUE(SameBits(off.resid, exact.resid)) << "residual GEMM (not tuned)";
  EXPECT_TRUE(SameBits(off.dweight, exact.dweight)) << "dweight GEMM (not tuned)";
  // Tuning the accumulating GEMMs on a scratch copy keeps them exact too and
  // leaves their real outputs holding exactly the two accumulations.
  const Out exact_all = run(Blas::Autotune::kExact, /*in_place=*/true);
  EXPECT_TRUE(SameBits(off.resid, exact_all.resid)) << "residual GEMM, tuned in place";
  EXPECT_TRUE(SameBits(off.dweight, exact_all.dweight)) << "dweight GEMM, tuned in place";
  EXPECT_TRUE(SameBits(off.plain, exact_all.plain)) << "bias GEMM";
  // A wider search (32 candidates, LLMT_GEMM_CANDIDATES) stays exact too.
  const Out wide = run(Blas::Autotune::kExact, /*in_place=*/true, 32);
  EXPECT_TRUE(SameBits(off.plain, wide.plain)) << "bias GEMM, 32 candidates";
  EXPECT_TRUE(SameBits(off.gelu, wide.gelu)) << "GELU-aux GEMM, 32 candidates";
  EXPECT_TRUE(SameBits(off.dinp, wide.dinp)) << "DGELU GEMM, 32 candidates";
  EXPECT_TRUE(SameBits(off.resid, wide.resid)) << "residual GEMM, 32 candidates";
  EXPECT_TRUE(SameBits(off.dweight, wide.dweight)) << "dweight GEMM, 32 candidates";
  // kAny may pick an algorithm that sums in another order (split-K, other
  // tiles): in fp32 that moves single elements whose 3072-term sums cancel
  // (seen on an H100: the DGELU GEMM off by 1.3e-5 at -0.13), so the
  // per-element bound is 1e-4, and the whole output must stay within 1e-5
  // relative L2 (fp32 reordering: a few 1e-6 at most; a wrong tile or
  // epilogue: 1e-3 and more).
  Tol reorder = GemmTol<T>();
  if constexpr (std::is_same_v<T, float>) reorder = {1e-4, 1e-4, 1e-5};
  const Out any = run(Blas::Autotune::kAny, /*in_place=*/true);
  ExpectClose(any.plain, off.plain, reorder, "autotune any: bias GEMM");
  ExpectClose(any.dinp, off.dinp, reorder, "autotune any: DGELU GEMM");
  ExpectClose(any.resid, off.resid, reorder, "autotune any: residual GEMM");
  ExpectClose(any.dweight, off.dweight, reorder, "autotune any: dweight GEMM");
}

// Backward for both layouts: dinp overwrite and accumulate, dweight and dbias
// accumulate onto existing values, alpha scaling.
TYPED_TEST(MatmulTest, BackwardMatchesCpu) {
  using T = TypeParam;
  const float alpha = 0.5f;
  for (const auto layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    for (bool acc_dinp : {false, true}) {
      for (const auto& [M, K, N] : {std::tuple{64, 48, 80}, std::tuple{45, 27, 33}}) {
        SCOPED_TRACE(::testing::Message()
                     << "layout " << static_cast<int>(layout) << " accumulate_dinp " << acc_dinp
                     << " M=" << M << " K=" << K << " N=" << N);
        const FVec x = Prep<T>(Randn(size_t(M) * K, 12));
        const FVec w = Prep<T>(Randn(size_t(K) * N, 13, 0.2f));
        const FVec dy = Prep<T>(Randn(size_t(M) * N, 14));
        const FVec dx0 = Prep<T>(Randn(size_t(M) * K, 15));
        const FVec dw0 = Prep<T>(Randn(size_t(K) * N, 16));
        const FVec db0 = Prep<T>(Randn(N, 17));
        FVec dx = dx0, dw = dw0, db = db0;
        cpu::MatmulBackward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), M, K, N,
                            layout, alpha, acc_dinp);
        Dev<T> gx(x), gw(w), gdy(dy), gdx(dx0), gdw(dw0), gdb(db0);
        MatmulBackward(*this->blas_, gdx.get(), gdw.get(), gdb.get(), gdy.get(), gx.get(), gw.get(),
                       M, K, N, layout, alpha, acc_dinp, nullptr, nullptr);
        ExpectClose(gdx.Download(), dx, GemmTol<T>(), "dinp");
        ExpectClose(gdw.Download(), dw, GemmTol<T>(), "dweight");
        ExpectClose(gdb.Download(), db, GemmTol<T>(), "dbias");
      }
    }
  }
}

// Fused DGELU epilogue (and fallback): dinp = gelu'(pre) * (dout W^T).
TYPED_TEST(MatmulTest, BackwardDGeluEpilogue) {
  using T = TypeParam;
  const int M = 64, K = 96, N = 32;  // this layer's input width K is the GELU width
  const FVec pre = Prep<T>(Randn(size_t(M) * K, 18));
  const FVec w = Prep<T>(Randn(size_t(K) * N, 19, 0.2f));
  const FVec dy = Prep<T>(Randn(size_t(M) * N, 20));
  FVec dact(size_t(M) * K), want(size_t(M) * K);
  cpu::MatmulBackward(dact.data(), nullptr, nullptr, dy.data(), nullptr, w.data(), M, K, N,
                      WeightLayout::kInOut);
  cpu::GeluBackward(want.data(), pre.data(), dact.data(), M * K);
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "fallback");
    this->blas_->set_fuse_epilogues(fuse);
    Dev<T> gpre(pre), gw(w), gdy(dy), gdx(size_t(M) * K);
    MatmulBackward(*this->blas_, gdx.get(), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                   gdy.get(), nullptr, gw.get(), M, K, N, WeightLayout::kInOut, 1.f, false,
                   gpre.get(), nullptr);
    ExpectClose(gdx.Download(), want, GemmTol<T>(), "dinp through gelu");
  }
}

// The previous layer's bias gradient through the GELU (MatmulBackward's
// gelu_dbias, LLMT_BIAS_GRAD=dgelu): gelu_dbias += the column sums of
// dinp = gelu'(pre) * (dout W^T), added onto existing values, for fp32, bf16
// and bf16 activations with fp32 gradients (the one cuBLASLt's DGELU_BGRAD
// epilogue serves), fused and through the fallback (DGELU GEMM + column
// sums), against the CPU. Tolerances: fp32 1e-5 of the column's magnitude
// (summation order); with bf16 activations 1e-2 relative (dinp is rounded
// to bf16 where the fallback sums it; the bf16 gradient is rounded once
// more), and 1e-2 relative L2 over the whole vector. The fused sums must
// be reproducible bit for bit (bit-identical resume relies on it).
TEST(MatmulDGeluBiasTest, BiasGradientThroughTheGeluMatchesCpu) {
  LLMT_REQUIRE_GPU();
  const int M = 777, K = 384, N = 96;  // K: the GELU width (this layer's input)
  const FVec pre = RoundBf16(Randn(size_t(M) * K, 61));
  const FVec w = RoundBf16(Randn(size_t(K) * N, 62, 0.2f));
  const FVec dy = RoundBf16(Randn(size_t(M) * N, 63));
  const FVec db0 = RoundBf16(Randn(K, 64));
  FVec dact(size_t(M) * K), dinp(size_t(M) * K), db = db0;
  cpu::MatmulBackward(dact.data(), nullptr, nullptr, dy.data(), nullptr, w.data(), M, K, N,
                      WeightLayout::kInOut);
  cpu::GeluBackward(dinp.data(), pre.data(), dact.data(), int64_t(M) * K);
  for (int m = 0; m < M; ++m) {
    for (int k = 0; k < K; ++k) db[k] += dinp[size_t(m) * K + k];
  }
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  // Runs MatmulBackward with gelu_dbias for activations A and gradients G.
  auto run = [&](auto activation, auto grad) {
    using A = decltype(activation);
    using G = decltype(grad);
    Dev<A> gpre(pre), gw(w), gdy(dy), gdx(size_t(M) * K);
    Dev<G> gdb(db0);
    MatmulBackward(**blas, gdx.get(), static_cast<G*>(nullptr), static_cast<G*>(nullptr),
                   gdy.get(), nullptr, gw.get(), M, K, N, WeightLayout::kInOut, 1.f, false,
                   gpre.get(), nullptr, gdb.get());
    return std::pair{gdx.Download(), gdb.Download()};
  };
  const Tol f32{1e-5, 1e-5 * MaxAbs(db), 1e-5};
  const Tol b16{1e-2, 1e-2 * MaxAbs(db), 1e-2};
  for (const bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused where cuBLASLt has it" : "fallback");
    (*blas)->set_fuse_epilogues(fuse);
    {
      auto [gx, gb] = run(float{}, float{});
      ExpectClose(gx, dinp, GemmTol<float>(), "dinp fp32");
      ExpectClose(gb, db, f32, "gelu_dbias fp32");
    }
    {
      auto [gx, gb] = run(bf16{}, bf16{});
      ExpectClose(gx, dinp, GemmTol<bf16>(), "dinp bf16");
      ExpectClose(gb, db, b16, "gelu_dbias bf16");
    }
    auto [gx, gb] = run(bf16{}, float{});
    ExpectClose(gx, dinp, GemmTol<bf16>(), "dinp mixed");
    ExpectClose(gb, db, b16, "gelu_dbias mixed");
    auto [gx2, gb2] = run(bf16{}, float{});
    EXPECT_TRUE(SameBits(gx, gx2)) << "dinp not reproducible";
    EXPECT_TRUE(SameBits(gb, gb2)) << "gelu_dbias not reproducible";
  }
  // For the record (the Blas logged which way the sums went): how many of
  // these GEMMs cuBLASLt declined to fuse.
  std::printf("DGELU_BGRAD: %lld epilogue fallbacks\n",
              static_cast<long long>((*blas)->num_epilogue_fallbacks()));
}

// Exact autotuning of the DGELU_BGRAD GEMM (the bias-gradient vector is part
// of the fingerprint): dinp and the sums bit-identical to autotuning off, and
// within fp32 reordering of them with any candidate (kAny). Large enough
// (4096 x 768 outputs) for the exact mode to tune at all.
TEST(MatmulDGeluBiasTest, AutotuneExactKeepsTheSumsBitIdentical) {
  LLMT_REQUIRE_GPU();
  const int M = 4096, K = 768, N = 192;
  const FVec pre = RoundBf16(Randn(size_t(M) * K, 71));
  const FVec w = RoundBf16(Randn(size_t(K) * N, 72, 0.1f));
  const FVec dy = RoundBf16(Randn(size_t(M) * N, 73));
  auto run = [&](Blas::Autotune mode) {
    auto blas = Blas::Create();
    EXPECT_TRUE(blas.ok()) << blas.status();
    (*blas)->set_autotune(mode);
    Dev<bf16> gpre(pre), gw(w), gdy(dy), gdx(size_t(M) * K);
    Dev<float> gdb(FVec(K, 0.f));
    for (int rep = 0; rep < 2; ++rep) {  // the first call tunes; the sums add twice
      MatmulBackward(**blas, gdx.get(), static_cast<float*>(nullptr),
                     static_cast<float*>(nullptr), gdy.get(), nullptr, gw.get(), M, K, N,
                     WeightLayout::kInOut, 1.f, false, gpre.get(), nullptr, gdb.get());
    }
    return std::pair{gdx.Download(), gdb.Download()};
  };
  const auto [x_off, b_off] = run(Blas::Autotune::kOff);
  const auto [x_exact, b_exact] = run(Blas::Autotune::kExact);
  EXPECT_TRUE(SameBits(x_off, x_exact)) << "dinp";
  EXPECT_TRUE(SameBits(b_off, b_exact)) << "gelu_dbias";
  const auto [x_any, b_any] = run(Blas::Autotune::kAny);
  ExpectClose(x_any, x_off, GemmTol<bf16>(), "autotune any: dinp");
  ExpectClose(b_any, b_off, Tol{1e-4, 1e-5 * MaxAbs(b_off), 1e-5}, "autotune any: gelu_dbias");
}

// Mixed precision: bf16 activations, fp32 weight/bias gradients accumulated
// over two micro-batches.
TEST(MatmulMixedTest, Bf16ActivationsFp32GradsAccumulate) {
  LLMT_REQUIRE_GPU();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const int M = 64, K = 40, N = 72;
  const FVec x1 = RoundBf16(Randn(size_t(M) * K, 21)), x2 = RoundBf16(Randn(size_t(M) * K, 22));
  const FVec dy1 = RoundBf16(Randn(size_t(M) * N, 23)), dy2 = RoundBf16(Randn(size_t(M) * N, 24));
  const FVec w = RoundBf16(Randn(size_t(N) * K, 25, 0.2f));
  FVec dw(size_t(N) * K, 0.f), db(N, 0.f);
  cpu::MatmulBackward(nullptr, dw.data(), db.data(), dy1.data(), x1.data(), w.data(), M, K, N,
                      WeightLayout::kOutIn, 0.5f);
  cpu::MatmulBackward(nullptr, dw.data(), db.data(), dy2.data(), x2.data(), w.data(), M, K, N,
                      WeightLayout::kOutIn, 0.5f);
  Dev<bf16> gx1(x1), gx2(x2), gdy1(dy1), gdy2(dy2), gw(w);
  Dev<float> gdw(FVec(size_t(N) * K, 0.f)), gdb(FVec(N, 0.f));
  MatmulBackward(**blas, static_cast<bf16*>(nullptr), gdw.get(), gdb.get(), gdy1.get(), gx1.get(),
                 gw.get(), M, K, N, WeightLayout::kOutIn, 0.5f, false, nullptr, nullptr);
  MatmulBackward(**blas, static_cast<bf16*>(nullptr), gdw.get(), gdb.get(), gdy2.get(), gx2.get(),
                 gw.get(), M, K, N, WeightLayout::kOutIn, 0.5f, false, nullptr, nullptr);
  // fp32 outputs from exact bf16 inputs: only summation order differs.
  ExpectClose(gdw.Download(), dw, Tol{1e-5, 1e-5, 1e-5}, "dweight f32");
  ExpectClose(gdb.Download(), db, Tol{1e-5, 1e-5, 1e-5}, "dbias f32");
}

// The bias-gradient epilogue (Blas::set_fuse_bias_grad, LLMT_BIAS_GRAD=
// epilogue), fused by cuBLASLt and through the fallback (plain GEMM + column
// sums): dweight and dbias accumulated over two micro-batches, both layouts,
// fp32 and the mixed bf16 -> fp32 overload, against the CPU (the GEMM's
// algorithm may differ from the unfused one: fp32 reordering, 1e-5). Also
// Gemm's bgrad itself with alpha 0.5: the sums are documented unscaled.
TEST(MatmulBiasGradTest, EpilogueMatchesCpu) {
  LLMT_REQUIRE_GPU();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  (*blas)->set_fuse_bias_grad(true);
  const int M = 96, K = 40, N = 72;
  const FVec x1 = RoundBf16(Randn(size_t(M) * K, 31)), x2 = RoundBf16(Randn(size_t(M) * K, 32));
  const FVec dy1 = RoundBf16(Randn(size_t(M) * N, 33)), dy2 = RoundBf16(Randn(size_t(M) * N, 34));
  const FVec w = RoundBf16(Randn(size_t(N) * K, 35, 0.2f));
  const Tol tol{1e-5, 1e-5, 1e-5};
  for (const bool fuse : {true, false}) {
    (*blas)->set_fuse_epilogues(fuse);
    for (const auto layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
      SCOPED_TRACE(::testing::Message() << (fuse ? "cuBLASLt epilogue" : "fallback") << ", layout "
                                        << static_cast<int>(layout));
      FVec dw(size_t(N) * K, 0.f), db(N, 0.f);
      cpu::MatmulBackward(nullptr, dw.data(), db.data(), dy1.data(), x1.data(), w.data(), M, K, N,
                          layout, 1.f);
      cpu::MatmulBackward(nullptr, dw.data(), db.data(), dy2.data(), x2.data(), w.data(), M, K, N,
                          layout, 1.f);
      // fp32 activations, then bf16 ones (the mixed overload); fp32 gradients.
      auto check = [&](auto activation, const std::string& what) {
        using A = decltype(activation);
        Dev<A> gx1(x1), gx2(x2), gdy1(dy1), gdy2(dy2), gw(w);
        Dev<float> gdw(FVec(size_t(N) * K, 0.f)), gdb(FVec(N, 0.f));
        for (int mb = 0; mb < 2; ++mb) {
          MatmulBackward(**blas, static_cast<A*>(nullptr), gdw.get(), gdb.get(),
                         mb == 0 ? gdy1.get() : gdy2.get(), mb == 0 ? gx1.get() : gx2.get(),
                         gw.get(), M, K, N, layout, 1.f, false, nullptr, nullptr);
        }
        ExpectClose(gdw.Download(), dw, tol, "dweight " + what);
        ExpectClose(gdb.Download(), db, tol, "dbias " + what);
      };
      check(float{}, "fp32");
      check(bf16{}, "mixed");
      {  // Gemm's bgrad: the unscaled column sums of dout, whatever alpha
        FVec want(N, 0.f);
        for (int m = 0; m < M; ++m) {
          for (int n = 0; n < N; ++n) want[n] += dy1[size_t(m) * N + n];
        }
        Dev<float> gx(x1), gdy(dy1), gdw(FVec(size_t(N) * K, 0.f)), gsum(FVec(N, -7.f));
        GemmOp op = MatmulBackwardDweightOp(gdw.get(), DType::kF32, gdy.get(), gx.get(), M, K, N,
                                            layout, 0.5f, DType::kF32);
        op.bgrad = gsum.get();
        op.bgrad_of_a = layout == WeightLayout::kOutIn;
        Gemm(**blas, op, nullptr);
        ExpectClose(gsum.Download(), want, tol, "Gemm bgrad (alpha 0.5)");
      }
    }
    // Whether cuBLASLt took the epilogue on this GPU (else these ran the
    // fallback): for the record, not a failure.
    if (fuse) {
      std::printf("bias-gradient epilogue: %lld of 10 GEMMs fell back\n",
                  static_cast<long long>((*blas)->num_epilogue_fallbacks()));
    }
  }
}

// The low-level Gemm with transposes and padded leading dimensions.
TEST(MatmulGemmTest, TransposesAndLeadingDimensions) {
  LLMT_REQUIRE_GPU();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const int M = 24, N = 40, K = 16, pad = 8;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "trans_a " << ta << " trans_b " << tb);
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      const FVec A = Randn(size_t(ta ? K : M) * lda, 26), B = Randn(size_t(tb ? N : K) * ldb, 27);
      const FVec C0 = Randn(size_t(M) * ldc, 28);
      FVec want = C0;
      cpu::Gemm(ta, tb, M, N, K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, want.data(), ldc);
      Dev<float> gA(A), gB(B), gC(C0);
      GemmOp op;
      op.trans_a = ta;
      op.trans_b = tb;
      op.M = M;
      op.N = N;
      op.K = K;
      op.alpha = 0.75f;
      op.beta = 0.5f;
      op.A = gA.get();
      op.lda = lda;
      op.B = gB.get();
      op.ldb = ldb;
      op.C = gC.get();
      op.ldc = ldc;
      op.D = gC.get();
      op.ldd = ldc;
      Gemm(**blas, op, nullptr);
      ExpectClose(gC.Download(), want, Tol{1e-5, 1e-5, 1e-5}, "C");
    }
  }
  EXPECT_GT((*blas)->num_plans(), 0);
}

// GemmOp::sm_count (cuBLASLt's SM count target, which the CUDA model's
// classifier sets to leave SMs to the cross-entropy beside it): the same
// product as the CPU's, fp32 and bf16, with targets of 1, 32 and 100 SMs
// (the plans are separate: sm_count is part of the plan key).
TEST(MatmulGemmTest, SmCountTargetGivesTheSameProduct) {
  LLMT_REQUIRE_GPU();
  auto blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const int M = 640, N = 512, K = 96;
  for (bool bf : {false, true}) {
    // bf16: the CPU multiplies the same bf16-rounded operands.
    const FVec A = bf ? Prep<bf16>(Randn(size_t(M) * K, 29)) : Randn(size_t(M) * K, 29);
    const FVec B = bf ? Prep<bf16>(Randn(size_t(N) * K, 30, 0.2f)) : Randn(size_t(N) * K, 30, 0.2f);
    FVec want(size_t(M) * N, 0.f);
    cpu::Gemm(false, true, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, want.data(), N);
    const int64_t plans_before = (*blas)->num_plans();
    for (int sms : {1, 32, 100}) {
      SCOPED_TRACE(::testing::Message() << (bf ? "bf16" : "fp32") << " sm_count " << sms);
      GemmOp op;
      op.trans_b = true;
      op.M = M;
      op.N = N;
      op.K = K;
      op.lda = op.ldb = K;
      op.ldd = N;
      op.sm_count = sms;
      if (bf) {
        Dev<bf16> gA(A), gB(B), gD(size_t(M) * N);
        op.A = gA.get();
        op.B = gB.get();
        op.D = gD.get();
        op.a_type = op.b_type = op.d_type = DType::kBF16;
        Gemm(**blas, op, nullptr);
        ExpectClose(gD.Download(), want, GemmTol<bf16>(), "D");
      } else {
        Dev<float> gA(A), gB(B), gD(size_t(M) * N);
        op.A = gA.get();
        op.B = gB.get();
        op.D = gD.get();
        Gemm(**blas, op, nullptr);
        ExpectClose(gD.Download(), want, GemmTol<float>(), "D");
      }
    }
    EXPECT_EQ((*blas)->num_plans(), plans_before + 3);
  }
}

}  // namespace
}  // namespace llmt::kernels::cuda
