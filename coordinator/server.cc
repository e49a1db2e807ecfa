#include "coordinator/server.h"

#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/status.h"
#include "grpcpp/security/server_credentials.h"

namespace llmt::coord {

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto t0 = absl::Now();
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data_dir: required");
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key: set both or neither");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca: needs --tls_cert and --tls_key");
  }
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;

  TokenSet job_tokens = TokenSet::Disabled(), worker_tokens = TokenSet::Disabled();
  if (!options.job_tokens_file.empty()) {
    ASSIGN_OR_RETURN(job_tokens, TokenSet::LoadFile(options.job_tokens_file));
  } else {
    LLMT_LOG(Warning) << "coordinator: JobService has no auth (--job_tokens_file not set)";
  }
  if (!options.worker_tokens_file.empty()) {
    ASSIGN_OR_RETURN(worker_tokens, TokenSet::LoadFile(options.worker_tokens_file));
  } else {
    LLMT_LOG(Warning) << "coordinator: WorkerService has no auth (--worker_tokens_file not set)";
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    ASSIGN_OR_RETURN(pair.cert_chain, fs::ReadFile(options.tls_cert));
    ASSIGN_OR_RETURN(pair.private_key, fs::ReadFile(options.tls_key));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    if (!options.tls_client_ca.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, fs::ReadFile(options.tls_client_ca));
    }
    creds = grpc::SslServerCredentials(ssl);
  }

  ASSIGN_OR_RETURN(s->store_, store::Store::Open(options.data_dir));
  s->core_ = std::make_unique<Coordinator>(s->store_.get(), &s->clock_, options.core,
                                           &s->registry_);
  RETURN_IF_ERROR(s->core_->Recover());

  if (!options.http_listen.empty()) {
    Server* self = s.get();
    ASSIGN_OR_RETURN(
        s->http_,
        metrics::HttpServer::Start(
            options.http_listen, &s->registry_,
            {{"/healthz", [] { return metrics::HttpResponse{200, "text/plain", "ok\n"}; }},
             {"/readyz", [self] {
                return self->ready_.load() && !self->stopping_.load()
                           ? metrics::HttpResponse{200, "text/plain", "ready\n"}
                           : metrics::HttpResponse{503, "text/plain", "not ready\n"};
              }}}));
  }

  s->job_service_ = std::make_unique<JobServiceImpl>(s->core_.get(), std::move(job_tokens));
  s->worker_service_ =
      std::make_unique<WorkerServiceImpl>(s->core_.get(), std::move(worker_tokens));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &s->grpc_port_);
  builder.RegisterService(s->job_service_.get());
  builder.RegisterService(s->worker_service_.get());
  builder.SetMaxReceiveMessageSize(16 << 20);
  // Handlers block until their transition is durable (group commit), so many
  // run at once; keep polling threads around instead of creating and
  // destroying one per burst (thread churn cost ~10% CPU per call).
  builder.SetSyncServerOption(grpc::ServerBuilder::NUM_CQS, 1);
  builder.SetSyncServerOption(grpc::ServerBuilder::MIN_POLLERS, 2);
  builder.SetSyncServerOption(grpc::ServerBuilder::MAX_POLLERS, 256);
  s->grpc_ = builder.BuildAndStart();
  if (s->grpc_ == nullptr || s->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("--listen: cannot serve gRPC on '", options.listen, "'"));
  }
  s->tick_thread_ = std::thread([p = s.get()] { p->TickLoop(); });
  s->gc_thread_ = std::thread([p = s.get()] { p->GcLoop(); });
  s->ready_ = true;
  if (!options.port_file.empty()) {
    RETURN_IF_ERROR(fs::WriteFileAtomic(
        options.port_file,
        absl::StrCat("grpc_port=", s->grpc_port_, "\nhttp_port=", s->http_port(), "\n")));
  }
  LLMT_LOG(Info) << "coordinator: serving gRPC on port " << s->grpc_port_ << ", HTTP on port "
                 << s->http_port() << " (" << (options.tls_cert.empty() ? "plaintext" : "TLS")
                 << "), ready in " << absl::ToDoubleMilliseconds(absl::Now() - t0) << " ms";
  return s;
}

void Server::TickLoop() {
  while (!stopping_.load()) {
    core_->Tick();
    core_->WaitForWork(options_.tick_interval);
  }
}

void Server::GcLoop() {
  std::unique_lock<std::mutex> l(stop_mu_);
  while (!stopping_.load()) {
    l.unlock();
    core_->RunCheckpointGc();
    l.lock();
    stop_cv_.wait_for(l, absl::ToChronoNanoseconds(options_.gc_interval),
                      [&] { return stopping_.load(); });
  }
}

void Server::Stop(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  LLMT_LOG(Info) << "coordinator: shutting down";
  auto t0 = absl::Now();
  stopping_ = true;  // /readyz turns 503 first so load balancers drain
  core_->Shutdown();  // ends WatchJob streams and KV waits
  // civetweb's stop takes up to its 2 s poll quantum: overlap it with gRPC's drain.
  std::thread http_stop([this] { http_.reset(); });
  // Waits for in-flight calls and for clients to acknowledge GOAWAY (an idle
  // client channel may only notice at its next poll); cancels after `grace`.
  if (grpc_) grpc_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(grace));
  LLMT_LOG(Debug) << "coordinator: gRPC drained in " << absl::Now() - t0;
  {
    std::lock_guard<std::mutex> l(stop_mu_);
    stop_cv_.notify_all();
  }
  if (tick_thread_.joinable()) tick_thread_.join();
  if (gc_thread_.joinable()) gc_thread_.join();
  http_stop.join();
  core_.reset();
  if (store_) {
    absl::Status f = store_->Flush();
    if (!f.ok()) {
      LLMT_LOG(Warning) << "coordinator: " << f;
    }
  }
  store_.reset();
  LLMT_LOG(Info) << "coordinator: stopped in " << absl::Now() - t0;
}

Server::~Server() { Stop(absl::Seconds(5)); }

}  // namespace llmt::coord
