#include "common/metrics_http.h"

#include <civetweb.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace llmt::metrics {
namespace {
std::once_flag g_init;
}

int HttpServer::Dispatch(::mg_connection* conn, void* cbdata) {
  Route* route = static_cast<Route*>(cbdata);
  HttpResponse r = route->handler();
  const char* reason = r.code == 200 ? "OK" : r.code == 503 ? "Service Unavailable" : "Error";
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
            r.code, reason, r.content_type.c_str(), r.body.size());
  mg_write(conn, r.body.data(), r.body.size());
  return r.code;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& listen, Registry* registry, std::map<std::string, HttpHandler> handlers) {
  std::call_once(g_init, [] { mg_init_library(0); });
  std::unique_ptr<HttpServer> s(new HttpServer());
  if (registry != nullptr) {
    handlers["/metrics"] = [registry] {
      return HttpResponse{200, Registry::kContentType, registry->Render()};
    };
  }
  const char* options[] = {"listening_ports", listen.c_str(), "num_threads", "4",
                           "request_timeout_ms", "10000", nullptr};
  mg_callbacks callbacks{};
  s->ctx_ = mg_start(&callbacks, nullptr, options);
  if (s->ctx_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("http: cannot listen on '", listen, "' (in use or invalid address)"));
  }
  for (auto& [path, handler] : handlers) {
    auto route = std::make_unique<Route>(Route{s.get(), std::move(handler)});
    // "$" anchors the pattern: /metrics but not /metricsX.
    mg_set_request_handler(s->ctx_, (path + "$").c_str(), &HttpServer::Dispatch, route.get());
    s->routes_[path] = std::move(route);
  }
  mg_server_port ports[4];
  int n = mg_get_server_ports(s->ctx_, 4, ports);
  if (n <= 0) return absl::InternalError(absl::StrCat("http: no listening port for ", listen));
  s->port_ = ports[0].port;
  return s;
}

HttpServer::~HttpServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

}  // namespace llmt::metrics
