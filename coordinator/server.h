// The assembled coordinator process: store + Coordinator + gRPC services +
// HTTP endpoints (/metrics, /healthz, /readyz) + background loops (leases
// and scheduling, checkpoint GC). main.cc only parses flags and signals.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "common/metrics_http.h"
#include "coordinator/core.h"
#include "coordinator/service.h"
#include "grpcpp/grpcpp.h"
#include "storage/store/store.h"

namespace llmt::coord {

struct ServerOptions {
  std::string listen = "0.0.0.0:7070";       // gRPC; port 0 picks a free port
  std::string http_listen = "0.0.0.0:7071";  // metrics/health; "" = off
  std::string data_dir;                      // RocksDB directory
  CoordinatorOptions core;
  std::string job_tokens_file;     // "" = JobService without auth (logged loudly)
  std::string worker_tokens_file;  // "" = WorkerService without auth
  std::string tls_cert, tls_key;   // PEM files; both or neither
  std::string tls_client_ca;       // PEM; set = require client certificates (mTLS)
  absl::Duration tick_interval = absl::Milliseconds(100);
  absl::Duration gc_interval = absl::Seconds(5);
  // Written once serving: "grpc_port=N\nhttp_port=M\n" (for tests and scripts).
  std::string port_file;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_ ? http_->port() : 0; }
  // Stops accepting calls, lets in-flight ones finish for up to `grace`,
  // stops the loops and closes the store (flushed, so the next start replays
  // no WAL).
  void Stop(absl::Duration grace);
  Coordinator* core() { return core_.get(); }

 private:
  Server() = default;
  void TickLoop();
  void GcLoop();

  ServerOptions options_;
  RealClock clock_;
  metrics::Registry registry_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<metrics::HttpServer> http_;
  int grpc_port_ = 0;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::thread tick_thread_, gc_thread_;
  bool stopped_ = false;
};

}  // namespace llmt::coord
