// Harness for end-to-end tests of the whole service with the real binaries on
// loopback: llmt-coordinator, llmt-worker (which runs `llmt train` ranks) and
// the llmt CLI. Every process is spawned through llmt::testing::Process, so it
// is SIGKILLed and reaped when its handle goes away; trainer ranks die with
// their worker (PR_SET_PDEATHSIG). Waits are bounded.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "llmt/v1/coordinator.grpc.pb.h"
#include "tests/util/subprocess.h"

namespace llmt::wtest {

using ::llmt::testing::Binary;
using ::llmt::testing::Process;
using ::llmt::testing::ReadFileOrEmpty;
using ::llmt::testing::RunCommand;
using ::llmt::testing::RunResult;
using ::llmt::testing::WaitFor;

// A port that was free a moment ago (the coordinator must keep its port across
// a restart, so it cannot use port 0).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

inline int PortFromFile(const std::string& path, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(ReadFileOrEmpty(path), '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, '=');
    int p = 0;
    if (kv.size() == 2 && kv[0] == key && absl::SimpleAtoi(kv[1], &p)) return p;
  }
  return 0;
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

// Pids of live processes whose command line contains every one of `needles`.
inline std::vector<int> PidsMatching(const std::vector<std::string>& needles) {
  std::vector<int> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid == getpid()) continue;
    std::string cmd = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/cmdline"));
    for (char& c : cmd) {
      if (c == '\0') c = ' ';
    }
    // A zombie has an empty cmdline; only running processes count.
    std::string stat = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/stat"));
    if (stat.find(") Z ") != std::string::npos) continue;
    bool all = true;
    for (const auto& n : needles) all = all && cmd.find(n) != std::string::npos;
    if (all) out.push_back(pid);
  }
  closedir(d);
  return out;
}

class Daemon {
 public:
  Daemon(std::vector<std::string> argv, std::string log, std::string port_file)
      : argv_(std::move(argv)), log_(std::move(log)), port_file_(std::move(port_file)) {}

  // Starts (again) and waits up to 20 s for the port file.
  bool Start() {
    Stop(SIGKILL);
    std::remove(port_file_.c_str());
    // Process truncates its log; keep earlier runs' lines for failure output.
    std::string old = ReadFileOrEmpty(log_);
    if (!old.empty()) std::ofstream(log_ + ".prev", std::ios::app) << old;
    proc_ = std::make_unique<Process>(argv_, log_);
    return WaitFor([&] { return !proc_->Running() || PortFromFile(port_file_, "http_port") > 0; },
                   20000) &&
           proc_->Running();
  }
  // Sends `sig` and reaps; returns the exit code (-signal if killed), or
  // -1000 if it had to be SIGKILLed after `timeout_s`.
  int Stop(int sig, int timeout_s = 30) {
    if (!proc_) return 0;
    proc_->Signal(sig);
    int rc = proc_->Wait(timeout_s);
    proc_.reset();
    return rc;
  }
  bool running() { return proc_ && proc_->Running(); }
  int pid() const { return proc_ ? proc_->pid() : -1; }
  int Port(const std::string& key) const { return PortFromFile(port_file_, key); }
  std::string Log() const { return ReadFileOrEmpty(log_ + ".prev") + ReadFileOrEmpty(log_); }

 private:
  std::vector<std::string> argv_;
  std::string log_, port_file_;
  std::unique_ptr<Process> proc_;
};

// One coordinator and any number of workers under `root`.
class Cluster {
 public:
  explicit Cluster(std::string root) : root_(std::move(root)), port_(FreePort()) {}
  ~Cluster() {
    workers_.clear();  // SIGKILL: their trainers die with them
    coordinator_.reset();
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  const std::string& root() const { return root_; }

  bool StartCoordinator(std::vector<std::string> extra = {}) {
    if (!coordinator_) {
      std::vector<std::string> argv = {Binary("coordinator/llmt-coordinator"),
                                       "--data_dir=" + root_ + "/coord/db",
                                       "--jobs_dir=" + root_ + "/jobs",
                                       "--listen=" + address(),
                                       "--http_listen=127.0.0.1:0",
                                       "--port_file=" + root_ + "/coord/ports",
                                       // Long enough that a CI machine busy with
                                       // parallel tests does not lose a worker
                                       // (seen with 2 s: an extra restart in a
                                       // test counting them); the lease-expiry
                                       // test asks for 2 s itself.
                                       "--lease_timeout=8s",
                                       "--heartbeat_interval=200ms",
                                       "--restart_backoff=200ms",
                                       "--restart_backoff_max=1s",
                                       "--gc_interval=1s",
                                       "--shutdown_grace=2s"};
      argv.insert(argv.end(), extra.begin(), extra.end());
      std::filesystem::create_directories(root_ + "/coord");
      coordinator_ =
          std::make_unique<Daemon>(argv, root_ + "/coord/coordinator.log", root_ + "/coord/ports");
    }
    bool ok = coordinator_->Start();
    // The port was free when chosen but another process may have taken it
    // since; before the first start a different one will do.
    if (!ok && !started_once_ && ++start_tries_ < 3) {
      port_ = FreePort();
      coordinator_.reset();
      return StartCoordinator(std::move(extra));
    }
    if (!ok) return false;
    started_once_ = true;
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel_);
    return true;
  }
  Daemon& coordinator() { return *coordinator_; }

  // Starts worker `id` with `cpus` cores; returns its index.
  Daemon* StartWorker(const std::string& id, int cpus, std::vector<std::string> extra = {}) {
    std::string dir = root_ + "/" + id;
    std::filesystem::create_directories(dir);
    std::vector<std::string> argv = {Binary("worker/daemon/llmt-worker"),
                                     "--coordinator=" + address(),
                                     "--worker_id=" + id,
                                     absl::StrCat("--cpus=", cpus),
                                     "--gpus=none",
                                     "--state_dir=" + dir + "/state",
                                     "--http_listen=127.0.0.1:0",
                                     "--port_file=" + dir + "/ports",
                                     "--stop_grace=10s",
                                     "--progress_interval=100ms",
                                     "--trainer=" + Binary("cli/llmt")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto d = std::make_unique<Daemon>(argv, dir + "/worker.log", dir + "/ports");
    if (!d->Start()) {
      ADD_FAILURE() << "worker " << id << " did not start:\n" << d->Log();
      return nullptr;
    }
    workers_.push_back(std::move(d));
    return workers_.back().get();
  }

  // The llmt CLI against this coordinator.
  RunResult Cli(std::vector<std::string> args, int timeout_s = 120) {
    std::vector<std::string> argv = {Binary("cli/llmt")};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--coordinator=" + address());
    return RunCommand(argv, timeout_s);
  }

  // Submits and returns the job name ("" on failure, with the reason recorded).
  std::string Submit(const std::string& spec_path, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"submit", spec_path};
    args.insert(args.end(), extra.begin(), extra.end());
    RunResult r = Cli(args);
    if (r.exit_code != 0) {
      ADD_FAILURE() << "submit failed (" << r.exit_code << "): " << r.output;
      return "";
    }
    std::string name = r.output.substr(0, r.output.find('\n'));
    return name;
  }

  grpc::Status GetJob(const std::string& name, v1::Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetJobRequest req;
    req.set_name(name);
    return jobs_->GetJob(&ctx, req, job);
  }

  // Polls the job (bounded) until `pred` holds; returns the last record seen.
  bool WaitJob(const std::string& name, const std::function<bool(const v1::Job&)>& pred,
               int timeout_ms, v1::Job* out = nullptr) {
    v1::Job j;
    bool ok = WaitFor(
        [&] {
          v1::Job cur;
          if (!GetJob(name, &cur).ok()) return false;
          j = cur;
          return pred(cur);
        },
        timeout_ms);
    if (out) *out = j;
    return ok;
  }

  std::vector<v1::Attempt> Attempts(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListAttemptsRequest req;
    req.set_name(name);
    v1::ListAttemptsResponse resp;
    jobs_->ListAttempts(&ctx, req, &resp);
    return {resp.attempts().begin(), resp.attempts().end()};
  }

  std::vector<v1::Checkpoint> Checkpoints(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListCheckpointsRequest req;
    req.set_name(name);
    v1::ListCheckpointsResponse resp;
    jobs_->ListCheckpoints(&ctx, req, &resp);
    return {resp.checkpoints().begin(), resp.checkpoints().end()};
  }

  std::vector<v1::Job> Jobs() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListJobsRequest req;
    req.set_page_size(1000);
    v1::ListJobsResponse resp;
    jobs_->ListJobs(&ctx, req, &resp);
    return {resp.jobs().begin(), resp.jobs().end()};
  }

  // Everything the daemons logged, for failure messages.
  std::string Logs() {
    std::string out;
    if (coordinator_) out += "--- coordinator ---\n" + Tail(coordinator_->Log());
    for (size_t i = 0; i < workers_.size(); ++i) {
      out += absl::StrCat("--- worker ", i, " ---\n", Tail(workers_[i]->Log()));
    }
    return out;
  }

 private:
  static std::string Tail(const std::string& s) {
    return s.size() > 6000 ? s.substr(s.size() - 6000) : s;
  }

  std::string root_;
  int port_;
  bool started_once_ = false;
  int start_tries_ = 0;
  std::unique_ptr<Daemon> coordinator_;
  std::vector<std::unique_ptr<Daemon>> workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

inline bool Terminal(const v1::Job& j) {
  return j.state() == v1::JOB_STATE_SUCCEEDED || j.state() == v1::JOB_STATE_FAILED ||
         j.state() == v1::JOB_STATE_CANCELLED;
}

}  // namespace llmt::wtest
