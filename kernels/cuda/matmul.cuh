// GEMMs on the GPU through cuBLASLt: the kernels/matmul.h ops (MatmulForward /
// MatmulBackward, both weight layouts, += weight-gradient accumulation) with
// device pointers, a Blas context and a stream.
//
// Precision: bf16 operands with fp32 accumulation (CUBLAS_COMPUTE_32F) and bf16
// or fp32 outputs; all-fp32 for testing (true fp32 SGEMM unless TF32 is
// allowed on the Blas). Weight gradients may be fp32 while activations are
// bf16 (cuBLASLt's BF16 x BF16 -> F32 kernels), which keeps micro-batch
// gradient accumulation in fp32.
//
// Epilogues: bias (+ residual through C with beta = 1) and GELU
// (CUBLASLT_EPILOGUE_GELU_AUX_BIAS forward, CUBLASLT_EPILOGUE_DGELU backward)
// are fused into the GEMM where cuBLASLt has an algorithm for them (GELU only
// for bf16: cuBLASLt's tanh-approximated GELU is not fp32-exact); otherwise
// (or with set_fuse_epilogues(false)) the same result is produced by a plain
// GEMM plus this backend's own bias / GELU kernels. Bias gradients are a
// deterministic column-sum kernel by default; the opt-in epilogue forms
// (LLMT_BIAS_GRAD) let cuBLASLt's BGRAD epilogues write fp32 scratch that is
// then added, since those overwrite rather than accumulate.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "kernels/cuda/common.cuh"
#include "kernels/matmul.h"

namespace llmt::kernels::cuda {

// Same enum as the CPU backend so model code names layouts once.
using WeightLayout = ::llmt::kernels::cpu::WeightLayout;

// cuBLASLt handle, workspace and a cache of matmul plans (descriptors plus the
// heuristic's algorithm) keyed by shape, types, leading dimensions, epilogue
// and pointer alignment. Not thread-safe: one per (device, host thread).
class Blas {
 public:
  // 32 MiB is what NVIDIA recommends for Hopper's cuBLASLt kernels.
  static constexpr int64_t kDefaultWorkspaceBytes = int64_t{32} << 20;

  // Creates the handle and allocates the workspace on the current device.
  static absl::StatusOr<std::unique_ptr<Blas>> Create(
      int64_t workspace_bytes = kDefaultWorkspaceBytes);
  // A second context with this one's settings (everything set_* sets) but
  // its own handle, workspace and plan cache, for GEMMs on another stream:
  // two streams' GEMMs must not share a workspace, and the plan cache and
  // autotuning scratch are not thread- or stream-safe either.
  absl::StatusOr<std::unique_ptr<Blas>> CreateSibling() const;
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  cublasLtHandle_t handle() const;
  void* workspace() const;
  int64_t workspace_bytes() const;

  // fp32 x fp32 GEMMs on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32).
  // Default off: fp32 is the precision the GPU tests compare against the CPU.
  void set_allow_tf32(bool on);
  bool allow_tf32() const;
  // Default on. Off: never ask cuBLASLt for bias/GELU epilogues (the fallback
  // path), e.g. to rule them out when debugging.
  void set_fuse_epilogues(bool on);
  bool fuse_epilogues() const;
  // Autotuning: the first call of each GEMM shape times the heuristic's
  // candidate algorithms (max_candidates of them) on its own operands and
  // keeps the fastest (GEMMs that accumulate into their output keep the
  // heuristic's first).
  //   kOff:   the heuristic's first candidate.
  //   kExact: only candidates whose output (and GELU aux) is bit-identical to
  //           the heuristic's first on this call are eligible (an
  //           order-independent 64-bit fingerprint of every output element),
  //           so results are the same as kOff whatever the timing: exact
  //           resumes and reproducibility across processes are kept. Outputs
  //           under 2^20 elements, or with fewer than half of them non-zero,
  //           keep the first candidate: there, two different summation
  //           orders could agree by chance.
  //   kAny:   any candidate: fastest, but the pick depends on timing, so
  //           results are no longer bit-identical across processes.
  // The default comes from LLMT_GEMM_AUTOTUNE: "0"/"off", "exact" (also when
  // unset), "1"/"any"; anything else makes Create fail.
  enum class Autotune { kOff, kExact, kAny };
  void set_autotune(Autotune mode);
  Autotune autotune() const;
  // Also tune the GEMMs that accumulate into their output (residual adds,
  // weight-gradient +=), each candidate on a scratch copy of the output
  // allocated for the tuning. Default off, or on with a "+inplace" suffix on
  // LLMT_GEMM_AUTOTUNE ("exact+inplace"). Not yet run on a GPU.
  void set_autotune_in_place(bool on);
  bool autotune_in_place() const;
  // How many candidates a plan asks cuBLASLt's heuristic for (the ones
  // autotuning times): default 8, from LLMT_GEMM_CANDIDATES (1..64; anything
  // else makes Create fail). More widen the search -- on an H100 the
  // classifier GEMM's fastest of 8 was the heuristic's 7th, 11% faster than
  // its 1st -- for a longer first step. Set before the first GEMM of a shape.
  static constexpr int kDefaultCandidates = 8;
  static constexpr int kMaxCandidates = 64;
  void set_max_candidates(int n);
  int max_candidates() const;

  // Bias gradients of MatmulBackward from the weight-gradient GEMM's
  // epilogue (cuBLASLt BGRADA/BGRADB, into a small fp32 scratch, then added
  // to dbias) instead of a separate pass over dout. Default off, or on with
  // LLMT_BIAS_GRAD=epilogue ("kernel" or unset: off; anything else makes
  // Create fail). Used for fp32 gradients and alpha = 1 only. An A/B option:
  // not yet run on a GPU.
  void set_fuse_bias_grad(bool on);
  bool fuse_bias_grad() const;
  // LLMT_BIAS_GRAD=norm: a request to the caller, MatmulBackward ignores it.
  // The CUDA model then takes the bias gradients of the layers whose output
  // joins the residual stream (GPT-2's attention and MLP output
  // projections) from the norm backward that updates the stream's gradient
  // (LayerNormBackward's dinp_colsum: no pass of their own over dout) and
  // passes no dbias for them. An A/B option: not yet run on a GPU.
  void set_bias_grad_from_norm(bool on);
  bool bias_grad_from_norm() const;
  // LLMT_BIAS_GRAD=dgelu: also a request to the caller. The CUDA model then
  // passes GPT-2's MLP input projection (c_fc) bias to the MLP output
  // projection's MatmulBackward as `gelu_dbias`, so that its DGELU GEMM sums
  // the gradient it writes (cuBLASLt's DGELU_BGRAD epilogue), and passes no
  // dbias to c_fc's own backward. An A/B option: not yet run on a GPU.
  void set_bias_grad_from_dgelu(bool on);
  bool bias_grad_from_dgelu() const;
  // LLMT_BIAS_GRAD=qv: a request to the caller too. The CUDA model then sums
  // GPT-2's QKV bias gradient over the query and value thirds of dqkv only
  // (BiasBackwardColumns) and adds nothing to the key third's: adding one
  // vector to every key adds q.b to all of a query's scores, which softmax
  // ignores, so that gradient is zero (a computed one is rounding noise).
  // A third fewer bytes read. With norm as well, only the query third: the
  // value third is W_out times the attention projection's bias gradient
  // (softmax rows sum to 1, so the column sums of dV are those of the
  // attention output's gradient), a MatVecAdd. An A/B option: not yet run
  // on a GPU.
  void set_bias_grad_skip_keys(bool on);
  bool bias_grad_skip_keys() const;

  // Plans cached so far, and GEMMs that had to fall back from a fused
  // epilogue because cuBLASLt offered no algorithm for it.
  int64_t num_plans() const;
  int64_t num_epilogue_fallbacks() const;

  struct Impl;  // defined in matmul.cc
  Impl& impl() { return *impl_; }

 private:
  explicit Blas(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One row-major GEMM  D[M,N] = epilogue(alpha op(A)[M,K] op(B)[K,N] + beta C + bias)
// with op(X) = X or X^T as in cblas. A and B may have different types from D
// (bf16 x bf16 -> f32 is the mixed case); C, bias and aux have D's type.
struct GemmOp {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.f, beta = 0.f;
  const void* A = nullptr;
  DType a_type = DType::kF32;
  int64_t lda = 0;
  const void* B = nullptr;
  DType b_type = DType::kF32;
  int64_t ldb = 0;
  const void* C = nullptr;  // read when beta != 0; may equal D (in place)
  int64_t ldc = 0;
  void* D = nullptr;
  DType d_type = DType::kF32;
  int64_t ldd = 0;
  const void* bias = nullptr;  // [N], added to every row
  // gelu: D = gelu(x) and aux = x where x = alpha AB + beta C + bias.
  // dgelu: D = gelu'(aux) * (alpha AB) (beta must be 0, no bias).
  bool gelu = false;
  bool dgelu = false;
  void* aux = nullptr;  // [M, N] with leading dimension ldaux
  int64_t ldaux = 0;
  // Bias-gradient epilogue: bgrad (fp32, overwritten) = the sums over k of
  // op(B), one per column n ([N]), or with bgrad_of_a of op(A), one per row
  // m ([M]); unscaled by alpha. The summed operand must be stored with k as
  // its rows (B not transposed, or A transposed): that is how a weight
  // gradient's dout is posed, and what the fallback's column sum reads.
  // With dgelu instead (cuBLASLt's DGELU_BGRAD): bgrad = the column sums of
  // the output D = gelu'(aux) * (alpha AB), one per column n ([N]) -- the
  // bias gradient of the layer that produced aux; bgrad_of_a must be false.
  void* bgrad = nullptr;
  bool bgrad_of_a = false;
  // bgrad's element type: fp32, or bf16 (only with a bf16 D) where cuBLASLt
  // offers no fp32 bias gradient for the epilogue.
  DType bgrad_type = DType::kF32;
  // > 0: how many SMs the GEMM may assume it has (cuBLASLt's
  // CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET), to leave the rest to a kernel
  // running beside it on another stream; 0 = the device's.
  int sm_count = 0;
};

// How a row-major GemmOp is posed to (column-major) cuBLASLt: its operand
// "A" is our B and its "B" is our A (see matmul.cc). Each matrix is described
// as stored: rows x cols, column-major, leading dimension ld, plus whether the
// matmul transposes it. Pure function, unit-tested on the host against a
// column-major reference GEMM.
struct LtMatrix {
  const void* ptr;
  uint64_t rows, cols;
  int64_t ld;
  bool transposed;
};
struct LtProblem {
  LtMatrix a, b, c, d;
  uint64_t m, n, k;  // cuBLASLt's problem size: D is m x n
};
LtProblem ToColumnMajor(const GemmOp& op);

// LLMT_GEMM_AUTOTUNE's value (nullptr = unset) -> (mode, tune in place); see
// Blas::Autotune. Errors name the variable and the accepted values.
absl::StatusOr<std::pair<Blas::Autotune, bool>> ParseAutotune(const char* env);
// LLMT_GEMM_CANDIDATES's value (nullptr or "" = the default, 8) -> how many
// candidates a plan asks for (Blas::set_max_candidates). Errors name the
// variable and the accepted range.
absl::StatusOr<int> ParseGemmCandidates(const char* env);
// LLMT_BIAS_GRAD's value (nullptr = unset; "" and "kernel": neither) ->
// "epilogue": MatmulBackward fuses the bias gradient into the
// weight-gradient GEMM (Blas::set_fuse_bias_grad); "norm": the caller takes
// the residual projections' bias gradients from the norm backward
// (Blas::set_bias_grad_from_norm); "dgelu": the caller takes c_fc's bias
// gradient from the DGELU GEMM (Blas::set_bias_grad_from_dgelu); "qv": the
// caller sums the QKV bias gradient without the key third
// (Blas::set_bias_grad_skip_keys). Several are joined with '+'
// ("norm+dgelu+qv"). Errors name the variable and the accepted values.
struct BiasGradMode {
  bool epilogue = false;
  bool from_norm = false;
  bool from_dgelu = false;
  bool skip_keys = false;
};
absl::StatusOr<BiasGradMode> ParseBiasGrad(const char* env);

// Runs `op` in one cuBLASLt call. Returns false, having run nothing, when
// cuBLASLt has no algorithm for it (typically a fused epilogue unsupported for
// these types or alignments). Fatal on invalid arguments and on any other
// cuBLASLt error, naming the call and the GEMM's shape.
bool TryGemm(Blas& blas, const GemmOp& op, cudaStream_t stream);
// TryGemm, and if cuBLASLt declines a fused epilogue, the same result from a
// plain GEMM plus own kernels. Fatal when not even the plain GEMM runs.
void Gemm(Blas& blas, const GemmOp& op, cudaStream_t stream);

// out[M,N] = inp[M,K] W (+ bias[N]) (+ residual[M,N]), W [K,N] (kInOut) or
// [N,K] (kOutIn), like the CPU MatmulForward; out may alias residual. When
// `pre_gelu` is non-null the GELU is fused too: pre_gelu = inp W + bias and
// out = gelu(pre_gelu) (residual must then be null). Any pointer but out, inp
// and weight may be null.
void MatmulForward(Blas& blas, float* out, const float* inp, const float* weight, const float* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout, const float* residual,
                   float* pre_gelu, cudaStream_t stream);
void MatmulForward(Blas& blas, bf16* out, const bf16* inp, const bf16* weight, const bf16* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout, const bf16* residual,
                   bf16* pre_gelu, cudaStream_t stream);

// Backward of MatmulForward scaled by alpha, like the CPU MatmulBackward:
//   dinp[M,K] = alpha dout W^T  (overwritten; += if accumulate_dinp)
//   dweight  += alpha inp^T dout  (in W's layout)
//   dbias[N] += alpha column sums of dout
// When `gelu_pre` is non-null, the GELU between this layer's input and the
// previous GEMM is back-propagated too: dinp = gelu'(gelu_pre) * (alpha dout W^T)
// (incompatible with accumulate_dinp). dinp / dweight / dbias may be null.
// Gradients dweight/dbias are bf16 or fp32 (the mixed overload) for bf16
// activations.
// `gelu_dbias` (needs gelu_pre and dinp): the previous layer's bias
// gradient, gelu_dbias[K] += the column sums of dinp -- from the DGELU
// GEMM's epilogue where cuBLASLt offers one (fp32 gradients), else from a
// column-sum pass over dinp.
void MatmulBackward(Blas& blas, float* dinp, float* dweight, float* dbias, const float* dout,
                    const float* inp, const float* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const float* gelu_pre,
                    cudaStream_t stream, float* gelu_dbias = nullptr);
void MatmulBackward(Blas& blas, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout,
                    const bf16* inp, const bf16* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const bf16* gelu_pre,
                    cudaStream_t stream, bf16* gelu_dbias = nullptr);
void MatmulBackward(Blas& blas, bf16* dinp, float* dweight, float* dbias, const bf16* dout,
                    const bf16* inp, const bf16* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const bf16* gelu_pre,
                    cudaStream_t stream, float* gelu_dbias = nullptr);

// The GemmOps the Matmul* functions run (pure; unit-tested on the host).
GemmOp MatmulForwardOp(void* out, const void* inp, const void* weight, const void* bias, int64_t M,
                       int64_t K, int64_t N, WeightLayout layout, const void* residual,
                       void* pre_gelu, DType t);
GemmOp MatmulBackwardDinpOp(void* dinp, const void* dout, const void* weight, int64_t M, int64_t K,
                            int64_t N, WeightLayout layout, float alpha, bool accumulate_dinp,
                            const void* gelu_pre, DType t);
GemmOp MatmulBackwardDweightOp(void* dweight, DType g, const void* dout, const void* inp, int64_t M,
                               int64_t K, int64_t N, WeightLayout layout, float alpha, DType t);

// dbias[N] += alpha * sum over the M rows of dout[M,N] (row stride N).
// Deterministic: fixed per-column summation order.
void BiasBackward(float* dbias, const float* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream);
void BiasBackward(bf16* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream);
void BiasBackward(float* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream);

// The bias gradients of one or two column blocks of a wider matrix in one
// pass over those columns only: dbias[n] += alpha sum_m dout[m*ld + n] and,
// when dbias2 is non-null, dbias2[n] += alpha sum_m dout[m*ld + off2 + n],
// n < N. (GPT-2's fused QKV projection without its key third, see
// LLMT_BIAS_GRAD=qv.) Deterministic like BiasBackward; two stages through
// `scratch` (MatmulBackward passes the cuBLASLt workspace) when it has room
// for the fp32 partials (256-row chunks x N x blocks), else one.
void BiasBackwardColumns(float* dbias, float* dbias2, const float* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream);
void BiasBackwardColumns(bf16* dbias, bf16* dbias2, const bf16* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream);
void BiasBackwardColumns(float* dbias, float* dbias2, const bf16* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream);

// y += A x (trans false: A is m x n row-major, y[m], x[n]) or y += A^T x
// (trans true: y[n], x[m]), fp32 accumulation in a fixed order. For small
// matrices (a weight times a bias-sized vector): a warp per row of A, or a
// thread per column.
void MatVecAdd(float* y, const float* A, const float* x, int64_t m, int64_t n, bool trans,
               cudaStream_t stream);
void MatVecAdd(float* y, const bf16* A, const float* x, int64_t m, int64_t n, bool trans,
               cudaStream_t stream);

// D[M,N] = beta * C[M,N] + bias[N] (either may be null, meaning 0). C may
// alias D. The fallback path's epilogue-less seeding; also usable on its own.
void BiasResidualFill(void* D, DType t, int64_t ldd, const void* C, int64_t ldc, float beta,
                      const void* bias, int64_t M, int64_t N, cudaStream_t stream);

}  // namespace llmt::kernels::cuda
