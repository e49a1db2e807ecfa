// CPU implementation of llmt::model::Model for the gpt2 and llama families.
//
// One transformer block, both families (shapes for N = b*t rows):
//   gpt2                                 llama
//   a = LayerNorm(x)                     a = RMSNorm(x)
//   qkv = a Wqkv + bqkv   [N, 3C]        qkv = a [Wq;Wk;Wv]^T  [N, C + 2*kvd], RoPE on q,k
//   y = CausalAttention(qkv)             y = CausalAttention(qkv)  (GQA)
//   x2 = x + y Wo + bo                   x2 = x + y Wo^T
//   a2 = LayerNorm(x2)                   a2 = RMSNorm(x2)
//   f = a2 Wfc + bfc      [N, F]         f = a2 [Wgate;Wup]^T  [N, 2F]
//   h = GELU(f)                          h = silu(gate) * up   [N, F]
//   x3 = x2 + h Wproj + bproj            x3 = x2 + h Wdown^T
// Stacking q/k/v (and gate/up) is free: their HF tensors are laid out
// consecutively in the flat parameter buffer, so [Wq;Wk;Wv] is one [out, in]
// matrix and each block runs one GEMM per projection group.
//
// Gradients: the fused classifier writes dlogits = (softmax - onehot)/N in
// place of the logits during Forward; Backward scales them by loss_scale
// through the classifier GEMMs' alpha, and everything downstream is linear in
// that, so all gradients carry loss_scale and are accumulated with +=.
#include "worker/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/reduce.h"
#include "kernels/cpu/runtime.h"

namespace llmt::model {
namespace {

namespace k = llmt::kernels::cpu;
using k::WeightLayout;

#define LLMT_PROFILE_CAT2(a, b) a##b
#define LLMT_PROFILE_CAT(a, b) LLMT_PROFILE_CAT2(a, b)
// Times the rest of the enclosing scope when kernels::cpu profiling is on.
#define PROFILE(name) ::llmt::kernels::cpu::ProfileScope LLMT_PROFILE_CAT(profile_, __LINE__)(name)

// Saved activations of one block (pointers into the arena).
struct LayerActs {
  float* ln1;       // [N, C] normalised input
  float* ln1_mean;  // [N] (gpt2 only)
  float* ln1_rstd;  // [N]
  float* qkv;       // [N, QKV] (llama: after RoPE)
  float* att;       // [b, NH, t, t] softmax probabilities
  float* atty;      // [N, C] attention output before the out-projection
  float* res2;      // [N, C] residual after attention
  float* ln2;
  float* ln2_mean;
  float* ln2_rstd;
  float* fc;        // [N, FC] (gpt2: F pre-GELU; llama: 2F gate|up)
  float* act;       // [N, F] GELU / SwiGLU output
  float* res3;      // [N, C] block output
};

// splitmix64: counter-based, so initialisation is parallel and independent of
// the thread count.
inline uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline double Uniform01(uint64_t bits) {  // (0, 1]
  return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class CpuModel final : public Model {
 public:
  CpuModel(const ModelConfig& cfg, int B, int T) : cfg_(cfg), B_(B), T_(T) {}

  absl::Status Init();

  const ModelConfig& config() const override { return cfg_; }
  int64_t num_params() const override { return num_params_; }
  double flops_per_token(int T) const override {
    return TrainFlopsPerToken(cfg_, num_params_, T);
  }
  const std::vector<ParamInfo>& params_info() const override { return info_; }
  float* params() override { return params_.data(); }
  float* grads() override { return grads_.data(); }
  int64_t activation_bytes() const override {
    return arena_.size() * static_cast<int64_t>(sizeof(float));
  }
  void InitWeights(uint64_t seed) override;
  float Forward(const int32_t* inputs, const int32_t* targets, int b, int t) override;
  const float* logits() const override { return logits_; }
  void Backward(float loss_scale) override;
  void SetGradReadyHook(GradReadyHook hook) override { grad_hook_ = std::move(hook); }
  void ZeroGrad() override {
    PROFILE("zero_grad");
    k::Zero(grads_.data(), grads_.size());
  }

 private:
  bool gpt2() const { return cfg_.family == Family::kGpt2; }
  WeightLayout layout() const { return gpt2() ? WeightLayout::kInOut : WeightLayout::kOutIn; }
  const float* P(int64_t off) const { return off < 0 ? nullptr : params_.data() + off; }
  float* G(int64_t off) { return off < 0 ? nullptr : grads_.data() + off; }
  void NormForward(float* out, float* mean, float* rstd, const float* in, int64_t w, int64_t b,
                   int64_t rows);
  void NormBackward(float* dinp, const float* dout, const float* in, const float* mean,
                    const float* rstd, int64_t w, int64_t b, int64_t rows);

  ModelConfig cfg_;
  int B_, T_;
  int C_ = 0, NH_ = 0, NKV_ = 0, hd_ = 0, F_ = 0, V_ = 0, L_ = 0;
  int QKV_ = 0;  // width of the packed q|k|v projection
  int FC_ = 0;   // width of the first MLP projection (F or 2F)

  std::vector<ParamInfo> info_;
  int64_t num_params_ = 0;
  int64_t wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, lm_head_ = -1;
  std::vector<LayerParams> layers_;

  k::HostBuffer params_, grads_, arena_;
  std::vector<LayerActs> acts_;
  float* res0_ = nullptr;  // embeddings [N, C]
  float* lnf_ = nullptr;
  float* lnf_mean_ = nullptr;
  float* lnf_rstd_ = nullptr;
  float* logits_ = nullptr;  // [N, V]; dlogits after a Forward with targets
  // Backward scratch, shared by all blocks.
  float* dres_ = nullptr;   // [N, C] gradient of the residual stream
  float* dln_ = nullptr;    // [N, C]
  float* datty_ = nullptr;  // [N, C]
  float* dqkv_ = nullptr;   // [N, QKV]
  float* datt_ = nullptr;   // [B, NH, T, T]
  float* dfc_ = nullptr;    // [N, FC]
  float* dact_ = nullptr;   // [N, F]
  std::vector<float> rope_cos_, rope_sin_;  // [T, hd/2]
  std::vector<int32_t> tokens_;             // inputs of the last Forward

  int last_b_ = 0, last_t_ = 0;
  bool have_dlogits_ = false;
  GradReadyHook grad_hook_;
  std::vector<ParamLayout::Range> grad_ranges_;  // what grad_hook_ reports, in order
  // Reports range i of grad_ranges_ (see ParamLayout::GradReadyRanges).
  void GradsReady(size_t i) {
    if (grad_hook_) grad_hook_(grad_ranges_[i].offset, grad_ranges_[i].count);
  }
};

absl::Status CpuModel::Init() {
  C_ = cfg_.d_model;
  NH_ = cfg_.n_head;
  NKV_ = cfg_.n_kv_head;
  hd_ = C_ / NH_;
  F_ = cfg_.d_ff;
  V_ = cfg_.vocab_size;
  L_ = cfg_.n_layer;
  QKV_ = (NH_ + 2 * NKV_) * hd_;
  FC_ = gpt2() ? F_ : 2 * F_;
  // ---- parameter layout (shared with the CUDA model) ----
  ParamLayout pl = BuildParamLayout(cfg_);
  grad_ranges_ = pl.GradReadyRanges();
  info_ = std::move(pl.info);
  num_params_ = pl.num_params;
  wte_ = pl.wte;
  wpe_ = pl.wpe;
  lnf_w_ = pl.lnf_w;
  lnf_b_ = pl.lnf_b;
  lm_head_ = pl.lm_head;
  layers_ = std::move(pl.layers);

  params_ = k::HostBuffer(num_params_);
  grads_ = k::HostBuffer(num_params_);
  if (params_.data() == nullptr || grads_.data() == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model: cannot allocate parameters and gradients (2 x ", num_params_, " floats)"));
  }

  // ---- activation arena: plan sizes, allocate once, hand out slices ----
  const int64_t N = static_cast<int64_t>(B_) * T_;
  const int64_t att_size = static_cast<int64_t>(B_) * NH_ * T_ * T_;
  std::vector<std::pair<float**, int64_t>> plan;
  acts_.resize(L_);
  plan.push_back({&res0_, N * C_});
  for (LayerActs& a : acts_) {
    plan.push_back({&a.ln1, N * C_});
    plan.push_back({&a.ln1_mean, gpt2() ? N : 0});
    plan.push_back({&a.ln1_rstd, N});
    plan.push_back({&a.qkv, N * QKV_});
    plan.push_back({&a.att, att_size});
    plan.push_back({&a.atty, N * C_});
    plan.push_back({&a.res2, N * C_});
    plan.push_back({&a.ln2, N * C_});
    plan.push_back({&a.ln2_mean, gpt2() ? N : 0});
    plan.push_back({&a.ln2_rstd, N});
    plan.push_back({&a.fc, N * FC_});
    plan.push_back({&a.act, N * F_});
    plan.push_back({&a.res3, N * C_});
  }
  plan.push_back({&lnf_, N * C_});
  plan.push_back({&lnf_mean_, gpt2() ? N : 0});
  plan.push_back({&lnf_rstd_, N});
  plan.push_back({&logits_, N * V_});
  plan.push_back({&dres_, N * C_});
  plan.push_back({&dln_, N * C_});
  plan.push_back({&datty_, N * C_});
  plan.push_back({&dqkv_, N * QKV_});
  plan.push_back({&datt_, att_size});
  plan.push_back({&dfc_, N * FC_});
  plan.push_back({&dact_, N * F_});
  constexpr int64_t kAlign = 16;  // floats: 64-byte slices
  int64_t total = 0;
  for (auto& [ptr, n] : plan) total += (n + kAlign - 1) / kAlign * kAlign;
  arena_ = k::HostBuffer(total);
  if (arena_.data() == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("model: cannot allocate the activation arena (", total * 4,
                     " bytes for B=", B_, ", T=", T_, ")"));
  }
  int64_t off = 0;
  for (auto& [ptr, n] : plan) {
    *ptr = n > 0 ? arena_.data() + off : nullptr;
    off += (n + kAlign - 1) / kAlign * kAlign;
  }

  if (!gpt2()) {
    rope_cos_.resize(static_cast<size_t>(T_) * hd_ / 2);
    rope_sin_.resize(rope_cos_.size());
    k::RopeTable(rope_cos_.data(), rope_sin_.data(), T_, hd_, cfg_.rope_theta);
  }
  tokens_.assign(N, 0);
  return absl::OkStatus();
}

void CpuModel::InitWeights(uint64_t seed) { InitParams(cfg_, info_, seed, params_.data()); }

void CpuModel::NormForward(float* out, float* mean, float* rstd, const float* in, int64_t w,
                           int64_t b, int64_t rows) {
  PROFILE("norm_fwd");
  if (gpt2()) {
    k::LayerNormForward(out, mean, rstd, in, P(w), P(b), rows, C_, cfg_.norm_eps);
  } else {
    k::RMSNormForward(out, rstd, in, P(w), rows, C_, cfg_.norm_eps);
  }
}

void CpuModel::NormBackward(float* dinp, const float* dout, const float* in, const float* mean,
                            const float* rstd, int64_t w, int64_t b, int64_t rows) {
  PROFILE("norm_bwd");
  if (gpt2()) {
    k::LayerNormBackward(dinp, G(w), G(b), dout, in, P(w), mean, rstd, rows, C_);
  } else {
    k::RMSNormBackward(dinp, G(w), dout, in, P(w), rstd, rows, C_);
  }
}

float CpuModel::Forward(const int32_t* inputs, const int32_t* targets, int b, int t) {
  have_dlogits_ = false;
  if (b <= 0 || b > B_ || t <= 0 || t > T_) {
    LLMT_LOG(Error) << "Model::Forward: batch " << b << "x" << t << " outside the planned "
                    << B_ << "x" << T_;
    return std::numeric_limits<float>::quiet_NaN();
  }
  const int64_t N = static_cast<int64_t>(b) * t;
  for (int64_t i = 0; i < N; ++i) {
    if (inputs[i] < 0 || inputs[i] >= V_ || (targets != nullptr && (targets[i] < 0 ||
                                                                    targets[i] >= V_))) {
      LLMT_LOG(Error) << "Model::Forward: token id at position " << i << " (input "
                      << inputs[i] << ", target " << (targets ? targets[i] : 0)
                      << ") outside the vocabulary [0, " << V_ << ")";
      return std::numeric_limits<float>::quiet_NaN();
    }
  }
  std::memcpy(tokens_.data(), inputs, sizeof(int32_t) * N);
  last_b_ = b;
  last_t_ = t;
  const WeightLayout lay = layout();

  {
    PROFILE("embedding_fwd");
    k::EmbeddingForward(res0_, inputs, P(wte_), gpt2() ? P(wpe_) : nullptr, b, t, C_);
  }
  const float* x = res0_;
  for (int l = 0; l < L_; ++l) {
    const LayerParams& o = layers_[l];
    LayerActs& a = acts_[l];
    // attention sub-block
    NormForward(a.ln1, a.ln1_mean, a.ln1_rstd, x, o.ln1_w, o.ln1_b, N);
    {
      PROFILE("matmul_qkv_fwd");
      k::MatmulForward(a.qkv, a.ln1, P(o.qkv_w), P(o.qkv_b), N, C_, QKV_, lay);
    }
    if (!gpt2()) {
      PROFILE("rope_fwd");
      k::RopeForward(a.qkv, rope_cos_.data(), rope_sin_.data(), b, t, NH_ + NKV_, hd_, QKV_);
    }
    {
      PROFILE("attention_fwd");
      k::AttentionForward(a.atty, a.att, a.qkv, b, t, NH_, NKV_, hd_);
    }
    {
      PROFILE("matmul_attn_out_fwd");
      k::MatmulForward(a.res2, a.atty, P(o.attn_out_w), P(o.attn_out_b), N, C_, C_, lay, x);
    }
    // MLP sub-block
    NormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, o.ln2_w, o.ln2_b, N);
    {
      PROFILE("matmul_fc_fwd");
      k::MatmulForward(a.fc, a.ln2, P(o.fc_w), P(o.fc_b), N, C_, FC_, lay);
    }
    if (gpt2()) {
      PROFILE("gelu_fwd");
      k::GeluForward(a.act, a.fc, N * F_);
    } else {
      PROFILE("swiglu_fwd");
      k::SwiGLUForward(a.act, a.fc, N, F_);
    }
    {
      PROFILE("matmul_proj_fwd");
      k::MatmulForward(a.res3, a.act, P(o.proj_w), P(o.proj_b), N, F_, C_, lay, a.res2);
    }
    x = a.res3;
  }
  NormForward(lnf_, lnf_mean_, lnf_rstd_, x, lnf_w_, lnf_b_, N);
  {
    // Classifier: wte / lm_head are [V, C], i.e. nn.Linear layout.
    PROFILE("matmul_classifier_fwd");
    k::MatmulForward(logits_, lnf_, P(lm_head_), nullptr, N, C_, V_, WeightLayout::kOutIn);
  }
  if (targets == nullptr) return 0.f;
  PROFILE("softmax_xent");
  const float loss = k::SoftmaxCrossEntropy(logits_, targets, N, V_, 1.f / static_cast<float>(N));
  have_dlogits_ = true;
  return loss;
}

void CpuModel::Backward(float loss_scale) {
  if (!have_dlogits_) {
    LLMT_LOG(Error) << "Model::Backward called without a preceding Forward with targets";
    return;
  }
  const int b = last_b_, t = last_t_;
  const int64_t N = static_cast<int64_t>(b) * t;
  const WeightLayout lay = layout();

  // Classifier and final norm. dres_ starts at zero; norm backwards add into it.
  {
    PROFILE("matmul_classifier_bwd");
    k::MatmulBackward(dln_, G(lm_head_), nullptr, logits_, lnf_, P(lm_head_), N, C_, V_,
                      WeightLayout::kOutIn, loss_scale);
  }
  k::Zero(dres_, N * C_);
  NormBackward(dres_, dln_, acts_[L_ - 1].res3, lnf_mean_, lnf_rstd_, lnf_w_, lnf_b_, N);
  GradsReady(0);  // final norm (and an untied lm_head)

  for (int l = L_ - 1; l >= 0; --l) {
    const LayerParams& o = layers_[l];
    const LayerActs& a = acts_[l];
    const float* x = l == 0 ? res0_ : acts_[l - 1].res3;
    // MLP sub-block (dres_ = dL/dres3, which also flows straight to res2).
    {
      PROFILE("matmul_proj_bwd");
      k::MatmulBackward(dact_, G(o.proj_w), G(o.proj_b), dres_, a.act, P(o.proj_w), N, F_, C_,
                        lay);
    }
    if (gpt2()) {
      PROFILE("gelu_bwd");
      k::GeluBackward(dfc_, a.fc, dact_, N * F_);
    } else {
      PROFILE("swiglu_bwd");
      k::SwiGLUBackward(dfc_, a.fc, dact_, N, F_);
    }
    {
      PROFILE("matmul_fc_bwd");
      k::MatmulBackward(dln_, G(o.fc_w), G(o.fc_b), dfc_, a.ln2, P(o.fc_w), N, C_, FC_, lay);
    }
    NormBackward(dres_, dln_, a.res2, a.ln2_mean, a.ln2_rstd, o.ln2_w, o.ln2_b, N);
    // attention sub-block (dres_ = dL/dres2 now)
    {
      PROFILE("matmul_attn_out_bwd");
      k::MatmulBackward(datty_, G(o.attn_out_w), G(o.attn_out_b), dres_, a.atty,
                        P(o.attn_out_w), N, C_, C_, lay);
    }
    {
      PROFILE("attention_bwd");
      k::AttentionBackward(dqkv_, datt_, datty_, a.qkv, a.att, b, t, NH_, NKV_, hd_);
    }
    if (!gpt2()) {
      PROFILE("rope_bwd");
      k::RopeBackward(dqkv_, rope_cos_.data(), rope_sin_.data(), b, t, NH_ + NKV_, hd_, QKV_);
    }
    {
      PROFILE("matmul_qkv_bwd");
      k::MatmulBackward(dln_, G(o.qkv_w), G(o.qkv_b), dqkv_, a.ln1, P(o.qkv_w), N, C_, QKV_,
                        lay);
    }
    NormBackward(dres_, dln_, x, a.ln1_mean, a.ln1_rstd, o.ln1_w, o.ln1_b, N);
    GradsReady(static_cast<size_t>(L_ - l));
  }
  {
    PROFILE("embedding_bwd");
    k::EmbeddingBackward(G(wte_), gpt2() ? G(wpe_) : nullptr, dres_, tokens_.data(), b, t, C_);
  }
  GradsReady(static_cast<size_t>(L_) + 1);  // embeddings
}

absl::Status Check(bool ok, const std::string& msg) {
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(msg);
}

}  // namespace

std::vector<ParamLayout::Range> ParamLayout::GradReadyRanges() const {
  const int L = static_cast<int>(layers.size());
  const int64_t blocks_begin = layers[0].ln1_w;  // every block starts with its first norm
  const int64_t blocks_end = lnf_w;
  std::vector<Range> r;
  r.push_back({blocks_end, num_params - blocks_end});
  for (int l = L - 1; l >= 0; --l) {
    const int64_t end = l + 1 < L ? layers[l + 1].ln1_w : blocks_end;
    r.push_back({layers[l].ln1_w, end - layers[l].ln1_w});
  }
  r.push_back({0, blocks_begin});
  return r;
}

ParamLayout BuildParamLayout(const ModelConfig& cfg) {
  ParamLayout pl;
  auto add = [&pl](const std::string& name, std::vector<int64_t> shape, bool decay) {
    ParamInfo p;
    p.name = name;
    p.numel = 1;
    for (int64_t d : shape) p.numel *= d;
    p.shape = std::move(shape);
    p.offset = pl.num_params;
    p.decay = decay;
    pl.num_params += p.numel;
    pl.info.push_back(std::move(p));
    return pl.info.back().offset;
  };
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size;
  const int64_t NKV = cfg.n_kv_head > 0 ? cfg.n_kv_head : cfg.n_head;
  const int64_t kvd = NKV * (C / cfg.n_head);
  pl.layers.resize(cfg.n_layer);
  if (cfg.family == Family::kGpt2) {
    pl.wte = add("wte.weight", {V, C}, true);
    pl.wpe = add("wpe.weight", {cfg.max_seq_len, C}, true);
    for (int l = 0; l < cfg.n_layer; ++l) {
      const std::string p = absl::StrCat("h.", l, ".");
      LayerParams& o = pl.layers[l];
      o.ln1_w = add(p + "ln_1.weight", {C}, false);
      o.ln1_b = add(p + "ln_1.bias", {C}, false);
      o.qkv_w = add(p + "attn.c_attn.weight", {C, 3 * C}, true);
      o.qkv_b = add(p + "attn.c_attn.bias", {3 * C}, false);
      o.attn_out_w = add(p + "attn.c_proj.weight", {C, C}, true);
      o.attn_out_b = add(p + "attn.c_proj.bias", {C}, false);
      o.ln2_w = add(p + "ln_2.weight", {C}, false);
      o.ln2_b = add(p + "ln_2.bias", {C}, false);
      o.fc_w = add(p + "mlp.c_fc.weight", {C, F}, true);
      o.fc_b = add(p + "mlp.c_fc.bias", {F}, false);
      o.proj_w = add(p + "mlp.c_proj.weight", {F, C}, true);
      o.proj_b = add(p + "mlp.c_proj.bias", {C}, false);
    }
    pl.lnf_w = add("ln_f.weight", {C}, false);
    pl.lnf_b = add("ln_f.bias", {C}, false);
    pl.lm_head = pl.wte;  // tied
  } else {
    pl.wte = add("model.embed_tokens.weight", {V, C}, true);
    for (int l = 0; l < cfg.n_layer; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerParams& o = pl.layers[l];
      o.ln1_w = add(p + "input_layernorm.weight", {C}, false);
      // q, k, v consecutive: together one [(C + 2 kvd), C] nn.Linear weight.
      o.qkv_w = add(p + "self_attn.q_proj.weight", {C, C}, true);
      add(p + "self_attn.k_proj.weight", {kvd, C}, true);
      add(p + "self_attn.v_proj.weight", {kvd, C}, true);
      o.attn_out_w = add(p + "self_attn.o_proj.weight", {C, C}, true);
      o.ln2_w = add(p + "post_attention_layernorm.weight", {C}, false);
      // gate, up consecutive: one [2F, C] weight.
      o.fc_w = add(p + "mlp.gate_proj.weight", {F, C}, true);
      add(p + "mlp.up_proj.weight", {F, C}, true);
      o.proj_w = add(p + "mlp.down_proj.weight", {C, F}, true);
    }
    pl.lnf_w = add("model.norm.weight", {C}, false);
    pl.lm_head = add("lm_head.weight", {V, C}, true);
  }
  return pl;
}

void InitParams(const ModelConfig& cfg, const std::vector<ParamInfo>& info, uint64_t seed,
                float* params) {
  const float resid_scale = 1.f / std::sqrt(2.f * cfg.n_layer);
  for (size_t i = 0; i < info.size(); ++i) {
    const ParamInfo& p = info[i];
    float* w = params + p.offset;
    const bool is_norm = EndsWith(p.name, "norm.weight") || p.name.find("ln_") != std::string::npos;
    if (is_norm && EndsWith(p.name, ".weight")) {
      for (int64_t j = 0; j < p.numel; ++j) w[j] = 1.f;
      continue;
    }
    if (EndsWith(p.name, ".bias")) {
      std::memset(w, 0, sizeof(float) * p.numel);
      continue;
    }
    const bool residual_proj = EndsWith(p.name, "attn.c_proj.weight") ||
                               EndsWith(p.name, "mlp.c_proj.weight") ||
                               EndsWith(p.name, "o_proj.weight") ||
                               EndsWith(p.name, "down_proj.weight");
    const double std = cfg.init_std * (residual_proj ? resid_scale : 1.f);
    // Box-Muller on counter-based uniforms: element pair j of tensor i.
    const uint64_t stream = SplitMix(seed ^ SplitMix(0x5EED0000ull + i));
    const int64_t pairs = (p.numel + 1) / 2;
#pragma omp parallel for schedule(static) if (pairs >= 4096)
    for (int64_t j = 0; j < pairs; ++j) {
      const uint64_t r = SplitMix(stream + 2 * static_cast<uint64_t>(j));
      const double u1 = Uniform01(r), u2 = Uniform01(SplitMix(r ^ 0xA5A5A5A5A5A5A5A5ull));
      const double rad = std * std::sqrt(-2.0 * std::log(u1));
      w[2 * j] = static_cast<float>(rad * std::cos(2.0 * M_PI * u2));
      if (2 * j + 1 < p.numel) w[2 * j + 1] = static_cast<float>(rad * std::sin(2.0 * M_PI * u2));
    }
  }
}

double TrainFlopsPerToken(const ModelConfig& cfg, int64_t num_params, int T) {
  return 6.0 * static_cast<double>(num_params) +
         6.0 * cfg.n_layer * static_cast<double>(cfg.d_model) * T;
}

absl::Status ValidateConfig(ModelConfig* cfgp, int B, int T) {
  ModelConfig& cfg = *cfgp;
  if (cfg.n_kv_head == 0) cfg.n_kv_head = cfg.n_head;
  const bool gpt2 = cfg.family == Family::kGpt2;
  RETURN_IF_ERROR(Check(cfg.family == Family::kGpt2 || cfg.family == Family::kLlama,
                        "model.family: must be gpt2 or llama"));
  RETURN_IF_ERROR(Check(cfg.vocab_size > 0,
                        absl::StrCat("model.vocab_size: must be > 0, got ", cfg.vocab_size)));
  RETURN_IF_ERROR(
      Check(cfg.d_model > 0, absl::StrCat("model.d_model: must be > 0, got ", cfg.d_model)));
  RETURN_IF_ERROR(
      Check(cfg.n_layer > 0, absl::StrCat("model.n_layer: must be > 0, got ", cfg.n_layer)));
  RETURN_IF_ERROR(
      Check(cfg.n_head > 0, absl::StrCat("model.n_head: must be > 0, got ", cfg.n_head)));
  RETURN_IF_ERROR(Check(cfg.n_kv_head > 0,
                        absl::StrCat("model.n_kv_head: must be > 0, got ", cfg.n_kv_head)));
  RETURN_IF_ERROR(Check(cfg.d_ff > 0, absl::StrCat("model.d_ff: must be > 0, got ", cfg.d_ff)));
  RETURN_IF_ERROR(Check(cfg.max_seq_len > 0, absl::StrCat("model.max_seq_len: must be > 0, got ",
                                                          cfg.max_seq_len)));
  RETURN_IF_ERROR(Check(cfg.d_model % cfg.n_head == 0,
                        absl::StrCat("model.n_head: must divide model.d_model (", cfg.d_model,
                                     " % ", cfg.n_head, " != 0)")));
  RETURN_IF_ERROR(Check(cfg.n_head % cfg.n_kv_head == 0,
                        absl::StrCat("model.n_kv_head: must divide model.n_head (", cfg.n_head,
                                     " % ", cfg.n_kv_head, " != 0)")));
  RETURN_IF_ERROR(Check(!gpt2 || cfg.n_kv_head == cfg.n_head,
                        absl::StrCat("model.n_kv_head: gpt2 has no grouped-query attention; "
                                     "must equal model.n_head (",
                                     cfg.n_head, ") or 0, got ", cfg.n_kv_head)));
  RETURN_IF_ERROR(Check(gpt2 || (cfg.d_model / cfg.n_head) % 2 == 0,
                        absl::StrCat("model.n_head: llama needs an even head dimension for RoPE "
                                     "(d_model / n_head = ",
                                     cfg.d_model / cfg.n_head, ")")));
  RETURN_IF_ERROR(Check(cfg.norm_eps > 0.f, "model.norm_eps: must be > 0"));
  RETURN_IF_ERROR(Check(gpt2 || cfg.rope_theta > 0.f, "model.rope_theta: must be > 0"));
  RETURN_IF_ERROR(Check(cfg.init_std >= 0.f, "model.init_std: must be >= 0"));
  RETURN_IF_ERROR(Check(B > 0, absl::StrCat("batch size: must be > 0, got ", B)));
  RETURN_IF_ERROR(Check(T > 0, absl::StrCat("sequence length: must be > 0, got ", T)));
  RETURN_IF_ERROR(Check(T <= cfg.max_seq_len,
                        absl::StrCat("sequence length: ", T, " exceeds model.max_seq_len (",
                                     cfg.max_seq_len, ")")));
  // sgemm takes int dimensions; rows are B*T.
  RETURN_IF_ERROR(Check(static_cast<int64_t>(B) * T < std::numeric_limits<int32_t>::max(),
                        "batch size x sequence length: exceeds 2^31 rows"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& in, int B, int T) {
  ModelConfig cfg = in;
  RETURN_IF_ERROR(ValidateConfig(&cfg, B, T));
  auto m = std::make_unique<CpuModel>(cfg, B, T);
  RETURN_IF_ERROR(m->Init());
  return std::unique_ptr<Model>(std::move(m));
}

}  // namespace llmt::model
