// Whole-model checks: finite-difference gradients for both families, gradient
// accumulation, partial batches, and Create() validation.
#include "worker/model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace llmt::model {
namespace {

ModelConfig TinyConfig(Family family) {
  ModelConfig c;
  c.family = family;
  c.vocab_size = 23;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = family == Family::kLlama ? 2 : 4;  // GQA for llama
  c.d_ff = family == Family::kLlama ? 24 : 64;
  c.max_seq_len = 8;
  c.init_std = 0.3f;  // large enough that every nonlinearity matters
  return c;
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(rng() % vocab);
  return v;
}

// Perturbs norm weights / biases away from 1 / 0 so their gradients are
// exercised in a generic point.
void Jitter(Model* m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.2f);
  for (const ParamInfo& p : m->params_info()) {
    if (p.decay) continue;
    for (int64_t i = 0; i < p.numel; ++i) m->params()[p.offset + i] += nd(rng);
  }
}

class ModelGradTest : public ::testing::TestWithParam<Family> {};

TEST_P(ModelGradTest, FiniteDifferencesPerTensor) {
  const int B = 2, T = 6;
  auto m_or = Model::Create(TinyConfig(GetParam()), B, T);
  ASSERT_TRUE(m_or.ok()) << m_or.status();
  Model& m = **m_or;
  m.InitWeights(7);
  Jitter(&m, 11);
  const auto in = RandomTokens(B * T, 23, 1), tg = RandomTokens(B * T, 23, 2);
  m.ZeroGrad();
  m.Forward(in.data(), tg.data(), B, T);
  m.Backward(1.f);
  const std::vector<float> g(m.grads(), m.grads() + m.num_params());
  float* p = m.params();
  std::mt19937 rng(3);
  std::normal_distribution<double> nd;
  // Central differences of the float model along two unit directions per
  // tensor: the gradient's own direction (checks its magnitude) and a random
  // one (checks its direction). Float loss noise is ~1e-6, so h = 3e-3 along
  // a unit vector keeps FD noise well under the 0.3% tolerance (observed <= 0.05%).
  const double h = 3e-3;
  for (const ParamInfo& info : m.params_info()) {
    double gnorm = 0;
    for (int64_t i = 0; i < info.numel; ++i) {
      gnorm += double(g[info.offset + i]) * g[info.offset + i];
    }
    gnorm = std::sqrt(gnorm);
    ASSERT_GT(gnorm, 1e-6) << info.name << " has no gradient";
    for (int dir = 0; dir < 2; ++dir) {
      std::vector<double> d(info.numel);
      double dn = 0;
      for (int64_t i = 0; i < info.numel; ++i) {
        d[i] = dir == 0 ? g[info.offset + i] : nd(rng);
        dn += d[i] * d[i];
      }
      dn = std::sqrt(dn);
      double gd = 0;
      for (int64_t i = 0; i < info.numel; ++i) {
        d[i] /= dn;
        gd += d[i] * g[info.offset + i];
      }
      std::vector<float> saved(p + info.offset, p + info.offset + info.numel);
      for (int64_t i = 0; i < info.numel; ++i) p[info.offset + i] = saved[i] + float(h * d[i]);
      const double lp = m.Forward(in.data(), tg.data(), B, T);
      for (int64_t i = 0; i < info.numel; ++i) p[info.offset + i] = saved[i] - float(h * d[i]);
      const double lm = m.Forward(in.data(), tg.data(), B, T);
      std::copy(saved.begin(), saved.end(), p + info.offset);
      const double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(fd, gd, 3e-3 * gnorm + 1e-4)
          << info.name << (dir == 0 ? " (gradient direction)" : " (random direction)");
    }
  }
}

TEST_P(ModelGradTest, GradientAccumulationMatchesFullBatch) {
  const int B = 4, T = 8;
  auto full = *Model::Create(TinyConfig(GetParam()), B, T);
  auto half = *Model::Create(TinyConfig(GetParam()), B, T);
  full->InitWeights(5);
  half->InitWeights(5);
  const auto in = RandomTokens(B * T, 23, 8), tg = RandomTokens(B * T, 23, 9);
  full->ZeroGrad();
  const float loss = full->Forward(in.data(), tg.data(), B, T);
  full->Backward(1.f);
  half->ZeroGrad();
  const int hb = B / 2;
  const float l1 = half->Forward(in.data(), tg.data(), hb, T);
  half->Backward(0.5f);
  const float l2 = half->Forward(in.data() + hb * T, tg.data() + hb * T, hb, T);
  half->Backward(0.5f);
  EXPECT_NEAR(0.5f * (l1 + l2), loss, 1e-5f);
  double num = 0, den = 0;
  for (int64_t i = 0; i < full->num_params(); ++i) {
    const double d = double(full->grads()[i]) - half->grads()[i];
    num += d * d;
    den += double(full->grads()[i]) * full->grads()[i];
  }
  EXPECT_GT(den, 0);
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

// The grad-ready hook (data parallel overlaps its all-reduce with the rest of
// backward) must report disjoint ranges covering the buffer, each already
// holding its final values when reported, and one block per call.
TEST_P(ModelGradTest, GradReadyHookReportsFinalDisjointRanges) {
  const int B = 2, T = 6;
  auto m_or = Model::Create(TinyConfig(GetParam()), B, T);
  ASSERT_TRUE(m_or.ok()) << m_or.status();
  Model& m = **m_or;
  m.InitWeights(3);
  const auto in = RandomTokens(B * T, 23, 5), tg = RandomTokens(B * T, 23, 6);
  struct Seen {
    int64_t offset, count;
    std::vector<float> values;
  };
  std::vector<Seen> seen;
  m.SetGradReadyHook([&](int64_t offset, int64_t count) {
    seen.push_back({offset, count, std::vector<float>(m.grads() + offset,
                                                      m.grads() + offset + count)});
  });
  m.ZeroGrad();
  m.Forward(in.data(), tg.data(), B, T);
  m.Backward(0.5f);
  m.SetGradReadyHook(nullptr);
  // final norm (+ lm_head), one per block, embeddings
  ASSERT_EQ(seen.size(), 2u + 2u);
  std::vector<int> covered(m.num_params(), 0);
  for (const Seen& r : seen) {
    for (int64_t i = 0; i < r.count; ++i) {
      ++covered[r.offset + i];
      // Bit-equal: nothing may touch a reported range afterwards.
      ASSERT_EQ(r.values[i], m.grads()[r.offset + i]) << "range at " << r.offset << " changed";
    }
  }
  for (int64_t i = 0; i < m.num_params(); ++i) ASSERT_EQ(covered[i], 1) << "element " << i;
  // Block ranges come last block first.
  EXPECT_GT(seen[1].offset, seen[2].offset);
  EXPECT_EQ(seen[3].offset, 0);
  // The hook is off again: another Backward reports nothing.
  seen.clear();
  m.Forward(in.data(), tg.data(), B, T);
  m.Backward(0.5f);
  EXPECT_TRUE(seen.empty());
}

TEST_P(ModelGradTest, PartialBatchAndLogitsOnlyForward) {
  const int B = 3, T = 8;
  auto m = *Model::Create(TinyConfig(GetParam()), B, T);
  m->InitWeights(2);
  const auto in = RandomTokens(B * T, 23, 4);
  // Logits of a shorter, smaller batch equal the leading rows of the full one
  // (causal attention: positions never see the future).
  m->Forward(in.data(), nullptr, B, T);
  const int V = 23;
  std::vector<float> full(m->logits(), m->logits() + B * T * V);
  std::vector<int32_t> sub(in.begin(), in.begin() + 5);
  EXPECT_EQ(m->Forward(sub.data(), nullptr, 1, 5), 0.f);
  for (int i = 0; i < 5 * V; ++i) ASSERT_NEAR(m->logits()[i], full[i], 1e-5f) << i;
  // The loss of a forward with targets is the mean CE of those logits.
  const auto tg = RandomTokens(B * T, 23, 5);
  double ce = 0;
  for (int r = 0; r < B * T; ++r) {
    const float* row = full.data() + r * V;
    double mx = row[0], s = 0;
    for (int j = 0; j < V; ++j) mx = std::max<double>(mx, row[j]);
    for (int j = 0; j < V; ++j) s += std::exp(row[j] - mx);
    ce += std::log(s) + mx - row[tg[r]];
  }
  EXPECT_NEAR(m->Forward(in.data(), tg.data(), B, T), ce / (B * T), 1e-5);
  // Out-of-vocabulary ids are rejected (NaN loss), not read out of bounds.
  std::vector<int32_t> bad = in;
  bad[3] = 23;
  EXPECT_TRUE(std::isnan(m->Forward(bad.data(), tg.data(), B, T)));
}

INSTANTIATE_TEST_SUITE_P(Families, ModelGradTest,
                         ::testing::Values(Family::kGpt2, Family::kLlama),
                         [](const auto& info) {
                           return std::string(info.param == Family::kGpt2 ? "gpt2" : "llama");
                         });

// GPT-2's QKV bias gradient, two identities the CUDA backend's
// LLMT_BIAS_GRAD=qv relies on: (1) adding one vector b to every key adds q.b
// to all of a query's scores, which softmax ignores, so the key third is
// zero -- up to float rounding; (2) every softmax row sums to 1, so the
// value third (the column sums of dV = P^T dO) is the column sums of dO,
// the attention output's gradient dres W_out^T: W_out times the attention
// projection's bias gradient (the column sums of dres). Bounds: 1e-5 of
// the tensor's largest magnitude (float noise here is ~1e-7 of it).
TEST(ModelTest, QkvBiasGradientIdentities) {
  const int B = 2, T = 8;
  auto m = *Model::Create(TinyConfig(Family::kGpt2), B, T);
  m->InitWeights(13);
  Jitter(m.get(), 17);
  const auto in = RandomTokens(B * T, 23, 4), tg = RandomTokens(B * T, 23, 5);
  m->ZeroGrad();
  m->Forward(in.data(), tg.data(), B, T);
  m->Backward(1.f);
  const int64_t C = 16;
  auto find = [&](const std::string& name) -> const ParamInfo* {
    for (const ParamInfo& p : m->params_info()) {
      if (p.name == name) return &p;
    }
    ADD_FAILURE() << "no parameter " << name;
    return nullptr;
  };
  for (int l = 0; l < 2; ++l) {
    const std::string h = "h." + std::to_string(l) + ".attn.";
    const ParamInfo* qkv_b = find(h + "c_attn.bias");
    const ParamInfo* proj_w = find(h + "c_proj.weight");
    const ParamInfo* proj_b = find(h + "c_proj.bias");
    ASSERT_TRUE(qkv_b && proj_w && proj_b);
    ASSERT_EQ(qkv_b->numel, 3 * C);
    const float* g = m->grads() + qkv_b->offset;
    const float* gb = m->grads() + proj_b->offset;
    const float* w = m->params() + proj_w->offset;  // [C in, C out]
    double scale = 0, k = 0, vdiff = 0;
    for (int64_t i = 0; i < 3 * C; ++i) scale = std::max(scale, std::fabs(double(g[i])));
    for (int64_t i = 0; i < C; ++i) {
      k = std::max(k, std::fabs(double(g[C + i])));
      double v = 0;
      for (int64_t j = 0; j < C; ++j) v += double(w[i * C + j]) * gb[j];
      vdiff = std::max(vdiff, std::fabs(v - g[2 * C + i]));
    }
    EXPECT_GT(scale, 1e-3) << h << ": the QKV bias gradient vanishes";
    EXPECT_LE(k, 1e-5 * scale) << h << ": key bias gradient is not zero";
    EXPECT_LE(vdiff, 1e-5 * scale) << h << ": value bias gradient is not W_out dbias_out";
  }
}

TEST(ModelTest, ParamCountsAndNames) {
  // GPT-2 124M with the padded vocabulary (HF: 124,439,808 at vocab 50257).
  ModelConfig c;
  c.family = Family::kGpt2;
  c.vocab_size = 50304;
  c.d_model = 768;
  c.n_layer = 12;
  c.n_head = 12;
  c.d_ff = 3072;
  c.max_seq_len = 1024;
  auto m = *Model::Create(c, 1, 4);
  EXPECT_EQ(m->num_params(), 124439808 + (50304 - 50257) * 768);
  EXPECT_EQ(m->params_info().front().name, "wte.weight");
  EXPECT_EQ(m->params_info()[4].name, "h.0.attn.c_attn.weight");
  EXPECT_EQ(m->params_info()[4].shape, (std::vector<int64_t>{768, 2304}));
  EXPECT_NEAR(m->flops_per_token(64), 6.0 * m->num_params() + 6.0 * 12 * 768 * 64, 1);

  ModelConfig l = TinyConfig(Family::kLlama);
  auto lm = *Model::Create(l, 1, 4);
  const int C = 16, kvd = 8, F = 24, V = 23;
  const int64_t per_layer = C + C * C + 2 * kvd * C + C * C + C + 3 * F * C;
  EXPECT_EQ(lm->num_params(), V * C + 2 * per_layer + C + V * C);
  int64_t sum = 0, decayed = 0;
  for (const ParamInfo& p : lm->params_info()) {
    EXPECT_EQ(p.offset, sum) << p.name;
    sum += p.numel;
    decayed += p.decay ? p.numel : 0;
  }
  EXPECT_EQ(sum, lm->num_params());
  EXPECT_EQ(decayed, lm->num_params() - 2 * 2 * C - C);  // all but the norms
  EXPECT_EQ(lm->params_info().back().name, "lm_head.weight");
  EXPECT_EQ(lm->params_info()[3].name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(lm->params_info()[3].shape, (std::vector<int64_t>{kvd, C}));
}

TEST(ModelTest, InitIsDeterministicAndScaled) {
  ModelConfig c = TinyConfig(Family::kGpt2);
  c.init_std = 0.02f;
  c.d_model = 64;
  c.d_ff = 256;
  auto a = *Model::Create(c, 1, 4);
  auto b = *Model::Create(c, 1, 4);
  a->InitWeights(42);
  b->InitWeights(42);
  for (int64_t i = 0; i < a->num_params(); ++i) ASSERT_EQ(a->params()[i], b->params()[i]);
  b->InitWeights(43);
  EXPECT_NE(a->params()[0], b->params()[0]);
  for (const ParamInfo& p : a->params_info()) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      s += a->params()[p.offset + i];
      s2 += double(a->params()[p.offset + i]) * a->params()[p.offset + i];
    }
    const double mean = s / p.numel, sd = std::sqrt(s2 / p.numel - mean * mean);
    if (p.name.find("ln_") != std::string::npos) {
      EXPECT_EQ(mean, p.name.find(".bias") != std::string::npos ? 0.0 : 1.0) << p.name;
    } else if (p.name.find("c_proj.weight") != std::string::npos) {
      EXPECT_NEAR(sd, 0.02 / std::sqrt(2.0 * c.n_layer), 0.002) << p.name;
    } else if (p.name.find(".weight") != std::string::npos) {
      EXPECT_NEAR(sd, 0.02, 0.002) << p.name;
    }
  }
}

TEST(ModelTest, CreateValidationNamesTheField) {
  struct Case {
    void (*mutate)(ModelConfig&);
    int B, T;
    std::string expect;
  };
  const Case cases[] = {
      {[](ModelConfig& c) { c.d_model = 18; }, 1, 4, "model.n_head"},
      {[](ModelConfig& c) { c.n_head = 0; }, 1, 4, "model.n_head"},
      {[](ModelConfig& c) { c.n_kv_head = 3; }, 1, 4, "model.n_kv_head"},
      {[](ModelConfig& c) { c.vocab_size = 0; }, 1, 4, "model.vocab_size"},
      {[](ModelConfig& c) { c.d_ff = -1; }, 1, 4, "model.d_ff"},
      {[](ModelConfig& c) { c.n_layer = 0; }, 1, 4, "model.n_layer"},
      {[](ModelConfig& c) {}, 1, 9, "model.max_seq_len"},
      {[](ModelConfig& c) {}, 0, 4, "batch size"},
      {[](ModelConfig& c) { c.family = Family::kGpt2; c.n_kv_head = 2; }, 1, 4, "model.n_kv_head"},
  };
  for (const Case& tc : cases) {
    ModelConfig c = TinyConfig(Family::kLlama);
    tc.mutate(c);
    auto m = Model::Create(c, tc.B, tc.T);
    ASSERT_FALSE(m.ok()) << tc.expect;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(m.status().message()).find(tc.expect), std::string::npos)
        << m.status();
  }
  ModelConfig ok = TinyConfig(Family::kLlama);
  ok.n_kv_head = 0;  // defaults to n_head
  EXPECT_TRUE(Model::Create(ok, 1, 8).ok());
}

}  // namespace
}  // namespace llmt::model
