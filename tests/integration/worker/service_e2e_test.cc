// End-to-end tests of training through the service: the real llmt-coordinator,
// llmt-worker and llmt binaries on loopback, tiny CPU models.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/worker/service_harness.h"
#include "tests/util/subprocess.h"

namespace llmt::wtest {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace stdfs = std::filesystem;

// The same small corpus as the local engine's e2e tests: real structure, so a
// tiny model's loss drops within a few hundred steps.
void WriteCorpus(const std::string& dir) {
  stdfs::create_directories(dir);
  const std::vector<std::string> subj = {"the king",    "a shepherd", "the people",   "my brother",
                                         "the prophet", "a stranger", "the children", "our father"};
  const std::vector<std::string> verb = {"went unto", "spake to",   "blessed",  "looked upon",
                                         "gathered",  "remembered", "followed", "built"};
  const std::vector<std::string> obj = {"the city",           "the mountain", "the river",
                                        "the temple",         "the field",    "the sea",
                                        "the house of bread", "the gate"};
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

struct SpecOptions {
  int max_steps = 600;
  int ckpt_every = 100;
  int eval_every = 100;
  int ranks = 1;
  int cpus_per_rank = 1;
  int max_restarts = 0;
  int keep_last = 0;
  std::string data_dir = {};  // "" = the suite's prepared data
};

class ServiceE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_root_ = new std::string(testing::FreshDir("service-e2e-data"));
    WriteCorpus(*data_root_ + "/corpus");
    auto r = RunCommand({Binary("cli/llmt"), "prepare", "--input", *data_root_ + "/corpus", "--out",
                         *data_root_ + "/data", "--vocab-size", "320", "--val-fraction", "0.1",
                         "--seed", "3"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    stdfs::remove_all(*data_root_);
    delete data_root_;
  }

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = testing::FreshDir(std::string("svc-") + info->name());
    cluster_ = std::make_unique<Cluster>(root_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
    cluster_.reset();
    // No trainer of this test may outlive it.
    EXPECT_TRUE(WaitFor([&] { return PidsMatching({root_}).empty(); }, 5000))
        << "processes left behind: " << PidsMatching({root_}).size();
    if (!HasFailure()) stdfs::remove_all(root_);
  }

  std::string WriteSpec(const std::string& name, const SpecOptions& o) {
    std::ostringstream s;
    s << "name: " << name << "\n"
      << "model:\n  family: gpt2\n  d_model: 32\n  n_layer: 2\n  n_head: 4\n  max_seq_len: 32\n"
      << "data:\n  dir: " << (o.data_dir.empty() ? *data_root_ + "/data" : o.data_dir) << "\n"
      << "train:\n  batch_size: 8\n  seq_len: 32\n  max_steps: " << o.max_steps
      << "\n  seed: 11\n  threads: 1\n  log_every: 100\n"
      << "optim:\n  lr: 3.0e-3\n  weight_decay: 0.1\n  grad_clip: 1.0\n"
      << "schedule:\n  kind: cosine\n  warmup_steps: 5\n  min_lr_ratio: 0.1\n"
      << "eval:\n  every_steps: " << o.eval_every << "\n  steps: 2\n"
      << "checkpoint:\n  every_steps: " << o.ckpt_every << "\n  keep_last: " << o.keep_last << "\n"
      << "resources:\n  ranks: " << o.ranks << "\n  cpus_per_rank: " << o.cpus_per_rank << "\n"
      << "max_restarts: " << o.max_restarts << "\n";
    std::string path = root_ + "/" + name + ".yaml";
    std::ofstream(path) << s.str();
    return path;
  }

  // Waits until the job has a committed checkpoint at or after `step`.
  bool WaitCheckpoint(const std::string& job, int64_t step, int timeout_ms = 60000) {
    return cluster_->WaitJob(
        job,
        [&](const v1::Job& j) {
          return j.has_latest_checkpoint() && j.latest_checkpoint().step() >= step;
        },
        timeout_ms);
  }

  v1::Job WaitDone(const std::string& job, int timeout_ms = 120000) {
    v1::Job j;
    EXPECT_TRUE(cluster_->WaitJob(job, Terminal, timeout_ms, &j))
        << job << " still " << v1::JobState_Name(j.state()) << ": " << j.state_reason();
    return j;
  }

  // Trainer processes of `attempt` (their spec file lives under the worker's
  // state dir in attempts/<id>/).
  std::vector<int> TrainerPids(uint64_t attempt) {
    return PidsMatching({root_ + "/", absl::StrCat("/state/attempts/", attempt, "/")});
  }

  static std::string* data_root_;
  std::string root_;
  std::unique_ptr<Cluster> cluster_;
};
std::string* ServiceE2E::data_root_ = nullptr;

int64_t MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      (void)absl::SimpleAtod(line.substr(series.size() + 1), &v);
      return static_cast<int64_t>(v);
    }
  }
  return -1;
}

TEST_F(ServiceE2E, SubmitRunsToSuccessWithCheckpointsAndMetrics) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  Daemon* w = cluster_->StartWorker("w1", 2);
  ASSERT_NE(w, nullptr);
  std::string job = cluster_->Submit(WriteSpec("basic", {.max_steps = 300}));
  ASSERT_EQ(job, "jobs/1");

  // watch: plain lines off a terminal, exit code 0 for SUCCEEDED.
  auto watch = cluster_->Cli({"watch", job});
  EXPECT_EQ(watch.exit_code, 0) << watch.output;
  EXPECT_THAT(watch.output, HasSubstr("step 300/300"));
  EXPECT_THAT(watch.output, HasSubstr("jobs/1 SUCCEEDED"));
  EXPECT_THAT(watch.output, HasSubstr("perplexity"));

  v1::Job j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason();
  EXPECT_EQ(j.progress().step(), 300);
  EXPECT_GT(j.progress().metrics().at("val_loss"), 0);
  EXPECT_LT(j.progress().metrics().at("loss"), 4.5);  // from ~5.8 at init

  // Checkpoints: every 100 steps, registered with size and manifest hash.
  auto ckpts = cluster_->Checkpoints(job);
  ASSERT_EQ(ckpts.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ckpts[i].step(), 100 * (i + 1));
    EXPECT_GT(ckpts[i].bytes(), 1000);
    EXPECT_EQ(ckpts[i].sha256().size(), 64u);
    EXPECT_TRUE(stdfs::exists(ckpts[i].uri() + "/model.safetensors")) << ckpts[i].uri();
    EXPECT_GT(ckpts[i].metrics().at("val_loss"), 0);
  }
  EXPECT_EQ(j.latest_checkpoint().step(), 300);
  auto latest = cluster_->Cli({"checkpoints", job, "--latest"});
  EXPECT_EQ(latest.exit_code, 0);
  EXPECT_EQ(latest.output, ckpts[2].uri() + "\n");

  // The final checkpoint is a usable model.
  auto sample = RunCommand({Binary("cli/llmt"), "sample", "--checkpoint", ckpts[2].uri(),
                            "--prompt", "The king", "--max-tokens", "10", "--seed", "1"});
  EXPECT_EQ(sample.exit_code, 0) << sample.output;

  // Worker /metrics.
  std::string m = HttpGet(w->Port("http_port"), "/metrics");
  const std::string lbl = "{job=\"jobs/1\",rank=\"0\"}";
  EXPECT_EQ(MetricValue(m, "llmt_train_steps_total" + lbl), 300) << m;
  EXPECT_EQ(MetricValue(m, "llmt_step_duration_seconds_count" + lbl), 300);
  EXPECT_EQ(MetricValue(m, "llmt_checkpoint_duration_seconds_count" + lbl), 3);
  int64_t bytes = 0;
  for (const auto& c : ckpts) bytes += c.bytes();
  EXPECT_EQ(MetricValue(m, "llmt_checkpoint_bytes_total" + lbl), bytes);
  EXPECT_EQ(MetricValue(m, "llmt_attempts_running" + lbl), 0);
  for (const char* series : {"llmt_train_loss", "llmt_val_loss", "llmt_learning_rate",
                             "llmt_grad_norm", "llmt_tokens_per_second", "llmt_mfu_ratio"}) {
    EXPECT_THAT(m, HasSubstr(std::string(series) + lbl + " ")) << series;
  }
  EXPECT_THAT(m, HasSubstr("llmt_worker_ranks_ended_total{outcome=\"SUCCEEDED\"} 1"));

  // get, list, logs.
  auto get = cluster_->Cli({"get", job});
  EXPECT_EQ(get.exit_code, 0);
  EXPECT_THAT(get.output, HasSubstr("SUCCEEDED"));
  EXPECT_THAT(get.output, HasSubstr("step 300/300"));
  auto list = cluster_->Cli({"list", "--state", "succeeded"});
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_THAT(list.output, HasSubstr("jobs/1"));
  auto logs = cluster_->Cli({"logs", job});
  EXPECT_EQ(logs.exit_code, 0);
  EXPECT_THAT(logs.output, HasSubstr("step 300/300"));
  EXPECT_THAT(logs.output, HasSubstr("checkpoint"));

  // Both daemons stop cleanly on SIGTERM.
  EXPECT_EQ(w->Stop(SIGTERM), 0);
  EXPECT_EQ(cluster_->coordinator().Stop(SIGTERM), 0);
}

TEST_F(ServiceE2E, FinishedRankSeriesAreDroppedAfterTheirTtl) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  Daemon* w = cluster_->StartWorker("w1", 1, {"--finished_series_ttl=1s"});
  ASSERT_NE(w, nullptr);
  std::string job = cluster_->Submit(WriteSpec("short", {.max_steps = 50}));
  ASSERT_EQ(WaitDone(job).state(), v1::JOB_STATE_SUCCEEDED);
  const std::string lbl = "{job=\"" + job + "\",rank=\"0\"}";
  std::string m;
  // A long-running worker must not export every job it ever ran.
  EXPECT_TRUE(WaitFor(
      [&] {
        m = HttpGet(w->Port("http_port"), "/metrics");
        return !m.empty() && m.find(lbl) == std::string::npos;
      },
      15000))
      << m;
  // Worker-level series stay.
  EXPECT_THAT(m, HasSubstr("llmt_worker_ranks_ended_total{outcome=\"SUCCEEDED\"} 1"));
}

TEST_F(ServiceE2E, CancelMidRunStopsTheTrainer) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  ASSERT_NE(cluster_->StartWorker("w1", 2), nullptr);
  std::string job = cluster_->Submit(WriteSpec("long", {.max_steps = 100000, .ckpt_every = 0}));
  ASSERT_FALSE(job.empty());
  v1::Job j;
  ASSERT_TRUE(cluster_->WaitJob(
      job, [](const v1::Job& x) { return x.progress().step() >= 20; }, 60000, &j));
  const uint64_t attempt = j.current_attempt_id();
  ASSERT_EQ(TrainerPids(attempt).size(), 1u);

  auto cancel = cluster_->Cli({"cancel", job});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.output;
  j = WaitDone(job, 30000);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  // The trainer got SIGTERM: it checkpointed where it was, then exited.
  EXPECT_TRUE(WaitFor([&] { return TrainerPids(attempt).empty(); }, 15000));
  EXPECT_TRUE(cluster_->WaitJob(
      job, [](const v1::Job& x) { return x.has_latest_checkpoint(); }, 10000, &j));
  EXPECT_GT(j.latest_checkpoint().step(), 0);
  EXPECT_LT(j.latest_checkpoint().step(), 100000);
  // Its attempt ends CANCELLED once the worker confirms the rank stopped.
  EXPECT_TRUE(WaitFor(
      [&] {
        auto a = cluster_->Attempts(job);
        return a.size() == 1 && a[0].state() == v1::ATTEMPT_STATE_CANCELLED;
      },
      15000));
  auto watch = cluster_->Cli({"watch", job});
  EXPECT_EQ(watch.exit_code, 11) << watch.output;  // CANCELLED
}

TEST_F(ServiceE2E, KilledTrainerResumesFromCheckpointToTheSameResult) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  ASSERT_NE(cluster_->StartWorker("w1", 2), nullptr);
  // Long enough that the trainer is surely still running after checkpoint 100
  // (a fast VM does ~600 steps a second).
  constexpr int kSteps = 1500;
  std::string spec = WriteSpec("crash", {.max_steps = kSteps, .max_restarts = 2});
  std::string job = cluster_->Submit(spec);
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(WaitCheckpoint(job, 100)) << cluster_->Logs();
  v1::Job j;
  ASSERT_TRUE(cluster_->GetJob(job, &j).ok());
  const uint64_t first = j.current_attempt_id();
  auto pids = TrainerPids(first);
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_EQ(kill(pids[0], SIGKILL), 0);

  j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason();
  EXPECT_EQ(j.progress().step(), kSteps);
  EXPECT_EQ(j.restarts(), 1);
  auto attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0].state(), v1::ATTEMPT_STATE_FAILED);
  EXPECT_THAT(attempts[0].reason(), HasSubstr("signal 9"));
  EXPECT_EQ(attempts[1].state(), v1::ATTEMPT_STATE_SUCCEEDED);
  EXPECT_GE(attempts[1].resume_step(), 100);
  EXPECT_EQ(attempts[1].resume_step() % 100, 0);

  // Same final weights as one uninterrupted local run: the resume was exact.
  std::string straight = root_ + "/straight";
  auto r = RunCommand({Binary("cli/llmt"), "train", spec, "--out", straight, "--progress", "none"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string a = ReadFileOrEmpty(
      straight + absl::StrFormat("/checkpoints/step-%08d/model.safetensors", kSteps));
  std::string b = ReadFileOrEmpty(j.latest_checkpoint().uri() + "/model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "service run with a crash differs from the straight run";
}

TEST_F(ServiceE2E, KilledWorkerLeaseExpiresAndJobMovesToAnotherWorker) {
  // A short lease (the harness's default is long, against load flakes): this
  // test waits for it to expire.
  ASSERT_TRUE(cluster_->StartCoordinator({"--lease_timeout=2s"}));
  Daemon* w1 = cluster_->StartWorker("w1", 2);
  Daemon* w2 = cluster_->StartWorker("w2", 2);
  ASSERT_TRUE(w1 && w2);
  constexpr int kSteps = 1500;  // still running after checkpoint 100 (see above)
  std::string job = cluster_->Submit(WriteSpec("move", {.max_steps = kSteps, .max_restarts = 2}));
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(WaitCheckpoint(job, 100)) << cluster_->Logs();
  v1::Job j;
  ASSERT_TRUE(cluster_->GetJob(job, &j).ok());
  auto attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 1u);
  const std::string first_worker = attempts[0].ranks(0).worker_id();
  Daemon* victim = first_worker == "w1" ? w1 : w2;
  const uint64_t first = j.current_attempt_id();
  ASSERT_EQ(TrainerPids(first).size(), 1u);

  EXPECT_EQ(victim->Stop(SIGKILL), -SIGKILL);
  // Its trainer dies with it (no daemon left to fence it).
  EXPECT_TRUE(WaitFor([&] { return TrainerPids(first).empty(); }, 5000));

  j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason();
  EXPECT_EQ(j.progress().step(), kSteps);
  attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0].state(), v1::ATTEMPT_STATE_FAILED);
  EXPECT_THAT(attempts[0].reason(), HasSubstr("lost"));
  EXPECT_NE(attempts[1].ranks(0).worker_id(), first_worker);
  EXPECT_GE(attempts[1].resume_step(), 100);
}

// SIGTERM on a worker is a drain: its trainer checkpoints and stops, the
// coordinator requeues the job onto the other worker from that checkpoint,
// and it does not count as a restart (max_restarts 0 would fail the job).
TEST_F(ServiceE2E, DrainedWorkerHandsItsJobOnWithoutUsingARestart) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  Daemon* w1 = cluster_->StartWorker("w1", 2);
  Daemon* w2 = cluster_->StartWorker("w2", 2);
  ASSERT_TRUE(w1 && w2);
  constexpr int kSteps = 1500;  // still running after checkpoint 100 (see above)
  std::string job = cluster_->Submit(WriteSpec("drain", {.max_steps = kSteps, .max_restarts = 0}));
  ASSERT_FALSE(job.empty());
  ASSERT_TRUE(WaitCheckpoint(job, 100)) << cluster_->Logs();
  auto attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 1u);
  const std::string first_worker = attempts[0].ranks(0).worker_id();
  Daemon* victim = first_worker == "w1" ? w1 : w2;

  EXPECT_EQ(victim->Stop(SIGTERM), 0) << cluster_->Logs();
  v1::Job j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason() << cluster_->Logs();
  EXPECT_EQ(j.progress().step(), kSteps);
  EXPECT_EQ(j.restarts(), 0);
  EXPECT_EQ(j.preemptions(), 1);
  attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0].state(), v1::ATTEMPT_STATE_PREEMPTED) << attempts[0].reason();
  EXPECT_THAT(attempts[0].reason(), HasSubstr("worker shutting down"));
  EXPECT_NE(attempts[1].ranks(0).worker_id(), first_worker);
  EXPECT_GE(attempts[1].resume_step(), 100);
}

TEST_F(ServiceE2E, CoordinatorKilledMidRunRestartsAndJobCompletesWithoutLosingRecords) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  Daemon* w = cluster_->StartWorker("w1", 2);
  ASSERT_NE(w, nullptr);
  std::string done = cluster_->Submit(WriteSpec("first", {.max_steps = 100}));
  ASSERT_EQ(WaitDone(done).state(), v1::JOB_STATE_SUCCEEDED);
  // Long enough that the trainer is still running while the coordinator is
  // down (~1.7 ms/step on a fast 2-vCPU VM: 600 steps were over before the
  // 700 ms check); checkpoints every 500 steps keep the writes few.
  constexpr int kSteps = 3000;
  std::string job =
      cluster_->Submit(WriteSpec("through", {.max_steps = kSteps, .ckpt_every = 500}));
  ASSERT_TRUE(WaitCheckpoint(job, 500)) << cluster_->Logs();

  auto jobs_before = cluster_->Jobs();
  auto attempts_before = cluster_->Attempts(job);
  auto ckpts_before = cluster_->Checkpoints(job);
  auto done_ckpts_before = cluster_->Checkpoints(done);
  ASSERT_EQ(jobs_before.size(), 2u);
  ASSERT_FALSE(ckpts_before.empty());

  EXPECT_EQ(cluster_->coordinator().Stop(SIGKILL), -SIGKILL);
  // The trainer keeps going while the coordinator is away.
  v1::Attempt a = attempts_before.back();
  EXPECT_EQ(TrainerPids(a.attempt_id()).size(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  EXPECT_EQ(TrainerPids(a.attempt_id()).size(), 1u);
  ASSERT_TRUE(cluster_->StartCoordinator());

  v1::Job j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason();
  EXPECT_EQ(j.progress().step(), kSteps);
  // The same attempt finished: the worker re-attached, nothing was restarted.
  auto attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 1u);
  EXPECT_EQ(attempts[0].attempt_id(), a.attempt_id());
  EXPECT_EQ(attempts[0].state(), v1::ATTEMPT_STATE_SUCCEEDED);
  // Every record from before the crash is still there.
  auto jobs_after = cluster_->Jobs();
  ASSERT_EQ(jobs_after.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(jobs_after[i].id(), jobs_before[i].id());
    EXPECT_EQ(jobs_after[i].spec().name(), jobs_before[i].spec().name());
  }
  EXPECT_EQ(jobs_after[0].state(), v1::JOB_STATE_SUCCEEDED);
  auto ckpts_after = cluster_->Checkpoints(job);
  for (const auto& c : ckpts_before) {
    EXPECT_TRUE(std::any_of(
        ckpts_after.begin(), ckpts_after.end(),
        [&](const v1::Checkpoint& x) { return x.step() == c.step() && x.sha256() == c.sha256(); }))
        << "checkpoint step " << c.step() << " lost";
  }
  EXPECT_EQ(ckpts_after.back().step(), kSteps);
  EXPECT_EQ(cluster_->Checkpoints(done).size(), done_ckpts_before.size());
}

TEST_F(ServiceE2E, TwoJobsOnTheOnlyWorkerRunOneAfterTheOther) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  ASSERT_NE(cluster_->StartWorker("w1", 1), nullptr);
  std::string a = cluster_->Submit(WriteSpec("a", {.max_steps = 200}));
  std::string b = cluster_->Submit(WriteSpec("b", {.max_steps = 200}));
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  // While the first runs, the second waits in the queue with a reason.
  bool saw_queued = WaitFor(
      [&] {
        auto q = cluster_->Cli({"queue"});
        return q.output.find(b) != std::string::npos;
      },
      10000);
  EXPECT_TRUE(saw_queued);
  ASSERT_EQ(WaitDone(a).state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(WaitDone(b).state(), v1::JOB_STATE_SUCCEEDED);
  auto aa = cluster_->Attempts(a), ab = cluster_->Attempts(b);
  ASSERT_EQ(aa.size(), 1u);
  ASSERT_EQ(ab.size(), 1u);
  // Never interleaved: the second attempt was placed after the first ended.
  EXPECT_GE(ab[0].create_time_us(), aa[0].end_time_us());
  EXPECT_EQ(aa[0].ranks(0).worker_id(), "w1");
  EXPECT_EQ(ab[0].ranks(0).worker_id(), "w1");
}

TEST_F(ServiceE2E, TwoRankJobSpansTwoWorkersThroughTheCoordinatorRendezvous) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  Daemon* w1 = cluster_->StartWorker("w1", 1);
  Daemon* w2 = cluster_->StartWorker("w2", 1);
  ASSERT_TRUE(w1 && w2);
  std::string job = cluster_->Submit(WriteSpec("dp", {.max_steps = 100, .ranks = 2}));
  ASSERT_FALSE(job.empty());
  v1::Job j = WaitDone(job);
  ASSERT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.state_reason();
  EXPECT_EQ(j.progress().step(), 100);
  auto attempts = cluster_->Attempts(job);
  ASSERT_EQ(attempts.size(), 1u);
  ASSERT_EQ(attempts[0].ranks_size(), 2);
  std::set<std::string> workers = {attempts[0].ranks(0).worker_id(),
                                   attempts[0].ranks(1).worker_id()};
  EXPECT_EQ(workers, (std::set<std::string>{"w1", "w2"}));
  EXPECT_TRUE(attempts[0].ranks(0).succeeded() && attempts[0].ranks(1).succeeded());
  // Rank 1's trainer joined a 2-rank Gloo group through the coordinator's KV.
  std::string rank1_worker = attempts[0].ranks(1).worker_id();
  std::string log =
      ReadFileOrEmpty(absl::StrCat(root_, "/", rank1_worker, "/state/logs/job-1-attempt-",
                                   attempts[0].attempt_id(), "-rank-1.log"));
  EXPECT_THAT(log, HasSubstr("rank 1/2 joined (gloo, coordinator rendezvous KV"));
  auto ckpts = cluster_->Checkpoints(job);
  ASSERT_EQ(ckpts.size(), 1u);
  EXPECT_EQ(ckpts[0].step(), 100);
}

// Mutual TLS everywhere: workers, the CLI and the trainers' rendezvous.
TEST_F(ServiceE2E, MutualTlsForWorkersCliAndRendezvous) {
  const std::string d = root_ + "/pki";
  stdfs::create_directories(d);
  std::string cmd = absl::StrCat(
      "cd ", d,
      " && (openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=llmt-test-ca "
      "-keyout ca.key -out ca.pem && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost "
      "-keyout server.key -out server.csr && printf 'subjectAltName=DNS:localhost' > san.ext && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile san.ext -out server.pem && openssl req -newkey rsa:2048 -nodes -subj /CN=client "
      "-keyout client.key -out client.csr && openssl x509 -req -in client.csr -CA ca.pem "
      "-CAkey ca.key -CAcreateserial -days 1 -out client.pem) > openssl.log 2>&1");
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl could not make certificates";
  // Nothing here tests lease expiry: a long lease keeps TLS heartbeats on a
  // loaded CI machine from losing a worker (seen once with 2 s while a
  // parallel test ran a CMake configure).
  ASSERT_TRUE(cluster_->StartCoordinator({"--tls_cert=" + d + "/server.pem",
                                          "--tls_key=" + d + "/server.key",
                                          "--tls_client_ca=" + d + "/ca.pem",
                                          "--lease_timeout=10s"}));
  const std::vector<std::string> worker_tls = {
      "--tls_ca=" + d + "/ca.pem", "--tls_cert=" + d + "/client.pem",
      "--tls_key=" + d + "/client.key", "--tls_server_name=localhost"};
  ASSERT_NE(cluster_->StartWorker("w1", 1, worker_tls), nullptr);
  ASSERT_NE(cluster_->StartWorker("w2", 1, worker_tls), nullptr);
  const std::vector<std::string> cli_tls = {
      "--tls-ca=" + d + "/ca.pem", "--tls-cert=" + d + "/client.pem",
      "--tls-key=" + d + "/client.key", "--tls-server-name=localhost"};
  std::vector<std::string> submit = {"submit", WriteSpec("tls", {.max_steps = 50, .ranks = 2})};
  submit.insert(submit.end(), cli_tls.begin(), cli_tls.end());
  auto r = cluster_->Cli(submit);
  ASSERT_EQ(r.exit_code, 0) << r.output << cluster_->Logs();
  std::vector<std::string> watch = {"watch", "jobs/1"};
  watch.insert(watch.end(), cli_tls.begin(), cli_tls.end());
  r = cluster_->Cli(watch);
  EXPECT_EQ(r.exit_code, 0) << r.output << cluster_->Logs();
  EXPECT_THAT(r.output, HasSubstr("jobs/1 SUCCEEDED"));
  // Without a client certificate the CLI cannot get in.
  r = cluster_->Cli({"list", "--tls-ca=" + d + "/ca.pem", "--tls-server-name=localhost"});
  EXPECT_NE(r.exit_code, 0) << r.output;
}

TEST_F(ServiceE2E, BadInputsGiveClearErrors) {
  const std::string user_tokens = root_ + "/user_tokens", worker_tokens = root_ + "/worker_tokens";
  std::ofstream(user_tokens) << "user-secret\n";
  std::ofstream(worker_tokens) << "worker-secret\n";
  // Unreachable coordinator: exit 3, one line.
  {
    auto r = cluster_->Cli({"list"});
    EXPECT_EQ(r.exit_code, 3) << r.output;
    EXPECT_THAT(r.output, HasSubstr("cannot reach the coordinator"));
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  ASSERT_TRUE(cluster_->StartCoordinator(
      {"--job_tokens_file=" + user_tokens, "--worker_tokens_file=" + worker_tokens}));
  ASSERT_NE(cluster_->StartWorker("w1", 2, {"--token_file=" + worker_tokens}), nullptr);
  std::ofstream(root_ + "/user.token") << "user-secret\n";
  std::ofstream(root_ + "/wrong.token") << "nope\n";
  const std::string good = "--token-file=" + root_ + "/user.token";

  // Wrong or missing token: exit 4, one line.
  for (const std::string& bad : {"--token-file=" + root_ + "/wrong.token", std::string()}) {
    std::vector<std::string> args = {"list"};
    if (!bad.empty()) args.push_back(bad);
    auto r = cluster_->Cli(args);
    EXPECT_EQ(r.exit_code, 4) << r.output;
    EXPECT_THAT(r.output, HasSubstr("authentication failed"));
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  // The worker token is not a user token.
  auto wr = cluster_->Cli({"list", "--token-file=" + worker_tokens});
  EXPECT_EQ(wr.exit_code, 4) << wr.output;

  // A spec the coordinator rejects: exit 2 with its field-level message.
  std::string spec = WriteSpec("bad", {});
  auto r = cluster_->Cli({"submit", spec, "--set", "model.n_head=5", good});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("model.n_head"));
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  // Unknown fields are caught before sending.
  r = cluster_->Cli({"submit", spec, "--set", "train.no_such_field=1", good});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no_such_field"));
  EXPECT_EQ(cluster_->Cli({"list", good}).output.find("jobs/"), std::string::npos);

  // A data directory the worker does not have: the attempt fails with that
  // reason, visible in `llmt get`.
  std::string job =
      cluster_->Submit(WriteSpec("nodata", {.data_dir = root_ + "/no/such/data"}), {good});
  ASSERT_EQ(job, "jobs/1");
  v1::Job j;
  EXPECT_TRUE(WaitFor(
      [&] {
        auto g = cluster_->Cli({"get", job, good});
        return g.output.find("FAILED") != std::string::npos;
      },
      30000));
  auto get = cluster_->Cli({"get", job, good});
  EXPECT_EQ(get.exit_code, 0) << get.output;
  EXPECT_THAT(get.output, HasSubstr("FAILED"));
  EXPECT_THAT(get.output, HasSubstr("data.dir '" + root_ + "/no/such/data' does not exist"));
  EXPECT_THAT(get.output, HasSubstr("worker w1"));
  auto watch = cluster_->Cli({"watch", job, good});
  EXPECT_EQ(watch.exit_code, 10) << watch.output;
  // A job that does not exist.
  auto nf = cluster_->Cli({"get", "jobs/99", good});
  EXPECT_EQ(nf.exit_code, 5) << nf.output;
}

}  // namespace
}  // namespace llmt::wtest
