// Rendezvous stores: FileStore, TcpStore (host + clients), MemoryStore,
// PrefixStore — set/get/wait, overwrite, binary and empty values, timeouts
// (bounded both ways) and a server that disappears.
#include "worker/comm/store.h"

#include <thread>

#include "comm_test_util.h"
#include "gtest/gtest.h"

namespace llmt::comm {
namespace {

using std::chrono::milliseconds;
using testing::FreePort;
using testing::FreshDir;
using testing::SecondsSince;
using Clock = std::chrono::steady_clock;

// Behaviour every Store must share, run against each implementation through
// two handles (`a` sets, `b` reads), as two ranks would.
void CheckStoreContract(Store* a, Store* b) {
  ASSERT_TRUE(a->Set("k1", "v1").ok());
  auto v = b->Get("k1", milliseconds(1000));
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, "v1");

  // Overwrite, empty value, binary value with NUL bytes, keys with '/' and '.'.
  ASSERT_TRUE(a->Set("k1", "v2").ok());
  EXPECT_EQ(*b->Get("k1", milliseconds(1000)), "v2");
  ASSERT_TRUE(a->Set("empty", "").ok());
  EXPECT_EQ(*b->Get("empty", milliseconds(1000)), "");
  const std::string bin("a\0b\xff\n", 5);
  ASSERT_TRUE(a->Set("group/0/../x.y", bin).ok());
  EXPECT_EQ(*b->Get("group/0/../x.y", milliseconds(1000)), bin);
  const std::string long_key(300, 'k');
  ASSERT_TRUE(a->Set(long_key, "long").ok());
  EXPECT_EQ(*b->Get(long_key, milliseconds(1000)), "long");

  // A missing key times out after about the timeout, naming the key.
  auto t0 = Clock::now();
  auto missing = b->Get("nope", milliseconds(200));
  double dt = SecondsSince(t0);
  EXPECT_TRUE(absl::IsDeadlineExceeded(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("'nope'"), std::string::npos) << missing.status();
  EXPECT_GE(dt, 0.19);
  EXPECT_LT(dt, 1.0);

  // Get blocks until another rank sets the key.
  std::thread setter([&] {
    std::this_thread::sleep_for(milliseconds(150));
    ASSERT_TRUE(a->Set("late", "here").ok());
  });
  t0 = Clock::now();
  auto late = b->Get("late", milliseconds(5000));
  dt = SecondsSince(t0);
  setter.join();
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(*late, "here");
  EXPECT_GE(dt, 0.1);
  EXPECT_LT(dt, 2.0);

  // Wait: all present -> ok; some missing -> DEADLINE_EXCEEDED naming only them.
  EXPECT_TRUE(b->Wait({"k1", "empty"}, milliseconds(500)).ok());
  t0 = Clock::now();
  absl::Status w = b->Wait({"k1", "absent1", "absent2"}, milliseconds(150));
  EXPECT_TRUE(absl::IsDeadlineExceeded(w)) << w;
  EXPECT_NE(w.message().find("'absent1'"), std::string::npos) << w;
  EXPECT_NE(w.message().find("'absent2'"), std::string::npos) << w;
  EXPECT_EQ(w.message().find("'k1'"), std::string::npos) << w;
  EXPECT_GE(SecondsSince(t0), 0.14);

  std::thread setter2([&] {
    std::this_thread::sleep_for(milliseconds(100));
    ASSERT_TRUE(a->Set("w1", "1").ok());
    ASSERT_TRUE(a->Set("w2", "2").ok());
  });
  EXPECT_TRUE(b->Wait({"w1", "w2"}, milliseconds(5000)).ok());
  setter2.join();
}

TEST(FileStoreTest, Contract) {
  std::string dir = FreshDir("fs");
  auto a = FileStore::Open(dir);
  auto b = FileStore::Open(dir);
  ASSERT_TRUE(a.ok() && b.ok());
  CheckStoreContract(a->get(), b->get());
}

TEST(FileStoreTest, CreatesDirectoryAndRejectsEmptyPath) {
  std::string dir = FreshDir("fs2") + "/nested/deeper";
  auto s = FileStore::Open(dir);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE((*s)->Set("x", "1").ok());
  EXPECT_FALSE(FileStore::Open("").ok());
}

TEST(FileStoreTest, UnusableDirectoryIsAnError) {
  // A path below a regular file cannot be a directory, even for root.
  auto s = FileStore::Open("/dev/null/store");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("/dev/null/store"), std::string::npos) << s.status();
}

TEST(MemoryStoreTest, Contract) {
  MemoryStore s;
  CheckStoreContract(&s, &s);
}

TEST(MemoryStoreTest, CloseWakesWaiters) {
  MemoryStore s;
  std::thread closer([&] {
    std::this_thread::sleep_for(milliseconds(100));
    s.Close();
  });
  auto t0 = Clock::now();
  auto v = s.Get("never", milliseconds(10000));
  closer.join();
  EXPECT_TRUE(absl::IsUnavailable(v.status())) << v.status();
  EXPECT_LT(SecondsSince(t0), 2.0);
  EXPECT_TRUE(absl::IsUnavailable(s.Set("x", "y")));
}

TEST(PrefixStoreTest, PrefixesKeys) {
  MemoryStore base;
  PrefixStore p("run7/", &base);
  ASSERT_TRUE(p.Set("a", "1").ok());
  EXPECT_EQ(*base.Get("run7/a", milliseconds(0)), "1");
  EXPECT_EQ(*p.Get("a", milliseconds(0)), "1");
  EXPECT_TRUE(p.Wait({"a"}, milliseconds(0)).ok());
  EXPECT_FALSE(base.Get("a", milliseconds(0)).ok());
}

TEST(TcpStoreTest, ContractBetweenTwoClients) {
  auto host = TcpStore::Host(0);
  ASSERT_TRUE(host.ok()) << host.status();
  ASSERT_GT((*host)->port(), 0);
  auto a = TcpStore::Connect("127.0.0.1", (*host)->port(), milliseconds(2000));
  auto b = TcpStore::Connect("localhost", (*host)->port(), milliseconds(2000));
  ASSERT_TRUE(a.ok() && b.ok());
  CheckStoreContract(a->get(), b->get());
}

TEST(TcpStoreTest, ContractBetweenHostAndClient) {
  auto host = TcpStore::Host(0);
  ASSERT_TRUE(host.ok()) << host.status();
  auto c = TcpStore::Connect("127.0.0.1", (*host)->port(), milliseconds(2000));
  ASSERT_TRUE(c.ok());
  CheckStoreContract(host->get(), c->get());  // host writes, client reads
  ASSERT_TRUE((*c)->Set("from-client", "x").ok());
  EXPECT_EQ(*(*host)->Get("from-client", milliseconds(100)), "x");
}

TEST(TcpStoreTest, LargeValues) {
  auto host = TcpStore::Host(0);
  ASSERT_TRUE(host.ok());
  auto c = TcpStore::Connect("127.0.0.1", (*host)->port(), milliseconds(2000));
  ASSERT_TRUE(c.ok());
  std::string big(4 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + 7);
  ASSERT_TRUE((*c)->Set("big", big).ok());
  auto v = (*c)->Get("big", milliseconds(1000));
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(*v == big);
}

TEST(TcpStoreTest, ClientRetriesUntilServerStarts) {
  const int port = FreePort();
  std::unique_ptr<TcpStore> host;
  std::thread starter([&] {
    std::this_thread::sleep_for(milliseconds(400));
    auto h = TcpStore::Host(port);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_TRUE((*h)->Set("ready", "1").ok());
    host = std::move(*h);
  });
  auto t0 = Clock::now();
  auto c = TcpStore::Connect("127.0.0.1", port, milliseconds(5000));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GE(SecondsSince(t0), 0.3);
  EXPECT_EQ(*(*c)->Get("ready", milliseconds(2000)), "1");
  starter.join();
}

TEST(TcpStoreTest, ConnectTimesOutWithoutServer) {
  const int port = FreePort();
  auto t0 = Clock::now();
  auto c = TcpStore::Connect("127.0.0.1", port, milliseconds(300));
  EXPECT_TRUE(absl::IsDeadlineExceeded(c.status())) << c.status();
  EXPECT_NE(c.status().message().find("rank 0"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find(std::to_string(port)), std::string::npos);
  EXPECT_LT(SecondsSince(t0), 2.0);
  EXPECT_FALSE(TcpStore::Connect("no-such-host.invalid", 1234, milliseconds(100)).ok());
}

TEST(TcpStoreTest, PortInUseIsReported) {
  auto a = TcpStore::Host(0);
  ASSERT_TRUE(a.ok());
  auto b = TcpStore::Host((*a)->port());
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("in use"), std::string::npos) << b.status();
}

TEST(TcpStoreTest, ServerExitMakesClientsFailNotHang) {
  auto host = TcpStore::Host(0);
  ASSERT_TRUE(host.ok());
  auto c = TcpStore::Connect("127.0.0.1", (*host)->port(), milliseconds(2000));
  auto d = TcpStore::Connect("127.0.0.1", (*host)->port(), milliseconds(2000));
  ASSERT_TRUE(c.ok() && d.ok());
  // `d` is blocked in a long Get when the host goes away.
  absl::Status blocked;
  double blocked_s = 0;
  std::thread waiter([&] {
    auto t0 = Clock::now();
    blocked = (*d)->Get("never", milliseconds(30000)).status();
    blocked_s = SecondsSince(t0);
  });
  std::this_thread::sleep_for(milliseconds(200));
  host->reset();
  waiter.join();
  EXPECT_TRUE(absl::IsUnavailable(blocked)) << blocked;
  EXPECT_LT(blocked_s, 5.0);
  absl::Status s = (*c)->Set("x", "1");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("rank 0"), std::string::npos) << s;
  // And it stays failed (no stale replies read from a half-used stream).
  EXPECT_TRUE(absl::IsUnavailable((*c)->Get("x", milliseconds(10)).status()));
}

TEST(TcpStoreTest, RejectsBadPorts) {
  EXPECT_FALSE(TcpStore::Host(70000).ok());
  EXPECT_FALSE(TcpStore::Connect("127.0.0.1", 0, milliseconds(10)).ok());
}

}  // namespace
}  // namespace llmt::comm
