// Building a Collective from torchrun-style environment variables, for
// standalone multi-process runs (`llmt train --nproc N`, or one `llmt train`
// per rank on several machines).
//
//   WORLD_SIZE           number of ranks; unset or 1 -> LocalCollective
//   RANK                 this rank, in [0, WORLD_SIZE)
//   LOCAL_RANK           rank on this machine (CUDA device index); default RANK
//   MASTER_ADDR          host of rank 0, which serves the TCP rendezvous store
//   MASTER_PORT          its port
//   LLMT_STORE_DIR       instead of MASTER_*: a directory every rank sees
//                        (FileStore; one machine or a shared filesystem)
//   LLMT_COMM_TIMEOUT_S  per-collective timeout in seconds (default 300)
//   LLMT_RDZV_TIMEOUT_S  how long ranks wait for each other at start (default 300)
//   LLMT_COMM_IFACE      network interface Gloo binds (e.g. eth0)
//   LLMT_COMM_HOST       or the address Gloo binds and advertises
//   LLMT_RUN_ID          optional prefix for this run's store keys
//   LLMT_COMM_FORCE      1: build the real collective (Gloo/NCCL) even for
//                        WORLD_SIZE=1, e.g. to check NCCL on a one-GPU machine
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/comm/collective.h"
#include "worker/comm/store.h"

namespace llmt::comm {

enum class CommDevice { kCpu, kCuda };

struct CommEnv {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  std::string store_dir;
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
  std::chrono::milliseconds rendezvous_timeout = std::chrono::seconds(300);
  std::string iface;
  std::string host;
  std::string run_id;
  bool force = false;  // LLMT_COMM_FORCE
};

// Returns the value of an environment variable, or nullopt if unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
std::optional<std::string> ProcessEnv(const std::string& name);

// Parses and validates the variables above; errors name the variable, its
// value and what is expected. Empty values count as unset.
absl::StatusOr<CommEnv> ParseCommEnv(const EnvLookup& lookup = ProcessEnv);

// Opens the rendezvous store `env` describes: FileStore for LLMT_STORE_DIR,
// else TcpStore hosted by rank 0 on MASTER_PORT (others connect to
// MASTER_ADDR:MASTER_PORT, retrying up to the rendezvous timeout).
absl::StatusOr<std::shared_ptr<Store>> OpenStore(const CommEnv& env);

// LocalCollective for world size 1; otherwise GlooCollective (kCpu) or
// NcclCollective on device LOCAL_RANK (kCuda, CUDA builds with NCCL only).
absl::StatusOr<std::unique_ptr<Collective>> MakeCollective(const CommEnv& env, CommDevice device);
absl::StatusOr<std::unique_ptr<Collective>> MakeCollectiveFromEnv(
    CommDevice device = CommDevice::kCpu);

// The address of the local interface that routes to host:port (no packet is
// sent); Gloo's default bind address for multi-machine runs, so peers get an
// address they can reach rather than whatever the hostname resolves to.
absl::StatusOr<std::string> LocalAddressToward(const std::string& host, int port);

}  // namespace llmt::comm
