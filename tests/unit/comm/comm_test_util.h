// Helpers for the comm tests: run N ranks as threads (each with its own Gloo
// context, as separate processes would have), fresh directories, free ports.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/comm/gloo_collective.h"
#include "worker/comm/store.h"

namespace llmt::comm::testing {

inline std::string FreshDir(const std::string& name) {
  static std::atomic<int> n{0};
  std::string dir = ::testing::TempDir() + "/comm-" + name + "-" + std::to_string(getpid()) + "-" +
                    std::to_string(n++);
  std::string cmd = "rm -rf '" + dir + "' && mkdir -p '" + dir + "'";
  EXPECT_EQ(system(cmd.c_str()), 0);
  return dir;
}

// A TCP port that was free a moment ago (bind to 0, read it back, close).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

inline double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn(rank) on `world` threads and joins them.
inline void RunRanks(int world, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

enum class StoreKind { kMemory, kFile, kTcp };

inline const char* StoreKindName(StoreKind k) {
  switch (k) {
    case StoreKind::kMemory:
      return "memory";
    case StoreKind::kFile:
      return "file";
    case StoreKind::kTcp:
      return "tcp";
  }
  return "?";
}

// One Store per rank, as separate processes would have: a shared MemoryStore,
// one FileStore per rank on the same directory, or rank 0 hosting a TcpStore
// that the others connect to.
inline std::vector<std::shared_ptr<Store>> MakeStores(StoreKind kind, int world) {
  std::vector<std::shared_ptr<Store>> stores;
  if (kind == StoreKind::kMemory) {
    auto s = std::make_shared<MemoryStore>();
    for (int r = 0; r < world; ++r) stores.push_back(s);
  } else if (kind == StoreKind::kFile) {
    std::string dir = FreshDir("store");
    for (int r = 0; r < world; ++r) stores.push_back(std::move(FileStore::Open(dir).value()));
  } else {
    auto host = TcpStore::Host(0);
    EXPECT_TRUE(host.ok()) << host.status();
    int port = (*host)->port();
    stores.push_back(std::move(*host));
    for (int r = 1; r < world; ++r) {
      auto c = TcpStore::Connect("127.0.0.1", port, std::chrono::seconds(5));
      EXPECT_TRUE(c.ok()) << c.status();
      stores.push_back(std::move(*c));
    }
  }
  return stores;
}

// Creates a Gloo group of `world` ranks concurrently (Create blocks until all
// ranks joined). Fails the test on error.
inline std::vector<std::unique_ptr<GlooCollective>> MakeGlooGroup(
    int world, StoreKind kind, std::chrono::milliseconds timeout = std::chrono::seconds(20),
    size_t reduce_scatter_cache_bytes = GlooOptions().reduce_scatter_cache_bytes) {
  auto stores = MakeStores(kind, world);
  std::vector<std::unique_ptr<GlooCollective>> group(world);
  RunRanks(world, [&](int r) {
    GlooOptions o;
    o.timeout = timeout;
    o.reduce_scatter_cache_bytes = reduce_scatter_cache_bytes;
    o.rendezvous_timeout = std::chrono::seconds(20);
    auto c = GlooCollective::Create(stores[r], r, world, o);
    ASSERT_TRUE(c.ok()) << "rank " << r << ": " << c.status();
    group[r] = std::move(*c);
  });
  return group;
}

}  // namespace llmt::comm::testing
