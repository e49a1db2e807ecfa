#include "worker/comm/env.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/gloo_collective.h"
#ifdef LLMT_HAVE_NCCL
#include "worker/comm/nccl_collective.h"
#endif

namespace llmt::comm {
namespace {

absl::Status BadVar(const std::string& name, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(
      absl::StrCat("environment variable ", name, "='", value, "' ", want));
}

// Reads an optional integer variable in [lo, hi].
absl::StatusOr<std::optional<int>> IntVar(const EnvLookup& env, const std::string& name, int lo,
                                          int hi, const std::string& want) {
  std::optional<std::string> v = env(name);
  if (!v || v->empty()) return std::optional<int>();
  int x;
  if (!absl::SimpleAtoi(*v, &x) || x < lo || x > hi) return BadVar(name, *v, want);
  return std::optional<int>(x);
}

absl::StatusOr<std::optional<std::chrono::milliseconds>> SecondsVar(const EnvLookup& env,
                                                                    const std::string& name) {
  std::optional<std::string> v = env(name);
  if (!v || v->empty()) return std::optional<std::chrono::milliseconds>();
  double s;
  if (!absl::SimpleAtod(*v, &s) || !std::isfinite(s) || s <= 0 || s > 7 * 24 * 3600) {
    return BadVar(name, *v, "must be a number of seconds > 0 (e.g. 300 or 0.5)");
  }
  return std::optional<std::chrono::milliseconds>(
      std::chrono::milliseconds(std::max<int64_t>(1, std::llround(s * 1000))));
}

std::string StrVar(const EnvLookup& env, const std::string& name) {
  std::optional<std::string> v = env(name);
  return v ? *v : "";
}

bool IsLoopbackName(const std::string& host) {
  return host == "localhost" || absl::StartsWith(host, "127.") || host == "::1";
}

}  // namespace

std::optional<std::string> ProcessEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

absl::StatusOr<CommEnv> ParseCommEnv(const EnvLookup& env) {
  CommEnv e;
  ASSIGN_OR_RETURN(std::optional<int> world,
                   IntVar(env, "WORLD_SIZE", 1, 1 << 20, "must be an integer >= 1"));
  e.world_size = world.value_or(1);
  ASSIGN_OR_RETURN(std::optional<int> rank,
                   IntVar(env, "RANK", 0, 1 << 20, "must be an integer >= 0"));
  if (rank && *rank >= e.world_size) {
    return BadVar("RANK", std::to_string(*rank),
                  world ? absl::StrCat("must be in [0, WORLD_SIZE=", e.world_size, ")")
                        : "is set but WORLD_SIZE is not (set WORLD_SIZE too)");
  }
  if (e.world_size > 1 && !rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable RANK is not set (WORLD_SIZE=", e.world_size,
                     " needs RANK in [0, ", e.world_size, "))"));
  }
  e.rank = rank.value_or(0);
  ASSIGN_OR_RETURN(std::optional<int> local,
                   IntVar(env, "LOCAL_RANK", 0, 1 << 20, "must be an integer >= 0"));
  e.local_rank = local.value_or(e.rank);
  ASSIGN_OR_RETURN(auto timeout, SecondsVar(env, "LLMT_COMM_TIMEOUT_S"));
  if (timeout) e.timeout = *timeout;
  ASSIGN_OR_RETURN(auto rdzv, SecondsVar(env, "LLMT_RDZV_TIMEOUT_S"));
  if (rdzv) e.rendezvous_timeout = *rdzv;
  e.iface = StrVar(env, "LLMT_COMM_IFACE");
  e.host = StrVar(env, "LLMT_COMM_HOST");
  e.run_id = StrVar(env, "LLMT_RUN_ID");
  e.store_dir = StrVar(env, "LLMT_STORE_DIR");
  e.force = StrVar(env, "LLMT_COMM_FORCE") == "1";
  e.master_addr = StrVar(env, "MASTER_ADDR");
  ASSIGN_OR_RETURN(std::optional<int> port,
                   IntVar(env, "MASTER_PORT", 1, 65535, "must be a port number in [1, 65535]"));
  e.master_port = port.value_or(0);
  if (e.world_size > 1 && e.store_dir.empty()) {
    if (e.master_addr.empty() || e.master_port == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "WORLD_SIZE=", e.world_size, " needs a rendezvous: set ",
          e.master_addr.empty() ? "MASTER_ADDR" : "MASTER_PORT",
          " (MASTER_ADDR and MASTER_PORT: rank 0 hosts a TCP store there) or LLMT_STORE_DIR "
          "(a directory all ranks share)"));
    }
  }
  return e;
}

absl::StatusOr<std::shared_ptr<Store>> OpenStore(const CommEnv& env) {
  if (!env.store_dir.empty()) {
    ASSIGN_OR_RETURN(auto fs, FileStore::Open(env.store_dir));
    return std::shared_ptr<Store>(std::move(fs));
  }
  if (env.master_addr.empty() || env.master_port == 0) {
    return absl::InvalidArgumentError(
        "no rendezvous: set MASTER_ADDR/MASTER_PORT or LLMT_STORE_DIR");
  }
  if (env.rank == 0) {
    ASSIGN_OR_RETURN(auto s, TcpStore::Host(env.master_port));
    return std::shared_ptr<Store>(std::move(s));
  }
  ASSIGN_OR_RETURN(auto s,
                   TcpStore::Connect(env.master_addr, env.master_port, env.rendezvous_timeout));
  return std::shared_ptr<Store>(std::move(s));
}

absl::StatusOr<std::string> LocalAddressToward(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (gai != 0) {
    return absl::UnavailableError(absl::StrCat("resolving '", host, "': ", gai_strerror(gai)));
  }
  std::string out;
  std::string err = "no address";
  for (addrinfo* ai = res; ai != nullptr && out.empty(); ai = ai->ai_next) {
    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    // connect() on a UDP socket only picks the route and source address.
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      sockaddr_storage local{};
      socklen_t len = sizeof(local);
      char buf[INET6_ADDRSTRLEN] = {0};
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
        const void* addr =
            local.ss_family == AF_INET6
                ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
                : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
        if (inet_ntop(local.ss_family, addr, buf, sizeof(buf)) != nullptr) out = buf;
      }
    } else {
      err = strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(res);
  if (out.empty()) {
    return absl::UnavailableError(absl::StrCat("no route to '", host, "': ", err));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Collective>> MakeCollective(const CommEnv& env, CommDevice device) {
  if (env.world_size == 1 && !env.force) return std::unique_ptr<Collective>(new LocalCollective());
  ASSIGN_OR_RETURN(std::shared_ptr<Store> store, OpenStore(env));
  const std::string prefix = env.run_id.empty() ? "llmt" : absl::StrCat("llmt/", env.run_id);
  if (device == CommDevice::kCuda) {
#ifdef LLMT_HAVE_NCCL
    NcclOptions o;
    o.timeout = env.timeout;
    o.rendezvous_timeout = env.rendezvous_timeout;
    o.store_prefix = prefix;
    o.device = env.local_rank;
    ASSIGN_OR_RETURN(auto c, NcclCollective::Create(store, env.rank, env.world_size, o));
    return std::unique_ptr<Collective>(std::move(c));
#else
    return absl::UnimplementedError(
        "multi-rank CUDA training needs the NCCL collective, which this build lacks "
        "(configure with CUDA and NCCL installed)");
#endif
  }
  GlooOptions o;
  o.timeout = env.timeout;
  o.rendezvous_timeout = env.rendezvous_timeout;
  o.store_prefix = prefix;
  if (!env.iface.empty()) {
    o.iface = env.iface;
  } else if (!env.host.empty()) {
    o.hostname = env.host;
  } else if (!env.store_dir.empty() || IsLoopbackName(env.master_addr)) {
    o.hostname = "127.0.0.1";  // one machine
  } else {
    absl::StatusOr<std::string> a = LocalAddressToward(env.master_addr, env.master_port);
    if (!a.ok()) {
      return Annotate(a.status(),
                      "choosing the address Gloo binds (set LLMT_COMM_IFACE or "
                      "LLMT_COMM_HOST to override)");
    }
    o.hostname = *a;
  }
  ASSIGN_OR_RETURN(auto c, GlooCollective::Create(store, env.rank, env.world_size, o));
  LLMT_LOG(Info) << "comm: rank " << env.rank << "/" << env.world_size << " joined (gloo, "
                 << store->Describe() << ")";
  return std::unique_ptr<Collective>(std::move(c));
}

absl::StatusOr<std::unique_ptr<Collective>> MakeCollectiveFromEnv(CommDevice device) {
  ASSIGN_OR_RETURN(CommEnv env, ParseCommEnv(ProcessEnv));
  return MakeCollective(env, device);
}

}  // namespace llmt::comm
