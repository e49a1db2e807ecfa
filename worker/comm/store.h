// Rendezvous key-value stores. Ranks publish their transport addresses (Gloo)
// or the NCCL unique id here, and on failure their diagnostics; the store is
// never on the data path.
//
// Implementations:
//  - FileStore: a directory on a filesystem every rank sees (one machine, or a
//    shared mount).
//  - TcpStore: hosted by rank 0 (a small socket server inside that process);
//    the other ranks connect over TCP. For standalone multi-machine runs.
//  - MemoryStore: one process (threads as ranks; tests, benchmarks).
//  - Later: the coordinator's rendezvous KV over gRPC, for service runs.
// GlooStoreAdapter (gloo_collective.cc) lets any of them back Gloo's
// gloo::rendezvous::Store.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::comm {

class Store {
 public:
  virtual ~Store() = default;
  // Sets (or overwrites) `key`. Values are arbitrary bytes, possibly empty.
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // Waits up to `timeout` for `key` to exist, then returns its value.
  // DEADLINE_EXCEEDED (naming the key) if it does not appear in time;
  // UNAVAILABLE if the store itself cannot be reached.
  virtual absl::StatusOr<std::string> Get(const std::string& key,
                                          std::chrono::milliseconds timeout) = 0;
  // Waits up to `timeout` for all `keys` to exist; DEADLINE_EXCEEDED names the
  // ones still missing.
  virtual absl::Status Wait(const std::vector<std::string>& keys,
                            std::chrono::milliseconds timeout) = 0;
  // Human-readable location for error messages ("file store /tmp/x",
  // "TCP store 10.0.0.1:29500 hosted by rank 0").
  virtual std::string Describe() const = 0;
};

// Keys are files in `dir` (names percent-encoded, so keys may contain '/');
// Set writes a temp file and renames it over the key, so readers never see a
// partial value. Waits poll with a short backoff (no inotify: it does not work
// on NFS). Gloo's own gloo::rendezvous::FileStore is not used because it
// cannot overwrite a key, rejects empty values and measures timeouts in whole
// seconds.
class FileStore final : public Store {
 public:
  // Creates `dir` if needed.
  static absl::StatusOr<std::unique_ptr<FileStore>> Open(const std::string& dir);

  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override;
  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override;
  std::string Describe() const override { return "file store " + dir_; }

 private:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}
  std::string PathOf(const std::string& key) const;
  std::string dir_;
};

// In-process store (a mutex-protected map with a condition variable).
class MemoryStore final : public Store {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override;
  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override;
  std::string Describe() const override { return "in-memory store"; }
  // Wakes every waiter; they and all later calls return UNAVAILABLE (used
  // when a TcpStore server shuts down).
  void Close();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> kv_;
  bool closed_ = false;
};

class TcpStoreServer;

// Rank 0 calls Host(): it serves the store on `port` (0 picks a free port) on
// every interface and accesses its own map directly. Other ranks call
// Connect(): it retries until the server accepts or `connect_timeout` passes
// (rank 0 may start later than the others). Each request is bounded by the
// timeout passed to it plus a small margin for the network.
class TcpStore final : public Store {
 public:
  static absl::StatusOr<std::unique_ptr<TcpStore>> Host(int port);
  static absl::StatusOr<std::unique_ptr<TcpStore>> Connect(
      const std::string& host, int port, std::chrono::milliseconds connect_timeout);
  ~TcpStore() override;

  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override;
  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override;
  std::string Describe() const override;

  // The port the server listens on (Host) or connected to (Connect).
  int port() const { return port_; }

 private:
  TcpStore() = default;
  // Sends one request and reads the reply; UNAVAILABLE when the connection
  // fails (the server process is gone).
  absl::StatusOr<std::string> Roundtrip(const std::string& request,
                                        std::chrono::milliseconds reply_timeout);

  std::unique_ptr<TcpStoreServer> server_;  // rank 0 only
  MemoryStore* local_ = nullptr;            // rank 0: the server's map
  std::mutex mu_;                           // one request at a time per client
  int fd_ = -1;
  std::string host_;
  int port_ = 0;
};

// Prepends `prefix` to every key (so several groups can share one store).
class PrefixStore final : public Store {
 public:
  PrefixStore(std::string prefix, Store* base) : prefix_(std::move(prefix)), base_(base) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    return base_->Set(prefix_ + key, value);
  }
  absl::StatusOr<std::string> Get(const std::string& key,
                                  std::chrono::milliseconds timeout) override {
    return base_->Get(prefix_ + key, timeout);
  }
  absl::Status Wait(const std::vector<std::string>& keys,
                    std::chrono::milliseconds timeout) override;
  std::string Describe() const override { return base_->Describe(); }

 private:
  std::string prefix_;
  Store* base_;
};

}  // namespace llmt::comm
