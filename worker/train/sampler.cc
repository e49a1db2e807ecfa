#include "worker/train/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace llmt::train {

std::vector<int32_t> Sample(model::Model& m, const std::vector<int32_t>& prompt,
                            const SampleOptions& opts, int max_context) {
  const int V = m.config().vocab_size;
  const int limit = opts.vocab_limit > 0 ? std::min(opts.vocab_limit, V) : V;
  std::mt19937_64 rng(opts.seed);
  std::vector<int32_t> ctx = prompt;
  std::vector<int32_t> out;
  std::vector<float> probs(limit);
  std::vector<int> idx(limit);
  for (int n = 0; n < opts.max_tokens; ++n) {
    const int t = std::min<int>(static_cast<int>(ctx.size()), max_context);
    const int32_t* window = ctx.data() + ctx.size() - t;
    m.Forward(window, nullptr, 1, t);
    const float* logits = m.logits() + static_cast<size_t>(t - 1) * V;
    int next = 0;
    if (opts.temperature <= 0) {
      next = static_cast<int>(std::max_element(logits, logits + limit) - logits);
    } else {
      // Softmax with temperature over the candidate set.
      float mx = *std::max_element(logits, logits + limit);
      double z = 0;
      for (int i = 0; i < limit; ++i) {
        probs[i] = std::exp((logits[i] - mx) / opts.temperature);
        z += probs[i];
      }
      for (int i = 0; i < limit; ++i) probs[i] = static_cast<float>(probs[i] / z);
      std::iota(idx.begin(), idx.end(), 0);
      std::sort(idx.begin(), idx.end(), [&](int a, int b) { return probs[a] > probs[b]; });
      int keep = limit;
      if (opts.top_k > 0) keep = std::min(keep, opts.top_k);
      if (opts.top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < keep; ++i) {
          cum += probs[idx[i]];
          if (cum >= opts.top_p) {
            keep = i + 1;
            break;
          }
        }
      }
      double mass = 0;
      for (int i = 0; i < keep; ++i) mass += probs[idx[i]];
      std::uniform_real_distribution<double> u(0.0, mass);
      double r = u(rng), cum = 0;
      next = idx[keep - 1];
      for (int i = 0; i < keep; ++i) {
        cum += probs[idx[i]];
        if (r < cum) {
          next = idx[i];
          break;
        }
      }
    }
    out.push_back(next);
    ctx.push_back(next);
    if (next == opts.stop_token) break;
  }
  return out;
}

}  // namespace llmt::train
