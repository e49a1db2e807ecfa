// llmt-coordinator: owns all service state (RocksDB) and serves JobService
// (public) and WorkerService (internal) over gRPC, plus /metrics, /healthz
// and /readyz over HTTP. Flags may also come from a file: --flagfile=PATH
// (one --flag=value per line). SIGTERM/SIGINT shut down gracefully.
#include <signal.h>

#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "coordinator/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:7070", "gRPC address (host:port; port 0 = pick one)");
ABSL_FLAG(std::string, http_listen, "0.0.0.0:7071",
          "HTTP address for /metrics, /healthz, /readyz (\"\" = off)");
ABSL_FLAG(std::string, data_dir, "", "RocksDB state directory (required)");
ABSL_FLAG(std::string, jobs_dir, "",
          "default output_dir root for jobs (<jobs_dir>/<id>); must be visible to all workers "
          "at the same path. Default: <data_dir>/../jobs");
ABSL_FLAG(absl::Duration, lease_timeout, absl::Seconds(10),
          "a worker without a heartbeat for this long is LOST and its attempts fail");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Seconds(1),
          "heartbeat period announced to workers");
ABSL_FLAG(absl::Duration, restart_backoff, absl::Seconds(2),
          "delay before restart k is base * 2^(k-1)");
ABSL_FLAG(absl::Duration, restart_backoff_max, absl::Minutes(5), "cap on the restart delay");
ABSL_FLAG(bool, preemption, false,
          "stop lower-priority jobs (checkpoint, then stop) to place a higher-priority one");
ABSL_FLAG(std::string, job_tokens_file, "",
          "bearer tokens accepted by JobService, one per line (\"\" = no auth)");
ABSL_FLAG(std::string, worker_tokens_file, "",
          "bearer tokens accepted by WorkerService, one per line (\"\" = no auth)");
ABSL_FLAG(std::string, tls_cert, "", "server certificate chain (PEM); enables TLS");
ABSL_FLAG(std::string, tls_key, "", "server private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "", "CA bundle (PEM) for client certificates (mTLS)");
ABSL_FLAG(absl::Duration, gc_interval, absl::Seconds(5), "checkpoint GC period");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "how long in-flight calls may finish on SIGTERM");
ABSL_FLAG(std::string, port_file, "",
          "write \"grpc_port=N\\nhttp_port=M\\n\" here once serving (for scripts/tests)");
ABSL_FLAG(bool, verbose, false, "debug logging");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "llmt-coordinator --data_dir=DIR [flags]\n"
      "Serves the llmt JobService and WorkerService (see docs/coordinator.md).\n"
      "Flags can be put in a file and passed with --flagfile=FILE.");
  // --help lists this file's flags (absl matches on the program name otherwise).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "coordinator/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil runs absl::Mutex deadlock detection (a lock graph update
  // on every acquisition, used heavily inside gRPC); it is a debugging aid.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (absl::GetFlag(FLAGS_verbose)) llmt::SetLogLevel(llmt::LogLevel::kDebug);

  // Block the shutdown signals in every thread (threads inherit the mask) and
  // take them synchronously below.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  llmt::coord::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  if (o.data_dir.empty()) {
    std::fprintf(stderr, "llmt-coordinator: --data_dir is required (see --help)\n");
    return 2;
  }
  o.core.jobs_dir = absl::GetFlag(FLAGS_jobs_dir);
  if (o.core.jobs_dir.empty()) {
    std::string d = o.data_dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    size_t slash = d.rfind('/');
    std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : d.substr(0, slash));
    o.core.jobs_dir = parent + "/jobs";
  }
  if (o.core.jobs_dir[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) o.core.jobs_dir = std::string(cwd) + "/" + o.core.jobs_dir;
  }
  o.core.lease_timeout = absl::GetFlag(FLAGS_lease_timeout);
  o.core.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  o.core.restart_backoff = absl::GetFlag(FLAGS_restart_backoff);
  o.core.restart_backoff_max = absl::GetFlag(FLAGS_restart_backoff_max);
  o.core.preemption = absl::GetFlag(FLAGS_preemption);
  o.job_tokens_file = absl::GetFlag(FLAGS_job_tokens_file);
  o.worker_tokens_file = absl::GetFlag(FLAGS_worker_tokens_file);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.gc_interval = absl::GetFlag(FLAGS_gc_interval);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  if (o.core.lease_timeout <= o.core.heartbeat_interval) {
    std::fprintf(stderr,
                 "llmt-coordinator: --lease_timeout must be longer than --heartbeat_interval\n");
    return 2;
  }

  auto server = llmt::coord::Server::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "llmt-coordinator: %s\n", server.status().ToString().c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&sigs, &sig);
  LLMT_LOG(Info) << "coordinator: received signal " << sig;
  (*server)->Stop(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
