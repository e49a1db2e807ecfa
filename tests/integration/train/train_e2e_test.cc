// End-to-end tests of the local engine through the real `llmt` binary:
// prepare -> train -> eval/sample, exact resume after SIGTERM and kill -9,
// corrupt checkpoints, spec errors and bad-step detection.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/subprocess.h"

namespace llmt {
namespace {

using ::llmt::testing::Binary;
using ::llmt::testing::FreshDir;
using ::llmt::testing::Lines;
using ::llmt::testing::Process;
using ::llmt::testing::ReadFileOrEmpty;
using ::llmt::testing::RunCommand;
using ::llmt::testing::WaitFor;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

// A small synthetic corpus with real structure (subject-verb-object sentences)
// so a tiny model's loss visibly drops within a few dozen steps.
void WriteCorpus(const std::string& dir) {
  fs::create_directories(dir);
  const std::vector<std::string> subj = {"the king", "a shepherd", "the people", "my brother",
                                         "the prophet", "a stranger", "the children", "our father"};
  const std::vector<std::string> verb = {"went unto", "spake to", "blessed", "looked upon",
                                         "gathered", "remembered", "followed", "built"};
  const std::vector<std::string> obj = {"the city", "the mountain", "the river", "the temple",
                                        "the field", "the sea", "the house of bread", "the gate"};
  std::mt19937 rng(42);
  std::ofstream f(dir + "/corpus.txt");
  for (int d = 0; d < 400; ++d) {
    int n = 3 + rng() % 4;
    for (int s = 0; s < n; ++s) {
      std::string sent = subj[rng() % subj.size()] + " " + verb[rng() % verb.size()] + " " +
                         obj[rng() % obj.size()] + ".";
      sent[0] = static_cast<char>(std::toupper(sent[0]));
      f << sent << (s + 1 < n ? " " : "");
    }
    f << "\nDocument number " << d << " ends here.\n\n";
  }
}

std::string SpecYaml(const std::string& family, const std::string& data_dir, int max_steps) {
  std::ostringstream s;
  s << "name: e2e\n"
    << "model:\n  family: " << family << "\n  d_model: 32\n  n_layer: 2\n  n_head: 4\n"
    << (family == "llama" ? "  n_kv_head: 2\n" : "") << "  max_seq_len: 32\n"
    << "data:\n  dir: " << data_dir << "\n"
    << "train:\n  batch_size: 4\n  seq_len: 16\n  grad_accum_steps: 2\n  max_steps: " << max_steps
    << "\n  seed: 11\n  threads: 1\n"
    << "optim:\n  lr: 3.0e-3\n  weight_decay: 0.1\n  grad_clip: 1.0\n"
    << "schedule:\n  kind: cosine\n  warmup_steps: 5\n  min_lr_ratio: 0.1\n"
    << "eval:\n  every_steps: 10\n  steps: 2\n"
    << "checkpoint:\n  every_steps: 10\n  keep_last: 3\n";
  return s.str();
}

// The deterministic part of a metrics line: drops the wall-clock fields.
std::string StripTiming(const std::string& line) {
  std::string out;
  std::istringstream in(line.substr(1, line.size() - 2));
  std::string kv;
  while (std::getline(in, kv, ',')) {
    if (kv.rfind("\"tokens_per_s\"", 0) == 0 || kv.rfind("\"step_ms\"", 0) == 0) continue;
    out += kv + ",";
  }
  return out;
}

class TrainE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(FreshDir("train-e2e"));
    WriteCorpus(*root_ + "/corpus");
    auto r = RunCommand({Binary("cli/llmt"), "prepare", "--input", *root_ + "/corpus", "--out",
                  *root_ + "/data", "--vocab-size", "320", "--val-fraction", "0.1", "--seed", "3"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  std::string WriteSpec(const std::string& name, const std::string& family, int max_steps) {
    std::string path = *root_ + "/" + name + ".yaml";
    std::ofstream(path) << SpecYaml(family, *root_ + "/data", max_steps);
    return path;
  }

  testing::RunResult Train(const std::string& spec, const std::string& out,
                           std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {Binary("cli/llmt"), "train", spec, "--out", out,
                                     "--progress", "lines"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv);
  }

  static std::string* root_;
};
std::string* TrainE2E::root_ = nullptr;

TEST_F(TrainE2E, TrainsEvaluatesAndSamples) {
  std::string spec = WriteSpec("basic", "gpt2", 40);
  std::string out = *root_ + "/runs/basic";
  auto r = Train(spec, out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("parameters"));
  EXPECT_THAT(r.output, HasSubstr("GFLOP/token"));
  EXPECT_THAT(r.output, HasSubstr("perplexity"));

  auto lines = Lines(ReadFileOrEmpty(out + "/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 40u);
  for (const char* key : {"\"step\":", "\"loss\":", "\"lr\":", "\"grad_norm\":", "\"tokens_per_s\":",
                          "\"step_ms\":"}) {
    EXPECT_THAT(lines[0], HasSubstr(key));
  }
  EXPECT_THAT(lines[9], HasSubstr("\"val_loss\":"));
  EXPECT_THAT(lines[39], HasSubstr("\"val_loss\":"));
  EXPECT_THAT(lines[4], ::testing::Not(HasSubstr("\"val_loss\":")));

  // Loss must drop well below its starting value (ln(320) ~ 5.77 at init).
  auto loss_of = [](const std::string& l) {
    auto p = l.find("\"loss\":");
    return std::stod(l.substr(p + 7));
  };
  EXPECT_GT(loss_of(lines[0]), 5.0);
  EXPECT_LT(loss_of(lines[39]), loss_of(lines[0]) - 1.5);

  // keep_last 3: steps 20, 30, 40 remain.
  std::vector<std::string> ckpts;
  for (auto& e : fs::directory_iterator(out + "/checkpoints")) ckpts.push_back(e.path().filename());
  std::sort(ckpts.begin(), ckpts.end());
  EXPECT_EQ(ckpts, (std::vector<std::string>{"step-00000020", "step-00000030", "step-00000040"}));
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer_state.json",
                        "manifest.json", "tokenizer.model"}) {
    EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000040/" + f)) << f;
  }

  auto ev = RunCommand({Binary("cli/llmt"), "eval", "--checkpoint", out, "--json"});
  ASSERT_EQ(ev.exit_code, 0) << ev.output;
  EXPECT_THAT(ev.output, HasSubstr("\"val_loss\":"));
  EXPECT_THAT(ev.output, HasSubstr("\"perplexity\":"));
  EXPECT_THAT(ev.output, HasSubstr("\"step\":40"));

  auto sm = RunCommand({Binary("cli/llmt"), "sample", "--checkpoint", out, "--prompt", "The king",
                 "--max-tokens", "20", "--seed", "1"});
  ASSERT_EQ(sm.exit_code, 0) << sm.output;
  EXPECT_THAT(sm.output, HasSubstr("The king"));
  EXPECT_GT(sm.output.size(), std::string("The king\n").size() + 10);
  // Same seed -> same text.
  auto sm2 = RunCommand({Binary("cli/llmt"), "sample", "--checkpoint", out, "--prompt", "The king",
                  "--max-tokens", "20", "--seed", "1"});
  EXPECT_EQ(sm.output, sm2.output);
}

// N steps straight vs. stop (SIGTERM) + resume: identical losses and weights.
void ExpectSameRun(const std::string& a, const std::string& b, int steps) {
  auto la = Lines(ReadFileOrEmpty(a + "/metrics.jsonl"));
  auto lb = Lines(ReadFileOrEmpty(b + "/metrics.jsonl"));
  ASSERT_EQ(la.size(), static_cast<size_t>(steps));
  ASSERT_EQ(lb.size(), static_cast<size_t>(steps));
  for (int i = 0; i < steps; ++i) EXPECT_EQ(StripTiming(la[i]), StripTiming(lb[i])) << "step " << i + 1;
  char name[32];
  std::snprintf(name, sizeof(name), "/checkpoints/step-%08d/", steps);
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    std::string fa = ReadFileOrEmpty(a + name + f), fb = ReadFileOrEmpty(b + name + f);
    ASSERT_FALSE(fa.empty()) << a + name + f;
    EXPECT_TRUE(fa == fb) << f << " differs between the straight and the resumed run";
  }
}

class ExactResume : public TrainE2E, public ::testing::WithParamInterface<std::string> {};

TEST_P(ExactResume, SigtermThenResumeIsBitIdentical) {
  const std::string family = GetParam();
  // Enough steps that SIGTERM lands mid-run even on a fast machine (~4 ms a
  // step here, evaluation and checkpoints included).
  const int steps = 200;
  std::string spec = WriteSpec("resume-" + family, family, steps);
  std::string straight = *root_ + "/runs/straight-" + family;
  ASSERT_EQ(Train(spec, straight).exit_code, 0);

  std::string resumed = *root_ + "/runs/sigterm-" + family;
  {
    Process p({Binary("cli/llmt"), "train", spec, "--out", resumed, "--progress", "none"},
              resumed + ".log");
    ASSERT_TRUE(WaitFor([&] { return Lines(ReadFileOrEmpty(resumed + "/metrics.jsonl")).size() >= 3; },
                        60000));
    p.Signal(SIGTERM);
    ASSERT_EQ(p.Wait(60), 0) << ReadFileOrEmpty(resumed + ".log");
  }
  auto stopped_at = Lines(ReadFileOrEmpty(resumed + "/metrics.jsonl")).size();
  ASSERT_LT(stopped_at, static_cast<size_t>(steps)) << "run finished before SIGTERM arrived";
  EXPECT_THAT(ReadFileOrEmpty(resumed + ".log"), HasSubstr("--resume auto"));
  auto r = Train(spec, resumed, {"--resume", "auto"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resumed from"));
  ExpectSameRun(straight, resumed, steps);
}

TEST_P(ExactResume, Kill9AfterCheckpointThenResumeIsBitIdentical) {
  const std::string family = GetParam();
  const int steps = 60;
  std::string spec = WriteSpec("kill-" + family, family, steps);
  std::string straight = *root_ + "/runs/straight9-" + family;
  ASSERT_EQ(Train(spec, straight).exit_code, 0);

  std::string killed = *root_ + "/runs/kill9-" + family;
  {
    Process p({Binary("cli/llmt"), "train", spec, "--out", killed, "--progress", "none"},
              killed + ".log");
    ASSERT_TRUE(WaitFor([&] { return fs::exists(killed + "/checkpoints/step-00000020"); }, 60000));
    p.Signal(SIGKILL);
    p.Wait(10);
  }
  auto r = Train(spec, killed, {"--resume", "auto"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectSameRun(straight, killed, steps);
}

INSTANTIATE_TEST_SUITE_P(Families, ExactResume, ::testing::Values("gpt2", "llama"));

TEST_F(TrainE2E, CorruptCheckpointIsReportedAndSkippedByResumeAuto) {
  const int steps = 30;
  std::string spec = WriteSpec("corrupt", "gpt2", steps);
  std::string good = *root_ + "/runs/corrupt-good";
  ASSERT_EQ(Train(spec, good).exit_code, 0);
  std::string bad = *root_ + "/runs/corrupt-bad";
  fs::copy(good, bad, fs::copy_options::recursive);
  // Flip one byte in the newest checkpoint's weights.
  std::string victim = bad + "/checkpoints/step-00000030/model.safetensors";
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c;
    f.read(&c, 1);
    f.seekp(200);
    c ^= 0x5a;
    f.write(&c, 1);
  }
  auto ev = RunCommand({Binary("cli/llmt"), "eval", "--checkpoint", bad + "/checkpoints/step-00000030"});
  EXPECT_NE(ev.exit_code, 0);
  EXPECT_THAT(ev.output, HasSubstr("model.safetensors"));

  // --resume auto falls back to step 20 and retrains 21..30 to the same weights.
  auto r = Train(spec, bad, {"--resume", "auto"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step-00000030"));  // the warning names the skipped one
  EXPECT_THAT(r.output, HasSubstr("resumed from"));
  ExpectSameRun(good, bad, steps);
}

TEST_F(TrainE2E, FreshRunRefusesToOverwriteCheckpoints) {
  std::string spec = WriteSpec("again", "gpt2", 10);
  std::string out = *root_ + "/runs/again";
  ASSERT_EQ(Train(spec, out).exit_code, 0);
  auto r = Train(spec, out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--resume auto"));
}

TEST_F(TrainE2E, SpecErrorsNameTheField) {
  std::string spec = WriteSpec("specerr", "gpt2", 10);
  std::string out = *root_ + "/runs/specerr";
  auto r = Train(spec, out, {"--set", "train.batch_size=0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("train.batch_size"));

  r = Train(spec, out, {"--set", "train.batchsize=4"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("batchsize"));

  r = Train(spec, out, {"--set", "model.n_head=5"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("n_head"));

  r = Train(spec, out, {"--set", "data.dir=/nonexistent/llmt-data"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("/nonexistent/llmt-data"));

  // Without a GPU (CI), cuda must fail up front with a reason, never fall
  // back to the CPU silently.
  if (!fs::exists("/dev/nvidia0")) {
    r = Train(spec, out, {"--set", "train.device=cuda"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.output, ::testing::AnyOf(HasSubstr("no CUDA device is visible"),
                                           HasSubstr("built without the CUDA backend")));
    EXPECT_THAT(r.output, HasSubstr("train.device: cuda"));
  }

  r = Train(spec, out, {"--set", "model.vocab_size=100"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("vocab"));
}

TEST_F(TrainE2E, DivergingRunStopsWithAClearReason) {
  std::string spec = WriteSpec("diverge", "gpt2", 50);
  auto r = Train(spec, *root_ + "/runs/diverge",
                 {"--set", "optim.lr=1e30", "--set", "optim.grad_clip=0", "--set",
                  "schedule.warmup_steps=0", "--set", "train.max_bad_steps=3"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("3 bad steps in a row"));
  EXPECT_THAT(r.output, HasSubstr("skipped"));
}

}  // namespace
}  // namespace llmt
