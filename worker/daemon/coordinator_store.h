// comm::Store over the coordinator's rendezvous KV (WorkerService KvSet /
// KvWait), scoped to one attempt. It lets the ranks of a service job find
// each other when they run on different workers: llmt-worker starts each rank
// with the variables below, and `llmt train` builds its Gloo group through
// this store instead of a FileStore or a TCP store hosted by rank 0.
//
//   LLMT_RDZV_COORDINATOR     coordinator host:port (selects this store)
//   LLMT_RDZV_ATTEMPT         attempt id (the KV's scope and fencing token)
//   LLMT_RDZV_TOKEN           WorkerService bearer token ("" = none)
//   LLMT_RDZV_TLS             "1" = TLS; then LLMT_RDZV_TLS_CA, LLMT_RDZV_TLS_CERT,
//                             LLMT_RDZV_TLS_KEY, LLMT_RDZV_TLS_SERVER_NAME (optional)
//   WORLD_SIZE, RANK, LOCAL_RANK, LLMT_COMM_HOST, LLMT_COMM_IFACE,
//   LLMT_COMM_TIMEOUT_S, LLMT_RDZV_TIMEOUT_S   as in worker/comm/env.h
//
// The KV lives in the coordinator's memory: a coordinator restart during the
// rendezvous fails it (the attempt then fails and the job restarts); once the
// Gloo group is connected the store is no longer on any path but failure
// diagnosis.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmt/v1/coordinator.grpc.pb.h"
#include "worker/comm/collective.h"
#include "worker/comm/env.h"
#include "worker/comm/store.h"
#include "worker/daemon/rpc_client.h"

namespace llmt::daemon {

class CoordinatorStore final : public comm::Store {
 public:
  CoordinatorStore(std::shared_ptr<grpc::Channel> channel, std::string address, uint64_t attempt_id,
                   std::string token);

  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override;
  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override;
  std::string Describe() const override;

 private:
  // KvWait for `keys`, retrying transient failures (a coordinator that is
  // briefly unreachable) until `timeout` passes.
  absl::StatusOr<std::vector<std::string>> WaitValues(const std::vector<std::string>& keys,
                                                      std::chrono::milliseconds timeout);

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::string address_;
  uint64_t attempt_id_;
  std::string token_;
};

// True when LLMT_RDZV_COORDINATOR is set (the process is a rank started by
// llmt-worker for a multi-rank job).
bool CoordinatorRendezvousRequested();

// Opens the store from the variables above.
absl::StatusOr<std::shared_ptr<CoordinatorStore>> OpenCoordinatorStoreFromEnv();

// The Collective for this rank: LocalCollective for WORLD_SIZE 1, otherwise a
// Gloo group (kCpu) or an NCCL group on device LOCAL_RANK (kCuda, builds with
// NCCL), rendezvousing through the coordinator.
absl::StatusOr<std::unique_ptr<comm::Collective>> MakeCoordinatorCollectiveFromEnv(
    comm::CommDevice device);

}  // namespace llmt::daemon
