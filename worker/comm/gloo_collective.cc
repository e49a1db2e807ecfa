#include "worker/comm/gloo_collective.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status.h"
#include "gloo/allgatherv.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/reduce_scatter.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "worker/comm/gloo_store.h"
#include "worker/comm/group.h"

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
void SumFn(void* c, const void* a, const void* b, size_t n) {
  T* out = static_cast<T*>(c);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}
template <typename T>
void MaxFn(void* c, const void* a, const void* b, size_t n) {
  T* out = static_cast<T*>(c);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = std::max(x[i], y[i]);
}
template <typename T>
void MinFn(void* c, const void* a, const void* b, size_t n) {
  T* out = static_cast<T*>(c);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = std::min(x[i], y[i]);
}

template <typename T>
ReduceFn FnFor(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax:
      return &MaxFn<T>;
    case ReduceOp::kMin:
      return &MinFn<T>;
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      break;
  }
  return &SumFn<T>;
}

// Average = sum / world, divided rather than multiplied by 1/world so the
// result is the correctly rounded quotient (exact when world is a power of 2).
void DivideBy(float* data, size_t n, int world) {
  const float w = static_cast<float>(world);
  for (size_t i = 0; i < n; ++i) data[i] /= w;
}

// Gloo prefixes messages with "[file:line] "; keep only the human part.
std::string CleanGlooMessage(const std::string& msg) {
  std::string s = msg;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return s;
}

bool LooksLikeTimeout(const std::string& msg) {
  return absl::StrContains(msg, "Timed out") || absl::StrContains(msg, "timeout") ||
         absl::StrContains(msg, "Timeout");
}

std::string Seconds(Clock::duration d) {
  return absl::StrFormat("%.2f s", std::chrono::duration<double>(d).count());
}

// Gloo's address lookup dereferences garbage when getaddrinfo fails (it
// checks for -1, but failures are other negative codes), so resolve and test
// the bind address here first and turn problems into a clear error.
absl::Status CheckBindable(std::string host) {
  if (host.empty()) {
    char buf[256] = {0};
    gethostname(buf, sizeof(buf) - 1);
    host = buf;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rv = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rv != 0) {
    return absl::UnavailableError(absl::StrCat("gloo: cannot resolve bind address '", host,
                                               "': ", gai_strerror(rv),
                                               " (set LLMT_COMM_HOST or LLMT_COMM_IFACE)"));
  }
  std::string err = "no address";
  bool ok = false;
  for (addrinfo* ai = res; ai != nullptr && !ok; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      ok = true;
    } else {
      err = strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(res);
  if (!ok) {
    return absl::UnavailableError(absl::StrCat("gloo: cannot bind to '", host, "' (", err,
                                               "); is it an address of this machine?"));
  }
  return absl::OkStatus();
}

}  // namespace

struct GlooCollective::ReduceScatterPlan {
  // Halving-doubling works in place on `buf` (total elements) and leaves this
  // rank's reduced shard at its start.
  std::vector<float> buf;
  std::unique_ptr<gloo::ReduceScatterHalvingDoubling<float>> algo;
};

GlooCollective::GlooCollective(std::shared_ptr<Store> store, int rank, int world,
                               const GlooOptions& opts)
    : base_store_(std::move(store)), rank_(rank), world_(world), opts_(opts) {
  store_ = std::make_unique<PrefixStore>(opts.store_prefix + "/gloo/", base_store_.get());
  // Reserve a slice of the timeout for the post-failure peer diagnosis.
  grace_ = DiagnosisGrace(opts.timeout);
  op_timeout_ = opts.timeout - grace_;
}

GlooCollective::~GlooCollective() = default;

absl::StatusOr<std::unique_ptr<GlooCollective>> GlooCollective::Create(std::shared_ptr<Store> store,
                                                                       int rank, int world,
                                                                       const GlooOptions& opts) {
  if (world < 1) return absl::InvalidArgumentError(absl::StrCat("world size ", world, " < 1"));
  if (rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside [0, ", world, ")"));
  }
  if (store == nullptr) return absl::InvalidArgumentError("gloo: no rendezvous store");
  if (opts.timeout.count() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: timeout ", opts.timeout.count(), " ms is too small"));
  }
  std::unique_ptr<GlooCollective> c(new GlooCollective(std::move(store), rank, world, opts));
  RETURN_IF_ERROR(c->Connect());
  return c;
}

absl::Status GlooCollective::Connect() {
  const auto t0 = Clock::now();
  // Announce and wait for everyone first: a rank that never starts is then
  // reported by number instead of as an opaque connect timeout.
  ASSIGN_OR_RETURN(peer_info_, JoinGroup(store_.get(), rank_, world_, opts_.rendezvous_timeout));

  if (opts_.iface.empty()) RETURN_IF_ERROR(CheckBindable(opts_.hostname));
  std::shared_ptr<gloo::transport::Device> dev;
  try {
    gloo::transport::tcp::attr attr;
    if (!opts_.iface.empty()) {
      attr.iface = opts_.iface;
    } else {
      attr.hostname = opts_.hostname;
    }
    dev = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("gloo: cannot use network ",
                     opts_.iface.empty() ? absl::StrCat("address '", opts_.hostname, "'")
                                         : absl::StrCat("interface '", opts_.iface, "'"),
                     " on rank ", rank_, ": ", CleanGlooMessage(e.what())));
  }
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank_, world_);
  ctx->setTimeout(op_timeout_);
  PrefixStore mesh_store("mesh/", store_.get());
  GlooStoreAdapter adapter(&mesh_store, opts_.timeout);
  try {
    ctx->connectFullMesh(adapter, dev);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gloo: rank ", rank_, " could not connect to its ",
                                               world_ - 1, " peers: ", CleanGlooMessage(e.what())));
  }
  context_ = std::move(ctx);
  LLMT_LOG(Debug) << "gloo: rank " << rank_ << "/" << world_ << " connected via "
                  << store_->Describe() << " in " << Seconds(Clock::now() - t0);
  return absl::OkStatus();
}

absl::Status GlooCollective::Run(const char* op, const std::string& what,
                                 const std::function<void()>& fn) {
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gloo ", op, ": the group is unusable after an earlier failure: ", broken_.message()));
  }
  const uint64_t seq = ++seq_;
  const auto t0 = Clock::now();
  std::string error;
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    error = CleanGlooMessage(e.what());
  }
  const bool timed_out = LooksLikeTimeout(error);
  // Peers blocked on this rank would otherwise wait for their own timeout.
  try {
    context_->closeConnections();
  } catch (const std::exception& e) {
    LLMT_LOG(Debug) << "gloo: closing connections: " << e.what();
  }
  const std::string peers =
      DiagnosePeers(store_.get(), rank_, world_, seq, op, error, grace_, peer_info_);
  std::string msg =
      absl::StrCat("gloo ", op, " (collective #", seq, ", ", what, ") failed on rank ", rank_,
                   " of ", world_, " after ", Seconds(Clock::now() - t0), ": ", error, ". ", peers);
  broken_ = timed_out ? absl::DeadlineExceededError(msg) : absl::UnavailableError(msg);
  LLMT_LOG(Error) << msg;
  return broken_;
}

absl::Status GlooCollective::AllReduce(float* data, size_t count, ReduceOp op) {
  if (count == 0 || world_ == 1) return broken_;
  if (data == nullptr) return absl::InvalidArgumentError("AllReduce: null buffer");
  RETURN_IF_ERROR(Run("all_reduce", absl::StrCat(count, " floats, ", ReduceOpName(op)), [&] {
    gloo::AllreduceOptions o(context_);
    o.setOutput(data, count);
    o.setReduceFunction(FnFor<float>(op));
    o.setTag(static_cast<uint32_t>(seq_));
    o.setTimeout(op_timeout_);
    gloo::allreduce(o);
  }));
  if (op == ReduceOp::kAvg) DivideBy(data, count, world_);
  return absl::OkStatus();
}

absl::Status GlooCollective::AllReduceScalar(double* value, ReduceOp op) {
  if (world_ == 1) return broken_;
  RETURN_IF_ERROR(Run("all_reduce_scalar", ReduceOpName(op), [&] {
    gloo::AllreduceOptions o(context_);
    o.setOutput(value, 1);
    o.setReduceFunction(FnFor<double>(op));
    o.setTag(static_cast<uint32_t>(seq_));
    o.setTimeout(op_timeout_);
    gloo::allreduce(o);
  }));
  if (op == ReduceOp::kAvg) *value /= world_;
  return absl::OkStatus();
}

absl::Status GlooCollective::ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                                           ReduceOp op) {
  RETURN_IF_ERROR(CheckReduceScatterArgs(in, out, layout, op));
  const size_t total = layout.total();
  const size_t len = layout.len(rank_);
  if (total == 0) return broken_;
  if (world_ == 1) {
    if (out != in) std::memmove(out, in, len * sizeof(float));
    return broken_;
  }
  const std::string what = absl::StrCat(total, " floats, ", ReduceOpName(op));
  // Plan memory: our input copy, plus Gloo's receive and redistribution
  // buffers (about `total` elements each).
  const size_t plan_bytes = 3 * total * sizeof(float);
  auto it = rs_plans_.find(layout.lens());
  const bool use_plan =
      it != rs_plans_.end() || (total <= static_cast<size_t>(INT_MAX) &&
                                rs_plan_bytes_ + plan_bytes <= opts_.reduce_scatter_cache_bytes);
  if (use_plan) {
    if (it == rs_plans_.end()) {
      it = rs_plans_.emplace(layout.lens(), nullptr).first;
      rs_plan_bytes_ += plan_bytes;
    }
    std::unique_ptr<ReduceScatterPlan>& plan = it->second;
    RETURN_IF_ERROR(Run("reduce_scatter", what, [&] {
      if (plan == nullptr) {
        // Built on first use, in the same call order on every rank, so the
        // Gloo slots it reserves match across ranks.
        auto p = std::make_unique<ReduceScatterPlan>();
        p->buf.resize(total);
        std::vector<int> recv(layout.lens().begin(), layout.lens().end());
        p->algo = std::make_unique<gloo::ReduceScatterHalvingDoubling<float>>(
            context_, std::vector<float*>{p->buf.data()}, static_cast<int>(total), recv);
        plan = std::move(p);
      }
      std::memcpy(plan->buf.data(), in, total * sizeof(float));
      plan->algo->run();
    }));
    std::memcpy(out, plan->buf.data(), len * sizeof(float));
  } else {
    if (scratch_.size() < total) scratch_.resize(total);
    std::memcpy(scratch_.data(), in, total * sizeof(float));
    RETURN_IF_ERROR(Run("reduce_scatter", what, [&] {
      gloo::AllreduceOptions o(context_);
      o.setOutput(scratch_.data(), total);
      o.setReduceFunction(FnFor<float>(ReduceOp::kSum));
      o.setTag(static_cast<uint32_t>(seq_));
      o.setTimeout(op_timeout_);
      gloo::allreduce(o);
    }));
    std::memcpy(out, scratch_.data() + layout.offset(rank_), len * sizeof(float));
  }
  if (op == ReduceOp::kAvg) DivideBy(out, len, world_);
  return absl::OkStatus();
}

absl::Status GlooCollective::AllGather(float* data, const ShardLayout& layout) {
  RETURN_IF_ERROR(CheckAllGatherArgs(data, layout));
  if (layout.total() == 0 || world_ == 1) return broken_;
  return Run("all_gather", absl::StrCat(layout.total(), " floats"), [&] {
    gloo::AllgathervOptions o(context_);
    // No input buffer: Gloo then treats this rank's slice of the output as
    // its contribution, i.e. an in-place all-gather.
    o.setOutput<float>(data, layout.lens());
    o.setTag(static_cast<uint32_t>(seq_));
    o.setTimeout(op_timeout_);
    gloo::allgatherv(o);
  });
}

absl::Status GlooCollective::Broadcast(void* data, size_t bytes, int root) {
  RETURN_IF_ERROR(CheckRoot("Broadcast", root));
  if (bytes == 0 || world_ == 1) return broken_;
  if (data == nullptr) return absl::InvalidArgumentError("Broadcast: null buffer");
  return Run("broadcast", absl::StrCat(bytes, " bytes from rank ", root), [&] {
    gloo::BroadcastOptions o(context_);
    o.setOutput(static_cast<uint8_t*>(data), bytes);
    o.setRoot(root);
    o.setTag(static_cast<uint32_t>(seq_));
    o.setTimeout(op_timeout_);
    gloo::broadcast(o);
  });
}

absl::Status GlooCollective::Barrier() {
  if (world_ == 1) return broken_;
  return Run("barrier", "no data", [&] {
    gloo::BarrierOptions o(context_);
    o.setTag(static_cast<uint32_t>(seq_));
    o.setTimeout(op_timeout_);
    gloo::barrier(o);
  });
}

}  // namespace llmt::comm
