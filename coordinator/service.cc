#include "coordinator/service.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"

namespace llmt::coord {
namespace {

std::string Metadata(grpc::ServerContext* ctx, const char* key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// Runs `fn` for an authenticated caller and records the call.
template <typename F>
grpc::Status Handle(const char* service, const char* method, grpc::ServerContext* ctx,
                    const TokenSet& tokens, Coordinator* core, F&& fn) {
  auto t0 = std::chrono::steady_clock::now();
  absl::Status s;
  CoordinatorMetrics* m = core->metrics();
  if (!tokens.Check(Metadata(ctx, "authorization"))) {
    s = absl::UnauthenticatedError(absl::StrCat(
        service, ": missing or invalid bearer token (metadata 'authorization: Bearer <token>')"));
    if (m) m->unauthenticated.WithLabels({service})->Inc();
  } else {
    s = fn();
  }
  if (m) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m->rpc_latency.WithLabels({service, method, absl::StatusCodeToString(s.code())})
        ->Observe(secs);
  }
  return ToGrpc(s);
}

template <typename T>
absl::Status Assign(absl::StatusOr<T> r, T* out) {
  if (!r.ok()) return r.status();
  *out = std::move(*r);
  return absl::OkStatus();
}

constexpr char kJob[] = "JobService";
constexpr char kWorker[] = "WorkerService";

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// --- JobService ---

grpc::Status JobServiceImpl::CreateJob(grpc::ServerContext* ctx, const v1::CreateJobRequest* req,
                                       v1::Job* resp) {
  return Handle(kJob, "CreateJob", ctx, tokens_, core_,
                [&] { return Assign(core_->CreateJob(*req), resp); });
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                                    v1::Job* resp) {
  return Handle(kJob, "GetJob", ctx, tokens_, core_,
                [&] { return Assign(core_->GetJob(*req), resp); });
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* resp) {
  return Handle(kJob, "ListJobs", ctx, tokens_, core_,
                [&] { return Assign(core_->ListJobs(*req), resp); });
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                                       v1::Job* resp) {
  return Handle(kJob, "CancelJob", ctx, tokens_, core_,
                [&] { return Assign(core_->CancelJob(*req), resp); });
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::Event>* writer) {
  return Handle(kJob, "WatchJob", ctx, tokens_, core_, [&] {
    return core_->WatchJob(
        *req, [&](const v1::Event& ev) { return writer->Write(ev); },
        [&] { return ctx->IsCancelled(); });
  });
}

grpc::Status JobServiceImpl::ListCheckpoints(grpc::ServerContext* ctx,
                                             const v1::ListCheckpointsRequest* req,
                                             v1::ListCheckpointsResponse* resp) {
  return Handle(kJob, "ListCheckpoints", ctx, tokens_, core_,
                [&] { return Assign(core_->ListCheckpoints(*req), resp); });
}

grpc::Status JobServiceImpl::ListAttempts(grpc::ServerContext* ctx,
                                          const v1::ListAttemptsRequest* req,
                                          v1::ListAttemptsResponse* resp) {
  return Handle(kJob, "ListAttempts", ctx, tokens_, core_,
                [&] { return Assign(core_->ListAttempts(*req), resp); });
}

grpc::Status JobServiceImpl::GetQueue(grpc::ServerContext* ctx, const v1::GetQueueRequest* req,
                                      v1::GetQueueResponse* resp) {
  return Handle(kJob, "GetQueue", ctx, tokens_, core_,
                [&] { return Assign(core_->GetQueue(), resp); });
}

grpc::Status JobServiceImpl::ListWorkers(grpc::ServerContext* ctx,
                                         const v1::ListWorkersRequest* req,
                                         v1::ListWorkersResponse* resp) {
  return Handle(kJob, "ListWorkers", ctx, tokens_, core_,
                [&] { return Assign(core_->ListWorkers(), resp); });
}

// --- WorkerService ---

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext* ctx,
                                               const v1::RegisterWorkerRequest* req,
                                               v1::RegisterWorkerResponse* resp) {
  return Handle(kWorker, "RegisterWorker", ctx, tokens_, core_,
                [&] { return Assign(core_->RegisterWorker(*req), resp); });
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* ctx,
                                          const v1::HeartbeatRequest* req,
                                          v1::HeartbeatResponse* resp) {
  return Handle(kWorker, "Heartbeat", ctx, tokens_, core_,
                [&] { return Assign(core_->Heartbeat(*req), resp); });
}

grpc::Status WorkerServiceImpl::ReportProgress(grpc::ServerContext* ctx,
                                               const v1::ReportProgressRequest* req,
                                               v1::ReportProgressResponse* resp) {
  return Handle(kWorker, "ReportProgress", ctx, tokens_, core_,
                [&] { return core_->ReportProgress(*req); });
}

grpc::Status WorkerServiceImpl::CommitCheckpoint(grpc::ServerContext* ctx,
                                                 const v1::CommitCheckpointRequest* req,
                                                 v1::Checkpoint* resp) {
  return Handle(kWorker, "CommitCheckpoint", ctx, tokens_, core_,
                [&] { return Assign(core_->CommitCheckpoint(*req), resp); });
}

grpc::Status WorkerServiceImpl::ReportAttemptResult(grpc::ServerContext* ctx,
                                                    const v1::ReportAttemptResultRequest* req,
                                                    v1::ReportAttemptResultResponse* resp) {
  return Handle(kWorker, "ReportAttemptResult", ctx, tokens_, core_,
                [&] { return Assign(core_->ReportAttemptResult(*req), resp); });
}

grpc::Status WorkerServiceImpl::KvSet(grpc::ServerContext* ctx, const v1::KvSetRequest* req,
                                      v1::KvSetResponse* resp) {
  return Handle(kWorker, "KvSet", ctx, tokens_, core_, [&] { return core_->KvSet(*req); });
}

grpc::Status WorkerServiceImpl::KvGet(grpc::ServerContext* ctx, const v1::KvGetRequest* req,
                                      v1::KvGetResponse* resp) {
  return Handle(kWorker, "KvGet", ctx, tokens_, core_,
                [&] { return Assign(core_->KvGet(*req), resp); });
}

grpc::Status WorkerServiceImpl::KvWait(grpc::ServerContext* ctx, const v1::KvWaitRequest* req,
                                       v1::KvWaitResponse* resp) {
  return Handle(kWorker, "KvWait", ctx, tokens_, core_, [&] {
    // Never wait past the client's own deadline.
    v1::KvWaitRequest capped = *req;
    int64_t timeout_ms = capped.timeout_ms() == 0 ? 30000 : capped.timeout_ms();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    ctx->deadline() - std::chrono::system_clock::now())
                    .count();
    if (left > 0 && left < timeout_ms) timeout_ms = left;
    capped.set_timeout_ms(std::max<int64_t>(1, timeout_ms));
    return Assign(core_->KvWait(capped), resp);
  });
}

grpc::Status WorkerServiceImpl::KvAdd(grpc::ServerContext* ctx, const v1::KvAddRequest* req,
                                      v1::KvAddResponse* resp) {
  return Handle(kWorker, "KvAdd", ctx, tokens_, core_,
                [&] { return Assign(core_->KvAdd(*req), resp); });
}

}  // namespace llmt::coord
