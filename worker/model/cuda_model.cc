// CUDA implementation of model::CudaModel (see cuda_model.h). The block
// structure is the CPU model's (model.cc) — one GEMM per projection group,
// residual adds fused into the output GEMMs' epilogue (beta = 1 on the
// residual), GELU fused into the c_fc GEMM where cuBLASLt allows — written
// once as a template over the activation type T (float or bf16). Gradients
// are always fp32 (the mixed bf16 x bf16 -> f32 kernels), so accumulation
// over micro-steps and the optimizer see fp32 whatever T is.
//
// Classifier: logits live in a [N, Vp] buffer with Vp = vocab rounded up to
// 128, so every row starts 256-byte aligned for cuBLASLt; the fused
// softmax/cross-entropy kernel overwrites them with dlogits in place (no
// second N x V buffer) and zeroes the padding columns.
#include "worker/model/cuda_model.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status.h"
#include "kernels/cuda/activation.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/runtime.cuh"

namespace llmt::model {

namespace {

namespace cu = llmt::kernels::cuda;
using cu::bf16;
using cu::WeightLayout;

constexpr int64_t kAlignBytes = 256;  // every arena slice (cuBLASLt, vector loads)
constexpr int kVocabPad = 128;
constexpr int kLossSlots = 64;  // micro-step losses kept on the device between TakeLoss calls

int64_t AlignUp(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Saved activations of one block (pointers into the arena). With recompute,
// the recomputable ones point at one buffer shared by all blocks.
template <typename T>
struct BlockActs {
  T* ln1;
  float* ln1_mean;  // gpt2 only
  float* ln1_rstd;
  T* qkv;  // llama: after RoPE
  T* atty;
  float* lse;  // [b, NH, t]
  T* res2;
  T* ln2;
  float* ln2_mean;
  float* ln2_rstd;
  T* fc;   // gpt2: pre-GELU [N, F]; llama: gate|up [N, 2F]
  T* act;  // [N, F]
  T* res3;
};

// LLMT_CUDA_PROFILE=1: GPU time per op group, measured with CUDA events
// around each launch group on the model's stream (or the side stream it is
// given: the weight-gradient and cross-entropy streams' groups end in
// "(beside)", and overlap the main stream's, so the groups then add up to
// more than the step) and logged as a table when the model is destroyed.
// For finding the slow kernel on a machine without Nsight Systems; off by
// default (events cost a little).
class OpTimer {
 public:
  explicit OpTimer(cudaStream_t s) : stream_(s) {
    const char* e = std::getenv("LLMT_CUDA_PROFILE");
    on_ = e != nullptr && std::string(e) == "1";
  }
  ~OpTimer() {
    for (auto& [a, b] : pool_) {
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
  }
  struct Scope {  // default: times nothing
    OpTimer* t = nullptr;
    size_t idx = 0;
    cudaStream_t stream = nullptr;
    ~Scope() {
      if (t != nullptr) LLMT_CUDA_CHECK(cudaEventRecord(t->pool_[idx].second, stream));
    }
  };
  // The work enqueued on `on` (default: the model's stream) until the
  // returned scope ends. Side streams must have joined the model's stream
  // before Flush.
  Scope Time(const char* name, cudaStream_t on = nullptr) {
    if (!on_) return {nullptr, 0, nullptr};
    if (on == nullptr) on = stream_;
    if (used_ == pool_.size()) {
      cudaEvent_t a, b;
      LLMT_CUDA_CHECK(cudaEventCreate(&a));
      LLMT_CUDA_CHECK(cudaEventCreate(&b));
      pool_.push_back({a, b});
      names_.push_back(nullptr);
    }
    names_[used_] = name;
    LLMT_CUDA_CHECK(cudaEventRecord(pool_[used_].first, on));
    return {this, used_++, on};
  }
  // After the stream has synchronised: adds the pending intervals.
  void Flush() {
    for (size_t i = 0; i < used_; ++i) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, pool_[i].first, pool_[i].second) == cudaSuccess) {
        auto& t = totals_[names_[i]];
        t.first += ms;
        t.second += 1;
      }
    }
    used_ = 0;
  }
  std::string Report() const {
    if (!on_ || totals_.empty()) return "";
    double all = 0;
    for (const auto& [n, t] : totals_) all += t.first;
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [n, t] : totals_) rows.push_back({t.first, n});
    std::sort(rows.rbegin(), rows.rend());
    std::string out = absl::StrFormat("GPU time by op group (%.1f ms in all):\n", all);
    for (const auto& [ms, n] : rows) {
      const auto& t = totals_.at(n);
      absl::StrAppendFormat(&out, "  %-22s %10.2f ms %6.1f%%  %8lld calls  %8.1f us/call\n", n, ms,
                            100.0 * ms / all, static_cast<long long>(t.second),
                            1e3 * ms / t.second);
    }
    return out;
  }
  bool on() const { return on_; }
  // Drops everything measured so far, including intervals still in flight
  // (their events are simply re-recorded later).
  void Reset() {
    used_ = 0;
    totals_.clear();
  }

 private:
  cudaStream_t stream_;
  bool on_ = false;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> pool_;
  std::vector<const char*> names_;
  size_t used_ = 0;
  std::map<std::string, std::pair<double, int64_t>> totals_;
};

// Pinned host staging for token ids: two slots, so the host can fill the
// next micro-batch while the previous copy may still be queued.
struct TokenStaging {
  int32_t* host[2] = {nullptr, nullptr};  // [2 * N]: inputs then targets
  cudaEvent_t copied[2] = {nullptr, nullptr};
  int next = 0;
};

template <typename T>
class CudaModelImpl final : public CudaModel {
 public:
  CudaModelImpl(const ModelConfig& cfg, int B, int T_, const CudaModelOptions& o)
      : cfg_(cfg), opts_(o), B_(B), T_(T_) {}
  ~CudaModelImpl() override;

  absl::Status Init();

  const ModelConfig& config() const override { return cfg_; }
  const CudaModelOptions& options() const override { return opts_; }
  int64_t num_params() const override { return n_; }
  double flops_per_token(int t) const override { return TrainFlopsPerToken(cfg_, n_, t); }
  const std::vector<ParamInfo>& params_info() const override { return pl_.info; }
  std::string DeviceDescription() const override { return device_desc_; }
  std::string MemoryReport() const override {
    auto mem = cu::GetMemInfo();
    return report_.Format(mem.ok() ? std::optional<cu::MemInfo>(*mem) : std::nullopt);
  }
  int64_t device_bytes() const override { return report_.Total(); }

  absl::Status SetParams(const float* host) override;
  absl::Status GetParams(float* host) override { return CopyOut(p32_, host, "parameters"); }
  absl::Status GetGrads(float* host) override { return CopyOut(g32_, host, "gradients"); }
  absl::Status SetOptimizerState(const float* m, const float* v) override;
  absl::Status GetOptimizerState(float* m, float* v) override;
  absl::Status InitWeights(uint64_t seed) override;

  absl::Status ForwardBackward(const int32_t* inputs, const int32_t* targets,
                               float loss_scale) override;
  absl::StatusOr<double> TakeLoss() override;
  absl::StatusOr<double> Forward(const int32_t* inputs, const int32_t* targets, int b,
                                 int t) override;
  absl::Status GetLogits(float* host) override;
  void ZeroGrad() override {
    // The profile leaves out the first step: it pays for lazy module loading
    // and cuBLASLt's first heuristic calls, which would be charged to whichever
    // op ran first.
    if (++zero_grads_ == 2) timer_->Reset();
    auto timed = timer_->Time("zero_grad");
    cu::Zero(g32_.as<float>(), n_, stream_.get());
  }
  absl::StatusOr<double> GradNorm() override;
  void AdamWStep(const AdamWHyper& h) override;
  float* device_params() override { return p32_.as<float>(); }
  float* device_grads() override { return g32_.as<float>(); }
  void RefreshParamCopy(uint64_t sr_seed) override;
  void SetGradReadyHook(GradReadyHook hook) override { grad_hook_ = std::move(hook); }
  absl::Status Synchronize() override { return stream_.Synchronize(); }

 private:
  static constexpr bool kBf16 = std::is_same_v<T, bf16>;
  bool gpt2() const { return cfg_.family == Family::kGpt2; }
  WeightLayout layout() const { return gpt2() ? WeightLayout::kInOut : WeightLayout::kOutIn; }
  const T* P(int64_t off) const {
    return off < 0 ? nullptr : (kBf16 ? pT_ : reinterpret_cast<const T*>(p32_.data())) + off;
  }
  float* G(int64_t off) { return off < 0 ? nullptr : g32_.as<float>() + off; }
  cudaStream_t s() const { return stream_.get(); }

  absl::Status Alloc(cu::DeviceBuffer* buf, const std::string& category, const std::string& name,
                     int64_t bytes);
  absl::Status CopyOut(const cu::DeviceBuffer& buf, float* host, const char* what);
  // Validates the ids, stages them in pinned memory and queues the copy to
  // the device (tokens_/targets_). targets may be null.
  absl::Status UploadTokens(const int32_t* inputs, const int32_t* targets, int64_t N);
  // Copies scalar_ to the host (synchronises).
  absl::StatusOr<double> ReadScalar();
  // Moves the pending per-micro-step losses from the device into folded_*.
  absl::Status FoldLosses();
  void ForwardPass(int b, int t);
  void Classifier(int64_t N, float grad_scale, bool with_targets);
  void BackwardPass(int b, int t);
  void NormForward(T* out, float* mean, float* rstd, const T* in, int64_t w, int64_t bias,
                   int64_t rows);
  // colsum non-null: colsum[C] += the column sums of the updated dinp
  // (LLMT_BIAS_GRAD=norm, see BackwardPass).
  void NormBackward(T* dinp, const T* dout, const T* in, const float* mean, const float* rstd,
                    int64_t w, int64_t bias, int64_t rows, float* colsum = nullptr);
  void SetWeightDecay(float wd);

  ModelConfig cfg_;
  CudaModelOptions opts_;
  int B_, T_;
  int C_ = 0, NH_ = 0, NKV_ = 0, hd_ = 0, F_ = 0, V_ = 0, Vp_ = 0, L_ = 0, QKV_ = 0, FC_ = 0;
  ParamLayout pl_;
  int64_t n_ = 0;
  std::string device_desc_;
  cu::MemoryReport report_;

  cu::Stream stream_;
  std::unique_ptr<OpTimer> timer_;
  std::unique_ptr<cu::Blas> blas_;

  // ---- weight gradients on a second stream (CudaModelOptions::wgrad_stream) ----
  // Each linear layer's dW GEMM (+ bias-gradient pass) is enqueued on wstream_
  // after an event on the main stream, through its own cuBLASLt context
  // (wblas_: a workspace of its own). The main stream, created with the
  // higher priority, goes on with the data-gradient chain and waits on a
  // slot's event only before it overwrites what that slot's work reads
  // (dres_, dfc_, dqkv_, a recomputed shared buffer); the backward ends by
  // joining wstream_. The first backward runs the same calls in order on the
  // main stream, so that autotuning times every GEMM shape on a quiet GPU.
  enum WgradSlot { kWgProj, kWgFc, kWgAttnOut, kWgQkv, kWgClassifier, kWgSlots };
  cu::Stream wstream_;
  std::unique_ptr<cu::Blas> wblas_;
  cudaEvent_t wg_done_[kWgSlots] = {};
  cudaEvent_t wg_main_ = nullptr;  // the main stream's progress, for wstream_ to wait on
  bool wg_async_ = false;          // this backward uses wstream_
  int64_t backwards_ = 0;

  // Runs dinp() (the data gradient, main stream) and dweight(blas, stream)
  // (the weight and bias gradients) for one linear layer: in that order on
  // the main stream without wgrad_stream, as MatmulBackward did in one
  // call; with it, dweight on wstream_ after the main stream's work so far,
  // marking `slot`, then dinp.
  template <typename Dinp, typename Dweight>
  void LinearBackward(WgradSlot slot, Dinp&& dinp, Dweight&& dweight);
  // LinearBackward of one MatmulBackward over N rows: dinp = dout W^T (with
  // gelu_pre: gelu'(gelu_pre) * ..., and gelu_dbias += its column sums) on
  // the main stream; G(w) += the weight gradient and, unless null, dbias +=
  // the bias gradient as LinearBackward places them. w is the weight's
  // parameter offset; the layer maps K inputs to Nout outputs.
  void LinearLayerBackward(WgradSlot slot, int64_t N, T* dinp, int64_t w, float* dbias,
                           const T* dout, const T* inp, int64_t K, int64_t Nout,
                           const T* gelu_pre = nullptr, float* gelu_dbias = nullptr);
  // The main stream waits for `slot`'s last weight-gradient work.
  void WaitWgrad(WgradSlot slot);
  // Makes `to` wait for everything enqueued on `from` so far.
  void StreamWait(cudaStream_t to, cudaStream_t from, cudaEvent_t ev);

  // ---- the cross-entropy beside the logits GEMM (CudaModelOptions::xent_overlap_*) ----
  cu::Stream xstream_;
  cudaEvent_t x_ev_ = nullptr;
  int sm_count_ = 0;   // the device's
  int xent_sms_ = 0;   // left to the cross-entropy
  int64_t classifier_calls_ = 0;

  cu::DeviceBuffer p32_, p16_, g32_, m_, v_, segments_, arena_, scratch_, misc_;
  const T* pT_ = nullptr;  // bf16 parameter copy (bf16 only)
  size_t scratch_bytes_ = 0;
  float current_wd_ = std::numeric_limits<float>::quiet_NaN();
  std::vector<cu::AdamWSegment> host_segments_;

  std::vector<BlockActs<T>> acts_;
  T* res0_ = nullptr;
  T* lnf_ = nullptr;
  float* lnf_mean_ = nullptr;
  float* lnf_rstd_ = nullptr;
  T* logits_ = nullptr;  // [N, Vp]
  float* row_losses_ = nullptr;
  T* dres_ = nullptr;
  T* dln_ = nullptr;
  T* datty_ = nullptr;
  T* dqkv_ = nullptr;
  T* dfc_ = nullptr;
  T* dact_ = nullptr;  // llama only (gpt2 fuses dGELU into the c_proj backward GEMM)
  float* rope_cos_ = nullptr;
  float* rope_sin_ = nullptr;
  int32_t* tokens_ = nullptr;     // device [N]
  int32_t* targets_ = nullptr;    // device [N]
  double* loss_slots_ = nullptr;  // device [kLossSlots]
  double* scalar_ = nullptr;      // device: one-off results (grad norm, evaluation loss)
  float* vsum_ = nullptr;         // device [C]: one micro-step's column sums (LLMT_BIAS_GRAD)

  TokenStaging staging_;
  double* host_scalars_ = nullptr;  // pinned [kLossSlots]
  std::vector<int64_t> slot_rows_;  // rows behind each pending loss slot
  double folded_loss_ = 0;          // sum of the folded micro-steps' mean losses
  int folded_count_ = 0;
  int last_b_ = 0, last_t_ = 0;
  bool have_logits_ = false;
  int64_t zero_grads_ = 0;
  GradReadyHook grad_hook_;
  // One per range the hook reports in a backward (final norm/lm_head, each
  // block, embeddings), recorded on the stream when the range is complete.
  std::vector<cudaEvent_t> ready_events_;
  std::vector<ParamLayout::Range> grad_ranges_;  // what grad_hook_ reports, in order
  // Reports range i of grad_ranges_ (ParamLayout::GradReadyRanges), with a
  // wait on ready_events_[i].
  void GradsReady(size_t i);
};

template <typename T>
CudaModelImpl<T>::~CudaModelImpl() {
  if (stream_.get() != nullptr) (void)stream_.Synchronize();
  if (timer_) {
    timer_->Flush();
    if (timer_->on()) {
      LLMT_LOG(Info) << timer_->Report();
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (staging_.host[i] != nullptr) cudaFreeHost(staging_.host[i]);
    if (staging_.copied[i] != nullptr) cudaEventDestroy(staging_.copied[i]);
  }
  if (host_scalars_ != nullptr) cudaFreeHost(host_scalars_);
  for (cudaEvent_t e : ready_events_) cudaEventDestroy(e);
  for (cudaEvent_t e : wg_done_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (wg_main_ != nullptr) cudaEventDestroy(wg_main_);
  if (x_ev_ != nullptr) cudaEventDestroy(x_ev_);
}

template <typename T>
absl::Status CudaModelImpl<T>::Alloc(cu::DeviceBuffer* buf, const std::string& category,
                                     const std::string& name, int64_t bytes) {
  ASSIGN_OR_RETURN(*buf, cu::DeviceBuffer::Allocate(name, bytes));
  report_.Add(category, name, bytes);
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaModelImpl<T>::Init() {
  RETURN_IF_ERROR(cu::SetDevice(opts_.device));
  ASSIGN_OR_RETURN(auto dev, cu::GetDeviceInfo(opts_.device));
  device_desc_ = dev.ToString();
  sm_count_ = dev.sm_count;
  C_ = cfg_.d_model;
  NH_ = cfg_.n_head;
  NKV_ = cfg_.n_kv_head;
  hd_ = C_ / NH_;
  F_ = cfg_.d_ff;
  V_ = cfg_.vocab_size;
  Vp_ = static_cast<int>(AlignUp(V_, kVocabPad));
  L_ = cfg_.n_layer;
  QKV_ = (NH_ + 2 * NKV_) * hd_;
  FC_ = gpt2() ? F_ : 2 * F_;
  if (!cu::AttentionSupportsHeadDim(hd_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.n_head: the CUDA attention kernels support head dimensions 8, 16, 32, 64, 80, 96 "
        "and 128; d_model / n_head = ",
        hd_));
  }
  pl_ = BuildParamLayout(cfg_);
  grad_ranges_ = pl_.GradReadyRanges();
  n_ = pl_.num_params;

  // ---- plan the activation arena (bytes), then check it fits before allocating ----
  const int64_t N = static_cast<int64_t>(B_) * T_;
  const int64_t ts = sizeof(T);
  const bool rc_gelu = opts_.recompute != Recompute::kNone;
  const bool rc_norm = opts_.recompute == Recompute::kNormGelu;
  struct Slice {
    void** ptr;
    int64_t bytes;
  };
  std::vector<Slice> plan;
  auto add = [&plan](auto** p, int64_t bytes) {
    plan.push_back({reinterpret_cast<void**>(p), bytes});
  };
  acts_.resize(L_);
  T* shared_ln = nullptr;   // recompute norm: one [N, C] buffer for every block
  T* shared_act = nullptr;  // recompute gelu: one [N, F]
  add(&res0_, N * C_ * ts);
  if (rc_norm) add(&shared_ln, N * C_ * ts);
  if (rc_gelu) add(&shared_act, N * F_ * ts);
  for (auto& a : acts_) {
    if (!rc_norm) add(&a.ln1, N * C_ * ts);
    add(&a.ln1_mean, gpt2() ? N * 4 : 0);
    add(&a.ln1_rstd, N * 4);
    add(&a.qkv, N * QKV_ * ts);
    add(&a.atty, N * C_ * ts);
    add(&a.lse, N * NH_ * 4);
    add(&a.res2, N * C_ * ts);
    if (!rc_norm) add(&a.ln2, N * C_ * ts);
    add(&a.ln2_mean, gpt2() ? N * 4 : 0);
    add(&a.ln2_rstd, N * 4);
    add(&a.fc, N * FC_ * ts);
    if (!rc_gelu) add(&a.act, N * F_ * ts);
    add(&a.res3, N * C_ * ts);
  }
  add(&lnf_, N * C_ * ts);
  add(&lnf_mean_, gpt2() ? N * 4 : 0);
  add(&lnf_rstd_, N * 4);
  add(&logits_, N * Vp_ * ts);
  add(&row_losses_, N * 4);
  add(&dres_, N * C_ * ts);
  add(&dln_, N * C_ * ts);
  add(&datty_, N * C_ * ts);
  add(&dqkv_, N * QKV_ * ts);
  add(&dfc_, N * FC_ * ts);
  add(&dact_, gpt2() ? 0 : N * F_ * ts);
  int64_t arena_bytes = 0;
  for (const Slice& sl : plan) arena_bytes += AlignUp(sl.bytes, kAlignBytes);

  scratch_bytes_ =
      std::max({cu::NormBackwardScratchBytes(N, C_),
                cu::AttentionBackwardScratchBytes(B_, T_, NH_, hd_),
                cu::EmbeddingBackwardScratchBytes(B_, T_, C_), cu::ReduceScratchBytes()});
  // misc: rope tables, token ids, loss slots, one scalar, one C-vector (vsum_).
  const int64_t rope_bytes = gpt2() ? 0 : AlignUp(int64_t{T_} * hd_ / 2 * 4, kAlignBytes);
  const int64_t tok_bytes = AlignUp(N * 4, kAlignBytes);
  const int64_t misc_bytes = 2 * rope_bytes + 2 * tok_bytes + AlignUp(kLossSlots * 8, kAlignBytes) +
                             kAlignBytes + AlignUp(int64_t{C_} * 4, kAlignBytes);

  // Plan first so an impossible size fails with the whole picture instead of
  // whichever buffer happened to be allocated last.
  {
    cu::MemoryReport planned;
    planned.Add("parameters", "fp32 master weights", n_ * 4);
    if (kBf16) planned.Add("parameters", "bf16 weight copy", n_ * 2);
    planned.Add("gradients", "fp32 gradients", n_ * 4);
    planned.Add("optimizer", "AdamW moments", n_ * 8);
    planned.Add("activations", "activation arena", arena_bytes);
    planned.Add("workspace", "cuBLASLt + kernel scratch",
                (opts_.wgrad_stream > 0 ? 2 : 1) * cu::Blas::kDefaultWorkspaceBytes +
                    static_cast<int64_t>(scratch_bytes_));
    auto mem = cu::GetMemInfo();
    if (mem.ok() && planned.Total() > mem->free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "out of GPU memory: the model needs ", planned.Total(), " bytes (",
          cu::FormatBytes(planned.Total()), ") for batch ", B_, " x ", T_, " but device ",
          opts_.device, " has ", cu::FormatBytes(mem->free_bytes),
          " free; the largest buffer is the activation arena (", arena_bytes, " bytes, ",
          cu::FormatBytes(arena_bytes), "): lower train.batch_size or set train.recompute: norm_gelu. Plan:\n",
          planned.Format(*mem)));
    }
  }

  if (opts_.wgrad_stream > 0) {
    ASSIGN_OR_RETURN(stream_, cu::Stream::CreateWithPriority(cu::Stream::kHighestPriority));
    ASSIGN_OR_RETURN(wstream_, cu::Stream::Create());
  } else {
    ASSIGN_OR_RETURN(stream_, cu::Stream::Create());
  }
  timer_ = std::make_unique<OpTimer>(stream_.get());
  ASSIGN_OR_RETURN(blas_, cu::Blas::Create());
  blas_->set_allow_tf32(false);
  if (opts_.wgrad_stream > 0) {
    ASSIGN_OR_RETURN(wblas_, blas_->CreateSibling());
    for (cudaEvent_t& e : wg_done_) {
      LLMT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    LLMT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&wg_main_, cudaEventDisableTiming));
    LLMT_LOG(Info) << "weight gradients on a second stream (LLMT_WGRAD_STREAM=1)";
  }
  if (opts_.xent_overlap_chunks > 1) {
    ASSIGN_OR_RETURN(xstream_, cu::Stream::CreateWithPriority(cu::Stream::kHighestPriority));
    LLMT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&x_ev_, cudaEventDisableTiming));
    xent_sms_ = std::clamp(opts_.xent_overlap_sms > 0 ? opts_.xent_overlap_sms : sm_count_ / 4, 1,
                           std::max(1, sm_count_ - 1));
    LLMT_LOG(Info) << "cross-entropy beside the logits GEMM (LLMT_XENT_OVERLAP): "
                   << opts_.xent_overlap_chunks << " chunks, " << xent_sms_ << " of "
                   << sm_count_ << " SMs";
  }
  if (blas_->bias_grad_from_norm() && gpt2()) {
    LLMT_LOG(Info) << "bias gradients of the attention and MLP output projections from the norm "
                      "backward (LLMT_BIAS_GRAD=norm)";
  }
  if (blas_->bias_grad_from_dgelu() && gpt2()) {
    LLMT_LOG(Info) << "bias gradients of the MLP input projections from the output projection's "
                      "DGELU GEMM (LLMT_BIAS_GRAD=dgelu)";
  }
  if (blas_->bias_grad_skip_keys() && gpt2()) {
    LLMT_LOG(Info) << (blas_->bias_grad_from_norm()
                           ? "QKV bias gradients from the query third and, for the value third, "
                             "the attention projection's weight times the ln2 backward's column "
                             "sums; the key third's is zero (LLMT_BIAS_GRAD=norm+qv)"
                           : "QKV bias gradients from the query and value thirds; the key third's "
                             "is zero (LLMT_BIAS_GRAD=qv)");
  }
  RETURN_IF_ERROR(Alloc(&p32_, "parameters", "fp32 master weights", n_ * 4));
  if (kBf16) {
    RETURN_IF_ERROR(Alloc(&p16_, "parameters", "bf16 weight copy", n_ * 2));
    pT_ = reinterpret_cast<const T*>(p16_.data());
  }
  RETURN_IF_ERROR(Alloc(&g32_, "gradients", "fp32 gradients", n_ * 4));
  RETURN_IF_ERROR(Alloc(&m_, "optimizer", "AdamW first moment", n_ * 4));
  RETURN_IF_ERROR(Alloc(&v_, "optimizer", "AdamW second moment", n_ * 4));
  RETURN_IF_ERROR(Alloc(&segments_, "optimizer", "AdamW segment table",
                        static_cast<int64_t>(pl_.info.size() * sizeof(cu::AdamWSegment))));
  RETURN_IF_ERROR(Alloc(&arena_, "activations",
                        absl::StrCat("activation arena (B=", B_, ", T=", T_, ", ", L_, " layers)"),
                        arena_bytes));
  report_.Add("workspace", "cuBLASLt workspace", blas_->workspace_bytes());
  if (wblas_) {
    report_.Add("workspace", "cuBLASLt workspace (weight-gradient stream)",
                wblas_->workspace_bytes());
  }
  RETURN_IF_ERROR(
      Alloc(&scratch_, "workspace", "kernel scratch", static_cast<int64_t>(scratch_bytes_)));
  RETURN_IF_ERROR(Alloc(&misc_, "workspace", "tokens, RoPE tables, loss slots", misc_bytes));
  if (kBf16) {
    // cuDNN's attention (the default where it loads, or LLMT_ATTN_FWD/BWD=
    // cudnn*) plans and allocates its workspace now, so that out-of-memory
    // shows here and not mid-step.
    const cu::AttentionPrepared ap = cu::PrepareAttention(B_, T_, NH_, NKV_, hd_);
    if (!ap.what.empty()) {
      LLMT_LOG(Info) << ap.what;
    }
    if (!ap.error.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "out of GPU memory for batch ", B_, " x ", T_, ": ", ap.error,
          " (unset LLMT_ATTN_FWD/LLMT_ATTN_BWD or lower train.batch_size). Allocated so far:\n",
          report_.Format()));
    }
    if (ap.bytes > 0) {
      report_.Add("workspace", "cuDNN attention workspace", static_cast<int64_t>(ap.bytes));
    }
  }

  char* base = arena_.as<char>();
  int64_t off = 0;
  for (const Slice& sl : plan) {
    *sl.ptr = sl.bytes > 0 ? base + off : nullptr;
    off += AlignUp(sl.bytes, kAlignBytes);
  }
  for (auto& a : acts_) {
    if (rc_norm) a.ln1 = a.ln2 = shared_ln;
    if (rc_gelu) a.act = shared_act;
  }
  char* m = misc_.as<char>();
  if (!gpt2()) {
    rope_cos_ = reinterpret_cast<float*>(m);
    rope_sin_ = reinterpret_cast<float*>(m + rope_bytes);
    m += 2 * rope_bytes;
    cu::RopeTable(rope_cos_, rope_sin_, T_, hd_, cfg_.rope_theta, s());
  }
  tokens_ = reinterpret_cast<int32_t*>(m);
  targets_ = reinterpret_cast<int32_t*>(m + tok_bytes);
  m += 2 * tok_bytes;
  loss_slots_ = reinterpret_cast<double*>(m);
  m += AlignUp(kLossSlots * 8, kAlignBytes);
  scalar_ = reinterpret_cast<double*>(m);
  m += kAlignBytes;
  vsum_ = reinterpret_cast<float*>(m);

  for (int i = 0; i < 2; ++i) {
    LLMT_CUDA_RETURN_IF_ERROR(
        cudaMallocHost(reinterpret_cast<void**>(&staging_.host[i]), 2 * N * sizeof(int32_t)));
    LLMT_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&staging_.copied[i], cudaEventDisableTiming));
  }
  LLMT_CUDA_RETURN_IF_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&host_scalars_), kLossSlots * sizeof(double)));
  ready_events_.assign(grad_ranges_.size(), nullptr);
  for (cudaEvent_t& e : ready_events_) {
    LLMT_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }

  // Zeroed gradients/moments: a fresh model is ready to train.
  RETURN_IF_ERROR(g32_.ZeroAsync(s()));
  RETURN_IF_ERROR(m_.ZeroAsync(s()));
  RETURN_IF_ERROR(v_.ZeroAsync(s()));
  SetWeightDecay(0.f);
  return stream_.Synchronize();
}

template <typename T>
void CudaModelImpl<T>::SetWeightDecay(float wd) {
  if (wd == current_wd_) return;
  host_segments_.clear();
  for (const ParamInfo& p : pl_.info) {
    host_segments_.push_back({p.offset, p.numel, p.decay ? wd : 0.f});
  }
  // Synchronous on purpose: the table changes only when weight decay does
  // (once per run), and the host vector must outlive the copy.
  LLMT_CUDA_CHECK(cudaMemcpyAsync(segments_.data(), host_segments_.data(),
                                  host_segments_.size() * sizeof(cu::AdamWSegment),
                                  cudaMemcpyHostToDevice, s()));
  LLMT_CUDA_CHECK(cudaStreamSynchronize(s()));
  current_wd_ = wd;
}

template <typename T>
absl::Status CudaModelImpl<T>::SetParams(const float* host) {
  RETURN_IF_ERROR(stream_.Synchronize());
  RETURN_IF_ERROR(p32_.CopyFromHost(host, n_ * 4));
  if (kBf16) {
    cu::ConvertF32ToBf16(p16_.as<bf16>(), p32_.as<float>(), n_, false, 0, s());
  }
  return stream_.Synchronize();
}

template <typename T>
void CudaModelImpl<T>::RefreshParamCopy(uint64_t sr_seed) {
  if (kBf16) {
    cu::ConvertF32ToBf16(p16_.as<bf16>(), p32_.as<float>(), n_, opts_.stochastic_rounding, sr_seed,
                         s());
  }
}

template <typename T>
absl::Status CudaModelImpl<T>::CopyOut(const cu::DeviceBuffer& buf, float* host, const char*) {
  RETURN_IF_ERROR(stream_.Synchronize());
  return buf.CopyToHost(host, n_ * 4);
}

template <typename T>
absl::Status CudaModelImpl<T>::SetOptimizerState(const float* m, const float* v) {
  RETURN_IF_ERROR(stream_.Synchronize());
  RETURN_IF_ERROR(m_.CopyFromHost(m, n_ * 4));
  return v_.CopyFromHost(v, n_ * 4);
}

template <typename T>
absl::Status CudaModelImpl<T>::GetOptimizerState(float* m, float* v) {
  RETURN_IF_ERROR(stream_.Synchronize());
  RETURN_IF_ERROR(m_.CopyToHost(m, n_ * 4));
  return v_.CopyToHost(v, n_ * 4);
}

template <typename T>
absl::Status CudaModelImpl<T>::InitWeights(uint64_t seed) {
  std::vector<float> host(static_cast<size_t>(n_));
  InitParams(cfg_, pl_.info, seed, host.data());
  return SetParams(host.data());
}

template <typename T>
absl::Status CudaModelImpl<T>::UploadTokens(const int32_t* inputs, const int32_t* targets,
                                            int64_t N) {
  for (int64_t i = 0; i < N; ++i) {
    if (inputs[i] < 0 || inputs[i] >= V_ ||
        (targets != nullptr && (targets[i] < 0 || targets[i] >= V_))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id at position ", i, " (input ", inputs[i], ", target ",
          targets != nullptr ? targets[i] : 0, ") is outside the vocabulary [0, ", V_, ")"));
    }
  }
  const int slot = staging_.next;
  staging_.next ^= 1;
  // The slot's previous copy must have left pinned memory before we overwrite it.
  LLMT_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staging_.copied[slot]));
  int32_t* h = staging_.host[slot];
  std::memcpy(h, inputs, N * sizeof(int32_t));
  if (targets != nullptr) std::memcpy(h + static_cast<int64_t>(B_) * T_, targets, N * 4);
  LLMT_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(tokens_, h, N * sizeof(int32_t), cudaMemcpyHostToDevice, s()));
  if (targets != nullptr) {
    LLMT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(targets_, h + static_cast<int64_t>(B_) * T_,
                                              N * sizeof(int32_t), cudaMemcpyHostToDevice, s()));
  }
  LLMT_CUDA_RETURN_IF_ERROR(cudaEventRecord(staging_.copied[slot], s()));
  return absl::OkStatus();
}

template <typename T>
void CudaModelImpl<T>::NormForward(T* out, float* mean, float* rstd, const T* in, int64_t w,
                                   int64_t bias, int64_t rows) {
  if (gpt2()) {
    {
      auto timed = timer_->Time("norm_fwd");
      cu::LayerNormForward(out, mean, rstd, in, P(w), P(bias), rows, C_, cfg_.norm_eps, s());
    }
  } else {
    {
      auto timed = timer_->Time("norm_fwd");
      cu::RMSNormForward(out, rstd, in, P(w), rows, C_, cfg_.norm_eps, s());
    }
  }
}

template <typename T>
void CudaModelImpl<T>::NormBackward(T* dinp, const T* dout, const T* in, const float* mean,
                                    const float* rstd, int64_t w, int64_t bias, int64_t rows,
                                    float* colsum) {
  if (gpt2()) {
    {
      auto timed = timer_->Time("norm_bwd");
      cu::LayerNormBackward(dinp, G(w), G(bias), dout, in, P(w), mean, rstd, rows, C_,
                            scratch_.data(), scratch_bytes_, s(), colsum);
    }
  } else {
    {
      auto timed = timer_->Time("norm_bwd");
      cu::RMSNormBackward(dinp, G(w), dout, in, P(w), rstd, rows, C_, scratch_.data(),
                          scratch_bytes_, s(), colsum);
    }
  }
}

template <typename T>
void CudaModelImpl<T>::ForwardPass(int b, int t) {
  const int64_t N = static_cast<int64_t>(b) * t;
  const WeightLayout lay = layout();
  {
    auto timed = timer_->Time("embedding_fwd");
    cu::EmbeddingForward(res0_, tokens_, P(pl_.wte), gpt2() ? P(pl_.wpe) : nullptr, b, t, C_, s());
  }
  const T* x = res0_;
  for (int l = 0; l < L_; ++l) {
    const LayerParams& o = pl_.layers[l];
    BlockActs<T>& a = acts_[l];
    NormForward(a.ln1, a.ln1_mean, a.ln1_rstd, x, o.ln1_w, o.ln1_b, N);
    {
      auto timed = timer_->Time("matmul_qkv_fwd");
      cu::MatmulForward(*blas_, a.qkv, a.ln1, P(o.qkv_w), P(o.qkv_b), N, C_, QKV_, lay, nullptr,
                        nullptr, s());
    }
    if (!gpt2()) {
      auto timed = timer_->Time("rope");
      cu::RopeForward(a.qkv, rope_cos_, rope_sin_, b, t, NH_ + NKV_, hd_, QKV_, s());
    }
    {
      auto timed = timer_->Time("attention_fwd");
      cu::AttentionForward(a.atty, a.lse, a.qkv, b, t, NH_, NKV_, hd_, s());
    }
    // res2 = x + atty Wo + bo (residual through the GEMM's C operand).
    {
      auto timed = timer_->Time("matmul_attn_out_fwd");
      cu::MatmulForward(*blas_, a.res2, a.atty, P(o.attn_out_w), P(o.attn_out_b), N, C_, C_, lay, x,
                        nullptr, s());
    }
    NormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, o.ln2_w, o.ln2_b, N);
    if (gpt2()) {
      // act = gelu(fc), fc = ln2 Wfc + bfc kept for the backward (one GEMM).
      {
        auto timed = timer_->Time("matmul_fc_fwd");
        cu::MatmulForward(*blas_, a.act, a.ln2, P(o.fc_w), P(o.fc_b), N, C_, F_, lay, nullptr, a.fc,
                          s());
      }
    } else {
      {
        auto timed = timer_->Time("matmul_fc_fwd");
        cu::MatmulForward(*blas_, a.fc, a.ln2, P(o.fc_w), nullptr, N, C_, FC_, lay, nullptr,
                          nullptr, s());
      }
      {
        auto timed = timer_->Time("swiglu");
        cu::SwiGLUForward(a.act, a.fc, N, F_, s());
      }
    }
    {
      auto timed = timer_->Time("matmul_proj_fwd");
      cu::MatmulForward(*blas_, a.res3, a.act, P(o.proj_w), P(o.proj_b), N, F_, C_, lay, a.res2,
                        nullptr, s());
    }
    x = a.res3;
  }
  NormForward(lnf_, lnf_mean_, lnf_rstd_, x, pl_.lnf_w, pl_.lnf_b, N);
}

template <typename T>
void CudaModelImpl<T>::Classifier(int64_t N, float grad_scale, bool with_targets) {
  constexpr cu::DType dt = cu::DTypeOf<T>::value;
  // logits[N, V] (row stride Vp) = lnf [N, C] x lm_head[V, C]^T
  cu::GemmOp op;
  op.trans_a = false;
  op.trans_b = true;
  op.M = N;
  op.N = V_;
  op.K = C_;
  op.A = lnf_;
  op.a_type = dt;
  op.lda = C_;
  op.B = P(pl_.lm_head);
  op.b_type = dt;
  op.ldb = C_;
  op.D = logits_;
  op.d_type = dt;
  op.ldd = Vp_;
  // With xent_chunk_rows, chunk by chunk: each chunk's logits (chunk x Vp)
  // are rewritten as dlogits while still in L2, instead of a second trip
  // through DRAM. With xent_overlap_chunks, in that many chunks, each
  // chunk's cross-entropy on xstream_ beside the next chunk's GEMM (which
  // leaves it xent_sms_ SMs), except in the first call: there everything
  // runs in order on the main stream, so that autotuning times the chunk
  // GEMMs on a quiet GPU. Otherwise (and without targets) one chunk of all
  // N rows.
  const bool overlap = with_targets && opts_.xent_overlap_chunks > 1;
  const bool beside = overlap && classifier_calls_++ > 0;
  const int64_t chunk = overlap ? (N + opts_.xent_overlap_chunks - 1) / opts_.xent_overlap_chunks
                        : with_targets && opts_.xent_chunk_rows > 0
                            ? std::min(opts_.xent_chunk_rows, N)
                            : N;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    cu::GemmOp c = op;
    c.M = rows;
    c.A = lnf_ + r0 * C_;
    c.D = logits_ + r0 * Vp_;
    if (overlap && r0 > 0) c.sm_count = sm_count_ - xent_sms_;  // the first has no company
    {
      auto timed = timer_->Time("classifier_gemm");
      cu::Gemm(*blas_, c, s());
    }
    if (!with_targets) continue;
    // Two staged rows per SM left to it; the last chunk has no GEMM beside
    // it and takes the whole device.
    const int max_blocks = overlap && r0 + rows < N ? 2 * xent_sms_ : 0;
    if (beside) {
      StreamWait(xstream_.get(), s(), x_ev_);
      auto timed = timer_->Time("softmax_xent (beside)", xstream_.get());
      cu::SoftmaxCrossEntropy(logits_ + r0 * Vp_, targets_ + r0, rows, V_, Vp_, grad_scale,
                              row_losses_ + r0, xstream_.get(), max_blocks);
    } else {
      auto timed = timer_->Time("softmax_xent");
      cu::SoftmaxCrossEntropy(logits_ + r0 * Vp_, targets_ + r0, rows, V_, Vp_, grad_scale,
                              row_losses_ + r0, s(), max_blocks);
    }
  }
  if (beside) StreamWait(s(), xstream_.get(), x_ev_);  // dlogits and losses before the backward
}

// A MatmulBackward output left out (typed: the bf16 overloads differ in it).
float* const kNoGrad = nullptr;

template <typename T>
void CudaModelImpl<T>::BackwardPass(int b, int t) {
  constexpr cu::DType dt = cu::DTypeOf<T>::value;
  const int64_t N = static_cast<int64_t>(b) * t;
  const WeightLayout lay = layout();
  const bool rc_gelu = opts_.recompute != Recompute::kNone;
  const bool rc_norm = opts_.recompute == Recompute::kNormGelu;
  // The first backward stays on the main stream (see wstream_).
  wg_async_ = wblas_ != nullptr && backwards_++ > 0;

  // Classifier: dln = dlogits x W  [N, C];  dW += dlogits^T x lnf  [V, C].
  // dlogits already carry loss_scale / N (the loss kernel's grad_scale).
  {
    cu::GemmOp op;
    op.M = N;
    op.N = C_;
    op.K = V_;
    op.A = logits_;
    op.a_type = dt;
    op.lda = Vp_;
    op.B = P(pl_.lm_head);
    op.b_type = dt;
    op.ldb = C_;
    op.D = dln_;
    op.d_type = dt;
    op.ldd = C_;
    cu::GemmOp w;
    w.trans_a = true;
    w.M = V_;
    w.N = C_;
    w.K = N;
    w.A = logits_;
    w.a_type = dt;
    w.lda = Vp_;
    w.B = lnf_;
    w.b_type = dt;
    w.ldb = C_;
    w.beta = 1.f;
    w.C = G(pl_.lm_head);
    w.ldc = C_;
    w.D = G(pl_.lm_head);
    w.d_type = cu::DType::kF32;
    w.ldd = C_;
    LinearBackward(
        kWgClassifier,
        [&] {
          auto timed = timer_->Time("classifier_gemm");
          cu::Gemm(*blas_, op, s());
        },
        [&](cu::Blas& bl, cudaStream_t st) {
          // Beside the main stream LinearBackward times it.
          auto timed = st == s() ? timer_->Time("classifier_bwd_dw") : OpTimer::Scope{};
          cu::Gemm(bl, w, st);
        });
  }
  {
    auto timed = timer_->Time("zero");
    cu::Zero(dres_, N * C_, s());
  }
  // LLMT_BIAS_GRAD=norm: a bias whose output joins the residual stream gets
  // its gradient (the column sums of the stream's gradient where it joined)
  // from the norm backward that last updated that gradient: the final
  // norm's for the last MLP output projection, each ln2's for its layer's
  // attention output projection, each ln1's for the previous layer's MLP
  // output projection. Those GEMMs' backward then skips the bias.
  const bool bn = blas_->bias_grad_from_norm();
  // LLMT_BIAS_GRAD=dgelu: GPT-2's c_fc bias gradient is the column sums of
  // dfc, which the MLP output projection's backward writes: its DGELU GEMM
  // sums them (cuBLASLt's DGELU_BGRAD epilogue where it has one), and c_fc's
  // backward skips the bias.
  const bool bd = blas_->bias_grad_from_dgelu() && gpt2();
  // LLMT_BIAS_GRAD=qv: GPT-2's QKV bias gradient from the query and value
  // thirds of dqkv; the key third's is exactly zero (softmax does not see a
  // vector added to every key), so nothing is added there and those
  // columns are not read. With norm as well, the value third comes without
  // a pass too: every softmax row sums to 1, so the column sums of dV are
  // those of the attention output's gradient datty = dres2 W_out^T, i.e.
  // W_out (the column sums of dres2) -- the ln2 backward's column sums of
  // this micro-step (vsum_) times the attention projection's weight.
  const bool bq = blas_->bias_grad_skip_keys() && gpt2() && NKV_ == NH_;
  const bool bqv = bq && bn;
  const int64_t qw = static_cast<int64_t>(NH_) * hd_;  // the query, key and value widths
  NormBackward(dres_, dln_, acts_[L_ - 1].res3, lnf_mean_, lnf_rstd_, pl_.lnf_w, pl_.lnf_b, N,
               bn ? G(pl_.layers[L_ - 1].proj_b) : nullptr);
  GradsReady(0);  // final norm (and an untied lm_head)

  for (int l = L_ - 1; l >= 0; --l) {
    const LayerParams& o = pl_.layers[l];
    BlockActs<T>& a = acts_[l];
    const T* x = l == 0 ? res0_ : acts_[l - 1].res3;
    // ---- MLP (dres_ = dL/dres3, which also flows straight on to res2) ----
    if (rc_gelu) {
      WaitWgrad(kWgProj);  // the shared act buffer: the layer above's c_proj dW reads it
      if (gpt2()) {
        {
          auto timed = timer_->Time("recompute_gelu");
          cu::GeluForward(a.act, a.fc, N * F_, s());
        }
      } else {
        {
          auto timed = timer_->Time("swiglu");
          cu::SwiGLUForward(a.act, a.fc, N, F_, s());
        }
      }
    }
    if (gpt2()) {
      // dfc = gelu'(fc) * (dres Wproj^T): the GELU backward rides on the GEMM.
      WaitWgrad(kWgFc);  // dfc_: the layer above's c_fc dW reads it
      auto timed = timer_->Time("matmul_proj_bwd");
      LinearLayerBackward(kWgProj, N, dfc_, o.proj_w, bn ? nullptr : G(o.proj_b), dres_, a.act, F_,
                          C_, a.fc, bd ? G(o.fc_b) : nullptr);
    } else {
      {
        auto timed = timer_->Time("matmul_proj_bwd");
        LinearLayerBackward(kWgProj, N, dact_, o.proj_w, bn ? nullptr : G(o.proj_b), dres_, a.act,
                            F_, C_);
      }
      WaitWgrad(kWgFc);  // dfc_: the layer above's gate|up dW reads it
      {
        auto timed = timer_->Time("swiglu_bwd");
        cu::SwiGLUBackward(dfc_, a.fc, dact_, N, F_, s());
      }
    }
    if (rc_norm) {  // the shared norm buffer: the c_fc and QKV dW above read it
      WaitWgrad(kWgFc);
      WaitWgrad(kWgQkv);
      NormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, o.ln2_w, o.ln2_b, N);
    }
    {
      auto timed = timer_->Time("matmul_fc_bwd");
      LinearLayerBackward(kWgFc, N, dln_, o.fc_w, bd ? nullptr : G(o.fc_b), dfc_, a.ln2, C_, FC_);
    }
    const bool vmat = bqv && o.attn_out_b >= 0 && o.qkv_b >= 0;
    if (vmat) cu::Zero(vsum_, C_, s());
    WaitWgrad(kWgProj);  // dres_: this layer's c_proj dW reads it
    NormBackward(dres_, dln_, a.res2, a.ln2_mean, a.ln2_rstd, o.ln2_w, o.ln2_b, N,
                 vmat ? vsum_ : bn ? G(o.attn_out_b) : nullptr);
    if (vmat) {
      auto timed = timer_->Time("bias_from_norm");
      cu::BiasBackward(G(o.attn_out_b), vsum_, 1, C_, 1.f, s());  // the projection's own
      cu::MatVecAdd(G(o.qkv_b) + 2 * qw, P(o.attn_out_w), vsum_,
                    lay == WeightLayout::kInOut ? qw : C_, lay == WeightLayout::kInOut ? C_ : qw,
                    lay == WeightLayout::kOutIn, s());
    }
    // ---- attention (dres_ = dL/dres2 now) ----
    {
      auto timed = timer_->Time("matmul_attn_out_bwd");
      LinearLayerBackward(kWgAttnOut, N, datty_, o.attn_out_w, bn ? nullptr : G(o.attn_out_b),
                          dres_, a.atty, C_, C_);
    }
    WaitWgrad(kWgQkv);  // dqkv_: the layer above's QKV dW reads it
    {
      auto timed = timer_->Time("attention_bwd");
      cu::AttentionBackward(dqkv_, datty_, a.qkv, a.atty, a.lse, b, t, NH_, NKV_, hd_,
                            scratch_.data(), scratch_bytes_, s());
    }
    if (!gpt2()) {
      auto timed = timer_->Time("rope_bwd");
      cu::RopeBackward(dqkv_, rope_cos_, rope_sin_, b, t, NH_ + NKV_, hd_, QKV_, s());
    }
    if (rc_norm) {
      WaitWgrad(kWgFc);  // the shared norm buffer: this layer's c_fc dW reads it
      NormForward(a.ln1, a.ln1_mean, a.ln1_rstd, x, o.ln1_w, o.ln1_b, N);
    }
    {
      auto timed = timer_->Time("matmul_qkv_bwd");
      LinearBackward(
          kWgQkv,
          [&] {
            cu::MatmulBackward(*blas_, dln_, kNoGrad, kNoGrad, dqkv_, a.ln1, P(o.qkv_w), N, C_,
                               QKV_, lay, 1.f, false, nullptr, s());
          },
          [&](cu::Blas& bl, cudaStream_t st) {
            cu::MatmulBackward(bl, nullptr, G(o.qkv_w), bq ? nullptr : G(o.qkv_b), dqkv_, a.ln1,
                               nullptr, N, C_, QKV_, lay, 1.f, false, nullptr, st);
            if (bq && o.qkv_b >= 0) {  // the query third, and the value third unless vmat
              cu::BiasBackwardColumns(G(o.qkv_b), vmat ? nullptr : G(o.qkv_b) + 2 * qw, dqkv_, N,
                                      qw, QKV_, 2 * qw, 1.f, bl.workspace(),
                                      static_cast<size_t>(bl.workspace_bytes()), st);
            }
          });
    }
    WaitWgrad(kWgAttnOut);  // dres_: this layer's attention projection dW reads it
    NormBackward(dres_, dln_, x, a.ln1_mean, a.ln1_rstd, o.ln1_w, o.ln1_b, N,
                 bn && l > 0 ? G(pl_.layers[l - 1].proj_b) : nullptr);
    GradsReady(static_cast<size_t>(L_ - l));
  }
  WaitWgrad(kWgClassifier);  // a tied lm_head's gradient is the token embedding's
  {
    auto timed = timer_->Time("embedding_bwd");
    cu::EmbeddingBackward(G(pl_.wte), gpt2() ? G(pl_.wpe) : nullptr, dres_, tokens_, b, t, C_,
                          scratch_.data(), scratch_bytes_, s());
  }
  GradsReady(static_cast<size_t>(L_) + 1);  // embeddings
  // Everything after the backward (the next micro-step's forward, which
  // rewrites the activations the dW GEMMs read; the gradient norm; AdamW;
  // host copies) is ordered after the weight gradients.
  if (wg_async_) StreamWait(s(), wstream_.get(), wg_main_);
  wg_async_ = false;
}

template <typename T>
template <typename Dinp, typename Dweight>
void CudaModelImpl<T>::LinearBackward(WgradSlot slot, Dinp&& dinp, Dweight&& dweight) {
  if (!wg_async_) {
    dinp();
    dweight(wblas_ ? *wblas_ : *blas_, s());
    return;
  }
  StreamWait(wstream_.get(), s(), wg_main_);
  {
    static constexpr const char* kNames[kWgSlots] = {
        "matmul_proj_bwd_dw (beside)", "matmul_fc_bwd_dw (beside)",
        "matmul_attn_out_bwd_dw (beside)", "matmul_qkv_bwd_dw (beside)",
        "classifier_bwd_dw (beside)"};
    auto timed = timer_->Time(kNames[slot], wstream_.get());
    dweight(*wblas_, wstream_.get());
  }
  LLMT_CUDA_CHECK(cudaEventRecord(wg_done_[slot], wstream_.get()));
  dinp();
}

template <typename T>
void CudaModelImpl<T>::LinearLayerBackward(WgradSlot slot, int64_t N, T* dinp, int64_t w,
                                           float* dbias, const T* dout, const T* inp, int64_t K,
                                           int64_t Nout, const T* gelu_pre, float* gelu_dbias) {
  const WeightLayout lay = layout();
  LinearBackward(
      slot,
      [&] {
        cu::MatmulBackward(*blas_, dinp, kNoGrad, kNoGrad, dout, inp, P(w), N, K, Nout, lay, 1.f,
                           false, gelu_pre, s(), gelu_dbias);
      },
      [&](cu::Blas& bl, cudaStream_t st) {
        cu::MatmulBackward(bl, nullptr, G(w), dbias, dout, inp, nullptr, N, K, Nout, lay, 1.f,
                           false, nullptr, st);
      });
}

template <typename T>
void CudaModelImpl<T>::WaitWgrad(WgradSlot slot) {
  if (wg_async_) LLMT_CUDA_CHECK(cudaStreamWaitEvent(s(), wg_done_[slot], 0));
}

template <typename T>
void CudaModelImpl<T>::StreamWait(cudaStream_t to, cudaStream_t from, cudaEvent_t ev) {
  LLMT_CUDA_CHECK(cudaEventRecord(ev, from));
  LLMT_CUDA_CHECK(cudaStreamWaitEvent(to, ev, 0));
}

template <typename T>
void CudaModelImpl<T>::GradsReady(size_t i) {
  if (!grad_hook_) return;
  cudaEvent_t ev = ready_events_[i];
  if (wg_async_) {
    // The range's gradients come from both streams: the event goes on
    // wstream_ after it has caught up with the main stream.
    StreamWait(wstream_.get(), s(), wg_main_);
    LLMT_CUDA_CHECK(cudaEventRecord(ev, wstream_.get()));
  } else {
    LLMT_CUDA_CHECK(cudaEventRecord(ev, s()));
  }
  grad_hook_(grad_ranges_[i].offset, grad_ranges_[i].count, [ev]() {
    return cu::CudaStatus(cudaEventSynchronize(ev), "cudaEventSynchronize (gradients ready)");
  });
}

template <typename T>
absl::Status CudaModelImpl<T>::ForwardBackward(const int32_t* inputs, const int32_t* targets,
                                               float loss_scale) {
  if (targets == nullptr)
    return absl::InvalidArgumentError("ForwardBackward: targets are required");
  const int64_t N = static_cast<int64_t>(B_) * T_;
  RETURN_IF_ERROR(UploadTokens(inputs, targets, N));
  have_logits_ = false;
  ForwardPass(B_, T_);
  Classifier(N, loss_scale / static_cast<float>(N), /*with_targets=*/true);
  // This micro-step's loss sum goes into its own device slot; if more
  // micro-steps than slots run between TakeLoss calls, fold the pending ones
  // on the host first.
  if (static_cast<int>(slot_rows_.size()) == kLossSlots) RETURN_IF_ERROR(FoldLosses());
  cu::Sum(row_losses_, N, loss_slots_ + slot_rows_.size(), scratch_.data(), scratch_bytes_, s());
  slot_rows_.push_back(N);
  BackwardPass(B_, T_);
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaModelImpl<T>::FoldLosses() {
  const int k = static_cast<int>(slot_rows_.size());
  if (k > 0) {
    LLMT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_scalars_, loss_slots_, k * sizeof(double),
                                              cudaMemcpyDeviceToHost, s()));
  }
  RETURN_IF_ERROR(stream_.Synchronize());
  timer_->Flush();
  for (int i = 0; i < k; ++i) {
    folded_loss_ += host_scalars_[i] / static_cast<double>(slot_rows_[i]);
    ++folded_count_;
  }
  slot_rows_.clear();
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<double> CudaModelImpl<T>::TakeLoss() {
  RETURN_IF_ERROR(FoldLosses());
  if (folded_count_ == 0) {
    return absl::FailedPreconditionError("TakeLoss: no ForwardBackward since the last call");
  }
  const double mean = folded_loss_ / folded_count_;
  folded_loss_ = 0;
  folded_count_ = 0;
  return mean;
}

template <typename T>
absl::StatusOr<double> CudaModelImpl<T>::Forward(const int32_t* inputs, const int32_t* targets,
                                                 int b, int t) {
  if (b <= 0 || b > B_ || t <= 0 || t > T_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: batch ", b, " x ", t, " outside the planned ", B_, " x ", T_));
  }
  const int64_t N = static_cast<int64_t>(b) * t;
  RETURN_IF_ERROR(UploadTokens(inputs, targets, N));
  ForwardPass(b, t);
  Classifier(N, 1.f / static_cast<float>(N), targets != nullptr);
  last_b_ = b;
  last_t_ = t;
  if (targets == nullptr) {
    have_logits_ = true;
    return 0.0;
  }
  have_logits_ = false;
  // Not a training loss slot, so an evaluation between micro-steps does not
  // disturb their pending losses.
  cu::Sum(row_losses_, N, scalar_, scratch_.data(), scratch_bytes_, s());
  ASSIGN_OR_RETURN(const double sum, ReadScalar());
  return sum / static_cast<double>(N);
}

template <typename T>
absl::Status CudaModelImpl<T>::GetLogits(float* host) {
  if (!have_logits_) {
    return absl::FailedPreconditionError("GetLogits: the last Forward had targets (or none ran)");
  }
  const int64_t rows = static_cast<int64_t>(last_b_) * last_t_;
  RETURN_IF_ERROR(stream_.Synchronize());
  if constexpr (!kBf16) {
    LLMT_CUDA_RETURN_IF_ERROR(cudaMemcpy2D(host, V_ * sizeof(float), logits_, Vp_ * sizeof(float),
                                           V_ * sizeof(float), rows, cudaMemcpyDeviceToHost));
  } else {
    std::vector<uint16_t> tmp(static_cast<size_t>(rows) * V_);
    LLMT_CUDA_RETURN_IF_ERROR(
        cudaMemcpy2D(tmp.data(), V_ * 2, logits_, Vp_ * 2, V_ * 2, rows, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < tmp.size(); ++i) {
      const uint32_t bits = static_cast<uint32_t>(tmp[i]) << 16;
      std::memcpy(host + i, &bits, 4);
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<double> CudaModelImpl<T>::GradNorm() {
  {
    auto timed = timer_->Time("grad_norm");
    cu::L2Norm(g32_.as<float>(), n_, scalar_, scratch_.data(), scratch_bytes_, s());
  }
  return ReadScalar();
}

template <typename T>
absl::StatusOr<double> CudaModelImpl<T>::ReadScalar() {
  LLMT_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_scalars_ + kLossSlots - 1, scalar_,
                                            sizeof(double), cudaMemcpyDeviceToHost, s()));
  RETURN_IF_ERROR(stream_.Synchronize());
  timer_->Flush();
  return host_scalars_[kLossSlots - 1];
}

template <typename T>
void CudaModelImpl<T>::AdamWStep(const AdamWHyper& h) {
  SetWeightDecay(h.weight_decay);
  auto timed = timer_->Time("adamw");
  cu::AdamWMultiTensor(p32_.as<float>(), g32_.as<float>(), m_.as<float>(), v_.as<float>(), n_,
                       segments_.as<cu::AdamWSegment>(), static_cast<int>(host_segments_.size()),
                       h.lr, h.beta1, h.beta2, h.eps, h.step, h.grad_scale,
                       kBf16 ? p16_.as<bf16>() : nullptr, opts_.stochastic_rounding, h.seed, s());
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig& in, int B, int T,
                                                             const CudaModelOptions& opts) {
  ModelConfig cfg = in;
  RETURN_IF_ERROR(ValidateConfig(&cfg, B, T));
  CudaModelOptions o = opts;
  if (o.xent_chunk_rows < 0) {
    o.xent_chunk_rows = 0;
    if (const char* e = std::getenv("LLMT_XENT_CHUNK_ROWS"); e != nullptr && *e != '\0') {
      char* end = nullptr;
      const long long v = std::strtoll(e, &end, 10);
      if (end == e || *end != '\0' || v < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LLMT_XENT_CHUNK_ROWS='", e, "': expected a row count >= 0 (0 = no chunking)"));
      }
      o.xent_chunk_rows = v;
    }
  }
  if (o.wgrad_stream < 0) {
    ASSIGN_OR_RETURN(const bool on, ParseWgradStream(std::getenv("LLMT_WGRAD_STREAM")));
    o.wgrad_stream = on ? 1 : 0;
  }
  if (o.xent_overlap_chunks < 0) {
    ASSIGN_OR_RETURN(const XentOverlap x, ParseXentOverlap(std::getenv("LLMT_XENT_OVERLAP")));
    o.xent_overlap_chunks = x.chunks;
    o.xent_overlap_sms = x.sms;
  }
  if (o.xent_overlap_chunks == 1 || o.xent_overlap_sms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaModelOptions: xent_overlap_chunks ", o.xent_overlap_chunks,
                     " / xent_overlap_sms ", o.xent_overlap_sms,
                     ": the chunks must be 0 (off) or >= 2, the SMs >= 0"));
  }
  if (o.xent_overlap_chunks > 1 && o.xent_chunk_rows > 0) {
    return absl::InvalidArgumentError(
        "LLMT_XENT_OVERLAP and LLMT_XENT_CHUNK_ROWS (xent_overlap_chunks, xent_chunk_rows) "
        "exclude each other: both split the classifier into chunks");
  }
  if (cu::DeviceCount() == 0) {
    return absl::FailedPreconditionError(
        "train.device: cuda, but no CUDA device is visible (no GPU or no driver); use "
        "train.device: cpu");
  }
  std::unique_ptr<CudaModel> m;
  absl::Status st;
  if (opts.precision == Precision::kBf16) {
    auto impl = std::make_unique<CudaModelImpl<bf16>>(cfg, B, T, o);
    st = impl->Init();
    m = std::move(impl);
  } else {
    auto impl = std::make_unique<CudaModelImpl<float>>(cfg, B, T, o);
    st = impl->Init();
    m = std::move(impl);
  }
  if (!st.ok()) return st;
  return m;
}

}  // namespace llmt::model
