// llmt-worker's building blocks without a coordinator: the trainer event
// contract (written by the trainer's own EventPipeObserver), the FLOP count
// behind llmt_mfu_ratio (against the engine's), rank process supervision, and
// the outbox's ordering and coalescing while the coordinator is unreachable.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "common/spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/subprocess.h"
#include "worker/daemon/daemon.h"
#include "worker/daemon/outbox.h"
#include "worker/daemon/rank_process.h"
#include "worker/daemon/trainer_events.h"
#include "worker/model/model.h"
#include "worker/train/event_pipe.h"
#include "worker/train/model_io.h"

namespace llmt::daemon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Lines the trainer's observer writes, read back from a real pipe.
std::vector<std::string> ObserverLines(const std::function<void(train::EventPipeObserver&)>& fn) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  {
    train::EventPipeObserver obs(p[1]);
    fn(obs);
  }
  close(p[1]);
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof(buf))) > 0) all.append(buf, n);
  close(p[0]);
  std::vector<std::string> lines;
  size_t start = 0, nl;
  while ((nl = all.find('\n', start)) != std::string::npos) {
    lines.push_back(all.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

TEST(WorkerTrainerEvents, ParsesWhatTheTrainerWrites) {
  auto lines = ObserverLines([](train::EventPipeObserver& o) {
    train::StepMetrics m;
    m.step = 7;
    m.max_steps = 100;
    m.loss = 3.25;
    m.lr = 1e-3;
    m.grad_norm = 0.5;
    m.tokens_per_s = 12345;
    m.step_ms = 81;
    m.tokens_seen = 7 * 512;
    m.has_val = true;
    m.val_loss = 3.5;
    o.OnStep(m);
    o.OnCheckpoint(7, "/x/checkpoints/step-00000007", 3.5);
    o.OnExit(false, 7, "boom \"quoted\"\nsecond line");
  });
  ASSERT_EQ(lines.size(), 3u);
  auto step = ParseTrainerEvent(lines[0]);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->type, TrainerEvent::Type::kStep);
  EXPECT_EQ(step->step, 7);
  EXPECT_EQ(step->max_steps, 100);
  EXPECT_DOUBLE_EQ(step->metrics.at("loss"), 3.25);
  EXPECT_DOUBLE_EQ(step->metrics.at("val_loss"), 3.5);
  EXPECT_DOUBLE_EQ(step->metrics.at("tokens_per_s"), 12345);
  EXPECT_DOUBLE_EQ(step->metrics.at("step_ms"), 81);
  EXPECT_EQ(step->metrics.count("step"), 0u);

  auto ck = ParseTrainerEvent(lines[1]);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->type, TrainerEvent::Type::kCheckpoint);
  EXPECT_EQ(ck->step, 7);
  EXPECT_EQ(ck->dir, "/x/checkpoints/step-00000007");
  EXPECT_DOUBLE_EQ(ck->metrics.at("val_loss"), 3.5);

  auto ex = ParseTrainerEvent(lines[2]);
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_EQ(ex->type, TrainerEvent::Type::kExit);
  EXPECT_FALSE(ex->ok);
  EXPECT_EQ(ex->final_step, 7);
  EXPECT_EQ(ex->message, "boom \"quoted\"\nsecond line");
}

TEST(WorkerTrainerEvents, RejectsMalformedLines) {
  for (const char* bad :
       {"", "not json", "{\"step\":1}", "{\"type\":\"nope\"}", "{\"type\":\"step\"}",
        "{\"type\":\"checkpoint\",\"step\":3}", "{\"type\":\"exit\"}"}) {
    auto e = ParseTrainerEvent(bad);
    EXPECT_FALSE(e.ok()) << bad;
    if (!e.ok()) {
      EXPECT_THAT(std::string(e.status().message()), HasSubstr("trainer event"));
    }
  }
}

// The FLOP count behind llmt_mfu_ratio matches the engine's own for both families.
TEST(WorkerMfu, FlopsPerTokenMatchesTheEngine) {
  for (const char* yaml :
       {"model: {family: gpt2, d_model: 48, n_layer: 3, n_head: 4, max_seq_len: 64}\n"
        "data: {dir: d}\ntrain: {batch_size: 2, seq_len: 32, max_steps: 10}\noptim: {lr: 0.001}\n",
        "model: {family: llama, d_model: 64, n_layer: 2, n_head: 8, n_kv_head: 2, "
        "max_seq_len: 64}\n"
        "data: {dir: d}\ntrain: {batch_size: 2, seq_len: 48, max_steps: 10}\noptim: {lr: "
        "0.001}\n"}) {
    auto spec = spec::ParseYaml(yaml, "test");
    ASSERT_TRUE(spec.ok()) << spec.status();
    const int vocab = 300;
    auto cfg = train::ModelConfigFromSpec(*spec, vocab);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    auto model = model::Model::Create(*cfg, 1, spec->train().seq_len());
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_DOUBLE_EQ(TrainFlopsPerToken(*spec, vocab),
                     (*model)->flops_per_token(spec->train().seq_len()))
        << spec->model().family();
  }
}

struct Collected {
  std::mutex mu;
  std::vector<TrainerEvent> events;
  std::vector<std::string> lines;
};

std::unique_ptr<RankProcess> StartShell(const std::string& script, Collected* c,
                                        const std::string& log, std::vector<int> cpus = {}) {
  LaunchSpec ls;
  ls.argv = {"/bin/sh", "-c", script};
  ls.env = {"LLMT_TEST_VAR=hello", "HOME"};
  ls.log_path = log;
  ls.cpus = std::move(cpus);
  auto p = RankProcess::Start(
      ls,
      [c](const TrainerEvent& e) {
        std::lock_guard<std::mutex> l(c->mu);
        c->events.push_back(e);
      },
      [c](const std::string& line) {
        std::lock_guard<std::mutex> l(c->mu);
        c->lines.push_back(line);
      });
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(p).value() : nullptr;
}

ExitInfo WaitExit(RankProcess& p) {
  ExitInfo x;
  EXPECT_TRUE(testing::WaitFor([&] { return p.Poll(&x); }, 10000));
  p.DrainOutput(2000);
  return x;
}

TEST(WorkerRankProcess, EventsOutputEnvironmentAndExitCode) {
  std::string dir = testing::FreshDir("rank-process");
  Collected c;
  auto p = StartShell(
      "echo '{\"type\":\"step\",\"step\":1,\"max_steps\":2,\"loss\":2.5}' >&3; "
      "echo \"var=$LLMT_TEST_VAR home=${HOME:-unset}\"; echo err >&2; printf 'no newline'; "
      "echo '{\"type\":\"exit\",\"ok\":false,\"final_step\":1,\"message\":\"x\"}' >&3; exit 3",
      &c, dir + "/r.log");
  ASSERT_NE(p, nullptr);
  ExitInfo x = WaitExit(*p);
  EXPECT_TRUE(x.exited);
  EXPECT_EQ(x.code, 3);
  EXPECT_EQ(x.Describe(), "exit code 3");
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[0].type, TrainerEvent::Type::kStep);
  EXPECT_DOUBLE_EQ(c.events[0].metrics.at("loss"), 2.5);
  EXPECT_EQ(c.events[1].type, TrainerEvent::Type::kExit);
  EXPECT_THAT(c.lines, ElementsAre("var=hello home=unset", "err", "no newline"));
  EXPECT_EQ(testing::ReadFileOrEmpty(dir + "/r.log"), "var=hello home=unset\nerr\nno newline\n");
  EXPECT_THAT(p->TailLines(), ElementsAre("var=hello home=unset", "err", "no newline"));
}

TEST(WorkerRankProcess, SignalsReachTheProcessGroupAndAffinityIsApplied) {
  std::string dir = testing::FreshDir("rank-process-sig");
  Collected c;
  auto p = StartShell("grep Cpus_allowed_list /proc/self/status; exec sleep 30", &c, dir + "/r.log",
                      {0});
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        std::lock_guard<std::mutex> l(c.mu);
        return !c.lines.empty();
      },
      5000));
  EXPECT_THAT(c.lines[0], HasSubstr("Cpus_allowed_list:\t0"));
  ExitInfo x;
  EXPECT_FALSE(p->Poll(&x));
  p->Signal(SIGTERM);
  x = WaitExit(*p);
  EXPECT_FALSE(x.exited);
  EXPECT_EQ(x.signal, SIGTERM);
  EXPECT_THAT(x.Describe(), HasSubstr("killed by signal 15"));
}

TEST(WorkerRankProcess, MissingExecutableIsAnError) {
  LaunchSpec ls;
  ls.argv = {"/no/such/llmt", "train"};
  ls.log_path = testing::FreshDir("rank-process-missing") + "/r.log";
  auto p = RankProcess::Start(ls, nullptr, nullptr);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("/no/such/llmt"));
}

// With the coordinator unreachable nothing is delivered; progress of a rank
// coalesces into one report until a checkpoint or result (a barrier) follows.
TEST(WorkerOutbox, CoalescesProgressAndKeepsBarriersInOrder) {
  rpc::ClientOptions co;
  co.address = "127.0.0.1:1";  // nothing listens there
  auto ch = rpc::MakeChannel(co);
  ASSERT_TRUE(ch.ok());
  OutboxOptions oo;
  oo.worker_id = "w";
  oo.rpc_timeout = absl::Milliseconds(200);
  oo.progress_interval = absl::Hours(1);  // progress alone is held back: counts are exact
  metrics::Registry reg;
  auto* pending = reg.AddGauge("pending", "p").Get();
  auto* retries = reg.AddCounter("retries", "r").Get();
  Outbox box(*ch, oo, nullptr, pending, retries);
  for (int s = 1; s <= 50; ++s) box.AddProgress(9, 0, s, {{"loss", 1.0 / s}}, false);
  for (int i = 0; i < 10; ++i) box.AddLogLine(9, 0, "line");
  box.AddProgress(9, 1, 5, {{"loss", 1}}, false);  // another rank: its own report
  EXPECT_EQ(box.PendingFor(9), 2u);
  box.AddProgress(9, 0, 60, {{"val_loss", 2}}, /*keep=*/true);  // replaces, then stays
  box.AddProgress(9, 0, 61, {{"loss", 0.1}}, false);
  EXPECT_EQ(box.PendingFor(9), 3u);
  v1::CommitCheckpointRequest ck;
  ck.set_attempt_id(9);
  ck.set_step(61);
  box.AddCheckpoint(ck);
  box.AddProgress(9, 0, 62, {{"loss", 0.1}}, false);  // after the barrier: a new report
  v1::ReportAttemptResultRequest res;
  res.set_attempt_id(10);
  box.AddResult(res);
  EXPECT_EQ(box.PendingFor(9), 5u);
  EXPECT_EQ(box.PendingFor(10), 1u);
  EXPECT_EQ(box.Pending(), 6u);
  EXPECT_FALSE(box.Flush(absl::Milliseconds(500)));
  EXPECT_EQ(box.Pending(), 6u);
  EXPECT_GE(retries->Value(), 1);
  EXPECT_EQ(pending->Value(), 6);
  EXPECT_FALSE(box.connected());
}

}  // namespace
}  // namespace llmt::daemon
