// Coordinator state machine: scheduling, leases (injected clock), fencing,
// idempotency, cancel, checkpoints and retention, WatchJob resume,
// pagination, recovery from the store.
#include "coordinator/core.h"

#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "gtest/gtest.h"

namespace llmt::coord {
namespace {

using v1::JobState;

v1::JobSpec Spec(int ranks = 1, int gpus = 0, int priority = 0, int max_restarts = 0) {
  v1::JobSpec s;
  s.set_name("t");
  s.mutable_model()->set_family("gpt2");
  s.mutable_model()->set_d_model(64);
  s.mutable_model()->set_n_layer(2);
  s.mutable_model()->set_n_head(4);
  s.mutable_model()->set_max_seq_len(64);
  s.mutable_data()->set_dir("/data/tiny");
  s.mutable_train()->set_batch_size(2);
  s.mutable_train()->set_seq_len(32);
  s.mutable_train()->set_max_steps(100);
  if (gpus > 0) s.mutable_train()->set_device("cuda");
  s.mutable_optim()->set_lr(1e-3);
  s.mutable_resources()->set_ranks(ranks);
  s.mutable_resources()->set_gpus_per_rank(gpus);
  s.set_priority(priority);
  s.set_max_restarts(max_restarts);
  return s;
}

class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmp = ::testing::TempDir();
    if (!tmp.empty() && tmp.back() == '/') tmp.pop_back();
    dir_ = tmp + "/core_test_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_TRUE(fs::RemoveAll(dir_).ok());
    opts_.jobs_dir = dir_ + "/jobs";
    opts_.lease_timeout = absl::Seconds(10);
    opts_.restart_backoff = absl::Seconds(2);
    Open();
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
  }
  void Open() {
    core_.reset();
    store_.reset();
    auto s = store::Store::Open(dir_ + "/db");
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    registry_ = std::make_unique<metrics::Registry>();  // a restarted process has fresh metrics
    core_ = std::make_unique<Coordinator>(store_.get(), &clock_, opts_, registry_.get());
    ASSERT_TRUE(core_->Recover().ok());
  }

  uint64_t Register(const std::string& id, int gpus, int cpus = 0,
                    std::vector<v1::RunningRank> running = {}) {
    v1::RegisterWorkerRequest r;
    r.set_worker_id(id);
    r.set_address(id + ":9000");
    for (int i = 0; i < gpus; ++i) {
      auto* g = r.mutable_capacity()->add_gpus();
      g->set_index(i);
      g->set_model("H100");
    }
    r.mutable_capacity()->set_cpu_cores(cpus);
    for (auto& rr : running) *r.add_running() = rr;
    auto resp = core_->RegisterWorker(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->session() : 0;
  }

  absl::StatusOr<v1::HeartbeatResponse> Hb(const std::string& id, uint64_t session,
                                           std::vector<std::pair<uint64_t, int>> running = {}) {
    v1::HeartbeatRequest h;
    h.set_worker_id(id);
    h.set_session(session);
    for (auto [a, r] : running) {
      auto* rr = h.add_running();
      rr->set_attempt_id(a);
      rr->set_rank(r);
    }
    return core_->Heartbeat(h);
  }

  v1::Job Create(const v1::JobSpec& spec, const std::string& request_id = "") {
    v1::CreateJobRequest r;
    *r.mutable_spec() = spec;
    r.set_request_id(request_id);
    auto j = core_->CreateJob(r);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *j : v1::Job();
  }

  v1::Job Get(uint64_t id) {
    v1::GetJobRequest r;
    r.set_name(JobName(id));
    auto j = core_->GetJob(r);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *j : v1::Job();
  }

  v1::Attempt GetAttempt(uint64_t job, uint64_t attempt_id) {
    v1::ListAttemptsRequest r;
    r.set_name(JobName(job));
    auto l = core_->ListAttempts(r);
    EXPECT_TRUE(l.ok());
    for (const auto& a : l->attempts()) {
      if (a.attempt_id() == attempt_id) return a;
    }
    ADD_FAILURE() << "attempt " << attempt_id << " not found";
    return v1::Attempt();
  }

  absl::Status Result(uint64_t attempt, int rank, v1::AttemptOutcome o, const std::string& w = "",
                      int64_t step = 0) {
    v1::ReportAttemptResultRequest r;
    r.set_attempt_id(attempt);
    r.set_rank(rank);
    r.set_outcome(o);
    r.set_worker_id(w);
    r.set_final_step(step);
    return core_->ReportAttemptResult(r).status();
  }

  absl::Status Progress(uint64_t attempt, int rank, int64_t step, std::vector<std::string> logs = {},
                        const std::string& worker = "") {
    v1::ReportProgressRequest r;
    r.set_attempt_id(attempt);
    r.set_rank(rank);
    r.set_step(step);
    r.set_worker_id(worker);
    (*r.mutable_metrics())["loss"] = 5.0 - step * 0.01;
    for (auto& l : logs) r.add_log_lines(l);
    return core_->ReportProgress(r);
  }

  absl::StatusOr<v1::Checkpoint> Ckpt(const v1::Job& job, uint64_t attempt, int64_t step,
                                      double val_loss = -1, bool make_files = true) {
    std::string path = job.spec().output_dir() + "/checkpoints/step-" + std::to_string(step);
    if (make_files) {
      EXPECT_TRUE(fs::MakeDirs(path).ok());
      EXPECT_TRUE(fs::WriteFileAtomic(path + "/model.safetensors", std::string(1000, 'x')).ok());
    }
    v1::CommitCheckpointRequest r;
    r.set_attempt_id(attempt);
    r.set_rank(0);
    r.set_step(step);
    r.set_uri("file://" + path);
    r.set_bytes(1000);
    r.set_sha256(fs::Sha256Hex(path));
    if (val_loss >= 0) (*r.mutable_metrics())["val_loss"] = val_loss;
    return core_->CommitCheckpoint(r);
  }

  std::vector<v1::Event> Events(uint64_t job, int64_t after = 0) {
    std::vector<v1::Event> out;
    v1::WatchJobRequest r;
    r.set_name(JobName(job));
    r.set_after_seq(after);
    // Stop at the first wait: collect what is there now.
    std::atomic<bool> stop{false};
    std::thread stopper([&] {
      absl::SleepFor(absl::Milliseconds(300));
      stop = true;
    });
    core_->WatchJob(
             r,
             [&](const v1::Event& e) {
               out.push_back(e);
               return true;
             },
             [&] { return stop.load(); })
        .IgnoreError();
    stopper.join();
    return out;
  }

  std::string dir_;
  FakeClock clock_;
  CoordinatorOptions opts_;
  std::unique_ptr<metrics::Registry> registry_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Coordinator> core_;
};

TEST_F(CoreTest, CreateJobValidatesAndNamesTheField) {
  Register("w1", 0, 8);
  v1::JobSpec bad = Spec();
  bad.mutable_model()->set_d_model(65);  // not divisible by n_head
  v1::CreateJobRequest r;
  *r.mutable_spec() = bad;
  auto j = core_->CreateJob(r);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(j.status().message(), "model.d_model")) << j.status();

  v1::JobSpec rel = Spec();
  rel.set_output_dir("relative/dir");
  *r.mutable_spec() = rel;
  j = core_->CreateJob(r);
  ASSERT_FALSE(j.ok());
  EXPECT_TRUE(absl::StrContains(j.status().message(), "output_dir")) << j.status();

  v1::Job ok = Create(Spec());
  EXPECT_EQ(ok.name(), JobName(ok.id()));
  EXPECT_EQ(ok.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(ok.spec().output_dir(), dir_ + "/jobs/" + std::to_string(ok.id()));
  EXPECT_EQ(ok.spec().resources().cpus_per_rank(), 1);  // defaults applied
  EXPECT_EQ(ok.last_event_seq(), 1);

  v1::GetJobRequest g;
  g.set_name("jobs/999");
  EXPECT_EQ(core_->GetJob(g).status().code(), absl::StatusCode::kNotFound);
  g.set_name("jobs/abc");
  EXPECT_EQ(core_->GetJob(g).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoreTest, UnschedulableJobIsRejectedUnlessForceQueue) {
  v1::CreateJobRequest r;
  *r.mutable_spec() = Spec(2, 4);
  auto j = core_->CreateJob(r);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(j.status().message(), "2 ranks x 4 GPUs")) << j.status();

  Register("w1", 4);
  j = core_->CreateJob(r);  // 8 GPUs in total needed, one worker has 4
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(j.status().message(), "largest has 4 GPUs")) << j.status();

  r.mutable_spec()->set_force_queue(true);
  j = core_->CreateJob(r);
  ASSERT_TRUE(j.ok()) << j.status();
  core_->Tick();
  auto q = core_->GetQueue();
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->entries_size(), 1);
  EXPECT_TRUE(absl::StrContains(q->entries(0).reason(), "no set of ready workers"))
      << q->entries(0).reason();

  Register("w2", 4);  // now the gang fits across both workers
  core_->Tick();
  EXPECT_EQ(Get(j->id()).state(), v1::JOB_STATE_RUNNING);
}

TEST_F(CoreTest, IdempotentCreateSurvivesRestart) {
  Register("w1", 0, 8);
  v1::Job a = Create(Spec(), "req-1");
  v1::Job b = Create(Spec(), "req-1");
  EXPECT_EQ(a.id(), b.id());
  v1::CreateJobRequest r;
  v1::JobSpec other = Spec();
  other.set_name("different");
  *r.mutable_spec() = other;
  r.set_request_id("req-1");
  auto c = core_->CreateJob(r);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(c.status().message(), JobName(a.id()))) << c.status();

  Open();  // restart from the store
  v1::Job d = Create(Spec(), "req-1");
  EXPECT_EQ(d.id(), a.id());
  v1::Job e = Create(Spec(), "req-2");
  EXPECT_GT(e.id(), a.id());  // ids are not reused after a restart
  auto list = core_->ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->total_size(), 2);
}

TEST_F(CoreTest, SuccessPathWithProgressCheckpointAndEvents) {
  uint64_t s = Register("w1", 2);
  v1::JobSpec spec = Spec(1, 2);
  v1::Job job = Create(spec);
  core_->Tick();
  job = Get(job.id());
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  uint64_t att = job.current_attempt_id();

  auto hb = Hb("w1", s);
  ASSERT_TRUE(hb.ok());
  ASSERT_EQ(hb->desired_size(), 1);
  const auto& d = hb->desired(0);
  EXPECT_EQ(d.attempt_id(), att);
  EXPECT_EQ(d.world_size(), 1);
  ASSERT_EQ(d.local_ranks_size(), 1);
  EXPECT_EQ(d.local_ranks(0).gpu_indices_size(), 2);
  EXPECT_EQ(d.spec().output_dir(), job.spec().output_dir());
  EXPECT_EQ(d.worker_addresses().at("w1"), "w1:9000");
  EXPECT_TRUE(d.resume_uri().empty());

  ASSERT_TRUE(Hb("w1", s, {{att, 0}}).ok());
  EXPECT_EQ(GetAttempt(job.id(), att).state(), v1::ATTEMPT_STATE_RUNNING);
  ASSERT_TRUE(Progress(att, 0, 10, {"step 10 loss 4.9"}).ok());
  ASSERT_TRUE(Progress(att, 0, 10).ok());  // retry: dropped
  ASSERT_TRUE(Progress(att, 0, 20).ok());
  auto ck = Ckpt(job, att, 20);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->name(), JobName(job.id()) + "/checkpoints/20");
  auto again = Ckpt(job, att, 20, -1, false);  // idempotent
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(Result(att, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED, "w1", 100).ok());
  job = Get(job.id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.progress().step(), 20);
  EXPECT_EQ(job.latest_checkpoint().step(), 20);
  EXPECT_GT(job.end_time_us(), 0);
  EXPECT_EQ(GetAttempt(job.id(), att).state(), v1::ATTEMPT_STATE_SUCCEEDED);
  // Succeeded ranks are no longer desired.
  hb = Hb("w1", s);
  EXPECT_EQ(hb->desired_size(), 0);

  std::vector<v1::Event> ev = Events(job.id());
  ASSERT_FALSE(ev.empty());
  for (size_t i = 0; i < ev.size(); ++i) EXPECT_EQ(ev[i].seq(), static_cast<int64_t>(i + 1));
  EXPECT_EQ(ev.back().seq(), job.last_event_seq());
  ASSERT_TRUE(ev.back().has_state_change());
  EXPECT_EQ(ev.back().state_change().to(), v1::JOB_STATE_SUCCEEDED);
  int progress = 0, logs = 0, ckpts = 0;
  for (const auto& e : ev) {
    progress += e.has_progress();
    logs += e.has_log();
    ckpts += e.has_checkpoint();
  }
  EXPECT_EQ(progress, 2);
  EXPECT_EQ(logs, 1);
  EXPECT_EQ(ckpts, 1);
}

TEST_F(CoreTest, PriorityOrderAndQueueReasons) {
  uint64_t s = Register("w1", 0, 2);
  v1::Job low = Create(Spec(1, 0, 0));
  v1::Job high = Create(Spec(1, 0, 10));
  v1::JobSpec big = Spec(1, 0, 5);
  big.mutable_resources()->set_cpus_per_rank(2);
  v1::Job mid = Create(big);
  v1::Job low2 = Create(Spec(1, 0, 0));
  core_->Tick();
  // high (1 core) placed first; mid needs 2 cores, only 1 left: it waits and
  // the lower-priority jobs queue behind it rather than starving it.
  EXPECT_EQ(Get(high.id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(mid.id()).state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(Get(low.id()).state(), v1::JOB_STATE_PENDING);
  auto q = core_->GetQueue();
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->entries_size(), 3);
  EXPECT_EQ(q->entries(0).name(), JobName(mid.id()));
  EXPECT_EQ(q->entries(0).position(), 1);
  EXPECT_TRUE(absl::StrContains(q->entries(0).reason(), "waiting for resources"))
      << q->entries(0).reason();
  EXPECT_EQ(q->entries(1).name(), JobName(low.id()));  // same priority: submit order
  EXPECT_EQ(q->entries(2).name(), JobName(low2.id()));
  EXPECT_TRUE(absl::StrContains(q->entries(1).reason(), "behind " + JobName(mid.id())))
      << q->entries(1).reason();

  uint64_t att = Get(high.id()).current_attempt_id();
  ASSERT_TRUE(Result(att, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED, "w1").ok());
  core_->Tick();
  EXPECT_EQ(Get(mid.id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(low.id()).state(), v1::JOB_STATE_PENDING);
  (void)s;
}

TEST_F(CoreTest, LeaseExpiryRestartsFromCheckpointThenFails) {
  uint64_t s1 = Register("w1", 1);
  v1::Job job = Create(Spec(1, 1, 0, /*max_restarts=*/1));
  core_->Tick();
  uint64_t a1 = Get(job.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s1, {{a1, 0}}).ok());
  ASSERT_TRUE(Ckpt(Get(job.id()), a1, 50).ok());

  clock_.Advance(absl::Seconds(9));
  core_->Tick();
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);  // lease still valid
  clock_.Advance(absl::Seconds(2));
  core_->Tick();
  job = Get(job.id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(job.restarts(), 1);
  EXPECT_TRUE(absl::StrContains(job.state_reason(), "worker w1 lost")) << job.state_reason();
  EXPECT_TRUE(absl::StrContains(job.state_reason(), "checkpoint step 50")) << job.state_reason();
  EXPECT_EQ(GetAttempt(job.id(), a1).state(), v1::ATTEMPT_STATE_FAILED);
  auto workers = core_->ListWorkers();
  ASSERT_EQ(workers->workers(0).state(), v1::WORKER_STATE_LOST);

  // A second worker comes up; the job waits out its backoff first.
  uint64_t s2 = Register("w2", 1);
  core_->Tick();
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  auto q = core_->GetQueue();
  EXPECT_TRUE(absl::StrContains(q->entries(0).reason(), "backoff")) << q->entries(0).reason();
  clock_.Advance(absl::Seconds(2));
  core_->Tick();
  job = Get(job.id());
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  uint64_t a2 = job.current_attempt_id();
  EXPECT_NE(a2, a1);
  auto hb = Hb("w2", s2);
  ASSERT_EQ(hb->desired_size(), 1);
  EXPECT_EQ(hb->desired(0).resume_step(), 50);
  EXPECT_TRUE(absl::StrContains(hb->desired(0).resume_uri(), "step-50"));
  EXPECT_EQ(hb->desired(0).ordinal(), 1);

  // The old worker returns: its stale attempt is not desired and its reports
  // are fenced off.
  hb = Hb("w1", s1, {{a1, 0}});
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->desired_size(), 0);
  absl::Status p = Progress(a1, 0, 60);
  EXPECT_EQ(p.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(p.message(), "stale")) << p;
  EXPECT_EQ(Ckpt(job, a1, 60).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->ListWorkers()->workers(0).state(), v1::WORKER_STATE_READY);

  // The second attempt crashes: max_restarts (1) is used up.
  ASSERT_TRUE(Hb("w2", s2, {{a2, 0}}).ok());
  ASSERT_TRUE(Result(a2, 0, v1::ATTEMPT_OUTCOME_FAILED, "w2").ok());
  job = Get(job.id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.state_reason(), "no restarts left")) << job.state_reason();
}

// A worker shutting down (SIGTERM: a drain) heartbeats draining, so nothing
// new is placed on it; its rank checkpoints and reports STOPPED, and the job
// is requeued from that checkpoint onto another worker without using a
// restart (max_restarts 0 here, so a counted restart would fail the job).
TEST_F(CoreTest, DrainingWorkerRequeuesItsJobWithoutUsingARestart) {
  uint64_t s1 = Register("w1", 1);
  v1::Job job = Create(Spec(1, 1, 0, /*max_restarts=*/0));
  core_->Tick();
  uint64_t a1 = Get(job.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s1, {{a1, 0}}).ok());
  ASSERT_TRUE(Ckpt(Get(job.id()), a1, 40).ok());

  v1::HeartbeatRequest h;
  h.set_worker_id("w1");
  h.set_session(s1);
  h.set_draining(true);
  h.add_running()->set_attempt_id(a1);
  auto hb = core_->Heartbeat(h);
  ASSERT_TRUE(hb.ok()) << hb.status();
  EXPECT_EQ(hb->desired_size(), 1);  // still wanted until it reports
  EXPECT_EQ(core_->ListWorkers()->workers(0).state(), v1::WORKER_STATE_DRAINING);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);

  ASSERT_TRUE(Ckpt(Get(job.id()), a1, 45).ok());  // the SIGTERM checkpoint
  ASSERT_TRUE(Result(a1, 0, v1::ATTEMPT_OUTCOME_STOPPED, "w1", 45).ok());
  job = Get(job.id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING) << job.state_reason();
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_EQ(job.preemptions(), 1);
  EXPECT_TRUE(absl::StrContains(job.state_reason(), "not counted as a restart"))
      << job.state_reason();
  EXPECT_EQ(GetAttempt(job.id(), a1).state(), v1::ATTEMPT_STATE_PREEMPTED);

  // The draining worker gets nothing new, even with its GPU free.
  core_->Tick();
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  h.clear_running();
  hb = core_->Heartbeat(h);
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->desired_size(), 0);

  // Another worker takes the job from the SIGTERM checkpoint.
  uint64_t s2 = Register("w2", 1);
  core_->Tick();
  job = Get(job.id());
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  hb = Hb("w2", s2);
  ASSERT_EQ(hb->desired_size(), 1);
  EXPECT_EQ(hb->desired(0).resume_step(), 45);

  // A rank placed on a worker just before it started draining, reported
  // STOPPED without having started: requeued, still no restart used.
  uint64_t a2 = job.current_attempt_id();
  ASSERT_TRUE(Result(a2, 0, v1::ATTEMPT_OUTCOME_STOPPED, "w2").ok());
  job = Get(job.id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING) << job.state_reason();
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_EQ(job.preemptions(), 2);
  EXPECT_EQ(GetAttempt(job.id(), a2).state(), v1::ATTEMPT_STATE_PREEMPTED);
  core_->Tick();
  job = Get(job.id());
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Hb("w2", s2)->desired(0).resume_step(), 45);

  // A draining worker whose lease runs out is lost like any other.
  clock_.Advance(absl::Seconds(11));
  ASSERT_TRUE(Hb("w2", s2, {{job.current_attempt_id(), 0}}).ok());
  core_->Tick();
  auto workers = core_->ListWorkers();
  for (const auto& w : workers->workers()) {
    EXPECT_EQ(w.state(), w.id() == "w1" ? v1::WORKER_STATE_LOST : v1::WORKER_STATE_READY)
        << w.id();
  }
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
}

TEST_F(CoreTest, BackoffDoublesPerRestart) {
  uint64_t s = Register("w1", 0, 1);
  v1::Job job = Create(Spec(1, 0, 0, 5));
  int64_t prev_delay = 0;
  for (int k = 1; k <= 3; ++k) {
    core_->Tick();
    job = Get(job.id());
    ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING) << "restart " << k;
    ASSERT_TRUE(Result(job.current_attempt_id(), 0, v1::ATTEMPT_OUTCOME_FAILED).ok());
    job = Get(job.id());
    int64_t delay = job.not_before_us() - absl::ToUnixMicros(clock_.Now());
    EXPECT_EQ(delay, absl::ToInt64Microseconds(absl::Seconds(2) * (1 << (k - 1))));
    EXPECT_GT(delay, prev_delay);
    prev_delay = delay;
    clock_.Advance(absl::Microseconds(delay));
    ASSERT_TRUE(Hb("w1", s).ok());
  }
}

TEST_F(CoreTest, StaleSessionAndUnknownWorker) {
  uint64_t s1 = Register("w1", 1);
  uint64_t s2 = Register("w1", 1);
  EXPECT_EQ(s2, s1 + 1);
  EXPECT_EQ(Hb("w1", s1).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Hb("w1", s2).ok());
  EXPECT_EQ(Hb("nobody", 1).status().code(), absl::StatusCode::kNotFound);
  v1::RegisterWorkerRequest bad;
  bad.set_worker_id("bad id");
  bad.mutable_capacity()->set_cpu_cores(1);
  EXPECT_EQ(core_->RegisterWorker(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoreTest, ReRegisterFailsAttemptsTheWorkerNoLongerRuns) {
  Register("w1", 0, 2);
  v1::Job a = Create(Spec(1, 0, 0, 3));
  v1::Job b = Create(Spec(1, 0, 0, 3));
  core_->Tick();
  uint64_t aa = Get(a.id()).current_attempt_id(), ab = Get(b.id()).current_attempt_id();
  v1::RunningRank keep;
  keep.set_attempt_id(aa);
  keep.set_rank(0);
  uint64_t s = Register("w1", 0, 2, {keep});  // daemon restarted, re-adopted only `a`
  EXPECT_EQ(Get(a.id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(b.id()).state(), v1::JOB_STATE_PENDING);
  EXPECT_TRUE(absl::StrContains(Get(b.id()).state_reason(), "restarted")) << Get(b.id()).state_reason();
  EXPECT_EQ(GetAttempt(b.id(), ab).state(), v1::ATTEMPT_STATE_FAILED);
  auto hb = Hb("w1", s, {{aa, 0}});
  ASSERT_EQ(hb->desired_size(), 1);
  EXPECT_EQ(hb->desired(0).attempt_id(), aa);
}

TEST_F(CoreTest, CancelStopsTheAttemptAndFreesResources) {
  uint64_t s = Register("w1", 0, 1);
  v1::Job run = Create(Spec());
  v1::Job queued = Create(Spec());
  core_->Tick();
  uint64_t att = Get(run.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{att, 0}}).ok());

  v1::CancelJobRequest c;
  c.set_name(JobName(run.id()));
  c.set_reason("user asked");
  auto j = core_->CancelJob(c);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(absl::StrContains(j->state_reason(), "user asked"));
  EXPECT_EQ(GetAttempt(run.id(), att).state(), v1::ATTEMPT_STATE_STOPPING);
  auto again = core_->CancelJob(c);  // idempotent
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->revision(), j->revision());

  // Not desired any more, but it still holds the core until the worker stops it.
  auto hb = Hb("w1", s, {{att, 0}});
  EXPECT_EQ(hb->desired_size(), 0);
  core_->Tick();
  EXPECT_EQ(Get(queued.id()).state(), v1::JOB_STATE_PENDING);
  hb = Hb("w1", s, {});  // the worker reports it stopped
  EXPECT_EQ(GetAttempt(run.id(), att).state(), v1::ATTEMPT_STATE_CANCELLED);
  core_->Tick();
  EXPECT_EQ(Get(queued.id()).state(), v1::JOB_STATE_RUNNING);

  // Cancelling a pending job works; a finished one is FAILED_PRECONDITION.
  v1::Job p = Create(Spec());
  c.set_name(JobName(p.id()));
  EXPECT_EQ(core_->CancelJob(c)->state(), v1::JOB_STATE_CANCELLED);
  uint64_t qa = Get(queued.id()).current_attempt_id();
  ASSERT_TRUE(Result(qa, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED).ok());
  c.set_name(JobName(queued.id()));
  auto f = core_->CancelJob(c);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(f.status().message(), "SUCCEEDED")) << f.status();
}

TEST_F(CoreTest, GangOfTwoWorkersFailsTogether) {
  uint64_t s1 = Register("w1", 2), s2 = Register("w2", 2);
  v1::Job job = Create(Spec(2, 2, 0, 1));
  core_->Tick();
  job = Get(job.id());
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  uint64_t att = job.current_attempt_id();
  v1::Attempt a = GetAttempt(job.id(), att);
  ASSERT_EQ(a.ranks_size(), 2);
  EXPECT_NE(a.ranks(0).worker_id(), a.ranks(1).worker_id());
  std::string w0 = a.ranks(0).worker_id(), w1 = a.ranks(1).worker_id();
  uint64_t sess0 = w0 == "w1" ? s1 : s2, sess1 = w1 == "w1" ? s1 : s2;
  ASSERT_TRUE(Hb(w0, sess0, {{att, 0}}).ok());
  ASSERT_TRUE(Hb(w1, sess1, {{att, 1}}).ok());
  // Reports must come from the worker holding the rank.
  EXPECT_EQ(Progress(att, 1, 5, {}, w0).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(Result(att, 1, v1::ATTEMPT_OUTCOME_FAILED, w1).ok());
  EXPECT_EQ(GetAttempt(job.id(), att).state(), v1::ATTEMPT_STATE_STOPPING);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  // The surviving rank is told to stop; the restart waits until it has.
  auto hb = Hb(w0, sess0, {{att, 0}});
  EXPECT_EQ(hb->desired_size(), 0);
  clock_.Advance(absl::Seconds(3));
  core_->Tick();
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_PENDING);
  auto q = core_->GetQueue();
  EXPECT_TRUE(absl::StrContains(q->entries(0).reason(), "to stop")) << q->entries(0).reason();
  ASSERT_TRUE(Hb(w0, sess0, {}).ok());
  EXPECT_EQ(GetAttempt(job.id(), att).state(), v1::ATTEMPT_STATE_FAILED);
  core_->Tick();
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
}

TEST_F(CoreTest, PreemptionStopsLowerPriorityThenPlaces) {
  opts_.preemption = true;
  Open();
  uint64_t s = Register("w1", 4);
  v1::Job low = Create(Spec(1, 4, 0));
  core_->Tick();
  uint64_t la = Get(low.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{la, 0}}).ok());
  ASSERT_TRUE(Ckpt(Get(low.id()), la, 30).ok());
  v1::Job high = Create(Spec(1, 4, 9));
  core_->Tick();
  EXPECT_EQ(GetAttempt(low.id(), la).state(), v1::ATTEMPT_STATE_STOPPING);
  low = Get(low.id());
  EXPECT_EQ(low.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(low.preemptions(), 1);
  EXPECT_EQ(low.restarts(), 0);
  EXPECT_EQ(Get(high.id()).state(), v1::JOB_STATE_PENDING);
  // The preempted attempt checkpoints on SIGTERM before exiting.
  ASSERT_TRUE(Ckpt(low, la, 35).ok());
  ASSERT_TRUE(Result(la, 0, v1::ATTEMPT_OUTCOME_STOPPED, "w1").ok());
  EXPECT_EQ(GetAttempt(low.id(), la).state(), v1::ATTEMPT_STATE_PREEMPTED);
  core_->Tick();
  EXPECT_EQ(Get(high.id()).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Get(low.id()).state(), v1::JOB_STATE_PENDING);
  uint64_t ha = Get(high.id()).current_attempt_id();
  ASSERT_TRUE(Result(ha, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED).ok());
  core_->Tick();
  low = Get(low.id());
  ASSERT_EQ(low.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(GetAttempt(low.id(), low.current_attempt_id()).resume_step(), 35);
}

TEST_F(CoreTest, CheckpointRetentionAndGc) {
  uint64_t s = Register("w1", 0, 1);
  v1::JobSpec spec = Spec();
  spec.mutable_checkpoint()->set_keep_last(2);
  spec.mutable_checkpoint()->set_keep_best(1);
  v1::Job job = Create(spec);
  core_->Tick();
  uint64_t att = Get(job.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{att, 0}}).ok());
  // val_loss: best is step 20.
  std::vector<std::pair<int64_t, double>> steps = {{10, 3.0}, {20, 1.0}, {30, 2.5}, {40, 2.0},
                                                   {50, 2.2}};
  for (auto [step, loss] : steps) ASSERT_TRUE(Ckpt(job, att, step, loss).ok());
  std::string root = job.spec().output_dir() + "/checkpoints/";
  // Step 30's files are already gone: GC must not mind.
  ASSERT_TRUE(fs::RemoveAll(root + "step-30").ok());
  v1::ListCheckpointsRequest lr;
  lr.set_name(JobName(job.id()));
  lr.set_include_deleting(true);
  auto all = core_->ListCheckpoints(lr);
  ASSERT_EQ(all->checkpoints_size(), 5);
  EXPECT_EQ(core_->RunCheckpointGc(), 2);  // 10 and 30
  lr.set_include_deleting(false);
  auto kept = core_->ListCheckpoints(lr);
  std::vector<int64_t> ks;
  for (const auto& c : kept->checkpoints()) ks.push_back(c.step());
  EXPECT_EQ(ks, (std::vector<int64_t>{20, 40, 50}));
  EXPECT_FALSE(fs::Exists(root + "step-10"));
  EXPECT_TRUE(fs::Exists(root + "step-20"));
  EXPECT_TRUE(fs::Exists(root + "step-50"));
  EXPECT_EQ(core_->metrics()->checkpoint_gc_bytes->Value(), 2000);
  EXPECT_EQ(core_->RunCheckpointGc(), 0);

  // A checkpoint outside the job's output_dir is refused (GC would delete it).
  v1::CommitCheckpointRequest r;
  r.set_attempt_id(att);
  r.set_step(60);
  r.set_uri("/etc");
  r.set_sha256(std::string(64, 'a'));
  auto bad = core_->CommitCheckpoint(r);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  r.set_uri("file://" + job.spec().output_dir() + "/../other");
  EXPECT_EQ(core_->CommitCheckpoint(r).status().code(), absl::StatusCode::kInvalidArgument);
  // Same step, different content: ALREADY_EXISTS.
  r.set_uri("file://" + root + "step-50");
  r.set_step(50);
  EXPECT_EQ(core_->CommitCheckpoint(r).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(CoreTest, WatchJobResumesWithoutGapsOrDuplicates) {
  uint64_t s = Register("w1", 0, 1);
  v1::Job job = Create(Spec());
  core_->Tick();
  uint64_t att = Get(job.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{att, 0}}).ok());

  std::vector<int64_t> seen;
  std::atomic<bool> done{false};
  // Client 1 reads 4 events then disconnects.
  v1::WatchJobRequest wr;
  wr.set_name(JobName(job.id()));
  std::thread producer([&] {
    for (int i = 1; i <= 30; ++i) {
      ASSERT_TRUE(Progress(att, 0, i, {absl::StrCat("line ", i)}).ok());
    }
    ASSERT_TRUE(Result(att, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED).ok());
  });
  absl::Status st = core_->WatchJob(
      wr,
      [&](const v1::Event& e) {
        if (seen.size() == 4) return false;  // connection drops
        seen.push_back(e.seq());
        return true;
      },
      [] { return false; });
  EXPECT_EQ(st.code(), absl::StatusCode::kCancelled);
  ASSERT_EQ(seen.size(), 4u);
  // Client resumes after the last event it got, follows live events to the end.
  wr.set_after_seq(seen.back());
  st = core_->WatchJob(
      wr,
      [&](const v1::Event& e) {
        seen.push_back(e.seq());
        return true;
      },
      [&] { return done.load(); });
  producer.join();
  EXPECT_TRUE(st.ok()) << st;
  for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], static_cast<int64_t>(i + 1));
  EXPECT_EQ(seen.back(), Get(job.id()).last_event_seq());
  // Resuming after the end returns at once with nothing.
  wr.set_after_seq(seen.back());
  int extra = 0;
  st = core_->WatchJob(wr, [&](const v1::Event&) { return ++extra, true; }, [] { return false; });
  EXPECT_TRUE(st.ok());
  EXPECT_EQ(extra, 0);
}

TEST_F(CoreTest, ListJobsFiltersAndPaginatesUnderConcurrentInserts) {
  Register("w1", 0, 1);
  for (int i = 0; i < 120; ++i) {
    v1::JobSpec spec = Spec();
    (*spec.mutable_labels())["team"] = i % 3 == 0 ? "nlp" : "vision";
    Create(spec);
  }
  std::set<uint64_t> before;
  v1::ListJobsRequest all;
  all.set_page_size(1000);
  auto first = core_->ListJobs(all);
  ASSERT_TRUE(first.ok());
  for (const auto& j : first->jobs()) before.insert(j.id());
  ASSERT_EQ(before.size(), 120u);

  std::atomic<bool> stop{false};
  std::thread inserter([&] {
    while (!stop) Create(Spec());
  });
  std::vector<uint64_t> got;
  v1::ListJobsRequest r;
  r.set_page_size(7);
  int pages = 0;
  do {
    auto resp = core_->ListJobs(r);
    ASSERT_TRUE(resp.ok()) << resp.status();
    for (const auto& j : resp->jobs()) got.push_back(j.id());
    r.set_page_token(resp->next_page_token());
    ++pages;
  } while (!r.page_token().empty() && pages < 1000);
  stop = true;
  inserter.join();
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
  EXPECT_EQ(std::set<uint64_t>(got.begin(), got.end()).size(), got.size()) << "duplicates";
  for (uint64_t id : before) {
    EXPECT_TRUE(std::binary_search(got.begin(), got.end(), id)) << "missed " << id;
  }

  v1::ListJobsRequest f;
  f.set_filter("labels.team=nlp AND state=PENDING");
  f.set_page_size(1000);
  auto nlp = core_->ListJobs(f);
  ASSERT_TRUE(nlp.ok()) << nlp.status();
  EXPECT_EQ(nlp->total_size(), 40);  // no scheduling pass yet: all pending
  // Filtered paging visits every match once.
  v1::ListJobsRequest fp;
  fp.set_filter("labels.team=nlp");
  fp.set_page_size(7);
  std::vector<uint64_t> nlp_ids;
  do {
    auto page = core_->ListJobs(fp);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& j : page->jobs()) {
      EXPECT_EQ(j.spec().labels().at("team"), "nlp");
      nlp_ids.push_back(j.id());
    }
    fp.set_page_token(page->next_page_token());
  } while (!fp.page_token().empty());
  EXPECT_EQ(nlp_ids.size(), 40u);
  EXPECT_EQ(std::set<uint64_t>(nlp_ids.begin(), nlp_ids.end()).size(), 40u);
  f.set_filter("state=(RUNNING OR SUCCEEDED)");
  EXPECT_EQ(core_->ListJobs(f)->total_size(), 0);
  core_->Tick();
  EXPECT_EQ(core_->ListJobs(f)->total_size(), 1);
  f.set_filter("colour=red");
  auto bad = core_->ListJobs(f);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "colour")) << bad.status();
  f.set_filter("state=BOGUS");
  EXPECT_EQ(core_->ListJobs(f).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ListJobsRequest t;
  t.set_page_token("garbage");
  EXPECT_EQ(core_->ListJobs(t).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoreTest, RecoveryRestoresStateAndFencing) {
  uint64_t s = Register("w1", 2);
  v1::Job a = Create(Spec(1, 1));
  v1::Job b = Create(Spec(1, 1));
  v1::Job c = Create(Spec(1, 1));
  core_->Tick();
  uint64_t aa = Get(a.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{aa, 0}}).ok());
  ASSERT_TRUE(Progress(aa, 0, 7).ok());
  ASSERT_TRUE(Ckpt(Get(a.id()), aa, 7).ok());
  v1::CancelJobRequest cr;
  cr.set_name(JobName(b.id()));
  ASSERT_TRUE(core_->CancelJob(cr).ok());
  int64_t seq_a = Get(a.id()).last_event_seq();

  Open();  // "crash" and restart from the store
  v1::Job ra = Get(a.id());
  EXPECT_EQ(ra.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(ra.current_attempt_id(), aa);
  EXPECT_EQ(ra.progress().step(), 7);
  EXPECT_EQ(ra.latest_checkpoint().step(), 7);
  EXPECT_EQ(ra.last_event_seq(), seq_a);
  EXPECT_EQ(Get(b.id()).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(c.id()).state(), v1::JOB_STATE_PENDING);
  // The worker keeps its session and attempts; its lease restarts from now.
  auto hb = Hb("w1", s, {{aa, 0}});
  ASSERT_TRUE(hb.ok()) << hb.status();
  // b's cancelled attempt is confirmed stopped by this heartbeat; only a is desired.
  EXPECT_EQ(hb->desired_size(), 1);
  core_->Tick();
  hb = Hb("w1", s, {{aa, 0}});
  EXPECT_EQ(hb->desired_size(), 2);
  EXPECT_EQ(Get(c.id()).state(), v1::JOB_STATE_RUNNING);
  uint64_t ca = Get(c.id()).current_attempt_id();
  EXPECT_GT(ca, aa);  // attempt ids keep growing across restarts
  // Events continue without a gap.
  ASSERT_TRUE(Progress(aa, 0, 8).ok());
  std::vector<v1::Event> ev = Events(a.id(), seq_a - 1);
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev[0].seq(), seq_a);
  EXPECT_EQ(ev[1].seq(), seq_a + 1);
}

TEST_F(CoreTest, RendezvousKvIsScopedToLiveAttempts) {
  uint64_t s = Register("w1", 0, 2);
  v1::JobSpec spec = Spec(2, 0);
  v1::Job job = Create(spec);
  core_->Tick();
  uint64_t att = Get(job.id()).current_attempt_id();
  ASSERT_TRUE(Hb("w1", s, {{att, 0}, {att, 1}}).ok());

  std::thread waiter([&] {
    v1::KvWaitRequest w;
    w.set_attempt_id(att);
    w.add_keys("nccl_id");
    w.set_timeout_ms(5000);
    auto r = core_->KvWait(w);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->values(0), "abc");
  });
  absl::SleepFor(absl::Milliseconds(50));
  v1::KvSetRequest set;
  set.set_attempt_id(att);
  set.set_key("nccl_id");
  set.set_value("abc");
  ASSERT_TRUE(core_->KvSet(set).ok());
  waiter.join();
  v1::KvAddRequest add;
  add.set_attempt_id(att);
  add.set_key("barrier");
  add.set_delta(1);
  EXPECT_EQ(core_->KvAdd(add)->value(), 1);
  EXPECT_EQ(core_->KvAdd(add)->value(), 2);
  v1::KvGetRequest get;
  get.set_attempt_id(att);
  get.set_key("missing");
  EXPECT_EQ(core_->KvGet(get).status().code(), absl::StatusCode::kNotFound);
  v1::KvWaitRequest w;
  w.set_attempt_id(att);
  w.add_keys("never");
  w.set_timeout_ms(50);
  auto timed_out = core_->KvWait(w);
  EXPECT_EQ(timed_out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::StrContains(timed_out.status().message(), "never"));

  ASSERT_TRUE(Result(att, 0, v1::ATTEMPT_OUTCOME_FAILED).ok());
  get.set_key("nccl_id");
  EXPECT_EQ(core_->KvGet(get).status().code(), absl::StatusCode::kFailedPrecondition);
  get.set_attempt_id(12345);
  EXPECT_EQ(core_->KvGet(get).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CoreTest, MetricsReflectState) {
  uint64_t s = Register("w1", 0, 1);
  Create(Spec());
  Create(Spec());
  core_->Tick();
  clock_.Advance(absl::Seconds(11));
  core_->Tick();  // lease expires: the running job (max_restarts 0) fails
  std::string text = registry_->Render();
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_jobs{state=\"PENDING\"} 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_jobs{state=\"FAILED\"} 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_workers{state=\"LOST\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_leases_expired_total 1\n"));
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_queue_depth 1\n"));
  EXPECT_TRUE(absl::StrContains(text, "llmt_coordinator_scheduling_latency_seconds_count 1\n"));
  (void)s;
}

}  // namespace
}  // namespace llmt::coord
