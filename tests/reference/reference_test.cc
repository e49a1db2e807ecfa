// Drives tests/reference/torch_reference.py: the engine writes its initial
// weights (storage/safetensors, HF names), a batch, its logits/loss/gradients
// and ten AdamW steps' losses; the script rebuilds the model in plain PyTorch
// and compares (see the script for norms and tolerances).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/optimizer.h"
#include "storage/safetensors.h"
#include "worker/model/model.h"

namespace llmt {
namespace {

using model::Family;
using model::Model;
using model::ModelConfig;
using model::ParamInfo;

constexpr char kPython[] = "/usr/bin/python3";

// Runs a shell command, returns (exit code, combined output).
std::pair<int, std::string> RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

struct Batch {
  std::vector<int32_t> in, tg;
};

std::string Json2D(const std::vector<int32_t>& v, int B, int T) {
  std::vector<std::string> rows;
  for (int b = 0; b < B; ++b) {
    rows.push_back(absl::StrCat(
        "[", absl::StrJoin(v.begin() + b * T, v.begin() + (b + 1) * T, ","), "]"));
  }
  return absl::StrCat("[", absl::StrJoin(rows, ","), "]");
}

class ReferenceTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override {
    auto [rc, out] = RunCommand(absl::StrCat(kPython, " -c 'import torch'"));
    if (rc != 0) GTEST_SKIP() << kPython << " cannot import torch: " << out;
  }
};

TEST_P(ReferenceTest, MatchesPyTorch) {
  const bool gpt2 = GetParam() == Family::kGpt2;
  ModelConfig cfg;
  cfg.family = GetParam();
  cfg.vocab_size = 37;
  cfg.d_model = 32;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.n_kv_head = gpt2 ? 4 : 2;
  cfg.d_ff = gpt2 ? 128 : 48;
  cfg.max_seq_len = 16;
  cfg.init_std = 0.1f;
  const int B = 2, T = 12, kSteps = 10;
  auto m_or = Model::Create(cfg, B, T);
  ASSERT_TRUE(m_or.ok()) << m_or.status();
  Model& m = **m_or;
  m.InitWeights(1234);
  // Move norm weights / biases off 1 / 0 so the reference sees generic values.
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0.f, 0.1f);
  for (const ParamInfo& p : m.params_info()) {
    if (!p.decay) {
      for (int64_t i = 0; i < p.numel; ++i) m.params()[p.offset + i] += nd(rng);
    }
  }
  const std::vector<float> initial(m.params(), m.params() + m.num_params());
  std::vector<Batch> batches(kSteps);
  for (Batch& b : batches) {
    for (int i = 0; i < B * T; ++i) {
      b.in.push_back(static_cast<int32_t>(rng() % cfg.vocab_size));
      // A learnable next-token rule, so ten AdamW steps visibly reduce the loss.
      b.tg.push_back((b.in.back() * 7 + 3) % cfg.vocab_size);
    }
  }

  const std::string dir = absl::StrCat(::testing::TempDir(), "/llmt_reference_",
                                       gpt2 ? "gpt2_" : "llama_", getpid());
  ASSERT_EQ(std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str()), 0);
  std::vector<storage::TensorRef> weights;
  for (const ParamInfo& p : m.params_info()) {
    weights.push_back({p.name, p.shape, m.params() + p.offset});
  }
  ASSERT_TRUE(storage::WriteSafetensors(dir + "/model.safetensors", weights,
                                        {{"format", "pt"}}).ok());
  // The file reads back bit-exactly.
  auto back = storage::ReadSafetensors(dir + "/model.safetensors");
  ASSERT_TRUE(back.ok()) << back.status();
  for (const ParamInfo& p : m.params_info()) {
    const storage::Tensor& t = back->tensors.at(p.name);
    ASSERT_EQ(t.shape, p.shape);
    ASSERT_EQ(0, std::memcmp(t.data.data(), m.params() + p.offset, 4 * p.numel)) << p.name;
  }

  // Logits, loss and gradients on batch 0.
  m.Forward(batches[0].in.data(), nullptr, B, T);
  const std::vector<float> logits(m.logits(), m.logits() + B * T * cfg.vocab_size);
  m.ZeroGrad();
  const float loss = m.Forward(batches[0].in.data(), batches[0].tg.data(), B, T);
  m.Backward(1.f);
  std::vector<storage::TensorRef> outs = {
      {"logits", {B, T, cfg.vocab_size}, logits.data()}};
  for (const ParamInfo& p : m.params_info()) {
    outs.push_back({"grad." + p.name, p.shape, m.grads() + p.offset});
  }
  ASSERT_TRUE(storage::WriteSafetensors(dir + "/outputs.safetensors", outs).ok());

  // Ten AdamW steps from the same initial weights, no-decay on norms/biases.
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  std::copy(initial.begin(), initial.end(), m.params());
  std::vector<float> mom(m.num_params(), 0.f), var(m.num_params(), 0.f);
  std::vector<std::string> losses;
  for (int step = 1; step <= kSteps; ++step) {
    const Batch& b = batches[step - 1];
    m.ZeroGrad();
    losses.push_back(absl::StrFormat("%.9g", m.Forward(b.in.data(), b.tg.data(), B, T)));
    m.Backward(1.f);
    for (const ParamInfo& p : m.params_info()) {
      kernels::cpu::AdamW(m.params() + p.offset, m.grads() + p.offset, mom.data() + p.offset,
                          var.data() + p.offset, p.numel, lr, b1, b2, eps, p.decay ? wd : 0.f,
                          step);
    }
  }

  std::vector<std::string> params, ins, tgs;
  for (const ParamInfo& p : m.params_info()) {
    params.push_back(absl::StrCat("{\"name\":\"", p.name, "\",\"shape\":[",
                                  absl::StrJoin(p.shape, ","), "],\"decay\":",
                                  p.decay ? "true" : "false", "}"));
  }
  for (const Batch& b : batches) {
    ins.push_back(Json2D(b.in, B, T));
    tgs.push_back(Json2D(b.tg, B, T));
  }
  std::ofstream(dir + "/case.json") << absl::StrCat(
      "{\"config\":{\"family\":\"", gpt2 ? "gpt2" : "llama", "\",\"vocab_size\":", cfg.vocab_size,
      ",\"d_model\":", cfg.d_model, ",\"n_layer\":", cfg.n_layer, ",\"n_head\":", cfg.n_head,
      ",\"n_kv_head\":", cfg.n_kv_head, ",\"d_ff\":", cfg.d_ff,
      ",\"norm_eps\":", absl::StrFormat("%.9g", cfg.norm_eps),
      ",\"rope_theta\":", absl::StrFormat("%.9g", cfg.rope_theta), "},\"params\":[",
      absl::StrJoin(params, ","), "],\"inputs\":[", absl::StrJoin(ins, ","), "],\"targets\":[",
      absl::StrJoin(tgs, ","), "],\"loss\":", absl::StrFormat("%.9g", loss),
      ",\"adamw\":{\"lr\":", absl::StrFormat("%.9g", lr), ",\"beta1\":",
      absl::StrFormat("%.9g", b1), ",\"beta2\":", absl::StrFormat("%.9g", b2),
      ",\"eps\":", absl::StrFormat("%.9g", eps), ",\"weight_decay\":",
      absl::StrFormat("%.9g", wd), "},\"adamw_losses\":[", absl::StrJoin(losses, ","), "]}");

  const std::string script = std::string(LLMT_SOURCE_DIR) + "/tests/reference/torch_reference.py";
  auto [rc, out] = RunCommand(absl::StrCat(kPython, " '", script, "' '", dir, "'"));
  std::printf("%s", out.c_str());
  EXPECT_EQ(rc, 0) << "torch_reference.py failed (output above)";
  EXPECT_NE(out.find("REFERENCE OK"), std::string::npos);
  if (rc == 0) std::system(("rm -rf '" + dir + "'").c_str());
}

INSTANTIATE_TEST_SUITE_P(Families, ReferenceTest, ::testing::Values(Family::kGpt2, Family::kLlama),
                         [](const auto& info) {
                           return std::string(info.param == Family::kGpt2 ? "gpt2" : "llama");
                         });

}  // namespace
}  // namespace llmt
