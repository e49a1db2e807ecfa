// Serves a metrics::Registry on /metrics (Prometheus text format) plus extra
// plain handlers (e.g. /healthz, /readyz) with civetweb.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/metrics.h"

struct mg_context;
struct mg_connection;

namespace llmt::metrics {

struct HttpResponse {
  int code = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};
using HttpHandler = std::function<HttpResponse()>;

class HttpServer {
 public:
  // `listen`: "PORT", "HOST:PORT" (IPv4) ; port 0 picks a free port (see port()).
  // `registry` may be null (no /metrics). Handlers run on civetweb threads.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      const std::string& listen, Registry* registry,
      std::map<std::string, HttpHandler> handlers = {});
  ~HttpServer();  // stops serving
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

 private:
  HttpServer() = default;
  static int Dispatch(::mg_connection* conn, void* cbdata);
  struct Route {
    HttpServer* server;
    HttpHandler handler;
  };
  mg_context* ctx_ = nullptr;
  int port_ = 0;
  std::map<std::string, std::unique_ptr<Route>> routes_;
};

}  // namespace llmt::metrics
