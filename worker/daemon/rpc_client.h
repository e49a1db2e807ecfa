// Client side of the coordinator's gRPC API, shared by llmt-worker, the
// trainer's rendezvous store and the llmt CLI: channel construction
// (plaintext, TLS, mTLS), bearer tokens, per-call deadlines, and the mapping
// of gRPC status codes onto absl::Status.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace llmt::rpc {

struct ClientOptions {
  std::string address;  // host:port of the coordinator
  std::string token;    // bearer token ("" = none)
  // TLS: `tls` enables it; `tls_ca` (PEM file) verifies the server ("" = the
  // system roots); `tls_cert`/`tls_key` (PEM files) present a client
  // certificate (mTLS); `tls_server_name` overrides the name checked against
  // the server certificate (e.g. when dialing 127.0.0.1).
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  // Reconnect quickly after a coordinator restart: gRPC's default backoff
  // grows to 120 s, far longer than a lease.
  absl::Duration max_reconnect_backoff = absl::Seconds(2);
};

// Builds a channel (lazy: nothing is dialed until the first call). Errors name
// the unreadable PEM file.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options);

// Sets the deadline and the `authorization: Bearer <token>` metadata.
void PrepareContext(grpc::ClientContext* ctx, const std::string& token, absl::Duration timeout);

// gRPC and absl share the canonical code numbering.
absl::Status FromGrpc(const grpc::Status& s);

// Transient failures worth retrying: the coordinator is down or restarting,
// the network dropped, or the call ran out of time.
bool IsTransient(const absl::Status& s);

// Reads a token file: the first non-empty line that does not start with '#',
// stripped. Errors name the file.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace llmt::rpc
