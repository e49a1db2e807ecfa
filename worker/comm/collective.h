// Collective communication for data-parallel training: the interface the
// trainer calls (all-reduce, reduce-scatter, all-gather, broadcast, barrier)
// and the shard layout ZeRO-1 uses over a flat parameter buffer.
//
// Implementations: LocalCollective (world size 1, below), GlooCollective (CPU,
// TCP; gloo_collective.h) and NcclCollective (GPU; nccl_collective.h, only
// when built with CUDA). MakeCollectiveFromEnv (env.h) picks one from
// torchrun-style environment variables.
//
// Contract shared by every implementation:
//  - Every rank issues the same collectives in the same order with the same
//    sizes (like MPI/NCCL). A Collective is not thread-safe: call it from one
//    thread at a time (CommQueue runs calls on a background thread).
//  - Every call is bounded by the timeout given at creation. When a peer dies
//    or stays silent, the call returns UNAVAILABLE (peer connection lost) or
//    DEADLINE_EXCEEDED (peer silent) with a message naming the peer rank(s),
//    never hangs. After a failed call the Collective is broken: later calls
//    return FAILED_PRECONDITION with the original error, because the peers'
//    positions in the collective sequence can no longer be trusted.
//  - Results are bit-identical on every rank (each element is reduced once,
//    in one order, then distributed), so data-parallel replicas stay in sync.
//  - Pointers are host memory for Local/Gloo and device memory for NCCL
//    (AllReduceScalar always takes a host double).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::comm {

enum class ReduceOp { kSum, kAvg, kMax, kMin };
const char* ReduceOpName(ReduceOp op);

// How a flat buffer of `total` elements is split over the ranks: rank r owns
// [offset(r), offset(r) + len(r)). Shards are contiguous and in rank order
// (offset(r+1) == offset(r) + len(r)), which is what a ring all-gather
// produces without any reordering and lets ZeRO-1 shard a flat optimizer state
// by plain slicing. Lengths may differ (and may be zero) when `total` does not
// divide evenly.
class ShardLayout {
 public:
  ShardLayout() = default;
  // Splits `total` into `world` contiguous shards whose lengths are multiples
  // of `align` elements (except the last, which takes the remainder): shard
  // size is round_up(ceil(total / world), align), so the first shards are full
  // and trailing shards may be shorter or empty. With align = 1 and total
  // divisible by world all shards are equal (NCCL then uses its native
  // reduce-scatter/all-gather). Alignment keeps each shard's start on a
  // cache-line or vector boundary for the optimizer loop.
  static ShardLayout Even(size_t total, int world, size_t align = 1);
  // Explicit per-rank lengths; offsets are their prefix sums.
  static ShardLayout FromLengths(std::vector<size_t> lens);

  int world() const { return static_cast<int>(lens_.size()); }
  size_t total() const { return total_; }
  size_t offset(int rank) const { return offsets_[rank]; }
  size_t len(int rank) const { return lens_[rank]; }
  const std::vector<size_t>& lens() const { return lens_; }
  bool equal_lengths() const;
  // OK if this layout has `world` shards; otherwise names the mismatch.
  absl::Status CheckWorld(int world) const;
  std::string DebugString() const;

 private:
  size_t total_ = 0;
  std::vector<size_t> offsets_, lens_;
};

struct CollectiveOptions {
  // Bound on each collective call (and on each rendezvous store request).
  // Generous by default: a healthy peer may legitimately be busy (evaluating,
  // writing a checkpoint) while the others already wait in the next
  // collective. A dead peer is detected immediately through its closed
  // connection; only a hung peer costs the full timeout.
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
  // Bound on rendezvous: how long rank r waits for all ranks to appear.
  std::chrono::milliseconds rendezvous_timeout = std::chrono::seconds(300);
  // Prefix for this group's keys in the rendezvous store. Must be unique per
  // group instance when a store outlives one group (e.g. the coordinator KV).
  std::string store_prefix = "llmt";
};

class Collective {
 public:
  virtual ~Collective() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "local", "gloo" or "nccl".
  virtual const char* backend() const = 0;
  // The CUDA device whose memory the collective reduces (NCCL), or -1 for
  // host memory. A GPU trainer puts its model on this device.
  virtual int device() const { return -1; }

  // In-place element-wise reduction of `count` floats over all ranks.
  virtual absl::Status AllReduce(float* data, size_t count, ReduceOp op) = 0;
  absl::Status AllReduceSum(float* data, size_t count) {
    return AllReduce(data, count, ReduceOp::kSum);
  }
  absl::Status AllReduceAvg(float* data, size_t count) {
    return AllReduce(data, count, ReduceOp::kAvg);
  }
  // One host double reduced over all ranks (global grad norm squared, token
  // counts, "any rank saw NaN" via kMax), in double so sums of many squares
  // keep their precision.
  virtual absl::Status AllReduceScalar(double* value, ReduceOp op) = 0;

  // `in` holds layout.total() elements on every rank; afterwards `out` (on
  // rank r, layout.len(r) elements) holds the reduction (kSum or kAvg) of all
  // ranks' in[offset(r), offset(r) + len(r)). `out` may be exactly
  // in + layout.offset(rank()) (in-place ZeRO-1 over a flat gradient buffer)
  // or must not overlap `in`. `in` is only ever written through that alias.
  virtual absl::Status ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                                     ReduceOp op) = 0;
  // In-place all-gather over `layout`: on entry rank r's shard
  // data[offset(r), offset(r) + len(r)) is valid; on return the whole
  // layout.total() elements are, on every rank.
  virtual absl::Status AllGather(float* data, const ShardLayout& layout) = 0;

  // Copies `bytes` bytes at `data` on `root` to `data` on every rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
  absl::Status Broadcast(float* data, size_t count, int root) {
    return Broadcast(static_cast<void*>(data), count * sizeof(float), root);
  }

  // Returns once every rank has entered Barrier().
  virtual absl::Status Barrier() = 0;

 protected:
  // Shared argument checks; they name the call and the bad argument.
  absl::Status CheckRoot(const char* call, int root) const;
  absl::Status CheckReduceScatterArgs(const float* in, const float* out, const ShardLayout& layout,
                                      ReduceOp op) const;
  absl::Status CheckAllGatherArgs(const float* data, const ShardLayout& layout) const;
};

// World size 1: reductions are identities, reduce-scatter copies the (whole)
// shard, everything else returns immediately. Lets the trainer use one code
// path for 1 and N ranks.
class LocalCollective final : public Collective {
 public:
  LocalCollective() = default;
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  const char* backend() const override { return "local"; }
  absl::Status AllReduce(float* data, size_t count, ReduceOp op) override;
  absl::Status AllReduceScalar(double* value, ReduceOp op) override;
  absl::Status ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                             ReduceOp op) override;
  absl::Status AllGather(float* data, const ShardLayout& layout) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  using Collective::Broadcast;  // keep the float overload visible
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace llmt::comm
