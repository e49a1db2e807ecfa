// The transformer (gpt2 and llama families) on one NVIDIA GPU, built from
// kernels/cuda. Same parameter layout, initialisation and checkpoint files as
// the CPU model (model.h: BuildParamLayout / InitParams), so a run can move
// between backends.
//
// Precision:
//   kFp32  everything fp32 (true fp32 GEMMs, no TF32): the GPU tests compare
//          logits, loss and gradients with the CPU backend.
//   kBf16  mixed precision as in llm.c / PyTorch autocast: bf16 parameter
//          copy and activations, fp32 accumulation in every GEMM and
//          reduction, fp32 gradients (accumulated across micro-steps in
//          fp32), fp32 master weights and AdamW moments. AdamW writes the
//          fp32 master and the bf16 copy in one pass (optionally with
//          stochastic rounding).
//
// Everything runs asynchronously on one stream (with the A/B options
// wgrad_stream and xent_overlap_chunks, beside a second or third one that
// the main stream joins before anything reads their results); only
// TakeLoss, Forward (with targets), GradNorm and the host copies
// synchronise. Device memory is allocated once at Create (parameters,
// gradients, optimizer state, one activation arena, workspaces), so a step
// never allocates and an out-of-memory can only happen at start, with a
// message naming the buffer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/model.h"

namespace llmt::model {

enum class Precision { kFp32, kBf16 };
enum class Recompute {
  kNone,      // keep every activation the backward needs
  kGelu,      // keep the MLP's pre-activation only; recompute GELU/SwiGLU in backward
  kNormGelu,  // also recompute both LayerNorm/RMSNorm outputs from the residual stream
};

// "fp32"/"bf16"; "none"/"gelu"/"norm_gelu". Errors name the spec field.
absl::StatusOr<Precision> ParsePrecision(const std::string& s);
absl::StatusOr<Recompute> ParseRecompute(const std::string& s);

struct CudaModelOptions {
  int device = 0;  // CUDA device index
  Precision precision = Precision::kBf16;
  Recompute recompute = Recompute::kNone;
  bool stochastic_rounding = false;  // of the bf16 parameter copy
  // Classifier in row chunks: > 0 runs the logits GEMM and the fused
  // cross-entropy chunk by chunk (this many rows each), so that each chunk's
  // logits are still in L2 when the cross-entropy reads and rewrites them
  // (A/B option, measured slower on an H100 for GPT-2 124M: 0.92-0.99x; the
  // backward GEMMs stay whole). 0 = one GEMM for the whole
  // micro-batch; -1 (the default) = from LLMT_XENT_CHUNK_ROWS, else 0.
  int64_t xent_chunk_rows = -1;
  // Weight gradients on a second stream: each linear layer's dW GEMM (and
  // bias-gradient pass) runs on a lower-priority stream of its own, beside
  // the main stream's data-gradient chain, so that it fills the SMs that
  // the chain's memory-bound kernels and GEMM tails leave idle. Results are
  // bit-identical to the one-stream backward (the same GEMMs; each output
  // has one writer). A/B option, not yet run on a GPU. 1 on, 0 off, -1
  // (the default) = from LLMT_WGRAD_STREAM (ParseWgradStream), else off.
  int wgrad_stream = -1;
  // The classifier's cross-entropy beside its logits GEMM: > 1 splits the
  // micro-batch's rows into this many chunks; chunk i's cross-entropy (on a
  // stream of its own, its grid capped to 2 blocks per SM of
  // xent_overlap_sms) runs while the GEMM of chunk i + 1 (told by cuBLASLt's
  // SM count target to leave those SMs free) computes, so that the
  // bandwidth-bound pass hides under the compute-bound one. Results are
  // those of the one-GEMM classifier (the same per-row kernel; the chunk
  // GEMMs sum each element in cuBLASLt's order for their shape). A/B option,
  // not yet run on a GPU; excludes xent_chunk_rows. 0 off, -1 (the default)
  // = from LLMT_XENT_OVERLAP (ParseXentOverlap), else off.
  int xent_overlap_chunks = -1;
  // SMs left to the cross-entropy; 0 = a quarter of the device's.
  int xent_overlap_sms = 0;
};

// LLMT_XENT_OVERLAP: unset, "", "0" or "off" -> {0, 0}; "K" (2..64 chunks)
// -> {K, 0}; "K:S" -> {K, S} (S in 1..1024 SMs for the cross-entropy).
// Anything else an error naming the variable.
struct XentOverlap {
  int chunks = 0;
  int sms = 0;
};
absl::StatusOr<XentOverlap> ParseXentOverlap(const char* env);

// LLMT_WGRAD_STREAM: unset, "", "0" or "off" -> false; "1" or "on" -> true;
// anything else an error naming the variable.
absl::StatusOr<bool> ParseWgradStream(const char* env);

struct AdamWHyper {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;        // 1-based bias-correction step
  float grad_scale = 1.f;  // e.g. clip / grad_norm (clipping fused into the update)
  uint64_t seed = 0;       // stochastic-rounding bits (vary it per step)
};

class CudaModel {
 public:
  // Validates the config like Model::Create, selects the device and
  // allocates everything for micro-batches up to B x T.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const ModelConfig& cfg, int B, int T,
                                                           const CudaModelOptions& opts);
  virtual ~CudaModel() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const CudaModelOptions& options() const = 0;
  virtual int64_t num_params() const = 0;
  virtual double flops_per_token(int T) const = 0;
  virtual const std::vector<ParamInfo>& params_info() const = 0;
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" and the per-category
  // memory table (parameters, gradients, optimizer, activations, workspace).
  virtual std::string DeviceDescription() const = 0;
  virtual std::string MemoryReport() const = 0;
  virtual int64_t device_bytes() const = 0;

  // Host <-> device copies of the fp32 master weights, the fp32 gradients
  // and the AdamW moments, all in the flat ParamInfo layout (n floats).
  // SetParams refreshes the bf16 copy (round-to-nearest).
  virtual absl::Status SetParams(const float* host) = 0;
  virtual absl::Status GetParams(float* host) = 0;
  virtual absl::Status GetGrads(float* host) = 0;
  virtual absl::Status SetOptimizerState(const float* m, const float* v) = 0;
  virtual absl::Status GetOptimizerState(float* m, float* v) = 0;
  // InitParams on the host, then SetParams: bit-identical to the CPU model.
  virtual absl::Status InitWeights(uint64_t seed) = 0;

  // One training micro-step on a full B x T batch (host token ids, checked
  // against the vocabulary): forward, fused classifier, backward. Gradients
  // are ACCUMULATED (+=) scaled by loss_scale; the micro-batch's mean loss is
  // kept on the device. Does not synchronise.
  virtual absl::Status ForwardBackward(const int32_t* inputs, const int32_t* targets,
                                       float loss_scale) = 0;
  // Mean of the losses of the ForwardBackward calls since the last TakeLoss
  // (synchronises).
  virtual absl::StatusOr<double> TakeLoss() = 0;
  // Forward only on b x t (b <= B, t <= T). With targets: the mean loss
  // (synchronises). Without: 0, and GetLogits then returns the logits.
  virtual absl::StatusOr<double> Forward(const int32_t* inputs, const int32_t* targets, int b,
                                         int t) = 0;
  // Logits [b, t, vocab] (fp32 on the host) of the last Forward without targets.
  virtual absl::Status GetLogits(float* host) = 0;

  virtual void ZeroGrad() = 0;
  // Global L2 norm of the gradients (synchronises).
  virtual absl::StatusOr<double> GradNorm() = 0;
  // Fused multi-tensor AdamW over all parameters (weight decay off for norms
  // and biases, as on the CPU); refreshes the bf16 copy in the same pass.
  virtual void AdamWStep(const AdamWHyper& h) = 0;

  // Device pointers for collectives (NCCL all-reduce of gradients, broadcast
  // of parameters). After writing master params through a collective, call
  // RefreshParamCopy.
  virtual float* device_params() = 0;
  virtual float* device_grads() = 0;
  // Re-derives the bf16 copy from the fp32 master weights. With stochastic
  // rounding on, it uses the bits of `sr_seed`: passing the seed of the AdamW
  // step that produced the weights reproduces that step's copy exactly (a
  // resumed run continues bit-identically); otherwise round-to-nearest.
  virtual void RefreshParamCopy(uint64_t sr_seed = 0) = 0;

  // Data parallelism overlapping the backward (like Model::SetGradReadyHook,
  // same ranges in the same order): called on the host as ForwardBackward
  // enqueues the backward, each time a range of device_grads() will receive
  // nothing more from that micro-step. The GPU may not have computed it yet:
  // `wait_ready` blocks until it has (call it from the thread that then reads
  // the range, e.g. a communication thread). Empty = off.
  using GradReadyHook = std::function<void(int64_t offset, int64_t count,
                                           std::function<absl::Status()> wait_ready)>;
  virtual void SetGradReadyHook(GradReadyHook hook) = 0;
  virtual absl::Status Synchronize() = 0;
};

}  // namespace llmt::model
