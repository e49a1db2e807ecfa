// llmt-worker: runs training attempts for an llmt coordinator on this machine
// (see docs/service.md). Flags may also come from a file: --flagfile=PATH.
// SIGTERM/SIGINT: stop every rank (SIGTERM -> checkpoint -> exit, SIGKILL
// after --stop_grace), deliver the last reports, exit 0.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/fs.h"
#include "common/log.h"
#include "worker/comm/env.h"
#include "worker/daemon/daemon.h"

ABSL_FLAG(std::string, coordinator, "",
          "coordinator gRPC address host:port (default: $LLMT_COORDINATOR, else 127.0.0.1:7070)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the WorkerService bearer token (default: $LLMT_WORKER_TOKEN, else none)");
ABSL_FLAG(bool, tls, false, "connect with TLS");
ABSL_FLAG(std::string, tls_ca, "", "CA bundle (PEM) that signed the coordinator's certificate");
ABSL_FLAG(std::string, tls_cert, "", "client certificate (PEM) for mTLS");
ABSL_FLAG(std::string, tls_key, "", "client private key (PEM) for mTLS");
ABSL_FLAG(std::string, tls_server_name, "", "name to verify in the coordinator's certificate");
ABSL_FLAG(std::string, worker_id, "", "stable worker name (default: the hostname)");
ABSL_FLAG(std::string, advertise_host, "",
          "address peers reach this machine at (default: 127.0.0.1 for a loopback "
          "coordinator, else the local address routing to it)");
ABSL_FLAG(std::string, gpus, "auto", "GPUs to offer: auto, none, or indices like 0,1");
ABSL_FLAG(int, cpus, 0, "CPU cores to offer to CPU ranks (0 = every core this process may use)");
ABSL_FLAG(std::vector<std::string>, labels, {}, "worker labels, key=value,...");
ABSL_FLAG(std::string, trainer, "",
          "the llmt binary that runs `llmt train` (default: next to this binary, or in the build "
          "tree's cli/)");
ABSL_FLAG(std::string, state_dir, "", "rank logs and spec files (default: ./var/worker-<id>)");
ABSL_FLAG(absl::Duration, stop_grace, absl::Seconds(30),
          "after SIGTERM a rank has this long to checkpoint and exit before SIGKILL");
ABSL_FLAG(absl::Duration, finished_series_ttl, absl::Minutes(15),
          "how long a finished rank's {job, rank} metric series stay on /metrics (so the last values "
          "are scraped) before they are dropped");
ABSL_FLAG(absl::Duration, progress_interval, absl::Seconds(1),
          "at most one progress report per rank per interval (validation points always go)");
ABSL_FLAG(std::string, http_listen, "0.0.0.0:7072",
          "HTTP address for /metrics, /healthz, /readyz (\"\" = off; port 0 picks one)");
ABSL_FLAG(std::string, port_file, "", "write \"http_port=N\\n\" here once serving");
ABSL_FLAG(double, peak_flops_per_rank, 0,
          "peak FLOP/s of one rank's devices for llmt_mfu_ratio (0 = from the hardware)");
ABSL_FLAG(bool, verbose, false, "debug logging");

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  return llmt::fs::Dirname(buf);
}

// The llmt binary: beside this one (installed), or the build tree's cli/llmt
// (this binary lives in <build>/worker/daemon/).
std::string DefaultTrainer() {
  const std::string dir = SelfDir();
  for (const std::string& c : {dir + "/llmt", dir + "/../../cli/llmt"}) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return dir + "/llmt";
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") || host == "::1" || host == "[::1]";
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "llmt-worker [--coordinator=HOST:PORT] [flags]\n"
      "Registers this machine with an llmt coordinator and runs the training attempts it\n"
      "assigns (see docs/service.md). Flags can be put in a file: --flagfile=FILE.");
  absl::ParseCommandLine(argc, argv);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (absl::GetFlag(FLAGS_verbose)) llmt::SetLogLevel(llmt::LogLevel::kDebug);

  // Shutdown signals are taken synchronously by one thread; every other
  // thread (and, until exec resets the mask, every child) has them blocked.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  llmt::daemon::DaemonOptions o;
  auto& c = o.coordinator;
  c.address = absl::GetFlag(FLAGS_coordinator);
  if (c.address.empty()) c.address = Env("LLMT_COORDINATOR");
  if (c.address.empty()) c.address = "127.0.0.1:7070";
  std::string token_file = absl::GetFlag(FLAGS_token_file);
  if (!token_file.empty()) {
    auto t = llmt::rpc::ReadTokenFile(token_file);
    if (!t.ok()) {
      std::fprintf(stderr, "llmt-worker: --token_file: %s\n",
                   std::string(t.status().message()).c_str());
      return 2;
    }
    c.token = *t;
  } else {
    c.token = Env("LLMT_WORKER_TOKEN");
  }
  c.tls = absl::GetFlag(FLAGS_tls) || !absl::GetFlag(FLAGS_tls_ca).empty();
  c.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  c.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key = absl::GetFlag(FLAGS_tls_key);
  c.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  // A worker must be back within a fraction of its lease after a coordinator
  // restart; a connect attempt every half second costs nothing.
  c.max_reconnect_backoff = absl::Milliseconds(500);

  o.worker_id = absl::GetFlag(FLAGS_worker_id);
  if (o.worker_id.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    o.worker_id = host;
  }
  if (o.worker_id.empty() || o.worker_id.size() > 253 ||
      o.worker_id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789._-") != std::string::npos) {
    std::fprintf(stderr,
                 "llmt-worker: --worker_id='%s' must be 1-253 characters of [A-Za-z0-9._-]\n",
                 o.worker_id.c_str());
    return 2;
  }
  o.advertise_host = absl::GetFlag(FLAGS_advertise_host);
  if (o.advertise_host.empty()) {
    std::string host = c.address.substr(0, c.address.rfind(':'));
    int port = 0;
    (void)absl::SimpleAtoi(c.address.substr(c.address.rfind(':') + 1), &port);
    if (IsLoopback(host)) {
      o.advertise_host = "127.0.0.1";
    } else {
      auto a = llmt::comm::LocalAddressToward(host, port > 0 ? port : 7070);
      if (!a.ok()) {
        std::fprintf(stderr, "llmt-worker: choosing --advertise_host: %s (set it)\n",
                     std::string(a.status().message()).c_str());
        return 2;
      }
      o.advertise_host = *a;
    }
  }
  o.gpus = absl::GetFlag(FLAGS_gpus);
  o.cpus = absl::GetFlag(FLAGS_cpus);
  for (const std::string& kv : absl::GetFlag(FLAGS_labels)) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() != 2 || p[0].empty()) {
      std::fprintf(stderr, "llmt-worker: --labels: '%s' is not key=value\n", kv.c_str());
      return 2;
    }
    o.labels[p[0]] = p[1];
  }
  o.trainer = absl::GetFlag(FLAGS_trainer);
  if (o.trainer.empty()) o.trainer = DefaultTrainer();
  o.state_dir = absl::GetFlag(FLAGS_state_dir);
  if (o.state_dir.empty()) o.state_dir = "var/worker-" + o.worker_id;
  o.stop_grace = absl::GetFlag(FLAGS_stop_grace);
  o.finished_series_ttl = absl::GetFlag(FLAGS_finished_series_ttl);
  o.progress_interval = absl::GetFlag(FLAGS_progress_interval);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  o.peak_flops_per_rank = absl::GetFlag(FLAGS_peak_flops_per_rank);

  auto daemon = llmt::daemon::Daemon::Create(o);
  if (!daemon.ok()) {
    std::fprintf(stderr, "llmt-worker: %s\n", std::string(daemon.status().message()).c_str());
    return 1;
  }
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    LLMT_LOG(Info) << "worker: received signal " << sig;
    (*daemon)->RequestStop();
  });
  (*daemon)->Run();
  // Run returns only after a stop request, so the signal thread has finished.
  signals.join();
  daemon->reset();
  return 0;
}
