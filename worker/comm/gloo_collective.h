// GlooCollective: CPU collectives over TCP with Debian's libgloo.
//
// Rendezvous: every rank announces itself in the Store and waits (bounded by
// rendezvous_timeout) for all others, then Gloo's full-mesh connect exchanges
// transport addresses through the same Store (GlooStoreAdapter).
//
// Algorithms (all Gloo's own; nothing hand-written on the wire):
//   AllReduce        gloo::allreduce (ring: reduce-scatter + all-gather)
//   ReduceScatter    gloo::ReduceScatterHalvingDoubling (bandwidth-optimal,
//                    uneven shards). Debian's Gloo has it only as a legacy
//                    algorithm object bound to its buffers and holding ~3x
//                    the buffer in scratch, so one instance is cached per
//                    layout while the cache stays within
//                    reduce_scatter_cache_bytes; beyond that (or past 2^31
//                    elements) a layout falls back to all-reduce of a copy +
//                    slice (twice the traffic, one reusable scratch buffer).
//                    The choice depends only on the call sequence, which is
//                    the same on every rank.
//   AllGather        gloo::allgatherv in place (ring)
//   Broadcast        gloo::broadcast
//   Barrier          gloo::barrier
//
// Failure: when a Gloo call throws (peer connection lost, or timeout), this
// rank closes all its connections (so peers blocked on it fail now, not at
// their own timeout), publishes "failed in collective #n" in the Store and
// waits briefly (`grace`, at most 2 s) for the other ranks' reports. Ranks
// that never report are the dead or hung ones, and the error names them. The
// Gloo calls themselves run with `timeout - grace`, so the whole failure path
// stays within `timeout`.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "worker/comm/collective.h"
#include "worker/comm/store.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace llmt::comm {

struct GlooOptions : CollectiveOptions {
  // Address to bind and advertise to peers. Loopback suits one machine; for
  // several machines use this machine's reachable address, or "" for the
  // address its hostname resolves to (beware Debian's 127.0.1.1 /etc/hosts
  // entry), or set `iface`.
  std::string hostname = "127.0.0.1";
  // Network interface (e.g. "eth0", "ib0"); takes precedence over hostname.
  std::string iface;
  // Memory the reduce-scatter plans may keep (see ReduceScatter below).
  size_t reduce_scatter_cache_bytes = size_t{256} << 20;
};

class GlooCollective final : public Collective {
 public:
  // Joins the group of `world` ranks as `rank` through `store`, which stays
  // referenced for failure diagnosis.
  static absl::StatusOr<std::unique_ptr<GlooCollective>> Create(std::shared_ptr<Store> store,
                                                                int rank, int world,
                                                                const GlooOptions& opts);
  ~GlooCollective() override;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  const char* backend() const override { return "gloo"; }

  absl::Status AllReduce(float* data, size_t count, ReduceOp op) override;
  absl::Status AllReduceScalar(double* value, ReduceOp op) override;
  absl::Status ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                             ReduceOp op) override;
  absl::Status AllGather(float* data, const ShardLayout& layout) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  using Collective::Broadcast;  // keep the float overload visible
  absl::Status Barrier() override;

  // Number of collective calls issued so far (the "#n" in error messages).
  uint64_t calls() const { return seq_; }

 private:
  struct ReduceScatterPlan;

  GlooCollective(std::shared_ptr<Store> store, int rank, int world, const GlooOptions& opts);
  absl::Status Connect();
  // Runs one Gloo call; converts exceptions into a status naming the peers.
  absl::Status Run(const char* op, const std::string& what, const std::function<void()>& fn);

  std::shared_ptr<Store> base_store_;
  std::unique_ptr<PrefixStore> store_;
  int rank_, world_;
  GlooOptions opts_;
  std::chrono::milliseconds grace_, op_timeout_;
  std::shared_ptr<gloo::Context> context_;
  std::vector<std::string> peer_info_;  // "pid 123 on host-a" per rank
  uint64_t seq_ = 0;
  absl::Status broken_;
  std::map<std::vector<size_t>, std::unique_ptr<ReduceScatterPlan>> rs_plans_;
  size_t rs_plan_bytes_ = 0;    // memory held by rs_plans_
  std::vector<float> scratch_;  // all-reduce fallback of ReduceScatter
};

}  // namespace llmt::comm
