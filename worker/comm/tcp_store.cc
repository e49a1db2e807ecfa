// TcpStore: a tiny request/reply protocol over one TCP connection per client.
//
// Frame = u32 payload length (little-endian) + payload.
// Requests:  u8 op (1 set, 2 get, 3 wait), then
//   set:  str key, str value
//   get:  u64 timeout_ms, str key
//   wait: u64 timeout_ms, u32 n, n x str key
// Replies:   u8 code (0 ok, 1 deadline exceeded, 2 bad request, 3 server
//            stopping), then str (value for get, else an error message).
// str = u32 length + bytes. Blocking get/wait are served by a thread per
// connection waiting on the server's MemoryStore, so one slow waiter never
// delays another rank's request.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/store.h"

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum : uint8_t { kOpSet = 1, kOpGet = 2, kOpWait = 3 };
enum : uint8_t { kOk = 0, kDeadline = 1, kBadRequest = 2, kStopping = 3 };
constexpr uint32_t kMaxFrame = 1u << 30;
// Extra time a client waits for a reply beyond the request's own timeout
// (network latency, a busy server).
constexpr milliseconds kReplyMargin{10000};

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutStr(std::string* s, const std::string& v) {
  PutU32(s, static_cast<uint32_t>(v.size()));
  s->append(v);
}

// Bounds-checked reader over one payload.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  bool U8(uint8_t* v) {
    if (pos_ + 1 > s_.size()) return false;
    *v = static_cast<uint8_t>(s_[pos_++]);
    return true;
  }
  bool U32(uint32_t* v) {
    if (pos_ + 4 > s_.size()) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i) *v |= uint32_t(static_cast<uint8_t>(s_[pos_ + i])) << (8 * i);
    pos_ += 4;
    return true;
  }
  bool U64(uint64_t* v) {
    if (pos_ + 8 > s_.size()) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i) *v |= uint64_t(static_cast<uint8_t>(s_[pos_ + i])) << (8 * i);
    pos_ += 8;
    return true;
  }
  bool Str(std::string* v) {
    uint32_t n;
    if (!U32(&n) || pos_ + n > s_.size()) return false;
    v->assign(s_, pos_, n);
    pos_ += n;
    return true;
  }
  bool AtEnd() const { return pos_ == s_.size(); }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

// Writes all of `data`; false on a broken connection. MSG_NOSIGNAL: a peer
// that vanished must produce an error, not SIGPIPE.
bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

enum class ReadResult { kOk, kClosed, kTimeout };

// Reads exactly n bytes, giving up at `deadline` (no deadline if max()).
ReadResult ReadAll(int fd, char* data, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    if (deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return ReadResult::kTimeout;
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) return ReadResult::kTimeout;
      if (r < 0) return ReadResult::kClosed;
    }
    ssize_t got = recv(fd, data, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return ReadResult::kClosed;
    data += got;
    n -= static_cast<size_t>(got);
  }
  return ReadResult::kOk;
}

bool WriteFrame(int fd, const std::string& payload) {
  std::string frame;
  frame.reserve(payload.size() + 4);
  PutU32(&frame, static_cast<uint32_t>(payload.size()));
  frame.append(payload);
  return WriteAll(fd, frame.data(), frame.size());
}

ReadResult ReadFrame(int fd, std::string* payload, Clock::time_point deadline) {
  char hdr[4];
  ReadResult r = ReadAll(fd, hdr, 4, deadline);
  if (r != ReadResult::kOk) return r;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= uint32_t(static_cast<uint8_t>(hdr[i])) << (8 * i);
  if (n > kMaxFrame) return ReadResult::kClosed;
  payload->resize(n);
  return ReadAll(fd, payload->data(), n, deadline);
}

std::string Reply(uint8_t code, const std::string& body) {
  std::string s;
  s.push_back(static_cast<char>(code));
  PutStr(&s, body);
  return s;
}

// Maps a MemoryStore status to a reply code.
std::string ReplyFor(const absl::Status& s, const std::string& value) {
  if (s.ok()) return Reply(kOk, value);
  if (absl::IsDeadlineExceeded(s)) return Reply(kDeadline, std::string(s.message()));
  return Reply(kStopping, std::string(s.message()));
}

}  // namespace

// ---- Server -----------------------------------------------------------------

class TcpStoreServer {
 public:
  ~TcpStoreServer() {
    stopping_ = true;
    store_.Close();  // wakes connection threads blocked in get/wait
    if (wake_[1] >= 0) {
      char c = 0;
      (void)!write(wake_[1], &c, 1);
    }
    if (accept_thread_.joinable()) accept_thread_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : conn_fds_) shutdown(fd, SHUT_RDWR);  // unblocks their reads
    }
    for (auto& t : conn_threads_) t.join();
    for (int fd : conn_fds_) close(fd);
    if (listen_fd_ >= 0) close(listen_fd_);
    for (int fd : wake_) {
      if (fd >= 0) close(fd);
    }
  }

  absl::Status Start(int port) {
    if (pipe2(wake_, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("TCP store: pipe: ", strerror(errno)));
    }
    // Prefer a dual-stack IPv6 socket (accepts IPv4 too); fall back to IPv4.
    listen_fd_ = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    if (listen_fd_ >= 0) {
      setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_any;
      a.sin6_port = htons(static_cast<uint16_t>(port));
      if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        if (errno == EADDRINUSE) return InUse(port);
        close(listen_fd_);
        listen_fd_ = -1;
      }
    }
    if (listen_fd_ < 0) {
      listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (listen_fd_ < 0) {
        return absl::UnavailableError(absl::StrCat("TCP store: socket: ", strerror(errno)));
      }
      setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      a.sin_port = htons(static_cast<uint16_t>(port));
      if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        if (errno == EADDRINUSE) return InUse(port);
        return absl::UnavailableError(
            absl::StrCat("TCP store: binding port ", port, ": ", strerror(errno)));
      }
    }
    if (listen(listen_fd_, 1024) != 0) {
      return absl::UnavailableError(absl::StrCat("TCP store: listen: ", strerror(errno)));
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
    port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }
  MemoryStore* store() { return &store_; }

 private:
  static absl::Status InUse(int port) {
    return absl::UnavailableError(
        absl::StrCat("TCP store: port ", port,
                     " is already in use (another run on this machine? pick another MASTER_PORT)"));
  }

  void AcceptLoop() {
    while (!stopping_) {
      pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      int r = poll(p, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        LLMT_LOG(Error) << "TCP store: poll: " << strerror(errno);
        return;
      }
      if (p[1].revents) return;
      if (!(p[0].revents & POLLIN)) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) {
        close(fd);
        return;
      }
      conn_fds_.push_back(fd);
      conn_threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  // One client connection: read a request, answer it, repeat until the client
  // disconnects or the server stops.
  void Serve(int fd) {
    std::string req;
    while (!stopping_) {
      if (ReadFrame(fd, &req, Clock::time_point::max()) != ReadResult::kOk) return;
      if (!WriteFrame(fd, Handle(req))) return;
    }
  }

  std::string Handle(const std::string& req) {
    Reader r(req);
    uint8_t op;
    if (!r.U8(&op)) return Reply(kBadRequest, "empty request");
    if (op == kOpSet) {
      std::string key, value;
      if (!r.Str(&key) || !r.Str(&value) || !r.AtEnd()) return Reply(kBadRequest, "bad set");
      return ReplyFor(store_.Set(key, value), "");
    }
    if (op == kOpGet) {
      uint64_t ms;
      std::string key;
      if (!r.U64(&ms) || !r.Str(&key) || !r.AtEnd()) return Reply(kBadRequest, "bad get");
      absl::StatusOr<std::string> v = store_.Get(key, milliseconds(ms));
      return ReplyFor(v.status(), v.ok() ? *v : "");
    }
    if (op == kOpWait) {
      uint64_t ms;
      uint32_t n;
      if (!r.U64(&ms) || !r.U32(&n)) return Reply(kBadRequest, "bad wait");
      std::vector<std::string> keys(n);
      for (auto& k : keys) {
        if (!r.Str(&k)) return Reply(kBadRequest, "bad wait");
      }
      return ReplyFor(store_.Wait(keys, milliseconds(ms)), "");
    }
    return Reply(kBadRequest, absl::StrCat("unknown op ", op));
  }

  MemoryStore store_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::vector<int> conn_fds_;
  std::vector<std::thread> conn_threads_;
};

// ---- TcpStore -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TcpStore>> TcpStore::Host(int port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("TCP store: port ", port, " out of range"));
  }
  auto server = std::make_unique<TcpStoreServer>();
  RETURN_IF_ERROR(server->Start(port));
  std::unique_ptr<TcpStore> s(new TcpStore());
  s->port_ = server->port();
  s->local_ = server->store();
  s->server_ = std::move(server);
  return s;
}

absl::StatusOr<std::unique_ptr<TcpStore>> TcpStore::Connect(const std::string& host, int port,
                                                            milliseconds connect_timeout) {
  if (port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("TCP store: port ", port, " out of range"));
  }
  const auto deadline = Clock::now() + connect_timeout;
  std::string last_error;
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (gai != 0) {
      last_error = absl::StrCat("resolving '", host, "': ", gai_strerror(gai));
    } else {
      for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
          freeaddrinfo(res);
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          std::unique_ptr<TcpStore> s(new TcpStore());
          s->fd_ = fd;
          s->host_ = host;
          s->port_ = port;
          return s;
        }
        last_error = strerror(errno);
        close(fd);
      }
      freeaddrinfo(res);
    }
    if (Clock::now() >= deadline) break;
    // Rank 0 may simply not be up yet: retry until the deadline.
    std::this_thread::sleep_for(milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("could not connect to the TCP store at ", host, ":", port,
                   " (hosted by rank 0) within ", connect_timeout.count(), " ms: ", last_error,
                   "; check MASTER_ADDR/MASTER_PORT and that rank 0 is running"));
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) close(fd_);
}

std::string TcpStore::Describe() const {
  if (server_) return absl::StrCat("TCP store on port ", port_, " (hosted by this rank)");
  return absl::StrCat("TCP store ", host_, ":", port_, " (hosted by rank 0)");
}

absl::StatusOr<std::string> TcpStore::Roundtrip(const std::string& request,
                                                milliseconds reply_timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) {
    return absl::UnavailableError(absl::StrCat(Describe(),
                                               " is unreachable (connection lost "
                                               "earlier; rank 0 has probably exited)"));
  }
  auto fail = [&](const std::string& what) {
    // The stream may be mid-frame: drop the connection so a later request
    // cannot read a stale reply.
    close(fd_);
    fd_ = -1;
    return absl::UnavailableError(absl::StrCat(Describe(), ": ", what));
  };
  if (!WriteFrame(fd_, request)) {
    return fail(absl::StrCat("send failed (", strerror(errno), "); rank 0 has probably exited"));
  }
  std::string reply;
  switch (ReadFrame(fd_, &reply, Clock::now() + reply_timeout + kReplyMargin)) {
    case ReadResult::kOk:
      break;
    case ReadResult::kClosed:
      return fail("connection closed; rank 0 has probably exited");
    case ReadResult::kTimeout: {
      absl::Status s = fail("no reply");
      return absl::DeadlineExceededError(s.message());
    }
  }
  Reader r(reply);
  uint8_t code;
  std::string body;
  if (!r.U8(&code) || !r.Str(&body)) return fail("malformed reply");
  switch (code) {
    case kOk:
      return body;
    case kDeadline:
      return absl::DeadlineExceededError(absl::StrCat(body, " (", Describe(), ")"));
    case kStopping:
      return absl::UnavailableError(absl::StrCat(Describe(), " is shutting down: ", body));
    default:
      return absl::InternalError(absl::StrCat(Describe(), " rejected a request: ", body));
  }
}

absl::Status TcpStore::Set(const std::string& key, const std::string& value) {
  if (local_) return local_->Set(key, value);
  std::string req;
  req.push_back(static_cast<char>(kOpSet));
  PutStr(&req, key);
  PutStr(&req, value);
  return Roundtrip(req, milliseconds(0)).status();
}

absl::StatusOr<std::string> TcpStore::Get(const std::string& key, milliseconds timeout) {
  if (local_) return local_->Get(key, timeout);
  std::string req;
  req.push_back(static_cast<char>(kOpGet));
  PutU64(&req, static_cast<uint64_t>(std::max<int64_t>(0, timeout.count())));
  PutStr(&req, key);
  return Roundtrip(req, timeout);
}

absl::Status TcpStore::Wait(const std::vector<std::string>& keys, milliseconds timeout) {
  if (local_) return local_->Wait(keys, timeout);
  std::string req;
  req.push_back(static_cast<char>(kOpWait));
  PutU64(&req, static_cast<uint64_t>(std::max<int64_t>(0, timeout.count())));
  PutU32(&req, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) PutStr(&req, k);
  return Roundtrip(req, timeout).status();
}

}  // namespace llmt::comm
