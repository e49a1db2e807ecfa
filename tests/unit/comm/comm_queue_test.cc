// CommQueue: calls run in order on the background thread, overlap with the
// caller, and the first error is reported (later calls skipped).
#include "worker/comm/comm_queue.h"

#include <atomic>

#include "comm_test_util.h"
#include "gtest/gtest.h"

namespace llmt::comm {
namespace {

using std::chrono::milliseconds;

TEST(CommQueueTest, RunsBucketsInOrderAcrossRanks) {
  const int W = 2;
  auto group = testing::MakeGlooGroup(W, testing::StoreKind::kMemory);
  std::vector<std::vector<float>> grads(W);
  testing::RunRanks(W, [&](int r) {
    // Four "buckets" of a flat gradient buffer, enqueued last-to-first as
    // backward produces them.
    grads[r].assign(4000, static_cast<float>(r + 1));
    CommQueue q(group[r].get());
    for (int b = 3; b >= 0; --b) {
      float* p = grads[r].data() + b * 1000;
      q.Enqueue("bucket " + std::to_string(b),
                [p](Collective& c) { return c.AllReduceAvg(p, 1000); });
    }
    ASSERT_TRUE(q.Drain().ok());
    ASSERT_TRUE(group[r]->Barrier().ok());
  });
  for (int r = 0; r < W; ++r) {
    for (float g : grads[r]) ASSERT_EQ(g, 1.5f);
  }
}

TEST(CommQueueTest, FirstErrorWinsAndLaterCallsAreSkipped) {
  LocalCollective local;
  CommQueue q(&local);
  std::atomic<int> ran{0};
  q.Enqueue("a", [&](Collective&) {
    ++ran;
    return absl::OkStatus();
  });
  q.Enqueue("b", [&](Collective&) {
    ++ran;
    return absl::UnavailableError("peer gone");
  });
  q.Enqueue("c", [&](Collective&) {
    ++ran;
    return absl::OkStatus();
  });
  absl::Status s = q.Drain();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ(s.message(), "b: peer gone");
  EXPECT_EQ(ran, 2);
  // The error is reported once; the queue keeps working afterwards.
  q.Enqueue("d", [&](Collective&) {
    ++ran;
    return absl::OkStatus();
  });
  EXPECT_TRUE(q.Drain().ok());
  EXPECT_EQ(ran, 3);
}

TEST(CommQueueTest, OverlapsWithTheCaller) {
  LocalCollective local;
  CommQueue q(&local);
  std::atomic<bool> release{false};
  std::atomic<bool> done{false};
  q.Enqueue("slow", [&](Collective&) {
    while (!release) std::this_thread::sleep_for(milliseconds(1));
    done = true;
    return absl::OkStatus();
  });
  // Enqueue returned while the call is still running: the caller goes on.
  EXPECT_FALSE(done);
  release = true;
  EXPECT_TRUE(q.Drain().ok());
  EXPECT_TRUE(done);
}

}  // namespace
}  // namespace llmt::comm
