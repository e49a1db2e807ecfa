// Autoregressive sampling with temperature, top-k and nucleus (top-p)
// filtering. No KV cache: each token reruns the forward pass over the last
// max_seq_len tokens, which is fine for the CPU demo's sample sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "worker/model/model.h"

namespace llmt::train {

struct SampleOptions {
  int max_tokens = 100;
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;
  int vocab_limit = 0;       // sample only ids < vocab_limit (the tokenizer's size); 0 = all
  int stop_token = -1;       // stop after emitting this id (EOS); -1 = never
};

// Returns the generated ids (without the prompt). The model must have been
// created with B >= 1 and T >= 1.
std::vector<int32_t> Sample(model::Model& m, const std::vector<int32_t>& prompt,
                            const SampleOptions& opts, int max_context);

}  // namespace llmt::train
