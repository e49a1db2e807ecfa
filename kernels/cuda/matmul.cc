// Host side of the GEMM layer: cuBLASLt plans, the row-major -> column-major
// mapping, fused epilogues and their fallbacks.
//
// Row-major vs column-major. cuBLASLt is column-major. A row-major matrix
// X [r, c] with leading dimension ld is, read column-major, X^T [c, r] with the
// same ld. So the row-major product D = op(A) op(B) [M,N] is computed as the
// column-major product D^T = op(B)^T op(A)^T [N,M]: cuBLASLt's "A" is our B,
// its "B" is our A, the transpose flags carry over unchanged, and cuBLASLt's
// m, n, k are our N, M, K. A bias vector of length m in cuBLASLt therefore is
// one value per row-major output column: bias[N], as wanted.
#include "kernels/cuda/matmul.cuh"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/status.h"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/matmul_internal.cuh"
#include "kernels/cuda/runtime.cuh"

namespace llmt::kernels::cuda {
namespace {

// kBgradA / kBgradB are named as cuBLASLt sees the operands (its A is our B,
// see ToColumnMajor): kBgradA sums our B, kBgradB our A. kDGeluBgrad sums
// the output after the GELU gradient.
enum class Epi { kNone, kBias, kGelu, kGeluBias, kDGelu, kBgradA, kBgradB, kDGeluBgrad };

const char* EpiName(Epi e) {
  switch (e) {
    case Epi::kNone:
      return "none";
    case Epi::kBias:
      return "bias";
    case Epi::kGelu:
      return "gelu_aux";
    case Epi::kGeluBias:
      return "gelu_aux_bias";
    case Epi::kDGelu:
      return "dgelu";
    case Epi::kBgradA:
      return "bgrada";
    case Epi::kBgradB:
      return "bgradb";
    case Epi::kDGeluBgrad:
      return "dgelu_bgrad";
  }
  return "?";
}

cublasLtEpilogue_t LtEpilogue(Epi e) {
  switch (e) {
    case Epi::kNone:
      return CUBLASLT_EPILOGUE_DEFAULT;
    case Epi::kBias:
      return CUBLASLT_EPILOGUE_BIAS;
    case Epi::kGelu:
      return CUBLASLT_EPILOGUE_GELU_AUX;
    case Epi::kGeluBias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epi::kDGelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case Epi::kBgradA:
      return CUBLASLT_EPILOGUE_BGRADA;
    case Epi::kBgradB:
      return CUBLASLT_EPILOGUE_BGRADB;
    case Epi::kDGeluBgrad:
      return CUBLASLT_EPILOGUE_DGELU_BGRAD;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

// Epilogues that write a bias gradient (op.bgrad, through cuBLASLt's bias
// pointer).
bool IsBgrad(Epi e) { return e == Epi::kBgradA || e == Epi::kBgradB || e == Epi::kDGeluBgrad; }
// Epilogues that read or write the aux matrix.
bool HasAux(Epi e) {
  return e == Epi::kGelu || e == Epi::kGeluBias || e == Epi::kDGelu || e == Epi::kDGeluBgrad;
}

Epi EpilogueOf(const GemmOp& op) {
  if (op.bgrad != nullptr && op.dgelu) return Epi::kDGeluBgrad;
  if (op.bgrad != nullptr) return op.bgrad_of_a ? Epi::kBgradB : Epi::kBgradA;
  if (op.dgelu) return Epi::kDGelu;
  if (op.gelu) return op.bias != nullptr ? Epi::kGeluBias : Epi::kGelu;
  if (op.bias != nullptr) return Epi::kBias;
  return Epi::kNone;
}

cudaDataType_t LtType(DType t) { return t == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF; }

// Largest power of two (capped at 256) dividing the address: cuBLASLt picks
// vectorised kernels only for sufficiently aligned operands.
uint32_t AlignOf(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

std::string Describe(const GemmOp& op) {
  return absl::StrCat("GEMM M=", op.M, " N=", op.N, " K=", op.K, " trans_a=", op.trans_a,
                      " trans_b=", op.trans_b, " A=", DTypeName(op.a_type), "/lda=", op.lda,
                      " B=", DTypeName(op.b_type), "/ldb=", op.ldb, " D=", DTypeName(op.d_type),
                      "/ldd=", op.ldd, " beta=", op.beta, " epilogue=", EpiName(EpilogueOf(op)),
                      op.bgrad != nullptr ? absl::StrCat("/", DTypeName(op.bgrad_type)) : "",
                      op.sm_count > 0 ? absl::StrCat(" sm_count=", op.sm_count) : "");
}

}  // namespace

LtProblem ToColumnMajor(const GemmOp& op) {
  const void* C = (op.beta != 0.f && op.C != nullptr) ? op.C : op.D;
  const int64_t ldc = C == op.D ? op.ldd : op.ldc;
  LtProblem p;
  // Our row-major B is [K,N] (or [N,K] when transposed), i.e. column-major
  // N x K (or K x N); likewise A [M,K] (or [K,M]) is column-major K x M
  // (or M x K). D [M,N] row-major is column-major N x M.
  p.a = {op.B, static_cast<uint64_t>(op.trans_b ? op.K : op.N),
         static_cast<uint64_t>(op.trans_b ? op.N : op.K), op.ldb, op.trans_b};
  p.b = {op.A, static_cast<uint64_t>(op.trans_a ? op.M : op.K),
         static_cast<uint64_t>(op.trans_a ? op.K : op.M), op.lda, op.trans_a};
  p.c = {C, static_cast<uint64_t>(op.N), static_cast<uint64_t>(op.M), ldc, false};
  p.d = {op.D, static_cast<uint64_t>(op.N), static_cast<uint64_t>(op.M), op.ldd, false};
  p.m = static_cast<uint64_t>(op.N);
  p.n = static_cast<uint64_t>(op.M);
  p.k = static_cast<uint64_t>(op.K);
  return p;
}

namespace {

struct PlanKey {
  bool ta, tb;
  int64_t M, N, K;
  DType at, bt, dt;
  int64_t lda, ldb, ldc, ldd, ldaux;
  Epi epi;
  DType bgt;  // the bias gradient's type (bias-gradient epilogues; else kF32)
  uint32_t align_a, align_b, align_c, align_d;
  bool tf32;
  int sm_count;  // GemmOp::sm_count
  auto Tie() const {
    return std::tie(ta, tb, M, N, K, at, bt, dt, lda, ldb, ldc, ldd, ldaux, epi, bgt, align_a,
                    align_b, align_c, align_d, tf32, sm_count);
  }
  bool operator<(const PlanKey& o) const { return Tie() < o.Tie(); }
};

// Descriptors plus the chosen algorithm for one PlanKey. `found` is false
// when cuBLASLt's heuristic returned nothing (cached too, so the fallback
// decision is made once per shape).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
  // The heuristic's candidates, best-estimated first; with autotuning the
  // fastest of them measured on the first real call replaces algo.
  std::vector<cublasLtMatmulAlgo_t> candidates;
  bool tuned = false;
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

}  // namespace

struct Blas::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace;
  // Everything the set_* setters set (and CreateSibling copies).
  struct Options {
    bool allow_tf32 = false;
    bool fuse_epilogues = true;
    Blas::Autotune autotune = Blas::Autotune::kOff;
    bool tune_in_place = false;
    int candidates = Blas::kDefaultCandidates;  // asked of the heuristic per plan
    bool fuse_bias_grad = false;
    bool bias_grad_from_norm = false;
    bool bias_grad_from_dgelu = false;
    bool bias_grad_skip_keys = false;
  } opt;
  const char* dgelu_bgrad_noted = nullptr;  // how gelu_dbias was last logged to be summed
  bool sm_count_noted = false;  // a GEMM fell back from its SM count target (logged once)
  DeviceBuffer bias_grad_scratch;  // MatmulBackward's epilogue output (fp32)
  DeviceBuffer fingerprint;  // kExact's scratch (internal::kFingerprintWords)
  int64_t fallbacks = 0;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  ~Impl() {
    plans.clear();
    if (handle != nullptr) cublasLtDestroy(handle);
  }
};

Blas::Blas(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Blas::~Blas() = default;

absl::StatusOr<std::pair<Blas::Autotune, bool>> ParseAutotune(const char* env) {
  std::string mode = env == nullptr ? "" : env;
  bool in_place = false;
  constexpr std::string_view kInPlace = "+inplace";
  if (mode.size() > kInPlace.size() &&
      mode.compare(mode.size() - kInPlace.size(), kInPlace.size(), kInPlace) == 0) {
    in_place = true;
    mode.resize(mode.size() - kInPlace.size());
  }
  if ((mode == "0" || mode == "off") && !in_place) return std::pair{Blas::Autotune::kOff, false};
  if (mode.empty() || mode == "exact") return std::pair{Blas::Autotune::kExact, in_place};
  if (mode == "1" || mode == "any") return std::pair{Blas::Autotune::kAny, in_place};
  return absl::InvalidArgumentError(absl::StrCat(
      "LLMT_GEMM_AUTOTUNE='", env == nullptr ? "" : env,
      "': expected 0/off, exact, or 1/any, the last two optionally followed by +inplace"));
}

absl::StatusOr<int> ParseGemmCandidates(const char* env) {
  if (env == nullptr || *env == '\0') return Blas::kDefaultCandidates;
  int n = 0;
  if (!absl::SimpleAtoi(env, &n) || n < 1 || n > Blas::kMaxCandidates) {
    return absl::InvalidArgumentError(absl::StrCat("LLMT_GEMM_CANDIDATES='", env,
                                                   "': expected a whole number from 1 to ",
                                                   Blas::kMaxCandidates));
  }
  return n;
}

absl::StatusOr<BiasGradMode> ParseBiasGrad(const char* env) {
  const std::string mode = env == nullptr ? "" : env;
  if (mode.empty() || mode == "kernel") return BiasGradMode{};
  BiasGradMode m;
  for (const std::string& part : std::vector<std::string>(absl::StrSplit(mode, '+'))) {
    if (part == "epilogue") {
      m.epilogue = true;
    } else if (part == "norm") {
      m.from_norm = true;
    } else if (part == "dgelu") {
      m.from_dgelu = true;
    } else if (part == "qv") {
      m.skip_keys = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "LLMT_BIAS_GRAD='", mode, "': expected kernel, or any of epilogue, norm, dgelu and qv "
          "joined by '+' (e.g. norm+dgelu); '", part, "' is none of them"));
    }
  }
  return m;
}

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create(int64_t workspace_bytes) {
  auto impl = std::make_unique<Impl>();
  const cublasStatus_t st = cublasLtCreate(&impl->handle);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cublasLtCreate failed: ", CublasStatusName(st)));
  }
  auto ws = DeviceBuffer::Allocate("cublaslt_workspace", workspace_bytes);
  if (!ws.ok()) return ws.status();
  impl->workspace = std::move(*ws);
  auto tune = ParseAutotune(std::getenv("LLMT_GEMM_AUTOTUNE"));
  if (!tune.ok()) return tune.status();
  impl->opt.autotune = tune->first;
  impl->opt.tune_in_place = tune->second;
  auto candidates = ParseGemmCandidates(std::getenv("LLMT_GEMM_CANDIDATES"));
  if (!candidates.ok()) return candidates.status();
  impl->opt.candidates = *candidates;
  auto bias_grad = ParseBiasGrad(std::getenv("LLMT_BIAS_GRAD"));
  if (!bias_grad.ok()) return bias_grad.status();
  impl->opt.fuse_bias_grad = bias_grad->epilogue;
  impl->opt.bias_grad_from_norm = bias_grad->from_norm;
  impl->opt.bias_grad_from_dgelu = bias_grad->from_dgelu;
  impl->opt.bias_grad_skip_keys = bias_grad->skip_keys;
  return std::unique_ptr<Blas>(new Blas(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Blas>> Blas::CreateSibling() const {
  ASSIGN_OR_RETURN(std::unique_ptr<Blas> b, Create(workspace_bytes()));
  b->impl_->opt = impl_->opt;
  return b;
}

cublasLtHandle_t Blas::handle() const { return impl_->handle; }
void* Blas::workspace() const { return impl_->workspace.data(); }
int64_t Blas::workspace_bytes() const { return impl_->workspace.bytes(); }
void Blas::set_allow_tf32(bool on) { impl_->opt.allow_tf32 = on; }
bool Blas::allow_tf32() const { return impl_->opt.allow_tf32; }
void Blas::set_fuse_epilogues(bool on) { impl_->opt.fuse_epilogues = on; }
bool Blas::fuse_epilogues() const { return impl_->opt.fuse_epilogues; }
void Blas::set_autotune(Autotune mode) { impl_->opt.autotune = mode; }
Blas::Autotune Blas::autotune() const { return impl_->opt.autotune; }
void Blas::set_autotune_in_place(bool on) { impl_->opt.tune_in_place = on; }
bool Blas::autotune_in_place() const { return impl_->opt.tune_in_place; }
void Blas::set_max_candidates(int n) {
  impl_->opt.candidates = std::clamp(n, 1, kMaxCandidates);
}
int Blas::max_candidates() const { return impl_->opt.candidates; }
void Blas::set_fuse_bias_grad(bool on) { impl_->opt.fuse_bias_grad = on; }
bool Blas::fuse_bias_grad() const { return impl_->opt.fuse_bias_grad; }
void Blas::set_bias_grad_from_norm(bool on) { impl_->opt.bias_grad_from_norm = on; }
bool Blas::bias_grad_from_norm() const { return impl_->opt.bias_grad_from_norm; }
void Blas::set_bias_grad_from_dgelu(bool on) { impl_->opt.bias_grad_from_dgelu = on; }
bool Blas::bias_grad_from_dgelu() const { return impl_->opt.bias_grad_from_dgelu; }
void Blas::set_bias_grad_skip_keys(bool on) { impl_->opt.bias_grad_skip_keys = on; }
bool Blas::bias_grad_skip_keys() const { return impl_->opt.bias_grad_skip_keys; }
int64_t Blas::num_plans() const { return static_cast<int64_t>(impl_->plans.size()); }
int64_t Blas::num_epilogue_fallbacks() const { return impl_->fallbacks; }

namespace {

// Fatal on argument errors: these are programming errors in the caller.
void Validate(const GemmOp& op) {
  auto fail = [&](const std::string& why) {
    Fatal(absl::StrCat("cuda::Gemm: ", why, " (", Describe(op), ")"));
  };
  if (op.M < 0 || op.N < 0 || op.K <= 0) fail("dimensions must be M, N >= 0 and K > 0");
  if (op.A == nullptr || op.B == nullptr || op.D == nullptr) fail("A, B and D must be non-null");
  if (op.a_type != op.b_type) fail("A and B must have the same type");
  if (op.a_type == DType::kF32 && op.d_type != DType::kF32) {
    fail("fp32 operands need an fp32 output");
  }
  if (op.lda < (op.trans_a ? op.M : op.K)) fail("lda smaller than A's row length");
  if (op.ldb < (op.trans_b ? op.K : op.N)) fail("ldb smaller than B's row length");
  if (op.ldd < op.N) fail("ldd smaller than N");
  if (op.beta != 0.f && op.C != nullptr && op.ldc < op.N) fail("ldc smaller than N");
  if (op.gelu && op.dgelu) fail("gelu and dgelu are exclusive");
  if ((op.gelu || op.dgelu) && (op.aux == nullptr || op.ldaux < op.N)) {
    fail("gelu/dgelu need aux with ldaux >= N");
  }
  if (op.dgelu && (op.beta != 0.f || op.bias != nullptr)) fail("dgelu takes no beta*C or bias");
  if (op.bgrad != nullptr) {
    if (op.dgelu) {
      if (op.bgrad_of_a) fail("dgelu's bgrad sums the output's columns: bgrad_of_a must be false");
    } else {
      if (op.gelu || op.bias != nullptr) fail("bgrad takes no other epilogue but dgelu");
      if (op.bgrad_of_a ? !op.trans_a : op.trans_b) {
        fail("bgrad sums an operand stored with k as its rows (A transposed or B not)");
      }
    }
    if (op.bgrad_type != DType::kF32 && op.d_type != DType::kBF16) {
      fail("a bf16 bgrad needs a bf16 output");
    }
  }
  if (op.C == nullptr && op.beta != 0.f) fail("beta != 0 needs C");
  if (op.sm_count < 0) fail("sm_count must be >= 0");
}

Plan* GetPlan(Blas::Impl& impl, const GemmOp& op, Epi epi) {
  const LtProblem lt = ToColumnMajor(op);
  const bool tf32 = impl.opt.allow_tf32 && op.a_type == DType::kF32;
  const PlanKey key{op.trans_a,
                    op.trans_b,
                    op.M,
                    op.N,
                    op.K,
                    op.a_type,
                    op.b_type,
                    op.d_type,
                    op.lda,
                    op.ldb,
                    lt.c.ld,
                    op.ldd,
                    (op.gelu || op.dgelu) ? op.ldaux : 0,
                    epi,
                    IsBgrad(epi) ? op.bgrad_type : DType::kF32,
                    AlignOf(op.A),
                    AlignOf(op.B),
                    AlignOf(lt.c.ptr),
                    AlignOf(op.D),
                    tf32,
                    op.sm_count};
  auto it = impl.plans.find(key);
  if (it != impl.plans.end()) return it->second.get();

  auto plan = std::make_unique<Plan>();
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  LLMT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, compute, CUDA_R_32F));
  // cuBLASLt A = our B, cuBLASLt B = our A (see the top of this file).
  const cublasOperation_t op_a = lt.a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = lt.b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  LLMT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LLMT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  const cublasLtEpilogue_t lt_epi = LtEpilogue(epi);
  LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                   &lt_epi, sizeof(lt_epi)));
  if (HasAux(epi)) {
    const int64_t ldaux = op.ldaux;
    LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ldaux, sizeof(ldaux)));
  }
  if (op.sm_count > 0) {
    const int32_t sms = op.sm_count;
    LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms, sizeof(sms)));
  }
  if (IsBgrad(epi)) {
    // fp32 sums whatever the operands, unless the caller asks for bf16 ones.
    const cudaDataType_t bias_type = LtType(op.bgrad_type);
    LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  LLMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->a, LtType(op.b_type), lt.a.rows, lt.a.cols, lt.a.ld));
  LLMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->b, LtType(op.a_type), lt.b.rows, lt.b.cols, lt.b.ld));
  LLMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->c, LtType(op.d_type), lt.c.rows, lt.c.cols, lt.c.ld));
  LLMT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan->d, LtType(op.d_type), lt.d.rows, lt.d.cols, lt.d.ld));

  cublasLtMatmulPreference_t pref = nullptr;
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = static_cast<uint64_t>(impl.workspace.bytes());
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t al_a = key.align_b, al_b = key.align_a, al_c = key.align_c, al_d = key.align_d;
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c)));
  LLMT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(impl.opt.candidates));
  int n_results = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(impl.handle, plan->desc, plan->a, plan->b, plan->c, plan->d,
                                     pref, impl.opt.candidates, results.data(), &n_results);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS) {
    for (int i = 0; i < n_results; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) plan->candidates.push_back(results[i].algo);
    }
  }
  if (!plan->candidates.empty()) {
    plan->algo = plan->candidates.front();
    plan->found = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    if (epi == Epi::kNone) {
      Fatal(absl::StrCat("cuBLAS call cublasLtMatmulAlgoGetHeuristic failed: ",
                         CublasStatusName(st), " for ", Describe(op)));
    }
    // A fused epilogue cuBLASLt rejects (e.g. an aux leading dimension it
    // does not accept) is not an error: Gemm() computes it unfused.
    LLMT_LOG(Warning) << "cuBLASLt declined epilogue " << EpiName(epi) << " ("
                      << CublasStatusName(st) << ") for " << Describe(op)
                      << "; using the unfused path";
  }
  Plan* p = plan.get();
  impl.plans.emplace(key, std::move(plan));
  return p;
}

// One cublasLtMatmul of `op` (posed as `lt`) with `plan`'s descriptors and
// algorithm `algo`.
cublasStatus_t LaunchLt(Blas::Impl& impl, const Plan& plan, const GemmOp& op, const LtProblem& lt,
                        const cublasLtMatmulAlgo_t& algo, cudaStream_t stream) {
  const float alpha = op.alpha, beta = op.beta;
  return cublasLtMatmul(impl.handle, plan.desc, &alpha, lt.a.ptr, plan.a, lt.b.ptr, plan.b, &beta,
                        lt.c.ptr, plan.c, op.D, plan.d, &algo, impl.workspace.data(),
                        static_cast<size_t>(impl.workspace.bytes()), stream);
}

// Fingerprint of this call's outputs (D, aux when the epilogue writes it,
// the bias gradient when it writes one): {hash, non-zero elements, total
// elements}.
struct OutputPrint {
  uint64_t hash = 0, nonzero = 0, total = 0;
  bool operator==(const OutputPrint& o) const { return hash == o.hash && nonzero == o.nonzero; }
};
OutputPrint PrintOutputs(Blas::Impl& impl, const GemmOp& op, Epi epi, cudaStream_t stream) {
  if (impl.fingerprint.data() == nullptr) {
    auto buf = DeviceBuffer::Allocate("gemm_autotune_fingerprint",
                                      internal::kFingerprintWords * sizeof(uint64_t));
    if (!buf.ok()) Fatal(std::string(buf.status().message()));
    impl.fingerprint = std::move(*buf);
  }
  auto* words = static_cast<unsigned long long*>(impl.fingerprint.data());
  const int es = op.d_type == DType::kF32 ? 4 : 2;
  OutputPrint p;
  auto add = [&](const void* m, int64_t rows, int64_t cols, int64_t ld, int bytes) {
    unsigned long long r[2];
    internal::Fingerprint(words, r, m, rows, cols, ld, bytes, stream);
    p.hash += r[0] * 0x9E3779B97F4A7C15ull + (p.hash >> 7);  // in this order: order-dependent
    p.nonzero += r[1];
    p.total += static_cast<uint64_t>(rows) * cols;
  };
  add(op.D, op.M, op.N, op.ldd, es);
  if (epi == Epi::kGelu || epi == Epi::kGeluBias) add(op.aux, op.M, op.N, op.ldaux, es);
  if (IsBgrad(epi)) {
    // A few thousand sums: a candidate that adds them in another order
    // differs in some of them, so matching bits do vouch for the order.
    const int64_t n = epi == Epi::kBgradB ? op.M : op.N;
    add(op.bgrad, 1, n, n, op.bgrad_type == DType::kF32 ? 4 : 2);
  }
  return p;
}

// Times every candidate algorithm on this call's own operands (one warm-up,
// then the median of three) and keeps the fastest eligible one (see
// Blas::Autotune; with kExact only those whose outputs match the heuristic's
// first bit for bit, printed right after the warm-up). `prepare` runs before
// each candidate's warm-up (the in-place form restores its scratch output
// there). The output ends up holding the last candidate's result; the caller
// then runs the chosen one.
template <typename Prepare>
void Autotune(Blas::Impl& impl, Plan& plan, const GemmOp& op, Epi epi, const LtProblem& lt,
              Prepare prepare, cudaStream_t stream) {
  const bool exact = impl.opt.autotune == Blas::Autotune::kExact;
  if (exact && static_cast<uint64_t>(op.M) * op.N < (uint64_t{1} << 20)) return;
  cudaEvent_t ev[2];
  for (auto& e : ev) LLMT_CUDA_CHECK(cudaEventCreate(&e));
  float best_ms = 0, first_ms = 0;
  int best = -1, skipped = 0;
  OutputPrint ref;
  for (size_t i = 0; i < plan.candidates.size(); ++i) {
    float ms[3] = {0, 0, 0};
    prepare();
    bool ok = LaunchLt(impl, plan, op, lt, plan.candidates[i], stream) == CUBLAS_STATUS_SUCCESS;
    if (!ok) {
      if (i == 0) break;  // no reference to compare with: keep the heuristic's order
      continue;
    }
    if (exact) {
      const OutputPrint p = PrintOutputs(impl, op, epi, stream);
      if (i == 0) {
        ref = p;
        if (2 * p.nonzero < p.total) break;  // mostly zeros: a match would prove little
      } else if (!(p == ref)) {
        ++skipped;
        continue;
      }
    }
    for (int rep = 0; rep < 3 && ok; ++rep) {
      LLMT_CUDA_CHECK(cudaEventRecord(ev[0], stream));
      ok = LaunchLt(impl, plan, op, lt, plan.candidates[i], stream) == CUBLAS_STATUS_SUCCESS;
      if (ok) {
        LLMT_CUDA_CHECK(cudaEventRecord(ev[1], stream));
        LLMT_CUDA_CHECK(cudaEventSynchronize(ev[1]));
        LLMT_CUDA_CHECK(cudaEventElapsedTime(&ms[rep], ev[0], ev[1]));
      }
    }
    if (!ok) continue;
    std::sort(ms, ms + 3);
    if (i == 0) first_ms = ms[1];
    if (best < 0 || ms[1] < best_ms) {
      best = static_cast<int>(i);
      best_ms = ms[1];
    }
  }
  for (auto& e : ev) cudaEventDestroy(e);
  if (best < 0) return;
  plan.algo = plan.candidates[best];
  if (best != 0 || skipped > 0) {
    LLMT_LOG(Info) << absl::StrFormat(
        "cuBLASLt autotune%s: %s: candidate %d of %d, %.3f ms (heuristic's first: %.3f ms%s)",
        exact ? " (exact)" : "", Describe(op), best, plan.candidates.size(), best_ms, first_ms,
        exact ? absl::StrFormat("; %d candidates rounded differently", skipped) : "");
  }
}

// Autotune for a GEMM that accumulates into its output (C == D): every
// candidate runs on a scratch copy of the output, restored before each
// candidate's warm-up so that the exact mode compares results from the same
// starting values. The scratch (the output's span) is allocated for the
// tuning only; if it cannot be, the heuristic's first candidate stays.
void AutotuneInPlace(Blas::Impl& impl, Plan& plan, const GemmOp& op, Epi epi,
                     cudaStream_t stream) {
  const int64_t es = op.d_type == DType::kF32 ? 4 : 2;
  const int64_t bytes = ((op.M - 1) * op.ldd + op.N) * es;
  auto scratch = DeviceBuffer::Allocate("gemm_autotune_in_place", bytes);
  if (!scratch.ok()) {
    LLMT_LOG(Info) << "cuBLASLt autotune: no memory for an in-place scratch copy ("
                   << scratch.status().message() << "); keeping the heuristic's choice for "
                   << Describe(op);
    return;
  }
  GemmOp copy = op;
  copy.C = copy.D = scratch->data();
  copy.ldc = copy.ldd;
  const LtProblem lt = ToColumnMajor(copy);
  Autotune(
      impl, plan, copy, epi, lt,
      [&] {
        LLMT_CUDA_CHECK(cudaMemcpyAsync(scratch->data(), op.D, static_cast<size_t>(bytes),
                                        cudaMemcpyDeviceToDevice, stream));
      },
      stream);
  LLMT_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the scratch is freed
}

bool RunLt(Blas::Impl& impl, const GemmOp& op, Epi epi, cudaStream_t stream) {
  Plan* plan = GetPlan(impl, op, epi);
  if (!plan->found) return false;
  if (epi == Epi::kBias || epi == Epi::kGeluBias || IsBgrad(epi)) {
    const void* bias = IsBgrad(epi) ? op.bgrad : op.bias;
    LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof(bias)));
  }
  if (HasAux(epi)) {
    void* aux = op.aux;
    LLMT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
  }
  const LtProblem lt = ToColumnMajor(op);
  // Re-running is harmless unless the GEMM accumulates into its own output
  // (beta != 0 with C == D: residual adds, weight-gradient +=); those are
  // tuned only with tune_in_place, on a scratch copy of the output.
  const bool in_place = op.beta != 0.f && lt.c.ptr == op.D;
  if (impl.opt.autotune != Blas::Autotune::kOff && !plan->tuned && plan->candidates.size() > 1) {
    if (!in_place) {
      Autotune(impl, *plan, op, epi, lt, [] {}, stream);
    } else if (impl.opt.tune_in_place) {
      AutotuneInPlace(impl, *plan, op, epi, stream);
    }
  }
  plan->tuned = true;
  const cublasStatus_t st = LaunchLt(impl, *plan, op, lt, plan->algo, stream);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    // The heuristic offered an algorithm that then declined these operands:
    // treat like "no algorithm" so that Gemm() can fall back.
    plan->found = false;
    return false;
  }
  if (st != CUBLAS_STATUS_SUCCESS) {
    Fatal(absl::StrCat("cuBLAS call cublasLtMatmul failed: ", CublasStatusName(st), " for ",
                       Describe(op)));
  }
  if (SyncCheckEnabled()) {
    const cudaError_t err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) {
      Fatal(absl::StrCat("cublasLtMatmul failed while running: ", CudaErrorString(err), " for ",
                         Describe(op)));
    }
  }
  return true;
}

void GeluForwardTyped(void* out, const void* inp, DType t, int64_t n, cudaStream_t stream) {
  if (t == DType::kF32) {
    GeluForward(static_cast<float*>(out), static_cast<const float*>(inp), n, stream);
  } else {
    GeluForward(static_cast<bf16*>(out), static_cast<const bf16*>(inp), n, stream);
  }
}

void GeluBackwardTyped(void* dinp, const void* inp, const void* dout, DType t, int64_t n,
                       cudaStream_t stream) {
  if (t == DType::kF32) {
    GeluBackward(static_cast<float*>(dinp), static_cast<const float*>(inp),
                 static_cast<const float*>(dout), n, stream);
  } else {
    GeluBackward(static_cast<bf16*>(dinp), static_cast<const bf16*>(inp),
                 static_cast<const bf16*>(dout), n, stream);
  }
}

}  // namespace

bool TryGemm(Blas& blas, const GemmOp& op, cudaStream_t stream) {
  Validate(op);
  if (op.M == 0 || op.N == 0) return true;
  return RunLt(blas.impl(), op, EpilogueOf(op), stream);
}

void Gemm(Blas& blas, const GemmOp& op, cudaStream_t stream) {
  Validate(op);
  if (op.M == 0 || op.N == 0) return;
  Blas::Impl& impl = blas.impl();
  const Epi epi = EpilogueOf(op);
  // cuBLASLt's GELU epilogues use the tanh approximation, possibly with a
  // reduced-precision tanh; that is far below bf16 resolution but not within
  // the 1e-5 that fp32 (the testing precision) promises, so fp32 GEMMs use the
  // exact own GELU kernels.
  const bool gelu_epi = HasAux(epi);
  const bool fuse = impl.opt.fuse_epilogues && !(gelu_epi && op.a_type == DType::kF32);
  const bool tried = epi == Epi::kNone || fuse;
  if (tried && RunLt(impl, op, epi, stream)) return;
  if (tried && op.sm_count > 0) {
    // No algorithm under the SM count target: the same GEMM on all SMs
    // (slower beside the other stream's kernel, but never a failure).
    if (!impl.sm_count_noted) {
      impl.sm_count_noted = true;
      LLMT_LOG(Info) << "cuBLASLt: no algorithm for an SM count target of " << op.sm_count
                     << "; running on all SMs (" << Describe(op) << ")";
    }
    GemmOp all = op;
    all.sm_count = 0;
    Gemm(blas, all, stream);
    return;
  }
  if (epi == Epi::kNone) {
    Fatal(absl::StrCat("cuBLASLt has no algorithm for ", Describe(op)));
  }
  if (fuse) ++impl.fallbacks;
  GemmOp plain = op;
  plain.bias = nullptr;
  plain.gelu = plain.dgelu = false;
  plain.aux = nullptr;
  plain.bgrad = nullptr;
  plain.bgrad_type = DType::kF32;
  auto run_plain = [&](const GemmOp& p) {
    if (!RunLt(impl, p, Epi::kNone, stream)) {
      Fatal(absl::StrCat("cuBLASLt has no algorithm for ", Describe(p)));
    }
  };
  // The elementwise GELU kernels need dense rows.
  auto need_dense = [&](int64_t ld, const char* what) {
    if (ld != op.N) {
      Fatal(absl::StrCat("cuda::Gemm fallback: ", what, " must be dense (ld == N) for ",
                         Describe(op)));
    }
  };
  if (epi == Epi::kDGeluBgrad) {
    // The DGELU GEMM (fused or not), then the column sums of its output.
    need_dense(op.ldd, "D");
    GemmOp dgelu = op;
    dgelu.bgrad = nullptr;
    dgelu.bgrad_type = DType::kF32;
    Gemm(blas, dgelu, stream);
    const size_t bytes = static_cast<size_t>(op.N) * (op.bgrad_type == DType::kF32 ? 4 : 2);
    LLMT_CUDA_CHECK(cudaMemsetAsync(op.bgrad, 0, bytes, stream));
    if (op.d_type == DType::kF32) {
      BiasBackward(static_cast<float*>(op.bgrad), static_cast<const float*>(op.D), op.M, op.N,
                   1.f, stream);
    } else if (op.bgrad_type == DType::kF32) {
      BiasBackward(static_cast<float*>(op.bgrad), static_cast<const bf16*>(op.D), op.M, op.N,
                   1.f, stream);
    } else {
      BiasBackward(static_cast<bf16*>(op.bgrad), static_cast<const bf16*>(op.D), op.M, op.N, 1.f,
                   stream);
    }
    return;
  }
  if (IsBgrad(epi)) {
    // The GEMM, then the summed operand's column sums (k is its rows).
    run_plain(plain);
    const bool a = op.bgrad_of_a;
    const int64_t n = a ? op.M : op.N, ld = a ? op.lda : op.ldb;
    if (ld != n) {
      Fatal(absl::StrCat("cuda::Gemm fallback: the bias-gradient operand must be dense for ",
                         Describe(op)));
    }
    float* bgrad = static_cast<float*>(op.bgrad);
    LLMT_CUDA_CHECK(cudaMemsetAsync(bgrad, 0, static_cast<size_t>(n) * sizeof(float), stream));
    const void* src = a ? op.A : op.B;
    if (op.a_type == DType::kF32) {
      BiasBackward(bgrad, static_cast<const float*>(src), op.K, n, 1.f, stream);
    } else {
      BiasBackward(bgrad, static_cast<const bf16*>(src), op.K, n, 1.f, stream);
    }
    return;
  }
  if (epi == Epi::kDGelu) {
    // D = alpha AB, then D = gelu'(aux) * D in place.
    need_dense(op.ldd, "D");
    need_dense(op.ldaux, "aux");
    run_plain(plain);
    GeluBackwardTyped(op.D, op.aux, op.D, op.d_type, op.M * op.N, stream);
    return;
  }
  // Bias (and beta C) are seeded into the GEMM target, which then accumulates
  // with beta = 1. For GELU the target is aux (pre-activation), then D = gelu(aux).
  const bool gelu = epi == Epi::kGelu || epi == Epi::kGeluBias;
  void* target = gelu ? op.aux : op.D;
  const int64_t ld_target = gelu ? op.ldaux : op.ldd;
  const bool seeded = op.bias != nullptr || (op.beta != 0.f && op.C != nullptr);
  if (seeded) {
    BiasResidualFill(target, op.d_type, ld_target, op.beta != 0.f ? op.C : nullptr, op.ldc, op.beta,
                     op.bias, op.M, op.N, stream);
  }
  plain.D = target;
  plain.ldd = ld_target;
  plain.C = target;
  plain.ldc = ld_target;
  plain.beta = seeded ? 1.f : 0.f;
  run_plain(plain);
  if (gelu) {
    need_dense(op.ldd, "D");
    need_dense(op.ldaux, "aux");
    GeluForwardTyped(op.D, op.aux, op.d_type, op.M * op.N, stream);
  }
}

GemmOp MatmulForwardOp(void* out, const void* inp, const void* weight, const void* bias, int64_t M,
                       int64_t K, int64_t N, WeightLayout layout, const void* residual,
                       void* pre_gelu, DType t) {
  if (pre_gelu != nullptr && residual != nullptr) {
    Fatal("cuda::MatmulForward: a fused GELU (pre_gelu) cannot be combined with a residual");
  }
  const bool out_in = layout == WeightLayout::kOutIn;
  GemmOp op;
  op.M = M;
  op.N = N;
  op.K = K;
  op.A = inp;
  op.a_type = t;
  op.lda = K;
  // kInOut: W [K,N] -> inp W.  kOutIn: W [N,K] -> inp W^T.
  op.B = weight;
  op.b_type = t;
  op.trans_b = out_in;
  op.ldb = out_in ? K : N;
  op.D = out;
  op.d_type = t;
  op.ldd = N;
  if (residual != nullptr) {
    op.C = residual;
    op.ldc = N;
    op.beta = 1.f;
  }
  op.bias = bias;
  if (pre_gelu != nullptr) {
    op.gelu = true;
    op.aux = pre_gelu;
    op.ldaux = N;
  }
  return op;
}

GemmOp MatmulBackwardDinpOp(void* dinp, const void* dout, const void* weight, int64_t M, int64_t K,
                            int64_t N, WeightLayout layout, float alpha, bool accumulate_dinp,
                            const void* gelu_pre, DType t) {
  if (gelu_pre != nullptr && accumulate_dinp) {
    Fatal("cuda::MatmulBackward: gelu_pre cannot be combined with accumulate_dinp");
  }
  const bool in_out = layout == WeightLayout::kInOut;
  // dinp[M,K] = alpha dout[M,N] W^T: W [K,N] -> transpose; W [N,K] -> as is.
  GemmOp op;
  op.M = M;
  op.N = K;
  op.K = N;
  op.alpha = alpha;
  op.A = dout;
  op.a_type = t;
  op.lda = N;
  op.B = weight;
  op.b_type = t;
  op.trans_b = in_out;
  op.ldb = in_out ? N : K;
  op.D = dinp;
  op.d_type = t;
  op.ldd = K;
  if (accumulate_dinp) {
    op.C = dinp;
    op.ldc = K;
    op.beta = 1.f;
  }
  if (gelu_pre != nullptr) {
    op.dgelu = true;
    op.aux = const_cast<void*>(gelu_pre);  // read-only for DGELU
    op.ldaux = K;
  }
  return op;
}

GemmOp MatmulBackwardDweightOp(void* dweight, DType g, const void* dout, const void* inp, int64_t M,
                               int64_t K, int64_t N, WeightLayout layout, float alpha, DType t) {
  GemmOp op;
  op.alpha = alpha;
  op.beta = 1.f;  // accumulate
  op.trans_a = true;
  op.a_type = t;
  op.b_type = t;
  op.d_type = g;
  op.K = M;
  if (layout == WeightLayout::kInOut) {
    // dW[K,N] += inp^T[K,M] dout[M,N]
    op.M = K;
    op.N = N;
    op.A = inp;
    op.lda = K;
    op.B = dout;
    op.ldb = N;
  } else {
    // dW[N,K] += dout^T[N,M] inp[M,K]
    op.M = N;
    op.N = K;
    op.A = dout;
    op.lda = N;
    op.B = inp;
    op.ldb = K;
  }
  op.C = dweight;
  op.ldc = op.N;
  op.D = dweight;
  op.ldd = op.N;
  return op;
}

namespace {

template <typename T>
void Forward(Blas& blas, T* out, const T* inp, const T* weight, const T* bias, int64_t M, int64_t K,
             int64_t N, WeightLayout layout, const T* residual, T* pre_gelu, cudaStream_t stream) {
  Gemm(blas,
       MatmulForwardOp(out, inp, weight, bias, M, K, N, layout, residual, pre_gelu,
                       DTypeOf<T>::value),
       stream);
}

// The fp32 scratch for a fused bias gradient of N columns (grown on
// demand), or null when it cannot be had (then the kernel path runs).
float* BiasGradScratch(Blas::Impl& impl, int64_t N) {
  const int64_t bytes = N * static_cast<int64_t>(sizeof(float));
  if (impl.bias_grad_scratch.bytes() < bytes) {
    auto buf = DeviceBuffer::Allocate("bias_grad_scratch", bytes);
    if (!buf.ok()) return nullptr;
    impl.bias_grad_scratch = std::move(*buf);
  }
  return static_cast<float*>(impl.bias_grad_scratch.data());
}

// dinp = gelu'(gelu_pre) * (alpha dout W^T) and gelu_dbias += its column
// sums: from cuBLASLt's DGELU_BGRAD epilogue into fp32 scratch (or bf16
// scratch where it offers only that), which is then added; else the DGELU
// GEMM and a column-sum pass over dinp, exactly as the previous layer's own
// backward would sum it. The epilogue is tried for bf16 activations and fp32
// gradients only: fp32 GEMMs never fuse GELU (see Gemm), and a bf16
// gradient would round the sums twice.
template <typename T, typename G>
void DinpWithGeluBias(Blas& blas, T* dinp, G* gelu_dbias, const T* dout, const T* weight,
                      int64_t M, int64_t K, int64_t N, WeightLayout layout, float alpha,
                      const T* gelu_pre, cudaStream_t stream) {
  constexpr DType t = DTypeOf<T>::value;
  Blas::Impl& impl = blas.impl();
  GemmOp op = MatmulBackwardDinpOp(dinp, dout, weight, M, K, N, layout, alpha, false, gelu_pre, t);
  const char* how = "a column-sum pass over the GELU gradient (no cuBLASLt epilogue tried)";
  bool fused_done = false;
  if constexpr (std::is_same_v<G, float> && std::is_same_v<T, bf16>) {
    float* scratch = impl.opt.fuse_epilogues ? BiasGradScratch(impl, K) : nullptr;
    if (scratch != nullptr) {
      GemmOp fused = op;
      fused.bgrad = scratch;
      if (TryGemm(blas, fused, stream)) {
        BiasBackward(gelu_dbias, scratch, 1, K, 1.f, stream);
        how = "cuBLASLt's DGELU_BGRAD epilogue (fp32 sums)";
        fused_done = true;
      } else {
        fused.bgrad_type = DType::kBF16;
        if (TryGemm(blas, fused, stream)) {
          BiasBackward(gelu_dbias, reinterpret_cast<const bf16*>(scratch), 1, K, 1.f, stream);
          how = "cuBLASLt's DGELU_BGRAD epilogue (bf16 sums: it offers no fp32 ones here)";
          fused_done = true;
        } else {
          ++impl.fallbacks;
          how = "a column-sum pass over the GELU gradient (cuBLASLt offers no DGELU_BGRAD here)";
        }
      }
    }
  }
  if (!fused_done) {
    Gemm(blas, op, stream);
    internal::BiasBackwardTwoStage(gelu_dbias, dinp, M, K, 1.f, blas.workspace(),
                                   static_cast<size_t>(blas.workspace_bytes()), stream);
  }
  if (impl.dgelu_bgrad_noted != how) {  // once per way (a few lines at most)
    impl.dgelu_bgrad_noted = how;
    LLMT_LOG(Info) << "bias gradient through the GELU (M=" << M << ", width " << K
                   << "): " << how;
  }
}

template <typename T, typename G>
void Backward(Blas& blas, T* dinp, G* dweight, G* dbias, const T* dout, const T* inp,
              const T* weight, int64_t M, int64_t K, int64_t N, WeightLayout layout, float alpha,
              bool accumulate_dinp, const T* gelu_pre, G* gelu_dbias, cudaStream_t stream) {
  constexpr DType t = DTypeOf<T>::value;
  if (gelu_dbias != nullptr) {
    if (gelu_pre == nullptr || dinp == nullptr) {
      Fatal("cuda::MatmulBackward: gelu_dbias needs gelu_pre and dinp");
    }
    DinpWithGeluBias(blas, dinp, gelu_dbias, dout, weight, M, K, N, layout, alpha, gelu_pre,
                     stream);
  } else if (dinp != nullptr) {
    Gemm(blas,
         MatmulBackwardDinpOp(dinp, dout, weight, M, K, N, layout, alpha, accumulate_dinp, gelu_pre,
                              t),
         stream);
  }
  // With fuse_bias_grad the weight-gradient GEMM also sums dout's columns
  // (the bias gradient) in its epilogue, into fp32 scratch that is then
  // added to dbias: one pass over dout fewer. Only for fp32 gradients (the
  // add reads fp32) and alpha = 1 (whether cuBLASLt scales the sums by
  // alpha is not documented, and the model always passes 1).
  if constexpr (std::is_same_v<G, float>) {
    if (dweight != nullptr && dbias != nullptr && alpha == 1.f && blas.fuse_bias_grad()) {
      if (float* scratch = BiasGradScratch(blas.impl(), N)) {
        GemmOp op =
            MatmulBackwardDweightOp(dweight, DType::kF32, dout, inp, M, K, N, layout, alpha, t);
        op.bgrad = scratch;
        op.bgrad_of_a = layout == WeightLayout::kOutIn;  // dW^T = dout^T inp: dout is A
        Gemm(blas, op, stream);
        BiasBackward(dbias, scratch, 1, N, alpha, stream);  // dbias += the sums
        return;
      }
    }
  }
  if (dweight != nullptr) {
    Gemm(blas,
         MatmulBackwardDweightOp(dweight, DTypeOf<G>::value, dout, inp, M, K, N, layout, alpha, t),
         stream);
  }
  // The bias gradient's partial sums go to the cuBLASLt workspace: the GEMMs
  // above are done with it by the time this stream reaches the bias kernels,
  // and the next GEMM on this stream starts after them.
  if (dbias != nullptr) {
    internal::BiasBackwardTwoStage(dbias, dout, M, N, alpha, blas.workspace(),
                                   static_cast<size_t>(blas.workspace_bytes()), stream);
  }
}

}  // namespace

void MatmulForward(Blas& blas, float* out, const float* inp, const float* weight, const float* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout, const float* residual,
                   float* pre_gelu, cudaStream_t stream) {
  Forward(blas, out, inp, weight, bias, M, K, N, layout, residual, pre_gelu, stream);
}
void MatmulForward(Blas& blas, bf16* out, const bf16* inp, const bf16* weight, const bf16* bias,
                   int64_t M, int64_t K, int64_t N, WeightLayout layout, const bf16* residual,
                   bf16* pre_gelu, cudaStream_t stream) {
  Forward(blas, out, inp, weight, bias, M, K, N, layout, residual, pre_gelu, stream);
}

void MatmulBackward(Blas& blas, float* dinp, float* dweight, float* dbias, const float* dout,
                    const float* inp, const float* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const float* gelu_pre,
                    cudaStream_t stream, float* gelu_dbias) {
  Backward(blas, dinp, dweight, dbias, dout, inp, weight, M, K, N, layout, alpha, accumulate_dinp,
           gelu_pre, gelu_dbias, stream);
}
void MatmulBackward(Blas& blas, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout,
                    const bf16* inp, const bf16* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const bf16* gelu_pre,
                    cudaStream_t stream, bf16* gelu_dbias) {
  Backward(blas, dinp, dweight, dbias, dout, inp, weight, M, K, N, layout, alpha, accumulate_dinp,
           gelu_pre, gelu_dbias, stream);
}
void MatmulBackward(Blas& blas, bf16* dinp, float* dweight, float* dbias, const bf16* dout,
                    const bf16* inp, const bf16* weight, int64_t M, int64_t K, int64_t N,
                    WeightLayout layout, float alpha, bool accumulate_dinp, const bf16* gelu_pre,
                    cudaStream_t stream, float* gelu_dbias) {
  Backward(blas, dinp, dweight, dbias, dout, inp, weight, M, K, N, layout, alpha, accumulate_dinp,
           gelu_pre, gelu_dbias, stream);
}

}  // namespace llmt::kernels::cuda
