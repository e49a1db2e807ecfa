// Test harness for the real llmt-coordinator binary on loopback: starts it
// with port 0 (the chosen ports come back through --port_file, so tests never
// race for a "free" port), kills it (SIGTERM or SIGKILL) and always reaps it.
// TestWorker speaks the real WorkerService.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/fs.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "llmt/v1/coordinator.grpc.pb.h"

extern char** environ;

namespace llmt::itest {

inline std::string TempDir(const std::string& name) {
  std::string t = ::testing::TempDir();
  if (!t.empty() && t.back() == '/') t.pop_back();
  std::string d = absl::StrCat(t, "/coord_itest_", getpid(), "_", name);
  (void)fs::RemoveAll(d);
  (void)fs::MakeDirs(d);
  return d;
}

class CoordinatorProcess {
 public:
  explicit CoordinatorProcess(std::string dir) : dir_(std::move(dir)) {}
  ~CoordinatorProcess() { Kill(SIGKILL); }

  // Starts the binary on the same data dir; waits (bounded) until it serves.
  bool Start(const std::vector<std::string>& extra = {}) {
    Kill(SIGKILL);
    port_file_ = dir_ + "/ports";
    (void)fs::RemoveAll(port_file_);
    std::vector<std::string> args = {
        std::string(LLMT_BINARY_DIR) + "/coordinator/llmt-coordinator",
        "--data_dir=" + dir_ + "/db",
        "--jobs_dir=" + dir_ + "/jobs",
        "--listen=127.0.0.1:0",
        "--http_listen=127.0.0.1:0",
        "--port_file=" + port_file_,
    };
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    std::string log = dir_ + "/coordinator.log";
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    start_ = std::chrono::steady_clock::now();
    int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      pid_ = -1;
      return false;
    }
    for (int i = 0; i < 1000; ++i) {  // up to 10 s
      auto text = fs::ReadFile(port_file_);
      if (text.ok()) {
        for (absl::string_view line : absl::StrSplit(*text, '\n')) {
          std::vector<std::string> kv = absl::StrSplit(line, '=');
          if (kv.size() != 2) continue;
          if (kv[0] == "grpc_port") (void)absl::SimpleAtoi(kv[1], &grpc_port_);
          if (kv[0] == "http_port") (void)absl::SimpleAtoi(kv[1], &http_port_);
        }
        ready_seconds_ =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
        channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_),
                                       grpc::InsecureChannelCredentials());
        return grpc_port_ > 0;
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // died during startup
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // Sends `sig` and reaps the process (SIGTERM waits up to 15 s, then SIGKILL).
  // Returns the exit status (or -1 when nothing was running).
  int Kill(int sig) {
    if (pid_ <= 0) return -1;
    channel_.reset();
    kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 1500; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

  std::unique_ptr<v1::JobService::Stub> Jobs() { return v1::JobService::NewStub(channel_); }
  std::unique_ptr<v1::WorkerService::Stub> Workers() {
    return v1::WorkerService::NewStub(channel_);
  }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  double ready_seconds() const { return ready_seconds_; }
  std::string LogTail() {
    auto t = fs::ReadFile(dir_ + "/coordinator.log");
    if (!t.ok()) return "";
    return t->size() > 4000 ? t->substr(t->size() - 4000) : *t;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, port_file_;
  pid_t pid_ = -1;
  int grpc_port_ = 0, http_port_ = 0;
  double ready_seconds_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A ClientContext with a deadline and, optionally, a bearer token.
inline std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "",
                                               int timeout_ms = 10000) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  if (!token.empty()) c->AddMetadata("authorization", "Bearer " + token);
  return c;
}

inline std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
    }
  }
  close(fd);
  return out;
}

// A worker daemon stand-in driven step by step by the test.
class TestWorker {
 public:
  TestWorker(std::string id, std::unique_ptr<v1::WorkerService::Stub> stub, std::string token = "")
      : id_(std::move(id)), stub_(std::move(stub)), token_(std::move(token)) {}

  grpc::Status Register(int gpus, int cpus) {
    v1::RegisterWorkerRequest r;
    r.set_worker_id(id_);
    r.set_address(id_ + ".local:29500");
    r.set_hostname(id_);
    for (int i = 0; i < gpus; ++i) r.mutable_capacity()->add_gpus()->set_index(i);
    r.mutable_capacity()->set_cpu_cores(cpus);
    v1::RegisterWorkerResponse resp;
    grpc::Status s = stub_->RegisterWorker(Ctx(token_).get(), r, &resp);
    if (s.ok()) session_ = resp.session();
    return s;
  }

  // Heartbeat reporting `running` (attempt, rank) pairs.
  grpc::Status Heartbeat(const std::vector<std::pair<uint64_t, int>>& running,
                         v1::HeartbeatResponse* resp) {
    v1::HeartbeatRequest r;
    r.set_worker_id(id_);
    r.set_session(session_);
    for (auto [a, rank] : running) {
      auto* rr = r.add_running();
      rr->set_attempt_id(a);
      rr->set_rank(rank);
    }
    return stub_->Heartbeat(Ctx(token_).get(), r, resp);
  }

  // Heartbeats until an attempt is desired (bounded); returns it.
  bool WaitDesired(v1::DesiredAttempt* out, int timeout_ms = 10000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < end) {
      v1::HeartbeatResponse resp;
      if (Heartbeat({}, &resp).ok() && resp.desired_size() > 0) {
        *out = resp.desired(0);
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  grpc::Status Progress(uint64_t attempt, int rank, int64_t step, const std::string& log = "") {
    v1::ReportProgressRequest r;
    r.set_worker_id(id_);
    r.set_attempt_id(attempt);
    r.set_rank(rank);
    r.set_step(step);
    (*r.mutable_metrics())["loss"] = 3.0;
    if (!log.empty()) r.add_log_lines(log);
    v1::ReportProgressResponse resp;
    return stub_->ReportProgress(Ctx(token_).get(), r, &resp);
  }

  grpc::Status Checkpoint(uint64_t attempt, const std::string& dir, int64_t step,
                          v1::Checkpoint* out) {
    (void)fs::MakeDirs(dir);
    (void)fs::WriteFileAtomic(dir + "/manifest.json", "{}");
    v1::CommitCheckpointRequest r;
    r.set_worker_id(id_);
    r.set_attempt_id(attempt);
    r.set_step(step);
    r.set_uri("file://" + dir);
    r.set_bytes(2);
    r.set_sha256(fs::Sha256Hex("{}"));
    (*r.mutable_metrics())["val_loss"] = 2.5;
    return stub_->CommitCheckpoint(Ctx(token_).get(), r, out);
  }

  grpc::Status Result(uint64_t attempt, int rank, v1::AttemptOutcome outcome,
                      v1::ReportAttemptResultResponse* resp) {
    v1::ReportAttemptResultRequest r;
    r.set_worker_id(id_);
    r.set_attempt_id(attempt);
    r.set_rank(rank);
    r.set_outcome(outcome);
    r.set_final_step(100);
    return stub_->ReportAttemptResult(Ctx(token_).get(), r, resp);
  }

  const std::string& id() const { return id_; }

 private:
  std::string id_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::string token_;
  uint64_t session_ = 0;
};

}  // namespace llmt::itest
