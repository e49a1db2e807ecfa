// The CUDA model (worker/model/cuda_model.h) against the CPU model
// (worker/model/model.h): identical initialisation, fp32 logits, loss and
// every gradient tensor; gradient accumulation; token validation; activation
// recomputation; bf16 mixed precision tracking fp32 over 50 AdamW steps; the
// memory report and out-of-memory errors. Every test skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/runtime.cuh"
#include "worker/model/cuda_model.h"
#include "worker/model/model.h"

namespace llmt::model {
namespace {

#define REQUIRE_GPU()                                                        \
  do {                                                                       \
    if (!::llmt::kernels::cuda::HaveGpu()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// fp32 on both sides, but the GPU sums in a different order (tiled GEMMs,
// block reductions, flash attention's online softmax), so results agree to a
// few ulps of the tensor's scale, not bit for bit: 1e-4 of the tensor's
// largest magnitude leaves two orders of margin over what reordering costs at
// these sizes while still catching any indexing or formula error (which shows
// up at 1e-2 or worse).
constexpr double kFp32Tol = 1e-4;

// max|a - b| / max(max|b|, 1e-6): the error relative to the reference
// tensor's scale, so near-zero elements (biases' gradients at init) do not
// turn rounding noise into a huge elementwise ratio.
double RelErr(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-6);
}

bool AllFinite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

std::vector<int32_t> RandomTokens(size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Tiny configs. The vocabularies are odd on purpose: the GPU pads the logits'
// row stride, and an odd V catches code that confuses V with the stride.
ModelConfig Gpt2Tiny() {
  ModelConfig c;
  c.family = Family::kGpt2;
  c.vocab_size = 97;
  c.d_model = 64;
  c.n_layer = 2;
  c.n_head = 4;  // head dim 16
  c.n_kv_head = 4;
  c.d_ff = 256;
  c.max_seq_len = 64;
  return c;
}

ModelConfig LlamaTiny() {
  ModelConfig c;
  c.family = Family::kLlama;
  c.vocab_size = 101;
  c.d_model = 64;
  c.n_layer = 2;
  c.n_head = 4;  // head dim 16
  c.n_kv_head = 2;
  c.d_ff = 160;
  c.max_seq_len = 64;
  return c;
}

// Head dim 64: the size the tensor-core attention kernels are built for;
// sequences up to 320, so that the attention kernels walk several key tiles.
ModelConfig Gpt2Hd64() {
  ModelConfig c = Gpt2Tiny();
  c.d_model = 128;
  c.n_head = 2;
  c.n_kv_head = 2;
  c.d_ff = 512;
  c.max_seq_len = 320;
  return c;
}

ModelConfig LlamaHd64() {
  ModelConfig c = LlamaTiny();
  c.d_model = 128;
  c.n_head = 2;
  c.n_kv_head = 1;
  c.d_ff = 320;
  c.max_seq_len = 320;
  return c;
}

constexpr int kB = 3, kT = 32;
constexpr uint64_t kInitSeed = 1234;

std::unique_ptr<CudaModel> MakeGpu(const ModelConfig& cfg, int B, int T, Precision p,
                                   Recompute r = Recompute::kNone, bool stochastic = false,
                                   int64_t xent_chunk_rows = 0) {
  CudaModelOptions o;
  o.device = 0;
  o.precision = p;
  o.recompute = r;
  o.stochastic_rounding = stochastic;
  o.xent_chunk_rows = xent_chunk_rows;
  // The row-chunked classifier excludes the overlapped one (which run.sh
  // turns on for a whole run with LLMT_XENT_OVERLAP).
  if (xent_chunk_rows > 0) o.xent_overlap_chunks = 0;
  auto m = CudaModel::Create(cfg, B, T, o);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  auto s = (*m)->InitWeights(kInitSeed);
  EXPECT_TRUE(s.ok()) << s;
  if (!s.ok()) return nullptr;
  return std::move(m).value();
}

// One full micro-step on a fresh gradient: returns the loss and the gradients.
struct StepOut {
  double loss = 0;
  std::vector<float> grads;
};
StepOut GpuStep(CudaModel& m, const std::vector<int32_t>& in, const std::vector<int32_t>& tgt) {
  StepOut out;
  m.ZeroGrad();
  auto s = m.ForwardBackward(in.data(), tgt.data(), 1.f);
  EXPECT_TRUE(s.ok()) << s;
  auto loss = m.TakeLoss();
  EXPECT_TRUE(loss.ok()) << loss.status();
  out.loss = loss.ok() ? *loss : std::nan("");
  out.grads.resize(m.num_params());
  s = m.GetGrads(out.grads.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// Sets an environment variable for its lifetime and then puts back what was
// there (run.sh runs whole test binaries under LLMT_* options, so a test
// must not unset one behind the others' backs).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) saved_ = old;
    EXPECT_EQ(setenv(name, value, 1), 0);
  }
  ~ScopedEnv() {
    if (saved_) {
      setenv(name_, saved_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

// CudaModel::Create with `var` set to each `bad` value (the options leaving
// the field at -1: from the environment) fails with InvalidArgument naming
// the variable, before anything touches a device (so this runs without a
// GPU too).
void ExpectCreateRejects(const char* var, std::initializer_list<const char*> bad) {
  for (const char* value : bad) {
    SCOPED_TRACE(::testing::Message() << var << "='" << value << "'");
    ScopedEnv env(var, value);
    CudaModelOptions o;
    o.precision = Precision::kFp32;
    auto m = CudaModel::Create(Gpt2Tiny(), kB, kT, o);
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
    EXPECT_NE(std::string(m.status().message()).find(std::string(var) + "='"), std::string::npos)
        << m.status();
  }
}

struct Case {
  const char* name;
  ModelConfig cfg;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CudaModelParity : public ::testing::TestWithParam<Case> {};

TEST_P(CudaModelParity, Fp32LogitsLossAndGradientsMatchCpu) {
  REQUIRE_GPU();
  const ModelConfig cfg = GetParam().cfg;
  const int V = cfg.vocab_size;

  auto cpu_or = Model::Create(cfg, kB, kT);
  ASSERT_TRUE(cpu_or.ok()) << cpu_or.status();
  Model& cpu = **cpu_or;
  cpu.InitWeights(kInitSeed);
  auto gpu_ptr = MakeGpu(cfg, kB, kT, Precision::kFp32);
  ASSERT_NE(gpu_ptr, nullptr);
  CudaModel& gpu = *gpu_ptr;

  // Same layout, and the same initial weights bit for bit (InitParams runs on
  // the host for both).
  const int64_t n = cpu.num_params();
  ASSERT_EQ(gpu.num_params(), n);
  ASSERT_EQ(gpu.params_info().size(), cpu.params_info().size());
  for (size_t i = 0; i < cpu.params_info().size(); ++i) {
    EXPECT_EQ(gpu.params_info()[i].name, cpu.params_info()[i].name);
    EXPECT_EQ(gpu.params_info()[i].offset, cpu.params_info()[i].offset);
    EXPECT_EQ(gpu.params_info()[i].numel, cpu.params_info()[i].numel);
  }
  std::vector<float> gp(n);
  ASSERT_TRUE(gpu.GetParams(gp.data()).ok());
  EXPECT_EQ(std::memcmp(gp.data(), cpu.params(), n * sizeof(float)), 0)
      << "InitWeights differs between the backends";

  const auto in = RandomTokens(kB * kT, V, 7);
  const auto tgt = RandomTokens(kB * kT, V, 8);

  // (a) logits.
  cpu.Forward(in.data(), nullptr, kB, kT);
  std::vector<float> cpu_logits(cpu.logits(), cpu.logits() + static_cast<size_t>(kB) * kT * V);
  auto f = gpu.Forward(in.data(), nullptr, kB, kT);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<float> gpu_logits(static_cast<size_t>(kB) * kT * V);
  ASSERT_TRUE(gpu.GetLogits(gpu_logits.data()).ok());
  ASSERT_TRUE(AllFinite(gpu_logits));
  EXPECT_LE(RelErr(gpu_logits.data(), cpu_logits.data(), gpu_logits.size()), kFp32Tol);

  // Forward on a smaller b x t reads the same positions' logits.
  const int b2 = 2, t2 = 17;
  std::vector<int32_t> in2(b2 * t2);
  for (int b = 0; b < b2; ++b)
    for (int t = 0; t < t2; ++t) in2[b * t2 + t] = in[b * kT + t];
  cpu.Forward(in2.data(), nullptr, b2, t2);
  std::vector<float> cpu_l2(cpu.logits(), cpu.logits() + static_cast<size_t>(b2) * t2 * V);
  ASSERT_TRUE(gpu.Forward(in2.data(), nullptr, b2, t2).ok());
  std::vector<float> gpu_l2(cpu_l2.size());
  ASSERT_TRUE(gpu.GetLogits(gpu_l2.data()).ok());
  EXPECT_LE(RelErr(gpu_l2.data(), cpu_l2.data(), gpu_l2.size()), kFp32Tol) << "b=2, t=17";

  // (b) loss, both through Forward with targets and through ForwardBackward.
  cpu.ZeroGrad();
  const double cpu_loss = cpu.Forward(in.data(), tgt.data(), kB, kT);
  cpu.Backward(1.f);
  ASSERT_TRUE(std::isfinite(cpu_loss));
  auto gpu_fwd_loss = gpu.Forward(in.data(), tgt.data(), kB, kT);
  ASSERT_TRUE(gpu_fwd_loss.ok()) << gpu_fwd_loss.status();
  EXPECT_LE(std::fabs(*gpu_fwd_loss - cpu_loss) / cpu_loss, kFp32Tol)
      << "gpu " << *gpu_fwd_loss << " cpu " << cpu_loss;
  StepOut g = GpuStep(gpu, in, tgt);
  EXPECT_LE(std::fabs(g.loss - cpu_loss) / cpu_loss, kFp32Tol) << "gpu " << g.loss << " cpu " << cpu_loss;

  // (c) every gradient tensor.
  ASSERT_TRUE(AllFinite(g.grads));
  for (const ParamInfo& p : cpu.params_info()) {
    const float* want = cpu.grads() + p.offset;
    const float* got = g.grads.data() + p.offset;
    EXPECT_LE(RelErr(got, want, p.numel), kFp32Tol) << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, CudaModelParity,
                         ::testing::Values(Case{"gpt2", Gpt2Tiny()}, Case{"llama", LlamaTiny()},
                                           Case{"gpt2_hd64", Gpt2Hd64()},
                                           Case{"llama_hd64", LlamaHd64()}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST(CudaModel, ForwardBackwardWithoutZeroGradAccumulates) {
  REQUIRE_GPU();
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny()}) {
    auto m = MakeGpu(cfg, kB, kT, Precision::kFp32);
    ASSERT_NE(m, nullptr);
    const auto in = RandomTokens(kB * kT, cfg.vocab_size, 21);
    const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 22);
    StepOut once = GpuStep(*m, in, tgt);
    // A second identical micro-step onto the same gradients.
    ASSERT_TRUE(m->ForwardBackward(in.data(), tgt.data(), 1.f).ok());
    auto loss = m->TakeLoss();
    ASSERT_TRUE(loss.ok()) << loss.status();
    // TakeLoss since the last TakeLoss covers only the second call.
    EXPECT_NEAR(*loss, once.loss, 1e-6 * once.loss);
    std::vector<float> twice(m->num_params());
    ASSERT_TRUE(m->GetGrads(twice.data()).ok());
    std::vector<float> doubled(once.grads.size());
    for (size_t i = 0; i < doubled.size(); ++i) doubled[i] = 2.f * once.grads[i];
    // The kernels are deterministic, so the second pass adds the same values;
    // only the accumulating epilogue's rounding may differ.
    for (const ParamInfo& p : m->params_info()) {
      EXPECT_LE(RelErr(twice.data() + p.offset, doubled.data() + p.offset, p.numel), 1e-6) << p.name;
    }
  }
}

TEST(CudaModel, TokenOutsideTheVocabularyIsAnErrorNamingIt) {
  REQUIRE_GPU();
  const ModelConfig cfg = Gpt2Tiny();
  auto m = MakeGpu(cfg, kB, kT, Precision::kFp32);
  ASSERT_NE(m, nullptr);
  auto in = RandomTokens(kB * kT, cfg.vocab_size, 3);
  const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 4);
  const int32_t bad = cfg.vocab_size + 3;  // 100
  in[37] = bad;

  auto f = m->Forward(in.data(), nullptr, kB, kT);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(std::string(f.status().message()).find(std::to_string(bad)), std::string::npos)
      << f.status();
  auto s = m->ForwardBackward(in.data(), tgt.data(), 1.f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find(std::to_string(bad)), std::string::npos) << s;

  in[37] = -1;
  f = m->Forward(in.data(), tgt.data(), kB, kT);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(std::string(f.status().message()).find("-1"), std::string::npos) << f.status();

  // The model stays usable after a rejected batch.
  in[37] = 0;
  StepOut g = GpuStep(*m, in, tgt);
  EXPECT_TRUE(std::isfinite(g.loss));
}

// Recomputation changes what is stored, not what is computed: the same
// kernels produce the recomputed activations from the same inputs.
TEST(CudaModel, RecomputeGivesTheSameGradients) {
  REQUIRE_GPU();
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny()}) {
    const auto in = RandomTokens(kB * kT, cfg.vocab_size, 31);
    const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 32);
    auto base_m = MakeGpu(cfg, kB, kT, Precision::kFp32, Recompute::kNone);
    ASSERT_NE(base_m, nullptr);
    StepOut base = GpuStep(*base_m, in, tgt);
    base_m.reset();
    for (Recompute r : {Recompute::kGelu, Recompute::kNormGelu}) {
      const char* rname = r == Recompute::kGelu ? "gelu" : "norm_gelu";
      auto m = MakeGpu(cfg, kB, kT, Precision::kFp32, r);
      ASSERT_NE(m, nullptr);
      StepOut got = GpuStep(*m, in, tgt);
      EXPECT_NEAR(got.loss, base.loss, 1e-6 * base.loss) << rname;
      for (const ParamInfo& p : m->params_info()) {
        EXPECT_LE(RelErr(got.grads.data() + p.offset, base.grads.data() + p.offset, p.numel), 1e-6)
            << rname << " " << p.name;
      }
    }
  }
}

// One micro-step of a fresh model made with LLMT_BIAS_GRAD=`mode` (the
// Blas reads it at creation); the variable is put back as it was (run.sh
// also runs this whole binary under LLMT_BIAS_GRAD).
StepOut StepWithBiasGrad(const char* mode, const ModelConfig& cfg, Precision p,
                         const std::vector<int32_t>& in, const std::vector<int32_t>& tgt) {
  std::unique_ptr<CudaModel> m;
  {
    ScopedEnv env("LLMT_BIAS_GRAD", mode);
    m = MakeGpu(cfg, kB, kT, p);
  }
  if (m == nullptr) return StepOut{std::nan(""), {}};
  return GpuStep(*m, in, tgt);
}

// LLMT_BIAS_GRAD=norm: the attention and MLP output projections' bias
// gradients come from the norm backward (column sums of the residual
// stream's gradient) instead of a pass over it in MatmulBackward;
// LLMT_BIAS_GRAD=dgelu: the MLP input projection's from the output
// projection's DGELU GEMM (in fp32 never a fused GELU epilogue, so the same
// column-sum pass over the same dfc, now in the other layer's backward);
// LLMT_BIAS_GRAD=qv: the QKV bias's from the query and value thirds of dqkv,
// the key third's left at zero (the default's is rounding noise, ~1e-7 of
// the tensor); with norm too, the value third as W_out times the attention
// projection's bias gradient (the same sums up to fp32 rounding). fp32, both
// families (Llama has no biases: nothing may change there), against the
// default: the moved biases within 1e-5 of the tensor's largest magnitude
// (the same sums, possibly in another order); every other gradient bit for
// bit.
TEST(CudaModel, Fp32BiasGradientSourcesMatch) {
  REQUIRE_GPU();
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny()}) {
    const auto in = RandomTokens(kB * kT, cfg.vocab_size, 51);
    const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 52);
    const StepOut base = StepWithBiasGrad("kernel", cfg, Precision::kFp32, in, tgt);
    ASSERT_FALSE(base.grads.empty());
    for (const char* mode : {"norm", "dgelu", "qv", "norm+qv", "norm+dgelu+qv"}) {
      SCOPED_TRACE(mode);
      const std::string m = mode;
      const StepOut got = StepWithBiasGrad(mode, cfg, Precision::kFp32, in, tgt);
      ASSERT_EQ(got.grads.size(), base.grads.size());
      EXPECT_EQ(got.loss, base.loss);
      auto probe = MakeGpu(cfg, kB, kT, Precision::kFp32);
      ASSERT_NE(probe, nullptr);
      for (const ParamInfo& p : probe->params_info()) {
        // attn.c_proj.bias and mlp.c_proj.bias of every layer; mlp.c_fc.bias.
        const bool norm = m.find("norm") != std::string::npos;
        const bool dgelu = m.find("dgelu") != std::string::npos;
        const bool qv = m.find("qv") != std::string::npos;
        const bool moved = (norm && absl::EndsWith(p.name, "c_proj.bias")) ||
                           (dgelu && absl::EndsWith(p.name, "c_fc.bias")) ||
                           (qv && absl::EndsWith(p.name, "c_attn.bias"));
        const float* g = got.grads.data() + p.offset;
        const float* b = base.grads.data() + p.offset;
        if (moved) {
          EXPECT_LE(RelErr(g, b, p.numel), 1e-5) << p.name;
          if (qv && absl::EndsWith(p.name, "c_attn.bias")) {  // the key third: nothing added
            const int64_t c = p.numel / 3;
            EXPECT_TRUE(std::all_of(g + c, g + 2 * c, [](float x) { return x == 0.f; }))
                << p.name;
          }
        } else {
          EXPECT_TRUE(std::equal(g, g + p.numel, b)) << p.name << " changed";
        }
      }
    }
  }
}

// The same in bf16, against the default, at bf16 scale: 2e-2 of each
// tensor's largest magnitude (one bf16 rounding of a gradient is 2^-9; a
// bias summed from the wrong values is off by its own magnitude). The loss
// is the forward's: equal. Apart per source, so that run.sh can gate each
// on its own test: norm+qv here (no change to any GEMM: every gradient but
// the moved biases bit for bit, as in fp32), dgelu below.
void CheckBf16BiasGradients(const char* mode, bool gemms_change) {
  const ModelConfig cfg = Gpt2Tiny();
  const auto in = RandomTokens(kB * kT, cfg.vocab_size, 53);
  const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 54);
  const StepOut base = StepWithBiasGrad("kernel", cfg, Precision::kBf16, in, tgt);
  const StepOut got = StepWithBiasGrad(mode, cfg, Precision::kBf16, in, tgt);
  ASSERT_FALSE(base.grads.empty());
  ASSERT_EQ(got.grads.size(), base.grads.size());
  EXPECT_EQ(got.loss, base.loss);
  auto probe = MakeGpu(cfg, kB, kT, Precision::kBf16);
  ASSERT_NE(probe, nullptr);
  for (const ParamInfo& p : probe->params_info()) {
    const float* g = got.grads.data() + p.offset;
    const float* b = base.grads.data() + p.offset;
    const bool bias = absl::EndsWith(p.name, ".bias") && p.name.find("ln_") == std::string::npos;
    if (gemms_change || bias) {
      EXPECT_LE(RelErr(g, b, p.numel), 2e-2) << p.name;
    } else {
      EXPECT_TRUE(std::equal(g, g + p.numel, b)) << p.name << " changed";
    }
  }
}

TEST(CudaModel, Bf16BiasGradientsFromTheNormWithoutTheKeyThirdMatch) {
  REQUIRE_GPU();
  CheckBf16BiasGradients("norm+qv", /*gemms_change=*/false);
}

// LLMT_BIAS_GRAD=dgelu in bf16 asks cuBLASLt for its DGELU_BGRAD epilogue:
// that GEMM may run another kernel than the plain DGELU one (dfc rounded
// differently, and every gradient upstream with it).
TEST(CudaModel, Bf16BiasGradientsFromTheDGeluGemmMatch) {
  REQUIRE_GPU();
  CheckBf16BiasGradients("dgelu", /*gemms_change=*/true);
}

// The classifier in row chunks (CudaModelOptions::xent_chunk_rows: logits
// GEMM + cross-entropy per chunk) against one GEMM for the micro-batch: 96
// rows in chunks of 7 (the last one 5). fp32; the chunk GEMMs may pick other
// cuBLASLt kernels, so agreement is to summation order: 1e-5 relative.
TEST(CudaModel, ChunkedClassifierGivesTheSameLossAndGradients) {
  REQUIRE_GPU();
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny()}) {
    const auto in = RandomTokens(kB * kT, cfg.vocab_size, 41);
    const auto tgt = RandomTokens(kB * kT, cfg.vocab_size, 42);
    auto whole_m = MakeGpu(cfg, kB, kT, Precision::kFp32);
    ASSERT_NE(whole_m, nullptr);
    const StepOut whole = GpuStep(*whole_m, in, tgt);
    whole_m.reset();
    auto m = MakeGpu(cfg, kB, kT, Precision::kFp32, Recompute::kNone, false, 7);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->options().xent_chunk_rows, 7);
    const StepOut got = GpuStep(*m, in, tgt);
    EXPECT_NEAR(got.loss, whole.loss, 1e-5 * whole.loss);
    for (const ParamInfo& p : m->params_info()) {
      EXPECT_LE(RelErr(got.grads.data() + p.offset, whole.grads.data() + p.offset, p.numel), 1e-5)
          << p.name;
    }
  }
}

// LLMT_XENT_CHUNK_ROWS is read when the options leave xent_chunk_rows at -1;
// a value that is not a row count is an error naming the variable, reported
// before anything touches a device (so this runs without a GPU too).
TEST(CudaModel, BadChunkRowsEnvironmentIsAnErrorNamingIt) {
  ExpectCreateRejects("LLMT_XENT_CHUNK_ROWS", {"abc", "-3", "12x"});
}

// LLMT_WGRAD_STREAM: 0/off/1/on (and unset or empty: off); anything else is
// an error naming the variable, from CudaModel::Create before any device is
// touched (so this runs without a GPU too).
TEST(CudaModel, WgradStreamEnvironmentParsesAndBadValuesNameIt) {
  for (const char* off : {"", "0", "off"}) EXPECT_FALSE(*ParseWgradStream(off)) << off;
  EXPECT_FALSE(*ParseWgradStream(nullptr));
  for (const char* on : {"1", "on"}) EXPECT_TRUE(*ParseWgradStream(on)) << on;
  for (const char* bad : {"yes", "2", "on "}) EXPECT_FALSE(ParseWgradStream(bad).ok()) << bad;
  ExpectCreateRejects("LLMT_WGRAD_STREAM", {"yes", "2", "on "});
}

// LLMT_XENT_OVERLAP: K chunks (2..64), optionally :S SMs (1..1024); off
// when unset, empty, 0 or off; anything else an error naming the variable,
// from CudaModel::Create before any device is touched. The option excludes
// the row-chunked classifier.
TEST(CudaModel, XentOverlapEnvironmentParsesAndBadValuesNameIt) {
  for (const char* off : {"", "0", "off"}) EXPECT_EQ(ParseXentOverlap(off)->chunks, 0) << off;
  EXPECT_EQ(ParseXentOverlap(nullptr)->chunks, 0);
  EXPECT_EQ(ParseXentOverlap("4")->chunks, 4);
  EXPECT_EQ(ParseXentOverlap("4")->sms, 0);
  EXPECT_EQ(ParseXentOverlap("8:40")->chunks, 8);
  EXPECT_EQ(ParseXentOverlap("8:40")->sms, 40);
  for (const char* bad : {"1", "65", "x", "4:", "4:0", "4:x", "4:2000", ":8"}) {
    EXPECT_FALSE(ParseXentOverlap(bad).ok()) << bad;
  }
  ExpectCreateRejects("LLMT_XENT_OVERLAP", {"1", "65", "x", "4:0", "4:2000"});
  CudaModelOptions both;
  both.precision = Precision::kFp32;
  both.xent_overlap_chunks = 4;
  both.xent_chunk_rows = 64;
  auto m = CudaModel::Create(Gpt2Tiny(), kB, kT, both);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_NE(std::string(m.status().message()).find("exclude each other"), std::string::npos)
      << m.status();
}

// The cross-entropy beside the logits GEMM (xent_overlap_chunks) against the
// one-GEMM classifier, over three micro-steps (the first runs in order on
// one stream, the later ones on two): the same per-row kernel on the same
// logits, but the chunk GEMMs (and their SM count target) may run other
// cuBLASLt kernels, so fp32 agrees to summation order (1e-5 relative), bf16
// to a bf16 rounding of the logits (2e-2 of each gradient tensor's scale,
// 1e-3 of the loss). Both families in fp32 with 3 chunks of 32 rows and 2
// SMs; GPT-2 bf16 at head dim 64 with 640 rows in 5 chunks and the default
// SMs. Whether the results came out bit-identical is printed.
TEST(CudaModel, XentOverlapGivesTheSameLossAndGradients) {
  REQUIRE_GPU();
  struct OverlapCase {
    const char* name;
    ModelConfig cfg;
    int B, T;
    Precision p;
    int chunks, sms;
  };
  for (const OverlapCase& c :
       {OverlapCase{"gpt2 fp32", Gpt2Tiny(), kB, kT, Precision::kFp32, 3, 2},
        OverlapCase{"llama fp32", LlamaTiny(), kB, kT, Precision::kFp32, 3, 2},
        OverlapCase{"gpt2 hd64 bf16", Gpt2Hd64(), 2, 320, Precision::kBf16, 5, 0}}) {
    SCOPED_TRACE(c.name);
    const bool fp32 = c.p == Precision::kFp32;
    std::vector<StepOut> runs[2];
    for (int overlap = 0; overlap < 2; ++overlap) {
      CudaModelOptions o;
      o.precision = c.p;
      o.xent_chunk_rows = 0;
      o.wgrad_stream = 0;
      o.xent_overlap_chunks = overlap ? c.chunks : 0;
      o.xent_overlap_sms = c.sms;
      auto m = CudaModel::Create(c.cfg, c.B, c.T, o);
      ASSERT_TRUE(m.ok()) << m.status();
      ASSERT_TRUE((*m)->InitWeights(kInitSeed).ok());
      for (int step = 0; step < 3; ++step) {
        const auto in = RandomTokens(c.B * c.T, c.cfg.vocab_size, 70 + step);
        const auto tgt = RandomTokens(c.B * c.T, c.cfg.vocab_size, 80 + step);
        runs[overlap].push_back(GpuStep(**m, in, tgt));
      }
    }
    bool bits = true;
    auto probe = MakeGpu(c.cfg, c.B, c.T, c.p);
    ASSERT_NE(probe, nullptr);
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE(step);
      const StepOut& want = runs[0][step];
      const StepOut& got = runs[1][step];
      ASSERT_EQ(got.grads.size(), want.grads.size());
      EXPECT_NEAR(got.loss, want.loss, (fp32 ? 1e-5 : 1e-3) * want.loss);
      for (const ParamInfo& p : probe->params_info()) {
        EXPECT_LE(RelErr(got.grads.data() + p.offset, want.grads.data() + p.offset, p.numel),
                  fp32 ? 1e-5 : 2e-2)
            << p.name;
      }
      bits = bits && got.loss == want.loss && got.grads == want.grads;
    }
    std::printf("%s: the overlapped classifier's losses and gradients are%s bit-identical\n",
                c.name, bits ? "" : " not");
  }
}

// A token stream with structure a small model learns quickly: mostly a fixed
// successor function, with 10% noise so the loss cannot reach zero.
std::vector<std::vector<int32_t>> StructuredBatches(int vocab, int B, int T, int n_batches,
                                                    uint32_t seed, bool targets) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  std::uniform_real_distribution<double> u(0, 1);
  const int64_t len = 20000;
  std::vector<int32_t> stream(len);
  stream[0] = tok(rng);
  for (int64_t i = 1; i < len; ++i) {
    stream[i] = u(rng) < 0.9 ? (stream[i - 1] * 7 + 3) % vocab : tok(rng);
  }
  std::uniform_int_distribution<int64_t> start(0, len - T - 2);
  std::vector<std::vector<int32_t>> batches(n_batches, std::vector<int32_t>(B * T));
  for (auto& batch : batches) {
    for (int b = 0; b < B; ++b) {
      const int64_t s = start(rng) + (targets ? 1 : 0);
      std::copy(stream.begin() + s, stream.begin() + s + T, batch.begin() + b * T);
    }
  }
  return batches;
}

// Losses of `steps` AdamW steps on the fixed batch sequence.
std::vector<double> TrainLosses(CudaModel& m, int B, int T, int steps) {
  const int V = m.config().vocab_size;
  // Same seed for inputs and targets: the targets are the inputs shifted by one.
  const auto ins = StructuredBatches(V, B, T, steps, 99, false);
  const auto tgts = StructuredBatches(V, B, T, steps, 99, true);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    m.ZeroGrad();
    auto st = m.ForwardBackward(ins[s].data(), tgts[s].data(), 1.f);
    EXPECT_TRUE(st.ok()) << st;
    auto loss = m.TakeLoss();
    EXPECT_TRUE(loss.ok()) << loss.status();
    losses.push_back(loss.ok() ? *loss : std::nan(""));
    AdamWHyper h;
    h.lr = 1e-3f;
    h.weight_decay = 0.f;
    h.step = s + 1;
    h.seed = 1000 + s;
    m.AdamWStep(h);
  }
  EXPECT_TRUE(m.Synchronize().ok());
  return losses;
}

double MeanOfLast(const std::vector<double>& v, int k) {
  double s = 0;
  for (int i = 0; i < k; ++i) s += v[v.size() - 1 - i];
  return s / k;
}

// The weight gradients on a second stream (CudaModelOptions::wgrad_stream)
// run the same GEMMs and kernels, each output with one writer, so training
// must be bit-identical to the one-stream backward: every loss, the last
// step's gradients and the final weights, over 3 AdamW steps of 2
// accumulated micro-steps each (the first backward runs on one stream, the
// later ones on two). Both families, fp32 and bf16; with recomputation,
// whose shared buffers are where a missing wait would show; for GPT-2 also
// with the bias gradients from the norm backward and without the key third
// (LLMT_BIAS_GRAD=norm+qv: bias work on both streams) and at head dim 64 x
// 320 tokens, where the GEMMs are large enough for the two streams to
// overlap.
struct TwoStreamRun {
  std::vector<double> losses;
  std::vector<float> grads, params;
};

TwoStreamRun TrainForStreams(const ModelConfig& cfg, int B, int T, Precision p, Recompute r,
                             int wgrad_stream, const char* bias_grad) {
  CudaModelOptions o;
  o.precision = p;
  o.recompute = r;
  o.xent_chunk_rows = 0;
  o.wgrad_stream = wgrad_stream;
  absl::StatusOr<std::unique_ptr<CudaModel>> m_or;
  {
    ScopedEnv env("LLMT_BIAS_GRAD", bias_grad);  // the Blas reads it at creation
    m_or = CudaModel::Create(cfg, B, T, o);
  }
  EXPECT_TRUE(m_or.ok()) << m_or.status();
  TwoStreamRun out;
  if (!m_or.ok()) return out;
  CudaModel& m = **m_or;
  EXPECT_EQ(m.options().wgrad_stream, wgrad_stream);
  EXPECT_TRUE(m.InitWeights(kInitSeed).ok());
  const int V = cfg.vocab_size;
  constexpr int kSteps = 3, kMicro = 2;
  const auto ins = StructuredBatches(V, B, T, kSteps * kMicro, 77, false);
  const auto tgts = StructuredBatches(V, B, T, kSteps * kMicro, 77, true);
  for (int s = 0; s < kSteps; ++s) {
    m.ZeroGrad();
    for (int k = 0; k < kMicro; ++k) {
      EXPECT_TRUE(m.ForwardBackward(ins[s * kMicro + k].data(), tgts[s * kMicro + k].data(),
                                    1.f / kMicro)
                      .ok());
    }
    auto loss = m.TakeLoss();
    EXPECT_TRUE(loss.ok()) << loss.status();
    out.losses.push_back(loss.ok() ? *loss : std::nan(""));
    if (s == kSteps - 1) {
      out.grads.resize(m.num_params());
      EXPECT_TRUE(m.GetGrads(out.grads.data()).ok());
    }
    AdamWHyper h;
    h.lr = 1e-3f;
    h.weight_decay = 0.1f;
    h.step = s + 1;
    m.AdamWStep(h);
  }
  out.params.resize(m.num_params());
  EXPECT_TRUE(m.GetParams(out.params.data()).ok());
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct StreamCase {
  const char* name;
  ModelConfig cfg;
  int B, T;
  Precision p;
  Recompute r;
  const char* bias_grad;
};

void CheckTwoStreams(const std::vector<StreamCase>& cases) {
  for (const StreamCase& c : cases) {
    SCOPED_TRACE(c.name);
    const TwoStreamRun one = TrainForStreams(c.cfg, c.B, c.T, c.p, c.r, 0, c.bias_grad);
    const TwoStreamRun two = TrainForStreams(c.cfg, c.B, c.T, c.p, c.r, 1, c.bias_grad);
    ASSERT_EQ(one.losses.size(), 3u);
    EXPECT_EQ(two.losses, one.losses);
    EXPECT_TRUE(SameBits(two.grads, one.grads)) << "gradients differ";
    EXPECT_TRUE(SameBits(two.params, one.params)) << "weights differ";
    EXPECT_TRUE(std::all_of(one.losses.begin(), one.losses.end(),
                            [](double l) { return std::isfinite(l); }));
  }
}

TEST(CudaModel, WeightGradientStreamIsBitIdentical) {
  REQUIRE_GPU();
  CheckTwoStreams({
      {"gpt2 fp32", Gpt2Tiny(), kB, kT, Precision::kFp32, Recompute::kNone, "kernel"},
      {"llama fp32", LlamaTiny(), kB, kT, Precision::kFp32, Recompute::kNone, "kernel"},
      {"gpt2 bf16", Gpt2Tiny(), kB, kT, Precision::kBf16, Recompute::kNone, "kernel"},
      {"llama bf16", LlamaTiny(), kB, kT, Precision::kBf16, Recompute::kNone, "kernel"},
      {"gpt2 bf16 norm_gelu", Gpt2Tiny(), kB, kT, Precision::kBf16, Recompute::kNormGelu,
       "kernel"},
      {"llama bf16 gelu", LlamaTiny(), kB, kT, Precision::kBf16, Recompute::kGelu, "kernel"},
      {"gpt2 bf16 norm+qv", Gpt2Tiny(), kB, kT, Precision::kBf16, Recompute::kNone, "norm+qv"},
      {"gpt2 hd64 bf16", Gpt2Hd64(), 2, 320, Precision::kBf16, Recompute::kNone, "kernel"},
      {"gpt2 hd64 bf16 norm_gelu norm+qv", Gpt2Hd64(), 2, 320, Precision::kBf16,
       Recompute::kNormGelu, "norm+qv"},
  });
}

// The same with the c_fc bias gradient from the DGELU GEMM (which then runs
// on the main stream while c_fc's dW runs beside it). Apart, so that run.sh
// runs it only where the DGELU_BGRAD tests run (a cuBLASLt surprise there
// must not fail the other runs).
TEST(CudaModel, WeightGradientStreamWithTheDGeluBiasIsBitIdentical) {
  REQUIRE_GPU();
  CheckTwoStreams({
      {"gpt2 bf16 norm+dgelu+qv", Gpt2Tiny(), kB, kT, Precision::kBf16, Recompute::kNone,
       "norm+dgelu+qv"},
      {"gpt2 hd64 bf16 norm_gelu norm+dgelu+qv", Gpt2Hd64(), 2, 320, Precision::kBf16,
       Recompute::kNormGelu, "norm+dgelu+qv"},
  });
}

// The gradient-ready hook (data parallelism's overlap): when a range's
// wait_ready returns, the range must hold its final gradients -- with the
// weight gradients on a second stream too, where a range's event has to
// cover both streams. Each range is copied to the host right after its
// wait, with a plain cudaMemcpy (the legacy default stream, not ordered
// with the model's non-blocking streams), while the GPU is still working
// through the backward; the copies must equal the gradients read after a
// full synchronisation. Head dim 64 x 320 tokens so the backward lasts.
TEST(CudaModel, GradReadyRangesAreCompleteWhenReported) {
  REQUIRE_GPU();
  const ModelConfig cfg = Gpt2Hd64();
  const int B = 2, T = 320;
  for (int wgrad : {0, 1}) {
    SCOPED_TRACE(wgrad ? "two streams" : "one stream");
    CudaModelOptions o;
    o.precision = Precision::kBf16;
    o.xent_chunk_rows = 0;
    o.wgrad_stream = wgrad;
    auto m_or = CudaModel::Create(cfg, B, T, o);
    ASSERT_TRUE(m_or.ok()) << m_or.status();
    CudaModel& m = **m_or;
    ASSERT_TRUE(m.InitWeights(kInitSeed).ok());
    struct Pending {
      int64_t offset, count;
      std::function<absl::Status()> wait;
    };
    std::vector<Pending> pending;
    m.SetGradReadyHook([&](int64_t offset, int64_t count, std::function<absl::Status()> wait) {
      pending.push_back({offset, count, std::move(wait)});
    });
    const auto in = RandomTokens(B * T, cfg.vocab_size, 61);
    const auto tgt = RandomTokens(B * T, cfg.vocab_size, 62);
    for (int micro = 0; micro < 3; ++micro) {  // the first backward is one-stream
      SCOPED_TRACE(micro);
      m.ZeroGrad();
      pending.clear();
      ASSERT_TRUE(m.ForwardBackward(in.data(), tgt.data(), 1.f).ok());
      ASSERT_FALSE(pending.empty());
      std::vector<std::vector<float>> early;
      for (Pending& p : pending) {
        ASSERT_TRUE(p.wait().ok());
        early.emplace_back(p.count);
        ASSERT_EQ(cudaMemcpy(early.back().data(), m.device_grads() + p.offset,
                             p.count * sizeof(float), cudaMemcpyDeviceToHost),
                  cudaSuccess);
      }
      ASSERT_TRUE(m.Synchronize().ok());
      std::vector<float> all(m.num_params());
      ASSERT_TRUE(m.GetGrads(all.data()).ok());
      for (size_t i = 0; i < pending.size(); ++i) {
        EXPECT_EQ(std::memcmp(early[i].data(), all.data() + pending[i].offset,
                              pending[i].count * sizeof(float)),
                  0)
            << "range " << i << " (offset " << pending[i].offset << ") was not final";
      }
      ASSERT_TRUE(m.TakeLoss().ok());
    }
  }
}

// Head dim 16 (the tiny configs) runs the SIMT attention kernels, 64 the
// tensor-core ones (mma.sync, or wgmma with LLMT_ATTN_FWD/BWD=wgmma, which
// run.sh uses to check those end to end) on 300-token sequences: several
// key tiles and a partial last one, where the online softmax rescales
// (with 32 tokens, one tile, a wgmma forward that was wrong on an H100
// beyond its first key tile passed this test).
TEST(CudaModel, Bf16TracksFp32LossCurve) {
  REQUIRE_GPU();
  constexpr int B = 8, kSteps = 50;
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny(), Gpt2Hd64(), LlamaHd64()}) {
    const int T = cfg.d_model / cfg.n_head >= 64 ? 300 : 32;
    const std::string fam = std::string(cfg.family == Family::kGpt2 ? "gpt2" : "llama") +
                            " hd " + std::to_string(cfg.d_model / cfg.n_head);
    auto f32 = MakeGpu(cfg, B, T, Precision::kFp32);
    auto b16 = MakeGpu(cfg, B, T, Precision::kBf16);
    ASSERT_NE(f32, nullptr);
    ASSERT_NE(b16, nullptr);
    const auto l32 = TrainLosses(*f32, B, T, kSteps);
    const auto l16 = TrainLosses(*b16, B, T, kSteps);
    ASSERT_EQ(l32.size(), static_cast<size_t>(kSteps));
    ASSERT_EQ(l16.size(), static_cast<size_t>(kSteps));
    // The data is learnable: the fp32 reference must actually descend,
    // otherwise agreement would prove nothing.
    EXPECT_LT(MeanOfLast(l32, 5), 0.9 * l32[0]) << fam << ": fp32 loss did not fall";
    double worst = 0;
    for (int s = 0; s < kSteps; ++s) worst = std::max(worst, std::fabs(l16[s] - l32[s]) / l32[s]);
    std::printf("%s: fp32 loss %.4f -> %.4f, bf16 %.4f -> %.4f, max relative difference %.2e\n",
                fam.c_str(), l32[0], l32.back(), l16[0], l16.back(), worst);
    for (int s = 0; s < kSteps; ++s) {
      // bf16 activations carry ~3 significant digits; 1% of the loss is the
      // documented bound for mixed precision tracking fp32.
      EXPECT_LE(std::fabs(l16[s] - l32[s]) / l32[s], 0.01)
          << fam << " step " << s + 1 << ": bf16 " << l16[s] << " fp32 " << l32[s];
    }
  }
}

// cuDNN's fused attention inside the model (LLMT_ATTN_FWD=cudnn with
// LLMT_ATTN_BWD=cudnn, and with cudnn-det) on 256-token sequences (a cuDNN
// shape; the test above uses 300): 50 bf16 steps track the fp32 curve (SIMT
// attention) within 1%, and the plans and workspace were made at creation
// (the memory report names the workspace). Where cuDNN cannot run (no
// libcudnn, the emulator) the own kernels do, and only the curve is checked;
// bench/gpu/run.sh sets LLMT_REQUIRE_CUDNN=1, which makes that a failure.
TEST(CudaModel, CudnnAttentionTracksFp32LossCurve) {
  REQUIRE_GPU();
  namespace kc = ::llmt::kernels::cuda;
  const char* req = std::getenv("LLMT_REQUIRE_CUDNN");
  const bool require = req != nullptr && std::string(req) == "1";
  const kc::AttentionForwardVariant saved_fwd = kc::GetAttentionForwardVariant();
  const kc::AttentionBackwardVariant saved_bwd = kc::GetAttentionBackwardVariant();
  constexpr int B = 8, T = 256, kSteps = 50;
  for (const bool det : {false, true}) {
    for (const ModelConfig& cfg : {Gpt2Hd64(), LlamaHd64()}) {
      const std::string fam = std::string(cfg.family == Family::kGpt2 ? "gpt2" : "llama") +
                              (det ? ", cudnn-det" : ", cudnn");
      auto f32 = MakeGpu(cfg, B, T, Precision::kFp32);
      ASSERT_NE(f32, nullptr);
      const auto l32 = TrainLosses(*f32, B, T, kSteps);
      kc::SetAttentionForwardVariant(kc::AttentionForwardVariant::kCudnn);
      kc::SetAttentionBackwardVariant(kc::ParseAttentionBackwardVariant(det ? "cudnn-det" : "cudnn"));
      const int64_t before = kc::cudnn::Executions();
      auto b16 = MakeGpu(cfg, B, T, Precision::kBf16);
      ASSERT_NE(b16, nullptr);
      const auto l16 = TrainLosses(*b16, B, T, kSteps);
      const int64_t ran = kc::cudnn::Executions() - before;
      kc::SetAttentionForwardVariant(saved_fwd);
      kc::SetAttentionBackwardVariant(saved_bwd);
      ASSERT_EQ(l32.size(), static_cast<size_t>(kSteps));
      ASSERT_EQ(l16.size(), static_cast<size_t>(kSteps));
      EXPECT_LT(MeanOfLast(l32, 5), 0.9 * l32[0]) << fam << ": fp32 loss did not fall";
      double worst = 0;
      for (int s = 0; s < kSteps; ++s) {
        worst = std::max(worst, std::fabs(l16[s] - l32[s]) / l32[s]);
        EXPECT_LE(std::fabs(l16[s] - l32[s]) / l32[s], 0.01)
            << fam << " step " << s + 1 << ": bf16 " << l16[s] << " fp32 " << l32[s];
      }
      std::printf("%s: fp32 loss %.4f -> %.4f, bf16 %.4f -> %.4f, max relative difference "
                  "%.2e, cuDNN graphs run %lld\n",
                  fam.c_str(), l32[0], l32.back(), l16[0], l16.back(), worst,
                  static_cast<long long>(ran));
      if (require) {
        // Every layer's forward and backward in every step.
        EXPECT_EQ(ran, int64_t{2} * cfg.n_layer * kSteps) << fam << ": " << kc::cudnn::Describe();
        EXPECT_NE(b16->MemoryReport().find("cuDNN attention workspace"), std::string::npos)
            << b16->MemoryReport();
      }
    }
  }
}

// The default attention (auto) without room for cuDNN's workspace: the
// model is still created and trains, on the own kernels, and its log says
// so. In a child process (threadsafe death-test style re-runs the binary):
// cuDNN's workspace is process-wide and never shrinks, so it must not have
// grown before. The model's own bytes are measured first with the own
// kernels; then all but those bytes and 24 MiB of the device is taken, and
// an auto model is created at a shape whose deterministic cuDNN backward
// wants a 64 MiB workspace (B 256 x 2 heads x T 256^2 bf16).
// The child's side: 0 when the auto model was created and trained.
int AutoAttentionWithoutRoomChild() {
  namespace kc = ::llmt::kernels::cuda;
  constexpr int B = 256, T = 256;
  const ModelConfig cfg = Gpt2Hd64();
  kc::SetAttentionForwardVariant(kc::AttentionForwardVariant::kDefault);
  kc::SetAttentionBackwardVariant(kc::ParseAttentionBackwardVariant("own"));
  int64_t need = 0;
  {
    auto own = MakeGpu(cfg, B, T, Precision::kBf16);
    if (own == nullptr) return 2;
    need = own->device_bytes();
  }
  kc::SetAttentionForwardVariant(kc::AttentionForwardVariant::kAuto);
  kc::SetAttentionBackwardVariant(kc::ParseAttentionBackwardVariant("auto"));
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 3;
  const size_t keep = static_cast<size_t>(need) + (size_t{24} << 20);
  void* ballast = nullptr;
  if (free_bytes > keep && cudaMalloc(&ballast, free_bytes - keep) != cudaSuccess) return 4;
  auto m = MakeGpu(cfg, B, T, Precision::kBf16);
  if (m == nullptr) return 5;
  const auto l = TrainLosses(*m, B, T, 2);
  return l.size() == 2 && std::isfinite(l[1]) ? 0 : 6;
}

TEST(CudaModel, AutoAttentionWithoutRoomForCudnnTrainsOnTheOwnKernels) {
  REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Auto's log line ("attention: the own kernels (cuDNN off: ...", or
  // "(cuDNN not used: ..." when even cuDNN's handle or plans find no memory,
  // or "...; the own kernels for the rest: ..." for a half).
  EXPECT_EXIT(std::exit(AutoAttentionWithoutRoomChild()), ::testing::ExitedWithCode(0),
              "cuDNN (off|not used): |own kernels for the rest");
}

TEST(CudaModel, Bf16StochasticRoundingTrains) {
  REQUIRE_GPU();
  constexpr int B = 8, T = 32, kSteps = 50;
  for (const ModelConfig& cfg : {Gpt2Tiny(), LlamaTiny()}) {
    const char* fam = cfg.family == Family::kGpt2 ? "gpt2" : "llama";
    auto m = MakeGpu(cfg, B, T, Precision::kBf16, Recompute::kNone, /*stochastic=*/true);
    ASSERT_NE(m, nullptr);
    EXPECT_TRUE(m->options().stochastic_rounding);
    const auto l = TrainLosses(*m, B, T, kSteps);
    for (int s = 0; s < kSteps; ++s) EXPECT_TRUE(std::isfinite(l[s])) << fam << " step " << s + 1;
    EXPECT_LT(MeanOfLast(l, 5), 0.9 * l[0]) << fam << ": first " << l[0] << " last " << l.back();
  }
}

TEST(CudaModel, MemoryReportAndOutOfMemory) {
  REQUIRE_GPU();
  auto m = MakeGpu(Gpt2Tiny(), kB, kT, Precision::kBf16);
  ASSERT_NE(m, nullptr);
  EXPECT_GT(m->device_bytes(), 0);
  EXPECT_FALSE(m->DeviceDescription().empty());
  const std::string report = Lower(m->MemoryReport());
  for (const char* cat : {"parameters", "gradients", "optimizer", "activations"}) {
    EXPECT_NE(report.find(cat), std::string::npos) << cat << " missing from:\n" << m->MemoryReport();
  }
  m.reset();

  // GPT-2 124M with a micro-batch of a million sequences: the activation
  // arena alone is petabytes, far past any GPU (and past 32-bit sizes).
  ModelConfig big;
  big.family = Family::kGpt2;
  big.vocab_size = 50257;
  big.d_model = 768;
  big.n_layer = 12;
  big.n_head = 12;
  big.n_kv_head = 12;
  big.d_ff = 3072;
  big.max_seq_len = 1024;
  CudaModelOptions o;
  o.precision = Precision::kBf16;
  auto huge = CudaModel::Create(big, 1 << 20, 64, o);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  const std::string msg(huge.status().message());
  // Either the allocator's "out of GPU memory allocating 'NAME': N bytes"
  // (kernels/cuda/runtime.cuh) or the model's up-front plan check, which
  // names the largest buffer ("the activation arena (25920.75 GiB)"): what
  // matters is that the user learns which buffer and how much.
  EXPECT_TRUE(std::regex_search(msg, std::regex("'[^']+'|activation")))
      << "no buffer named in: " << msg;
  EXPECT_TRUE(std::regex_search(msg, std::regex("[0-9][0-9.]* ?(bytes|[KMGT]iB)")))
      << "no size in: " << msg;

  // The failed Create released what it had allocated: a normal model still fits.
  auto again = MakeGpu(Gpt2Tiny(), kB, kT, Precision::kBf16);
  EXPECT_NE(again, nullptr);
}

}  // namespace
}  // namespace llmt::model
