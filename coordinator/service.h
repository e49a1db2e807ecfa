// gRPC adapters for JobService and WorkerService: authenticate (bearer
// token), call the Coordinator, map absl::Status to gRPC status one to one,
// and record latency by method and code.
#pragma once

#include "coordinator/auth.h"
#include "coordinator/core.h"
#include "grpcpp/grpcpp.h"
#include "llmt/v1/coordinator.grpc.pb.h"

namespace llmt::coord {

grpc::Status ToGrpc(const absl::Status& s);

class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(Coordinator* core, TokenSet tokens) : core_(core), tokens_(std::move(tokens)) {}

  grpc::Status CreateJob(grpc::ServerContext* ctx, const v1::CreateJobRequest* req,
                         v1::Job* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                      v1::Job* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                         v1::Job* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::Event>* writer) override;
  grpc::Status ListCheckpoints(grpc::ServerContext* ctx, const v1::ListCheckpointsRequest* req,
                               v1::ListCheckpointsResponse* resp) override;
  grpc::Status ListAttempts(grpc::ServerContext* ctx, const v1::ListAttemptsRequest* req,
                            v1::ListAttemptsResponse* resp) override;
  grpc::Status GetQueue(grpc::ServerContext* ctx, const v1::GetQueueRequest* req,
                        v1::GetQueueResponse* resp) override;
  grpc::Status ListWorkers(grpc::ServerContext* ctx, const v1::ListWorkersRequest* req,
                           v1::ListWorkersResponse* resp) override;

 private:
  Coordinator* core_;
  TokenSet tokens_;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* core, TokenSet tokens)
      : core_(core), tokens_(std::move(tokens)) {}

  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override;
  grpc::Status ReportProgress(grpc::ServerContext* ctx, const v1::ReportProgressRequest* req,
                              v1::ReportProgressResponse* resp) override;
  grpc::Status CommitCheckpoint(grpc::ServerContext* ctx, const v1::CommitCheckpointRequest* req,
                                v1::Checkpoint* resp) override;
  grpc::Status ReportAttemptResult(grpc::ServerContext* ctx,
                                   const v1::ReportAttemptResultRequest* req,
                                   v1::ReportAttemptResultResponse* resp) override;
  grpc::Status KvSet(grpc::ServerContext* ctx, const v1::KvSetRequest* req,
                     v1::KvSetResponse* resp) override;
  grpc::Status KvGet(grpc::ServerContext* ctx, const v1::KvGetRequest* req,
                     v1::KvGetResponse* resp) override;
  grpc::Status KvWait(grpc::ServerContext* ctx, const v1::KvWaitRequest* req,
                      v1::KvWaitResponse* resp) override;
  grpc::Status KvAdd(grpc::ServerContext* ctx, const v1::KvAddRequest* req,
                     v1::KvAddResponse* resp) override;

 private:
  Coordinator* core_;
  TokenSet tokens_;
};

}  // namespace llmt::coord
