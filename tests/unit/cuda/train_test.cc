// GPU training end to end through the real `llmt` binary (prepare -> train
// with train.device: cuda -> checkpoints -> eval), plus an in-process run
// over a world-size-1 NCCL collective. Checks: bf16 training learns and
// checkpoints; a GPU run resumed from its checkpoint is bit-identical to a
// straight one; GPU checkpoints evaluate on the CPU and CPU checkpoints
// resume on the GPU; fp32 GPU training follows the CPU's loss curve; NCCL at
// world size 1 gives the local collective's losses. Every test skips without
// a GPU.
//
// The binary: $LLMT_BIN_DIR/llmt when set (the GPU machine runs the tests
// from a bundle, away from the build tree), else the build tree's cli/llmt,
// else an `llmt` next to this test binary.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/spec.h"
#include "kernels/cuda/runtime.cuh"
#include "storage/safetensors.h"
#include "tests/util/subprocess.h"
#include "worker/comm/store.h"
#include "worker/train/trainer.h"
#ifdef LLMT_HAVE_NCCL
#include "worker/comm/nccl_collective.h"
#endif

namespace llmt {
namespace {

using ::llmt::testing::FreshDir;
using ::llmt::testing::Lines;
using ::llmt::testing::ReadFileOrEmpty;
using ::llmt::testing::RunCommand;
using ::llmt::testing::RunResult;
using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

#define REQUIRE_GPU()                                                        \
  do {                                                                       \
    if (!::llmt::kernels::cuda::HaveGpu()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

std::string LlmtBinary() {
  if (const char* dir = std::getenv("LLMT_BIN_DIR"); dir != nullptr && *dir != '\0') {
    return std::string(dir) + "/llmt";
  }
  std::string built = ::llmt::testing::Binary("cli/llmt");
  if (fs::exists(built)) return built;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && fs::exists(self.parent_path() / "llmt")) return (self.parent_path() / "llmt").string();
  return built;  // the failure message then names the expected place
}

// A corpus with regular structure (templated sentences over small word sets)
// so a tiny model's loss falls by well over a nat within a few dozen steps.
void WriteCorpus(const std::string& dir) {
  fs::create_directories(dir);
  const std::vector<std::string> who = {"the miller", "a weaver", "the old smith", "her sister",
                                        "the ferryman", "a young scribe", "the twins", "his uncle"};
  const std::vector<std::string> did = {"carried", "painted", "counted", "mended",
                                        "sold", "hid", "found", "washed"};
  const std::vector<std::string> what = {"the red boat", "a basket of apples", "the long rope",
                                         "the copper bell", "two grey stones", "the winter coat",
                                         "a jar of honey", "the wooden gate"};
  const std::vector<std::string> when = {"at dawn", "before supper", "in the rain", "on market day"};
  std::mt19937 rng(2024);
  std::ofstream f(dir + "/corpus.txt");
  for (int d = 0; d < 500; ++d) {
    const int n = 3 + static_cast<int>(rng() % 4);
    for (int s = 0; s < n; ++s) {
      std::string sent = who[rng() % who.size()] + " " + did[rng() % did.size()] + " " +
                         what[rng() % what.size()] + " " + when[rng() % when.size()] + ".";
      sent[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(sent[0])));
      f << sent << (s + 1 < n ? " " : "");
    }
    f << "\nThat was story " << d << ".\n\n";
  }
}

struct SpecOpts {
  std::string family = "gpt2";
  std::string device = "cuda";
  std::string precision = "bf16";
  int max_steps = 30;
  int seq_len = 32;
  int max_seq_len = 64;
  int eval_every = 10;
  int ckpt_every = 10;
  // constant: the learning rate of step s does not depend on max_steps, so a
  // run can be stopped at 10 and extended to 20 and still match a straight 20.
  std::string schedule = "constant";
};

// Head dim 64 (d_model 128, 2 heads): the attention kernels' main bf16 path.
std::string SpecYaml(const SpecOpts& o, const std::string& data_dir) {
  std::ostringstream s;
  s << "name: cuda-train\n"
    << "model:\n  family: " << o.family << "\n  d_model: 128\n  n_layer: 2\n  n_head: 2\n"
    << (o.family == "llama" ? "  n_kv_head: 1\n" : "") << "  max_seq_len: " << o.max_seq_len
    << "\n"
    << "data:\n  dir: " << data_dir << "\n"
    << "train:\n  batch_size: 4\n  seq_len: " << o.seq_len
    << "\n  grad_accum_steps: 2\n  max_steps: " << o.max_steps
    << "\n  seed: 5\n  threads: 2\n  device: " << o.device << "\n  precision: " << o.precision << "\n"
    << "optim:\n  lr: 3.0e-3\n  weight_decay: 0.1\n  grad_clip: 1.0\n"
    << "schedule:\n  kind: " << o.schedule << "\n  warmup_steps: 5\n"
    << "eval:\n  every_steps: " << o.eval_every << "\n  steps: 2\n"
    << "checkpoint:\n  every_steps: " << o.ckpt_every << "\n  keep_last: 5\n";
  return s.str();
}

// The number after "key": in a JSON line; NaN when absent.
double JsonNumber(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  auto p = line.find(k);
  if (p == std::string::npos) return std::nan("");
  p += k.size();
  while (p < line.size() && line[p] == ' ') ++p;
  if (p < line.size() && line[p] == '"') ++p;  // protobuf JSON may quote some numbers
  return std::strtod(line.c_str() + p, nullptr);
}

struct Metrics {
  std::vector<double> loss, val_loss;  // val_loss NaN on steps without evaluation
};
Metrics ReadMetrics(const std::string& out_dir) {
  Metrics m;
  for (const auto& l : Lines(ReadFileOrEmpty(out_dir + "/metrics.jsonl"))) {
    m.loss.push_back(JsonNumber(l, "loss"));
    m.val_loss.push_back(JsonNumber(l, "val_loss"));
  }
  return m;
}

double Mean(const std::vector<double>& v, size_t from, size_t to) {  // [from, to)
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / static_cast<double>(to - from);
}

std::string CkptDir(const std::string& out, int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08d", step);
  return out + "/checkpoints/" + name;
}

void ExpectSameTensors(const std::string& fa, const std::string& fb);

class CudaTrain : public ::testing::TestWithParam<std::string> {
 protected:
  // Prepared on first use, after the GPU check, so a machine without a GPU
  // never runs the binary (and again after TearDownTestSuite removed it, as
  // under --gtest_repeat).
  static std::string& RootVar() {
    static std::string root;
    return root;
  }
  static const std::string& Root() {
    std::string& root = RootVar();
    if (root.empty() || !fs::exists(root + "/data/manifest.json")) {
      root = FreshDir("cuda-train");
      WriteCorpus(root + "/corpus");
      auto res = RunCommand({LlmtBinary(), "prepare", "--input", root + "/corpus", "--out",
                             root + "/data", "--vocab-size", "320", "--val-fraction", "0.1", "--seed", "3"});
      EXPECT_EQ(res.exit_code, 0) << LlmtBinary() << " prepare:\n" << res.output;
    }
    return root;
  }
  static std::string DataDir() { return Root() + "/data"; }

  static void TearDownTestSuite() {
    if (!RootVar().empty()) fs::remove_all(RootVar());
  }

  std::string WriteSpec(const std::string& name, const SpecOpts& o) {
    std::string path = Root() + "/" + name + ".yaml";
    std::ofstream(path) << SpecYaml(o, DataDir());
    return path;
  }
  std::string Out(const std::string& name) { return Root() + "/runs/" + name; }

  RunResult Train(const std::string& spec, const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {LlmtBinary(), "train", spec, "--out", out, "--progress", "lines"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv, 600);
  }

  // 20 steps straight and 10 + resume of `llmt train` at T `seq_len` with the
  // environment `env` (attention variants) give the same bits. `check` looks
  // at each run's log.
  void ExpectResumeBitIdentical(const std::string& name, const std::string& fam, int seq_len,
                                const std::vector<std::string>& env,
                                const std::function<void(const std::string&)>& check) {
    SpecOpts o;
    o.family = fam;
    o.max_steps = 20;
    o.seq_len = seq_len;
    o.max_seq_len = seq_len;
    const std::string spec = WriteSpec(name + "-" + fam, o);
    auto train = [&](const std::string& out, std::vector<std::string> extra) {
      std::vector<std::string> argv = {"/usr/bin/env"};
      argv.insert(argv.end(), env.begin(), env.end());
      argv.insert(argv.end(), {LlmtBinary(), "train", spec, "--out", out, "--progress", "lines"});
      argv.insert(argv.end(), extra.begin(), extra.end());
      RunResult r = RunCommand(argv, 600);
      EXPECT_EQ(r.exit_code, 0) << r.output;
      check(r.output);
      return r;
    };
    const std::string straight = Out(name + "-straight-" + fam);
    const std::string split = Out(name + "-split-" + fam);
    train(straight, {});
    train(split, {"--set", "train.max_steps=10"});
    ASSERT_TRUE(fs::exists(CkptDir(split, 10)));
    EXPECT_THAT(train(split, {"--resume", "auto"}).output, HasSubstr("resumed from"));
    ExpectSameTensors(CkptDir(straight, 20) + "/model.safetensors",
                      CkptDir(split, 20) + "/model.safetensors");
    Metrics a = ReadMetrics(straight), b = ReadMetrics(split);
    ASSERT_EQ(a.loss.size(), 20u);
    ASSERT_EQ(b.loss.size(), 20u);
    EXPECT_LT(a.loss[19], a.loss[0]) << "did not train";
    for (size_t i = 0; i < 20; ++i) EXPECT_EQ(a.loss[i], b.loss[i]) << "step " << i + 1;
  }

  void SetUp() override {
    if (!kernels::cuda::HaveGpu()) return;
    ASSERT_TRUE(fs::exists(DataDir() + "/manifest.json")) << "llmt prepare failed";
  }
};

// (a) bf16 on the GPU learns and writes complete checkpoints.
TEST_P(CudaTrain, Bf16TrainsAndCheckpoints) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.max_steps = 30;
  o.schedule = "cosine";
  std::string out = Out("bf16-" + fam);
  auto r = Train(WriteSpec("bf16-" + fam, o), out);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  Metrics m = ReadMetrics(out);
  ASSERT_EQ(m.loss.size(), 30u) << ReadFileOrEmpty(out + "/metrics.jsonl");
  for (size_t i = 0; i < m.loss.size(); ++i) ASSERT_TRUE(std::isfinite(m.loss[i])) << "step " << i + 1;
  // ln(320) ~ 5.77 at init; the structured corpus is learnt fast.
  EXPECT_GT(m.loss[0], 5.0);
  EXPECT_LT(Mean(m.loss, 25, 30), m.loss[0] - 1.0) << "first " << m.loss[0] << " last " << m.loss[29];
  EXPECT_TRUE(std::isfinite(m.val_loss[29]));

  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json",
                        "manifest.json", "tokenizer.model"}) {
    EXPECT_TRUE(fs::exists(CkptDir(out, 30) + "/" + f)) << f;
  }
  EXPECT_THAT(r.output, HasSubstr("checkpoint:"));
}

void ExpectSameTensors(const std::string& fa, const std::string& fb) {
  auto a = storage::ReadSafetensors(fa);
  auto b = storage::ReadSafetensors(fb);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->tensors.size(), b->tensors.size()) << fa << " vs " << fb;
  for (const auto& [name, ta] : a->tensors) {
    auto it = b->tensors.find(name);
    ASSERT_NE(it, b->tensors.end()) << name << " missing from " << fb;
    const auto& tb = it->second;
    ASSERT_EQ(ta.shape, tb.shape) << name;
    ASSERT_EQ(ta.data.size(), tb.data.size()) << name;
    EXPECT_EQ(std::memcmp(ta.data.data(), tb.data.data(), ta.data.size() * sizeof(float)), 0)
        << name << " differs between " << fa << " and " << fb;
  }
}

std::string TrainLossField(const std::string& ckpt) {
  // Compared as text: equal doubles print identically.
  std::string s = ReadFileOrEmpty(ckpt + "/trainer_state.json");
  auto p = s.find("\"train_loss\":");
  if (p == std::string::npos) return "";
  auto e = s.find_first_of(",}\n", p);
  return s.substr(p, e - p);
}

// (b) 20 steps straight vs 10 steps, then --resume auto to 20: the same
// binary on the same GPU gives the same bits (deterministic kernels, the
// bf16 copy re-derived from the fp32 master on load).
TEST_P(CudaTrain, ResumeIsBitIdentical) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.max_steps = 20;
  std::string spec = WriteSpec("resume-" + fam, o);

  std::string straight = Out("resume-straight-" + fam);
  auto r = Train(spec, straight);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::string split = Out("resume-split-" + fam);
  r = Train(spec, split, {"--set", "train.max_steps=10"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(CkptDir(split, 10)));
  r = Train(spec, split, {"--resume", "auto"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resumed from"));

  ExpectSameTensors(CkptDir(straight, 20) + "/model.safetensors", CkptDir(split, 20) + "/model.safetensors");
  ExpectSameTensors(CkptDir(straight, 20) + "/optimizer.safetensors",
                    CkptDir(split, 20) + "/optimizer.safetensors");
  const std::string la = TrainLossField(CkptDir(straight, 20));
  EXPECT_FALSE(la.empty()) << "no train_loss in trainer_state.json";
  EXPECT_EQ(la, TrainLossField(CkptDir(split, 20)));

  Metrics a = ReadMetrics(straight), b = ReadMetrics(split);
  ASSERT_EQ(a.loss.size(), 20u);
  ASSERT_EQ(b.loss.size(), 20u);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(a.loss[i], b.loss[i]) << "step " << i + 1;
}

// (c) A GPU checkpoint is a plain checkpoint: `llmt eval` (the CPU model)
// reproduces the validation loss the bf16 GPU run reported, on the same
// batches (eval --batches = eval.steps; both read the val split from its
// start). 1e-2 relative: the GPU evaluated with bf16 activations.
TEST_P(CudaTrain, GpuCheckpointEvaluatesOnCpu) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.max_steps = 20;
  std::string out = Out("eval-" + fam);
  auto r = Train(WriteSpec("eval-" + fam, o), out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Metrics m = ReadMetrics(out);
  ASSERT_EQ(m.loss.size(), 20u);
  const double gpu_val = m.val_loss[19];
  ASSERT_TRUE(std::isfinite(gpu_val)) << "no val_loss at step 20";

  auto ev = RunCommand({LlmtBinary(), "eval", "--checkpoint", CkptDir(out, 20), "--json", "--batches", "2"});
  ASSERT_EQ(ev.exit_code, 0) << ev.output;
  EXPECT_THAT(ev.output, HasSubstr("\"step\":20"));
  const double cpu_val = JsonNumber(ev.output, "val_loss");
  ASSERT_TRUE(std::isfinite(cpu_val)) << ev.output;
  EXPECT_LE(std::fabs(cpu_val - gpu_val) / gpu_val, 1e-2) << "cpu " << cpu_val << " gpu " << gpu_val;
}

// (c) The reverse: 10 fp32 steps on the CPU, resumed on the GPU in bf16.
TEST_P(CudaTrain, CpuCheckpointResumesOnGpu) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.device = "cpu";
  o.precision = "fp32";
  o.max_steps = 10;
  std::string spec = WriteSpec("cpu2gpu-" + fam, o);
  std::string out = Out("cpu2gpu-" + fam);
  auto r = Train(spec, out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(CkptDir(out, 10)));
  r = Train(spec, out,
            {"--resume", "auto", "--set", "train.device=cuda", "--set", "train.precision=bf16", "--set",
             "train.max_steps=20"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resumed from"));
  ASSERT_TRUE(fs::exists(CkptDir(out, 20) + "/model.safetensors"));

  Metrics m = ReadMetrics(out);
  ASSERT_EQ(m.loss.size(), 20u);
  for (size_t i = 10; i < 20; ++i) ASSERT_TRUE(std::isfinite(m.loss[i])) << "step " << i + 1;
  // The GPU continues from the CPU's weights (not from a fresh init, which
  // would jump back to ~ln(320)) and keeps descending.
  EXPECT_LT(m.loss[10], m.loss[0] - 0.2) << "step 11 " << m.loss[10] << " vs step 1 " << m.loss[0];
  EXPECT_LT(Mean(m.loss, 15, 20), Mean(m.loss, 5, 10));
}

// (d) fp32 on the GPU (true fp32 GEMMs, no TF32) follows the CPU run step by
// step: the same data, init and optimizer, different summation order only.
TEST_P(CudaTrain, Fp32MatchesCpu) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.precision = "fp32";
  o.max_steps = 10;
  o.schedule = "cosine";
  std::string spec = WriteSpec("fp32-" + fam, o);
  std::string gpu = Out("fp32-gpu-" + fam), cpu = Out("fp32-cpu-" + fam);
  auto r = Train(spec, gpu);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Train(spec, cpu, {"--set", "train.device=cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Metrics g = ReadMetrics(gpu), c = ReadMetrics(cpu);
  ASSERT_EQ(g.loss.size(), 10u);
  ASSERT_EQ(c.loss.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_LE(std::fabs(g.loss[i] - c.loss[i]) / c.loss[i], 1e-3)
        << "step " << i + 1 << ": gpu " << g.loss[i] << " cpu " << c.loss[i];
  }
  EXPECT_LE(std::fabs(g.val_loss[9] - c.val_loss[9]) / c.val_loss[9], 1e-3);
}

// (e) A world-size-1 NCCL group: the trainer's collective path on the GPU
// (device-pointer all-reduces, scalar reductions) must not change a thing
// compared with the local collective. In process, because `llmt train` picks
// the local collective whenever WORLD_SIZE is 1, and one GPU cannot host two
// NCCL ranks.
TEST_P(CudaTrain, NcclWorldSizeOneMatchesLocal) {
  REQUIRE_GPU();
#ifndef LLMT_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.max_steps = 10;
  o.schedule = "cosine";
  const std::string spec_path = WriteSpec("nccl-" + fam, o);
  auto spec = spec::LoadFile(spec_path);
  ASSERT_TRUE(spec.ok()) << spec.status();

  auto run = [&](const std::string& out, comm::Collective* c) {
    train::TrainOptions to;
    to.spec = *spec;
    to.out_dir = out;
    to.progress = train::TrainOptions::Progress::kNone;
    to.comm = c;
    auto t = train::Trainer::Create(to);
    ASSERT_TRUE(t.ok()) << t.status();
    auto res = (*t)->Run();
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_EQ(res->final_step, 10);
  };

  const std::string local = Out("nccl-local-" + fam), nccl = Out("nccl-nccl-" + fam);
  run(local, nullptr);
  {
    comm::NcclOptions no;
    no.device = 0;
    no.timeout = std::chrono::seconds(120);
    no.rendezvous_timeout = std::chrono::seconds(60);
    auto c = comm::NcclCollective::Create(std::make_shared<comm::MemoryStore>(), 0, 1, no);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_STREQ((*c)->backend(), "nccl");
    run(nccl, c->get());
  }

  Metrics a = ReadMetrics(local), b = ReadMetrics(nccl);
  ASSERT_EQ(a.loss.size(), 10u);
  ASSERT_EQ(b.loss.size(), 10u);
  EXPECT_LT(a.loss[9], a.loss[0]) << "the local run did not train";
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_LE(std::fabs(b.loss[i] - a.loss[i]) / a.loss[i], 1e-6)
        << "step " << i + 1 << ": nccl " << b.loss[i] << " local " << a.loss[i];
  }
  EXPECT_LE(std::fabs(b.val_loss[9] - a.val_loss[9]) / a.val_loss[9], 1e-6);
#endif
}

// (e) The same through the CLI: LLMT_COMM_FORCE=1 makes `llmt train` build
// the real collective for WORLD_SIZE=1 (NCCL, since train.device is cuda),
// with a FileStore rendezvous so no port has to be free.
TEST_P(CudaTrain, NcclWorldSizeOneThroughCliMatchesLocal) {
  REQUIRE_GPU();
  const std::string fam = GetParam();
  SpecOpts o;
  o.family = fam;
  o.max_steps = 10;
  o.schedule = "cosine";
  const std::string spec = WriteSpec("nccl-cli-" + fam, o);
  const std::string local = Out("nccl-cli-local-" + fam), nccl = Out("nccl-cli-nccl-" + fam);
  auto r = Train(spec, local);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const std::string store = Root() + "/store-" + fam;
  fs::create_directories(store);
  r = RunCommand({"/usr/bin/env", "LLMT_COMM_FORCE=1", "WORLD_SIZE=1", "RANK=0", "LOCAL_RANK=0",
                  "LLMT_STORE_DIR=" + store, LlmtBinary(), "train", spec, "--out", nccl, "--progress",
                  "lines"},
                 600);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  Metrics a = ReadMetrics(local), b = ReadMetrics(nccl);
  ASSERT_EQ(a.loss.size(), 10u);
  ASSERT_EQ(b.loss.size(), 10u);
  EXPECT_LT(a.loss[9], a.loss[0]) << "the local run did not train";
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_LE(std::fabs(b.loss[i] - a.loss[i]) / a.loss[i], 1e-6)
        << "step " << i + 1 << ": nccl " << b.loss[i] << " local " << a.loss[i];
  }
}

// (i) The default attention (auto: LLMT_ATTN_FWD/BWD empty) at T 128, a
// cuDNN shape: cuDNN's forward and deterministic backward keep (b)'s
// guarantee. With LLMT_REQUIRE_CUDNN=1 (bench/gpu/run.sh) every run must
// have planned cuDNN's forward and deterministic backward under auto and
// never fallen back; elsewhere the own kernels may run (and must keep the
// guarantee too).
TEST_P(CudaTrain, CudnnDeterministicResumeIsBitIdentical) {
  REQUIRE_GPU();
  const char* req = std::getenv("LLMT_REQUIRE_CUDNN");
  const bool require = req != nullptr && std::string(req) == "1";
  ExpectResumeBitIdentical(
      "cudnn-resume", GetParam(), 128, {"LLMT_ATTN_FWD=", "LLMT_ATTN_BWD="},
      [&](const std::string& log) {
        if (!require) return;
        EXPECT_THAT(log, HasSubstr("forward and deterministic backward (auto)")) << log;
        EXPECT_THAT(log, HasSubstr("cuDNN attention forward (")) << log;
        EXPECT_THAT(log, HasSubstr("cuDNN attention backward (")) << log;
        EXPECT_THAT(log, Not(HasSubstr("cuda attention: cuDNN"))) << log;  // a fallback
      });
}

// (j) The fused wgmma backwards (LLMT_ATTN_BWD=wgmma-fused, -2wg) add the dQ
// contributions in a fixed order, so they keep (b)'s guarantee too: at T 192
// (three 64-query tiles: up to three ordered contributions per tile, and for
// -2wg a 128-key block that is half past T). On a compute-capability-9.0
// device the fused kernel must have run (no fallback to the mma kernels);
// elsewhere the fallback runs and must keep the guarantee as well.
TEST_P(CudaTrain, WgmmaFusedResumeIsBitIdentical) {
  REQUIRE_GPU();
  auto info = kernels::cuda::GetDeviceInfo(0);
  ASSERT_TRUE(info.ok()) << info.status();
  const bool sm90 = info->cc_major == 9 && info->cc_minor == 0;
  for (const char* variant : {"wgmma-fused", "wgmma-fused-2wg"}) {
    SCOPED_TRACE(variant);
    ExpectResumeBitIdentical(
        std::string(variant) + "-resume", GetParam(), 192,
        {"LLMT_ATTN_FWD=wgmma", std::string("LLMT_ATTN_BWD=") + variant},
        [&](const std::string& log) {
          EXPECT_THAT(log, HasSubstr(std::string("backward variant: ") + variant + " ("))
              << log;
          if (sm90) {
            EXPECT_THAT(log, Not(HasSubstr("using the mma kernels"))) << log;
          }
        });
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaTrain, ::testing::Values("gpt2", "llama"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace llmt
