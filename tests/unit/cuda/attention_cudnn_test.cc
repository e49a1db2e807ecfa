// Host-only checks of the cuDNN attention integration (no GPU needed): the
// shape limits, and every tensor and operation descriptor of the forward and
// backward graphs built and finalized by the real libcudnn (where it can be
// loaded: it checks each attribute's type, count and value; the operation
// graph itself needs a GPU and is checked by the GPU tests in
// kernels_test.cc).
#include "kernels/cuda/attention_cudnn.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace llmt::kernels::cuda::cudnn {
namespace {

AttnProblem Problem(int B, int T, int NH, int NKV, int hd, bool backward,
                    bool deterministic = false) {
  return AttnProblem{B, T, NH, NKV, hd, backward, deterministic};
}

TEST(CudnnAttention, UnsupportedShapesAreNamed) {
  EXPECT_EQ(Unsupported(Problem(2, 1024, 12, 12, 64, false)), "");
  EXPECT_EQ(Unsupported(Problem(2, 256, 16, 8, 128, true)), "");
  EXPECT_NE(Unsupported(Problem(2, 1024, 12, 12, 32, false)).find("head dim 32"),
            std::string::npos);
  EXPECT_NE(Unsupported(Problem(2, 300, 12, 12, 64, true)).find("sequence length 300"),
            std::string::npos);
  EXPECT_NE(Unsupported(Problem(2, 256, 12, 5, 64, false)).find("12 query heads"),
            std::string::npos);
}

// Forward: Q K^T, scale, the causal mask (row index, column index, compare,
// select), max, subtract, exp, sum, log, lse, divide, P V = 14 operations.
// Backward: dO*O, its row sum, softmax_sum, Q K^T, scale, - lse, the mask (4),
// exp, P^T, P^T dO, dO V^T, - softmax_sum, * P, scale, dS^T, dS^T Q, K, dS K,
// dQ = 22 operations, plus a reduction per GQA product (dV, dK); the
// deterministic backward writes dS K straight to dQ (one fewer). With cuDNN
// >= 9.8 the operation graph is finalized too (without a handle).
TEST(CudnnAttention, GraphDescriptorsFinalizeInLibcudnn) {
  if (!LoadError().empty()) GTEST_SKIP() << "no cuDNN here: " << LoadError();
  std::cout << Describe() << "\n";
  struct Case {
    AttnProblem p;
    int ops;
  };
  const Case cases[] = {
      {Problem(4, 1024, 12, 12, 64, false), 14}, {Problem(2, 256, 16, 8, 128, false), 14},
      {Problem(4, 1024, 12, 12, 64, true), 22},  {Problem(2, 256, 16, 8, 128, true), 24},
      {Problem(1, 128, 4, 1, 64, true), 24},
      {Problem(4, 1024, 12, 12, 64, true, true), 21},
      {Problem(2, 256, 16, 8, 128, true, true), 23},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.p.backward ? "backward" : "forward") +
                 (c.p.deterministic ? " deterministic" : "") + " heads " +
                 std::to_string(c.p.NH) + "/" + std::to_string(c.p.NKV) + " hd " +
                 std::to_string(c.p.hd));
    int n_ops = -1;
    EXPECT_EQ(CheckGraphDescriptors(c.p, &n_ops), "");
    EXPECT_EQ(n_ops, c.ops);
  }
}

// A missing library is reported with the name tried and what to do, not a
// crash, and everything else then reports the same reason.
TEST(CudnnAttention, MissingLibraryIsReportedByName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("LLMT_CUDNN_LIB", "/nonexistent/libcudnn.so.9", 1);
        const std::string e = LoadError();
        const bool named = e.find("/nonexistent/libcudnn.so.9") != std::string::npos &&
                           e.find("LLMT_CUDNN_LIB") != std::string::npos &&
                           CheckGraphDescriptors(Problem(1, 128, 4, 4, 64, false)) == e &&
                           Describe() == e;
        std::fprintf(stderr, "%s\n", e.c_str());
        std::exit(named ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "cannot load /nonexistent/libcudnn.so.9");
}

}  // namespace
}  // namespace llmt::kernels::cuda::cudnn
