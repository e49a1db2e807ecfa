// The real llmt-coordinator binary on loopback with test workers speaking the
// real WorkerService: the success path, lease expiry and restart from a
// checkpoint, cancel, auth, graceful SIGTERM, and repeated kill -9 under
// concurrent CreateJob load.
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/integration/coordinator/harness.h"

namespace llmt::itest {
namespace {

const std::vector<std::string> kFastFlags = {"--lease_timeout=1s", "--heartbeat_interval=200ms",
                                             "--restart_backoff=100ms", "--gc_interval=200ms"};

v1::JobSpec Spec(int ranks = 1, int cpus = 1) {
  v1::JobSpec s;
  s.set_name("itest");
  s.mutable_model()->set_family("gpt2");
  s.mutable_model()->set_d_model(64);
  s.mutable_model()->set_n_layer(2);
  s.mutable_model()->set_n_head(4);
  s.mutable_model()->set_max_seq_len(64);
  s.mutable_data()->set_dir("/data/tiny");
  s.mutable_train()->set_batch_size(2);
  s.mutable_train()->set_seq_len(32);
  s.mutable_train()->set_max_steps(100);
  s.mutable_optim()->set_lr(1e-3);
  s.mutable_resources()->set_ranks(ranks);
  s.mutable_resources()->set_cpus_per_rank(cpus);
  s.set_max_restarts(2);
  return s;
}

v1::Job GetJob(v1::JobService::Stub* jobs, uint64_t id, const std::string& token = "") {
  v1::GetJobRequest r;
  r.set_name(absl::StrCat("jobs/", id));
  v1::Job j;
  grpc::Status s = jobs->GetJob(Ctx(token).get(), r, &j);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return j;
}

TEST(CoordinatorIntegration, SubmitPlaceProgressCheckpointSucceed) {
  CoordinatorProcess coord(TempDir("success"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  auto jobs = coord.Jobs();
  TestWorker w("worker-a", coord.Workers());
  ASSERT_TRUE(w.Register(0, 4).ok());

  v1::CreateJobRequest cr;
  *cr.mutable_spec() = Spec(2, 2);
  cr.set_request_id("itest-success-1");
  v1::Job job;
  ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);

  // Follow the job's events from another connection while it runs.
  std::vector<v1::Event> events;
  std::thread watcher([&] {
    v1::WatchJobRequest wr;
    wr.set_name(job.name());
    auto ctx = Ctx("", 20000);
    auto reader = jobs->WatchJob(ctx.get(), wr);
    v1::Event ev;
    while (reader->Read(&ev)) events.push_back(ev);
    EXPECT_TRUE(reader->Finish().ok());
  });

  v1::DesiredAttempt d;
  ASSERT_TRUE(w.WaitDesired(&d)) << coord.LogTail();
  EXPECT_EQ(d.job(), job.name());
  EXPECT_EQ(d.world_size(), 2);
  ASSERT_EQ(d.local_ranks_size(), 2);  // both ranks fit on the 4-core worker
  v1::HeartbeatResponse hb;
  ASSERT_TRUE(w.Heartbeat({{d.attempt_id(), 0}, {d.attempt_id(), 1}}, &hb).ok());
  ASSERT_TRUE(w.Progress(d.attempt_id(), 0, 10, "step 10 | loss 3.0").ok());
  v1::Checkpoint ck;
  std::string ckdir = d.spec().output_dir() + "/checkpoints/step-00000010";
  grpc::Status cs = w.Checkpoint(d.attempt_id(), ckdir, 10, &ck);
  ASSERT_TRUE(cs.ok()) << cs.error_message();
  EXPECT_EQ(ck.step(), 10);
  v1::ReportAttemptResultResponse rr;
  ASSERT_TRUE(w.Result(d.attempt_id(), 1, v1::ATTEMPT_OUTCOME_SUCCEEDED, &rr).ok());
  EXPECT_EQ(rr.attempt_state(), v1::ATTEMPT_STATE_RUNNING);  // rank 0 still running
  ASSERT_TRUE(w.Result(d.attempt_id(), 0, v1::ATTEMPT_OUTCOME_SUCCEEDED, &rr).ok());
  EXPECT_EQ(rr.attempt_state(), v1::ATTEMPT_STATE_SUCCEEDED);
  watcher.join();

  v1::Job done = GetJob(jobs.get(), job.id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.latest_checkpoint().step(), 10);
  ASSERT_FALSE(events.empty());
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), (int64_t)i + 1);
  EXPECT_EQ(events.back().state_change().to(), v1::JOB_STATE_SUCCEEDED);
  bool saw_log = false, saw_ckpt = false, saw_progress = false;
  for (const auto& e : events) {
    saw_log |= e.has_log() && e.log().text() == "step 10 | loss 3.0";
    saw_ckpt |= e.has_checkpoint() && e.checkpoint().step() == 10;
    saw_progress |= e.has_progress() && e.progress().progress().step() == 10;
  }
  EXPECT_TRUE(saw_log && saw_ckpt && saw_progress);

  // Same request_id again: the original job, not a new one.
  v1::Job again;
  ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &again).ok());
  EXPECT_EQ(again.id(), job.id());
  EXPECT_EQ(again.state(), v1::JOB_STATE_SUCCEEDED);

  std::string metrics = HttpGet(coord.http_port(), "/metrics");
  EXPECT_TRUE(absl::StrContains(metrics, "llmt_coordinator_checkpoints_committed_total 1\n"));
  EXPECT_TRUE(absl::StrContains(metrics, "llmt_coordinator_jobs{state=\"SUCCEEDED\"} 1\n"));
  EXPECT_TRUE(absl::StrContains(
      metrics, "llmt_coordinator_rpc_duration_seconds_count{service=\"JobService\","
               "method=\"CreateJob\",code=\"OK\"} 2\n"))
      << metrics;
  EXPECT_TRUE(absl::StrContains(HttpGet(coord.http_port(), "/readyz"), "200 OK"));
  EXPECT_TRUE(absl::StrContains(HttpGet(coord.http_port(), "/healthz"), "200 OK"));
}

// A client that drops its WatchJob stream resumes with after_seq and gets the
// rest without gaps or duplicates; two ranks rendezvous through the KV.
TEST(CoordinatorIntegration, WatchResumeAndRendezvousOverGrpc) {
  CoordinatorProcess coord(TempDir("watch"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  auto jobs = coord.Jobs();
  TestWorker w("worker-a", coord.Workers());
  ASSERT_TRUE(w.Register(0, 2).ok());
  v1::CreateJobRequest cr;
  *cr.mutable_spec() = Spec(2, 1);
  v1::Job job;
  ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &job).ok());
  v1::DesiredAttempt d;
  ASSERT_TRUE(w.WaitDesired(&d));
  uint64_t att = d.attempt_id();
  v1::HeartbeatResponse hb;
  ASSERT_TRUE(w.Heartbeat({{att, 0}, {att, 1}}, &hb).ok());

  // Rank 1 waits for the id rank 0 publishes.
  auto kv = coord.Workers();
  std::string got;
  std::thread rank1([&] {
    v1::KvWaitRequest r;
    r.set_attempt_id(att);
    r.add_keys("nccl/uid");
    r.set_timeout_ms(5000);
    v1::KvWaitResponse resp;
    grpc::Status s = kv->KvWait(Ctx().get(), r, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    got = resp.values(0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  v1::KvSetRequest set;
  set.set_attempt_id(att);
  set.set_key("nccl/uid");
  set.set_value(std::string("\x01\x00\xff uid", 7));
  v1::KvSetResponse sr;
  ASSERT_TRUE(kv->KvSet(Ctx().get(), set, &sr).ok());
  rank1.join();
  EXPECT_EQ(got, std::string("\x01\x00\xff uid", 7));

  for (int step = 1; step <= 20; ++step) ASSERT_TRUE(w.Progress(att, 0, step, "line").ok());
  std::vector<int64_t> seqs;
  {
    v1::WatchJobRequest wr;
    wr.set_name(job.name());
    auto ctx = Ctx();
    auto reader = jobs->WatchJob(ctx.get(), wr);
    v1::Event ev;
    while (seqs.size() < 7 && reader->Read(&ev)) seqs.push_back(ev.seq());
    ctx->TryCancel();  // the connection "drops"
    while (reader->Read(&ev)) {
    }
    reader->Finish().IgnoreError();
  }
  ASSERT_EQ(seqs.size(), 7u);
  v1::ReportAttemptResultResponse rr;
  ASSERT_TRUE(w.Result(att, 0, v1::ATTEMPT_OUTCOME_SUCCEEDED, &rr).ok());
  ASSERT_TRUE(w.Result(att, 1, v1::ATTEMPT_OUTCOME_SUCCEEDED, &rr).ok());
  {
    v1::WatchJobRequest wr;
    wr.set_name(job.name());
    wr.set_after_seq(seqs.back());
    auto ctx = Ctx();
    auto reader = jobs->WatchJob(ctx.get(), wr);
    v1::Event ev;
    while (reader->Read(&ev)) seqs.push_back(ev.seq());
    EXPECT_TRUE(reader->Finish().ok());
  }
  for (size_t i = 0; i < seqs.size(); ++i) ASSERT_EQ(seqs[i], static_cast<int64_t>(i + 1));
  EXPECT_EQ(seqs.back(), GetJob(jobs.get(), job.id()).last_event_seq());
  // The attempt ended: its KV is gone and closed.
  v1::KvGetRequest g;
  g.set_attempt_id(att);
  g.set_key("nccl/uid");
  v1::KvGetResponse gr;
  EXPECT_EQ(kv->KvGet(Ctx().get(), g, &gr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(CoordinatorIntegration, LeaseExpiryRestartsFromCheckpoint) {
  CoordinatorProcess coord(TempDir("lease"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  auto jobs = coord.Jobs();
  TestWorker a("worker-a", coord.Workers());
  ASSERT_TRUE(a.Register(0, 1).ok());
  v1::CreateJobRequest cr;
  *cr.mutable_spec() = Spec();
  v1::Job job;
  ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &job).ok());
  v1::DesiredAttempt d1;
  ASSERT_TRUE(a.WaitDesired(&d1));
  v1::HeartbeatResponse hb;
  ASSERT_TRUE(a.Heartbeat({{d1.attempt_id(), 0}}, &hb).ok());
  v1::Checkpoint ck;
  std::string ckdir = d1.spec().output_dir() + "/checkpoints/step-00000040";
  ASSERT_TRUE(a.Checkpoint(d1.attempt_id(), ckdir, 40, &ck).ok());

  // worker-a goes silent; worker-b is healthy.
  TestWorker b("worker-b", coord.Workers());
  ASSERT_TRUE(b.Register(0, 1).ok());
  auto t0 = std::chrono::steady_clock::now();
  v1::DesiredAttempt d2;
  ASSERT_TRUE(b.WaitDesired(&d2, 8000)) << coord.LogTail();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 5.0);  // 1 s lease + 100 ms backoff + scheduling
  EXPECT_NE(d2.attempt_id(), d1.attempt_id());
  EXPECT_EQ(d2.resume_step(), 40);
  EXPECT_EQ(d2.resume_uri(), "file://" + ckdir);
  v1::Job j = GetJob(jobs.get(), job.id());
  EXPECT_EQ(j.restarts(), 1);
  EXPECT_EQ(j.state(), v1::JOB_STATE_RUNNING);

  // worker-a comes back: told to run nothing, its reports are fenced off.
  ASSERT_TRUE(a.Heartbeat({{d1.attempt_id(), 0}}, &hb).ok());
  EXPECT_EQ(hb.desired_size(), 0);
  grpc::Status stale = a.Progress(d1.attempt_id(), 0, 41);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(stale.error_message(), "stale")) << stale.error_message();
  std::string metrics = HttpGet(coord.http_port(), "/metrics");
  EXPECT_TRUE(absl::StrContains(metrics, "llmt_coordinator_leases_expired_total 1\n")) << metrics;
}

TEST(CoordinatorIntegration, CancelStopsRunningAttempt) {
  CoordinatorProcess coord(TempDir("cancel"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  auto jobs = coord.Jobs();
  TestWorker w("worker-a", coord.Workers());
  ASSERT_TRUE(w.Register(0, 1).ok());
  v1::CreateJobRequest cr;
  *cr.mutable_spec() = Spec();
  v1::Job job;
  ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &job).ok());
  v1::DesiredAttempt d;
  ASSERT_TRUE(w.WaitDesired(&d));
  v1::HeartbeatResponse hb;
  ASSERT_TRUE(w.Heartbeat({{d.attempt_id(), 0}}, &hb).ok());

  v1::CancelJobRequest cancel;
  cancel.set_name(job.name());
  cancel.set_reason("integration test");
  v1::Job cancelled;
  ASSERT_TRUE(jobs->CancelJob(Ctx().get(), cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(w.Heartbeat({{d.attempt_id(), 0}}, &hb).ok());
  EXPECT_EQ(hb.desired_size(), 0);  // the worker must stop it
  v1::ReportAttemptResultResponse rr;
  ASSERT_TRUE(w.Result(d.attempt_id(), 0, v1::ATTEMPT_OUTCOME_STOPPED, &rr).ok());
  EXPECT_EQ(rr.attempt_state(), v1::ATTEMPT_STATE_CANCELLED);

  v1::ListAttemptsRequest la;
  la.set_name(job.name());
  v1::ListAttemptsResponse attempts;
  ASSERT_TRUE(jobs->ListAttempts(Ctx().get(), la, &attempts).ok());
  ASSERT_EQ(attempts.attempts_size(), 1);
  EXPECT_EQ(attempts.attempts(0).state(), v1::ATTEMPT_STATE_CANCELLED);

  // A finished job cannot be cancelled; errors name the resource.
  v1::GetJobRequest missing;
  missing.set_name("jobs/424242");
  v1::Job none;
  grpc::Status nf = jobs->GetJob(Ctx().get(), missing, &none);
  EXPECT_EQ(nf.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(nf.error_message(), "jobs/424242"));
}

TEST(CoordinatorIntegration, AuthRejectsAndCountsBadTokens) {
  std::string dir = TempDir("auth");
  ASSERT_TRUE(fs::WriteFileAtomic(dir + "/job_tokens", "user-token\n").ok());
  ASSERT_TRUE(fs::WriteFileAtomic(dir + "/worker_tokens", "worker-token\n").ok());
  CoordinatorProcess coord(dir);
  std::vector<std::string> flags = kFastFlags;
  flags.push_back("--job_tokens_file=" + dir + "/job_tokens");
  flags.push_back("--worker_tokens_file=" + dir + "/worker_tokens");
  ASSERT_TRUE(coord.Start(flags)) << coord.LogTail();
  auto jobs = coord.Jobs();

  v1::ListJobsRequest lr;
  v1::ListJobsResponse resp;
  EXPECT_EQ(jobs->ListJobs(Ctx().get(), lr, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(jobs->ListJobs(Ctx("wrong").get(), lr, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // A worker token is not a user token, and vice versa.
  EXPECT_EQ(jobs->ListJobs(Ctx("worker-token").get(), lr, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(jobs->ListJobs(Ctx("user-token").get(), lr, &resp).ok());
  TestWorker bad("worker-x", coord.Workers(), "user-token");
  EXPECT_EQ(bad.Register(0, 1).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  TestWorker good("worker-x", coord.Workers(), "worker-token");
  EXPECT_TRUE(good.Register(0, 1).ok());

  std::string metrics = HttpGet(coord.http_port(), "/metrics");
  EXPECT_TRUE(absl::StrContains(
      metrics, "llmt_coordinator_unauthenticated_total{service=\"JobService\"} 3\n"))
      << metrics;
  EXPECT_TRUE(absl::StrContains(
      metrics, "llmt_coordinator_unauthenticated_total{service=\"WorkerService\"} 1\n"));
}

TEST(CoordinatorIntegration, TlsWithClientCertificates) {
  std::string dir = TempDir("tls");
  // Self-signed CA, server and client certificates made with the openssl CLI.
  std::string cmd = absl::StrCat(
      "cd ", dir, " && ",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=llmt-test-ca "
      "-keyout ca.key -out ca.pem && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr"
      " && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext && ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile san.ext -out server.pem && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr && ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-out client.pem) > ", dir, "/openssl.log 2>&1");
  if (std::system(("(" + cmd).c_str()) != 0) GTEST_SKIP() << "openssl could not make certificates";
  CoordinatorProcess coord(dir);
  std::vector<std::string> flags = kFastFlags;
  flags.push_back("--tls_cert=" + dir + "/server.pem");
  flags.push_back("--tls_key=" + dir + "/server.key");
  flags.push_back("--tls_client_ca=" + dir + "/ca.pem");
  ASSERT_TRUE(coord.Start(flags)) << coord.LogTail();

  auto channel_with = [&](bool client_cert) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = *fs::ReadFile(dir + "/ca.pem");
    if (client_cert) {
      o.pem_private_key = *fs::ReadFile(dir + "/client.key");
      o.pem_cert_chain = *fs::ReadFile(dir + "/client.pem");
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", coord.grpc_port()),
                                     grpc::SslCredentials(o), args);
  };
  v1::ListJobsRequest lr;
  v1::ListJobsResponse resp;
  auto mtls = v1::JobService::NewStub(channel_with(true));
  grpc::Status ok = mtls->ListJobs(Ctx().get(), lr, &resp);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  auto no_cert = v1::JobService::NewStub(channel_with(false));
  EXPECT_FALSE(no_cert->ListJobs(Ctx("", 3000).get(), lr, &resp).ok());
  auto plain = v1::JobService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", coord.grpc_port()), grpc::InsecureChannelCredentials()));
  EXPECT_FALSE(plain->ListJobs(Ctx("", 3000).get(), lr, &resp).ok());
}

TEST(CoordinatorIntegration, GracefulSigtermKeepsState) {
  CoordinatorProcess coord(TempDir("sigterm"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  v1::Job job;
  {
    auto jobs = coord.Jobs();
    TestWorker w("worker-a", coord.Workers());
    ASSERT_TRUE(w.Register(0, 1).ok());
    v1::CreateJobRequest cr;
    *cr.mutable_spec() = Spec();
    ASSERT_TRUE(jobs->CreateJob(Ctx().get(), cr, &job).ok());
  }  // clients close their channels: the drain does not wait for them
  auto t0 = std::chrono::steady_clock::now();
  int status = coord.Kill(SIGTERM);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 4.0);
  EXPECT_TRUE(WIFEXITED(status)) << coord.LogTail();
  EXPECT_EQ(WEXITSTATUS(status), 0) << coord.LogTail();
  EXPECT_TRUE(absl::StrContains(coord.LogTail(), "stopped"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  auto jobs = coord.Jobs();
  EXPECT_EQ(GetJob(jobs.get(), job.id()).spec().name(), "itest");
}

// kill -9 the coordinator again and again while clients create jobs
// concurrently: every job whose CreateJob returned OK is there after each
// restart, a retried request_id never makes a second job, and the restart is
// fast.
TEST(CoordinatorIntegration, Kill9UnderConcurrentCreateLosesNothingAcknowledged) {
  CoordinatorProcess coord(TempDir("kill9"));
  ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
  {
    TestWorker w("worker-a", coord.Workers());
    ASSERT_TRUE(w.Register(0, 64).ok());  // so jobs are schedulable (no force_queue)
  }
  std::mutex mu;
  std::map<std::string, uint64_t> acked;  // request_id -> job id
  constexpr int kClients = 8, kRounds = 5;
  std::mt19937 rng(42);
  for (int round = 0; round < kRounds; ++round) {
    std::shared_ptr<grpc::Channel> ch = grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", coord.grpc_port()), grpc::InsecureChannelCredentials());
    std::atomic<bool> stop{false};
    std::atomic<int> ok_calls{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        auto stub = v1::JobService::NewStub(ch);
        for (int i = 0; !stop; ++i) {
          v1::CreateJobRequest r;
          *r.mutable_spec() = Spec();
          r.set_request_id(absl::StrCat("r", round, "-c", c, "-", i));
          v1::Job j;
          if (stub->CreateJob(Ctx("", 2000).get(), r, &j).ok()) {
            std::lock_guard<std::mutex> l(mu);
            acked[r.request_id()] = j.id();
            ok_calls++;
          }
        }
      });
    }
    // Let load build -- until some create has been acknowledged (a fresh
    // channel to a just-restarted coordinator can take a while to connect
    // on a loaded machine: a fixed wait once saw none in CI), at most 10 s
    // -- then kill at a random moment.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ok_calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 250));
    coord.Kill(SIGKILL);
    stop = true;
    for (auto& t : clients) t.join();
    EXPECT_GT(ok_calls.load(), 0) << "round " << round;

    ASSERT_TRUE(coord.Start(kFastFlags)) << coord.LogTail();
    EXPECT_LT(coord.ready_seconds(), 3.0) << "restart took " << coord.ready_seconds() << " s";
    // Every acknowledged job is present, under the id that was acknowledged.
    auto jobs = coord.Jobs();
    std::map<uint64_t, std::string> present;  // id -> request_id
    v1::ListJobsRequest lr;
    lr.set_page_size(1000);
    do {
      v1::ListJobsResponse resp;
      ASSERT_TRUE(jobs->ListJobs(Ctx().get(), lr, &resp).ok());
      for (const auto& j : resp.jobs()) present[j.id()] = j.request_id();
      lr.set_page_token(resp.next_page_token());
    } while (!lr.page_token().empty());
    std::lock_guard<std::mutex> l(mu);
    for (const auto& [rid, id] : acked) {
      auto it = present.find(id);
      ASSERT_TRUE(it != present.end()) << "acknowledged jobs/" << id << " lost in round " << round;
      EXPECT_EQ(it->second, rid);
    }
    // Retrying an acknowledged request returns the same job.
    v1::CreateJobRequest retry;
    *retry.mutable_spec() = Spec();
    retry.set_request_id(acked.begin()->first);
    v1::Job j;
    ASSERT_TRUE(jobs->CreateJob(Ctx().get(), retry, &j).ok());
    EXPECT_EQ(j.id(), acked.begin()->second);
    std::set<std::string> rids;
    for (const auto& [id, rid] : present) {
      EXPECT_TRUE(rids.insert(rid).second) << "request_id " << rid << " made two jobs";
    }
  }
  EXPECT_GT(acked.size(), 100u);
}

}  // namespace
}  // namespace llmt::itest
