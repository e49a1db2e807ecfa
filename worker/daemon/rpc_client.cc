#include "worker/daemon/rpc_client.h"

#include <stdlib.h>

#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fs.h"
#include "common/status.h"
#include "grpcpp/security/credentials.h"

namespace llmt::rpc {

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& o) {
  // With no call in flight, a synchronous client's connection attempts are
  // only polled by gRPC's backup poller (every 5 s by default): a reconnect to
  // a restarted coordinator would then complete seconds late, and a worker
  // would miss its lease. Read once, at gRPC's initialisation, which happens
  // on the first channel (an explicit setting in the environment wins).
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", /*overwrite=*/0);
  if (o.address.empty()) {
    return absl::InvalidArgumentError("coordinator address is empty (set --coordinator)");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (o.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!o.tls_ca.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, fs::ReadFile(o.tls_ca));
    }
    if (o.tls_cert.empty() != o.tls_key.empty()) {
      return absl::InvalidArgumentError("TLS client certificate: set both the cert and the key");
    }
    if (!o.tls_cert.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, fs::ReadFile(o.tls_cert));
      ASSIGN_OR_RETURN(ssl.pem_private_key, fs::ReadFile(o.tls_key));
    }
    creds = grpc::SslCredentials(ssl);
    if (!o.tls_server_name.empty()) args.SetSslTargetNameOverride(o.tls_server_name);
  }
  const int max_backoff_ms = static_cast<int>(absl::ToInt64Milliseconds(o.max_reconnect_backoff));
  // Only the backoff between attempts is shortened. GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is
  // really the connect *timeout* (default 20 s): shortening it aborts handshakes with a
  // freshly restarted (busy) coordinator, which then looks unreachable for seconds.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(100, max_backoff_ms));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  // Notice a silently dropped connection (network blip, killed peer) within
  // seconds instead of waiting for TCP's timeouts.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(o.address, creds, args);
}

void PrepareContext(grpc::ClientContext* ctx, const std::string& token, absl::Duration timeout) {
  ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

bool IsTransient(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsAborted(s) ||
         absl::IsInternal(s) || absl::IsUnknown(s) || absl::IsCancelled(s);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  auto text = fs::ReadFile(path);
  if (!text.ok()) return Annotate(text.status(), "token file");
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    return std::string(line);
  }
  return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": no token in it"));
}

}  // namespace llmt::rpc
