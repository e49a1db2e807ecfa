#include "coordinator/rendezvous.h"

#include <thread>

#include "gtest/gtest.h"

namespace llmt::coord {
namespace {

TEST(RendezvousTest, SetGetWaitAddAreScopedPerAttempt) {
  Rendezvous kv;
  ASSERT_TRUE(kv.Set(1, "a", "x").ok());
  EXPECT_EQ(*kv.Get(1, "a"), "x");
  EXPECT_EQ(kv.Get(2, "a").status().code(), absl::StatusCode::kNotFound);  // other attempt
  EXPECT_EQ(kv.Set(1, "", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv.Set(1, "big", std::string(Rendezvous::kMaxValueBytes + 1, 'v')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*kv.Add(1, "n", 5), 5);
  EXPECT_EQ(*kv.Add(1, "n", -2), 3);
  EXPECT_EQ(kv.Add(1, "a", 1).status().code(), absl::StatusCode::kFailedPrecondition);

  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ASSERT_TRUE(kv.Set(1, "b", "").ok());  // empty values are values
  });
  auto vals = kv.Wait(1, {"a", "b"}, absl::Seconds(5));
  setter.join();
  ASSERT_TRUE(vals.ok()) << vals.status();
  EXPECT_EQ(*vals, (std::vector<std::string>{"x", ""}));
  auto late = kv.Wait(1, {"a", "zz"}, absl::Milliseconds(20));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(late.status().message().find("zz"), std::string::npos);
}

TEST(RendezvousTest, DropWakesWaitersAndForgetsKeys) {
  Rendezvous kv;
  ASSERT_TRUE(kv.Set(7, "k", "v").ok());
  std::thread dropper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    kv.Drop(7);
  });
  auto r = kv.Wait(7, {"never"}, absl::Seconds(10));
  dropper.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(kv.Get(7, "k").status().code(), absl::StatusCode::kNotFound);
  // A late Set from a rank of the ended attempt does not resurrect it.
  EXPECT_EQ(kv.Set(7, "k", "v").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(kv.AttemptCount(), 0u);
}

TEST(RendezvousTest, ShutdownAbortsWaits) {
  Rendezvous kv;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    kv.Shutdown();
  });
  auto r = kv.Wait(1, {"k"}, absl::Seconds(10));
  stopper.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace llmt::coord
