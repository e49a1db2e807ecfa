// NcclCollective: GPU collectives with NCCL (built only with CUDA + NCCL).
//
// Buffers are device pointers on the communicator's device (AllReduceScalar
// takes a host double). Calls are enqueued on `stream` and the call returns
// once they completed, so results are ready on the host's return like with
// Gloo; a caller that wants overlap passes its own stream and runs the call
// from a CommQueue thread.
//
// Rendezvous: JoinGroup through the Store, then rank 0 publishes NCCL's unique
// id under "<prefix>/nccl/uid" and the others read it.
//
// Timeouts: the communicator is created non-blocking (config.blocking = 0),
// so neither init nor a collective can hang the host: the host polls
// ncclCommGetAsyncError and cudaStreamQuery until done, a NCCL error, or the
// deadline, and then aborts the communicator (ncclCommAbort), which is the
// only way to release a NCCL kernel waiting on a dead peer. The failure is
// then diagnosed through the Store like Gloo's (group.h).
//
// Shard layouts with equal lengths use ncclReduceScatter / ncclAllGather;
// uneven ones use grouped ncclReduce / ncclBroadcast per shard (one launch).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "worker/comm/collective.h"
#include "worker/comm/store.h"

struct ncclComm;

namespace llmt::comm {

struct NcclOptions : CollectiveOptions {
  int device = -1;         // CUDA device index; -1 = the current device
  void* stream = nullptr;  // cudaStream_t to run on; nullptr = a private stream
};

class NcclCollective final : public Collective {
 public:
  static absl::StatusOr<std::unique_ptr<NcclCollective>> Create(std::shared_ptr<Store> store,
                                                                int rank, int world,
                                                                const NcclOptions& opts);
  ~NcclCollective() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  const char* backend() const override { return "nccl"; }
  int device() const override { return device_; }
  void* stream() const { return stream_; }  // cudaStream_t

  absl::Status AllReduce(float* data, size_t count, ReduceOp op) override;
  absl::Status AllReduceScalar(double* value, ReduceOp op) override;
  absl::Status ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                             ReduceOp op) override;
  absl::Status AllGather(float* data, const ShardLayout& layout) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  using Collective::Broadcast;  // keep the float overload visible
  absl::Status Barrier() override;

 private:
  NcclCollective(std::shared_ptr<Store> store, int rank, int world, const NcclOptions& opts);
  absl::Status Init();
  // Enqueues via `enqueue` (returns an ncclResult_t as int), then waits for
  // the stream with the timeout; on failure aborts and diagnoses.
  absl::Status Run(const char* op, const std::string& what, const std::function<int()>& enqueue);
  // Polls until the communicator is no longer "in progress" and the stream is
  // idle, or the deadline. Empty string on success, else the error text.
  std::string WaitDone(std::chrono::steady_clock::time_point deadline, bool* timed_out);
  absl::Status Fail(const char* op, const std::string& what, uint64_t seq, const std::string& error,
                    bool timed_out, std::chrono::steady_clock::time_point t0);

  std::shared_ptr<Store> base_store_;
  std::unique_ptr<PrefixStore> store_;
  int rank_, world_;
  NcclOptions opts_;
  std::chrono::milliseconds grace_, op_timeout_;
  int device_ = 0;
  ncclComm* comm_ = nullptr;
  void* stream_ = nullptr;
  bool own_stream_ = false;
  double* dev_scratch_ = nullptr;   // 1 double on the device
  double* host_scratch_ = nullptr;  // 1 pinned double
  std::vector<std::string> peer_info_;
  uint64_t seq_ = 0;
  absl::Status broken_;
};

}  // namespace llmt::comm
