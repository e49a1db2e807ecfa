#include "worker/daemon/coordinator_store.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/gloo_collective.h"
#ifdef LLMT_HAVE_NCCL
#include "worker/comm/nccl_collective.h"
#endif

namespace llmt::daemon {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// One RPC may not block longer than this; longer waits are several calls, so
// a coordinator restart in the middle is noticed and retried.
constexpr std::chrono::milliseconds kMaxWaitPerCall{20000};
constexpr absl::Duration kRpcMargin = absl::Seconds(5);

}  // namespace

CoordinatorStore::CoordinatorStore(std::shared_ptr<grpc::Channel> channel, std::string address,
                                   uint64_t attempt_id, std::string token)
    : stub_(v1::WorkerService::NewStub(channel)),
      address_(std::move(address)),
      attempt_id_(attempt_id),
      token_(std::move(token)) {}

std::string CoordinatorStore::Describe() const {
  return absl::StrCat("coordinator rendezvous KV at ", address_, " (attempt ", attempt_id_, ")");
}

absl::Status CoordinatorStore::Set(const std::string& key, const std::string& value) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    v1::KvSetRequest req;
    req.set_attempt_id(attempt_id_);
    req.set_key(key);
    req.set_value(value);
    v1::KvSetResponse resp;
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, token_, absl::Seconds(10));
    absl::Status s = rpc::FromGrpc(stub_->KvSet(&ctx, req, &resp));
    if (s.ok()) return s;
    if (!rpc::IsTransient(s) || std::chrono::steady_clock::now() > deadline) {
      return Annotate(s, absl::StrCat(Describe(), ": setting '", key, "'"));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

absl::StatusOr<std::vector<std::string>> CoordinatorStore::WaitValues(
    const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) left = std::chrono::milliseconds(1);
    auto this_call = std::min(left, kMaxWaitPerCall);
    v1::KvWaitRequest req;
    req.set_attempt_id(attempt_id_);
    for (const auto& k : keys) req.add_keys(k);
    req.set_timeout_ms(this_call.count());
    v1::KvWaitResponse resp;
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, token_, absl::FromChrono(this_call) + kRpcMargin);
    absl::Status s = rpc::FromGrpc(stub_->KvWait(&ctx, req, &resp));
    if (s.ok()) {
      if (resp.values_size() != static_cast<int>(keys.size())) {
        return absl::InternalError(absl::StrCat(Describe(), ": KvWait returned ",
                                                resp.values_size(), " values for ", keys.size(),
                                                " keys"));
      }
      return std::vector<std::string>(resp.values().begin(), resp.values().end());
    }
    const bool out_of_time = std::chrono::steady_clock::now() >= deadline;
    if (absl::IsDeadlineExceeded(s) && !out_of_time) continue;  // a chunk ran out: wait on
    if (rpc::IsTransient(s) && !out_of_time) {
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(2));
      continue;
    }
    if (absl::IsDeadlineExceeded(s)) {
      return absl::DeadlineExceededError(
          absl::StrCat(Describe(), ": timed out after ", timeout.count(), " ms waiting for key(s) ",
                       absl::StrJoin(keys, ", "), ": ", s.message()));
    }
    return Annotate(s, absl::StrCat(Describe(), ": waiting for ", absl::StrJoin(keys, ", ")));
  }
}

absl::StatusOr<std::string> CoordinatorStore::Get(const std::string& key,
                                                  std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::vector<std::string> v, WaitValues({key}, timeout));
  return std::move(v[0]);
}

absl::Status CoordinatorStore::Wait(const std::vector<std::string>& keys,
                                    std::chrono::milliseconds timeout) {
  if (keys.empty()) return absl::OkStatus();
  return WaitValues(keys, timeout).status();
}

bool CoordinatorRendezvousRequested() { return !Env("LLMT_RDZV_COORDINATOR").empty(); }

absl::StatusOr<std::shared_ptr<CoordinatorStore>> OpenCoordinatorStoreFromEnv() {
  rpc::ClientOptions o;
  o.address = Env("LLMT_RDZV_COORDINATOR");
  if (o.address.empty()) {
    return absl::InvalidArgumentError("environment variable LLMT_RDZV_COORDINATOR is not set");
  }
  uint64_t attempt = 0;
  std::string a = Env("LLMT_RDZV_ATTEMPT");
  if (!absl::SimpleAtoi(a, &attempt) || attempt == 0) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable LLMT_RDZV_ATTEMPT='", a,
                                                   "' must be the attempt id (> 0)"));
  }
  o.token = Env("LLMT_RDZV_TOKEN");
  o.tls = Env("LLMT_RDZV_TLS") == "1";
  o.tls_ca = Env("LLMT_RDZV_TLS_CA");
  o.tls_cert = Env("LLMT_RDZV_TLS_CERT");
  o.tls_key = Env("LLMT_RDZV_TLS_KEY");
  o.tls_server_name = Env("LLMT_RDZV_TLS_SERVER_NAME");
  ASSIGN_OR_RETURN(auto channel, rpc::MakeChannel(o));
  return std::make_shared<CoordinatorStore>(channel, o.address, attempt, o.token);
}

absl::StatusOr<std::unique_ptr<comm::Collective>> MakeCoordinatorCollectiveFromEnv(
    comm::CommDevice device) {
  // worker/comm's parser validates WORLD_SIZE/RANK/timeouts but insists on a
  // FileStore or TCP rendezvous; the coordinator's KV replaces both, so the
  // lookup hides MASTER_* and names a placeholder store dir it never opens.
  auto lookup = [](const std::string& name) -> std::optional<std::string> {
    if (name == "LLMT_STORE_DIR") return std::string("(coordinator)");
    if (name == "MASTER_ADDR" || name == "MASTER_PORT") return std::nullopt;
    return comm::ProcessEnv(name);
  };
  ASSIGN_OR_RETURN(comm::CommEnv env, comm::ParseCommEnv(lookup));
  if (env.world_size == 1) return std::unique_ptr<comm::Collective>(new comm::LocalCollective());
  ASSIGN_OR_RETURN(std::shared_ptr<CoordinatorStore> store, OpenCoordinatorStoreFromEnv());
  // The KV is scoped to the attempt already; the prefix only keeps the keys
  // readable in diagnostics.
  const std::string prefix = env.run_id.empty() ? "llmt" : absl::StrCat("llmt/", env.run_id);
  if (device == comm::CommDevice::kCuda) {
#ifdef LLMT_HAVE_NCCL
    comm::NcclOptions o;
    o.timeout = env.timeout;
    o.rendezvous_timeout = env.rendezvous_timeout;
    o.store_prefix = prefix;
    o.device = env.local_rank;
    ASSIGN_OR_RETURN(auto c, comm::NcclCollective::Create(store, env.rank, env.world_size, o));
    return std::unique_ptr<comm::Collective>(std::move(c));
#else
    return absl::UnimplementedError(
        "multi-rank CUDA training needs the NCCL collective, which this build lacks");
#endif
  }
  comm::GlooOptions o;
  o.timeout = env.timeout;
  o.rendezvous_timeout = env.rendezvous_timeout;
  o.store_prefix = prefix;
  if (!env.iface.empty()) {
    o.iface = env.iface;
  } else if (!env.host.empty()) {
    o.hostname = env.host;
  } else {
    o.hostname = "127.0.0.1";
  }
  ASSIGN_OR_RETURN(auto c, comm::GlooCollective::Create(store, env.rank, env.world_size, o));
  LLMT_LOG(Info) << "comm: rank " << env.rank << "/" << env.world_size << " joined (gloo, "
                 << store->Describe() << ")";
  return std::unique_ptr<comm::Collective>(std::move(c));
}

}  // namespace llmt::daemon
