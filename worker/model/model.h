// Decoder-only transformer (gpt2 and llama families) with explicit forward and
// backward passes on the CPU backend. Parameters and gradients live in one flat
// fp32 buffer each (so a collective can all-reduce a bucket at a time and the
// optimizer runs one loop); activations live in one planned arena sized for
// (B, T) at Create time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::model {

enum class Family { kGpt2, kLlama };

struct ModelConfig {
  Family family = Family::kGpt2;
  int vocab_size = 0;
  int d_model = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_kv_head = 0;  // == n_head for gpt2
  int d_ff = 0;
  int max_seq_len = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  float init_std = 0.02f;
};

// One named parameter tensor inside the flat buffer. Names are Hugging Face's
// (gpt2: "wte.weight", "h.0.attn.c_attn.weight", ...; llama:
// "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", ...)
// and shapes/layouts are HF's too, so model.safetensors loads in transformers.
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in floats, into params()/grads()
  int64_t numel = 0;
  bool decay = true;   // false for norms and biases (no weight decay)
};

// Validates `cfg` for batch B x sequence T (names the bad field) and fills
// defaults (n_kv_head = n_head when 0). Shared by the CPU and CUDA models.
absl::Status ValidateConfig(ModelConfig* cfg, int B, int T);

// Offsets (floats, into the flat parameter buffer) of one block's tensors;
// -1 where the family has none. llama's q/k/v (and gate/up) are consecutive,
// so qkv_w (fc_w) addresses the stacked [out, in] matrix.
struct LayerParams {
  int64_t ln1_w = -1, ln1_b = -1;
  int64_t qkv_w = -1, qkv_b = -1;
  int64_t attn_out_w = -1, attn_out_b = -1;
  int64_t ln2_w = -1, ln2_b = -1;
  int64_t fc_w = -1, fc_b = -1;
  int64_t proj_w = -1, proj_b = -1;
};

// The flat parameter layout (HF names, shapes and layouts). Both backends use
// this one function, so a checkpoint written by either loads in the other.
struct ParamLayout {
  std::vector<ParamInfo> info;
  int64_t num_params = 0;
  int64_t wte = -1, wpe = -1, lnf_w = -1, lnf_b = -1, lm_head = -1;  // lm_head == wte for gpt2
  std::vector<LayerParams> layers;

  // A contiguous range of the flat buffer: [offset, offset + count).
  struct Range {
    int64_t offset = 0, count = 0;
  };
  // The ranges a grad-ready hook reports, in the order the backward finishes
  // them: [0] everything after the last block (final norm, untied lm_head),
  // [1 + i] block L-1-i, [L + 1] the embeddings (tied lm_head included).
  // Relies on the layout embeddings | block 0 | ... | block L-1 | rest.
  std::vector<Range> GradReadyRanges() const;
};
ParamLayout BuildParamLayout(const ModelConfig& cfg);

// Deterministic init from `seed` into params[num_params] (host memory):
// normal(0, init_std), residual projections scaled by 1/sqrt(2*n_layer),
// norms = 1, biases = 0. Counter-based, so independent of thread count.
void InitParams(const ModelConfig& cfg, const std::vector<ParamInfo>& info, uint64_t seed,
                float* params);

// Training FLOPs per token: 6*N + 6*L*d_model*T.
double TrainFlopsPerToken(const ModelConfig& cfg, int64_t num_params, int T);

class Model {
 public:
  virtual ~Model() = default;

  // Validates the config (names the bad field) and allocates parameters,
  // gradients and an activation arena for batch B and sequence length T.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& cfg, int B, int T);

  virtual const ModelConfig& config() const = 0;
  virtual int64_t num_params() const = 0;
  // Training FLOPs per token: 6*N (N = all params incl. embeddings) + 6*L*d_model*T (attention).
  virtual double flops_per_token(int T) const = 0;
  virtual const std::vector<ParamInfo>& params_info() const = 0;
  virtual float* params() = 0;
  virtual float* grads() = 0;
  virtual int64_t activation_bytes() const = 0;

  // Deterministic init from `seed` (normal(0, init_std), residual projections
  // scaled by 1/sqrt(2*n_layer), norms = 1, biases = 0).
  virtual void InitWeights(uint64_t seed) = 0;

  // inputs/targets: [B, T] token ids, b <= B and t <= T of the Create sizes.
  // With targets: returns the mean cross-entropy over b*t positions.
  // Without (nullptr): returns 0 and leaves logits() valid.
  virtual float Forward(const int32_t* inputs, const int32_t* targets, int b, int t) = 0;
  // Logits [b, t, vocab] of the last Forward (only valid when it had no targets,
  // because the fused classifier overwrites them with gradients).
  virtual const float* logits() const = 0;
  // Backward of the last Forward with targets. Gradients are ACCUMULATED into
  // grads() (+=) scaled by `loss_scale` (1/grad_accum_steps), so call
  // ZeroGrad() once per optimizer step.
  virtual void Backward(float loss_scale) = 0;
  virtual void ZeroGrad() = 0;

  // Called during Backward each time a contiguous range [offset, offset +
  // count) of grads() will receive nothing more from that Backward call: one
  // block's parameters right after the block's backward, the final norm (and
  // an untied lm_head) after the classifier, the embeddings at the end. Data
  // parallelism uses it to all-reduce a range while backward goes on. The
  // ranges of one call are disjoint and cover the whole buffer. Empty = off.
  using GradReadyHook = std::function<void(int64_t offset, int64_t count)>;
  virtual void SetGradReadyHook(GradReadyHook hook) = 0;
};

}  // namespace llmt::model
