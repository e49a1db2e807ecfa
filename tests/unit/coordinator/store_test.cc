#include "storage/store/store.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>

#include "common/fs.h"
#include "gtest/gtest.h"
#include "llmt/v1/job.pb.h"

namespace llmt::store {
namespace {

std::string FreshDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/store_test_" + name + "_" + std::to_string(getpid());
  EXPECT_TRUE(fs::RemoveAll(dir).ok());
  return dir;
}

v1::Job MakeJob(uint64_t id, const std::string& name) {
  v1::Job j;
  j.set_id(id);
  j.set_name("jobs/" + std::to_string(id));
  j.mutable_spec()->set_name(name);
  j.set_state(v1::JOB_STATE_PENDING);
  return j;
}

TEST(StoreTest, KeysSortNumerically) {
  EXPECT_LT(JobKey(9), JobKey(10));
  EXPECT_LT(JobKey(255), JobKey(256));
  EXPECT_LT(EventKey(1, 99), EventKey(2, 0));
  EXPECT_EQ(DecodeU64(JobKey(0x0102030405060708ull)), 0x0102030405060708ull);
  EXPECT_EQ(DecodeU64(AttemptKey(7, 42), 8), 42u);
}

TEST(StoreTest, RoundTripAndScanOrder) {
  std::string dir = FreshDir("roundtrip");
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  Batch b = (*store)->NewBatch();
  for (uint64_t id : {300, 2, 1000, 17}) b.Put(Cf::kJobs, JobKey(id), MakeJob(id, "j"));
  ASSERT_TRUE((*store)->Commit(std::move(b)).ok());

  v1::Job got;
  auto found = (*store)->Get(Cf::kJobs, JobKey(17), &got);
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(*found);
  EXPECT_EQ(got.name(), "jobs/17");
  found = (*store)->Get(Cf::kJobs, JobKey(18), &got);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(*found);

  std::vector<uint64_t> order;
  ASSERT_TRUE((*store)
                  ->Scan(Cf::kJobs, "", "",
                         [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
                           v1::Job j;
                           auto st = DecodeValue(v, &j, Cf::kJobs, k);
                           if (!st.ok()) return st;
                           order.push_back(j.id());
                           return true;
                         })
                  .ok());
  EXPECT_EQ(order, (std::vector<uint64_t>{2, 17, 300, 1000}));
  // start_after resumes strictly after the given key (pagination).
  order.clear();
  ASSERT_TRUE((*store)
                  ->Scan(Cf::kJobs, "", JobKey(17),
                         [&](absl::string_view k, absl::string_view) -> absl::StatusOr<bool> {
                           order.push_back(DecodeU64(k));
                           return true;
                         })
                  .ok());
  EXPECT_EQ(order, (std::vector<uint64_t>{300, 1000}));
  auto last = (*store)->LastKey(Cf::kJobs);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(DecodeU64(*last), 1000u);
  auto empty_last = (*store)->LastKey(Cf::kWorkers);
  ASSERT_TRUE(empty_last.ok());
  EXPECT_TRUE(empty_last->empty());

  Batch del = (*store)->NewBatch();
  del.Delete(Cf::kJobs, JobKey(300));
  ASSERT_TRUE((*store)->Commit(std::move(del)).ok());
  found = (*store)->Get(Cf::kJobs, JobKey(300), &got);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(*found);
}

TEST(StoreTest, UnknownValueFormatIsDataLoss) {
  std::string dir = FreshDir("format");
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok());
  Batch b = (*store)->NewBatch();
  b.PutRaw(Cf::kJobs, JobKey(1), std::string("\x07garbage"));
  ASSERT_TRUE((*store)->Commit(std::move(b)).ok());
  v1::Job j;
  auto r = (*store)->Get(Cf::kJobs, JobKey(1), &j);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("jobs/"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("format 7"), std::string::npos) << r.status();
}

TEST(StoreTest, ReopenKeepsCommittedData) {
  std::string dir = FreshDir("reopen");
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok());
    for (int i = 1; i <= 50; ++i) {
      Batch b = (*store)->NewBatch();
      b.Put(Cf::kJobs, JobKey(i), MakeJob(i, "n" + std::to_string(i)));
      v1::Event e;
      e.set_job_id(i);
      e.set_seq(1);
      b.Put(Cf::kEvents, EventKey(i, 1), e);
      ASSERT_TRUE((*store)->Commit(std::move(b)).ok());
    }
  }
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  int n = 0;
  ASSERT_TRUE((*store)
                  ->Scan(Cf::kJobs, "", "",
                         [&](absl::string_view, absl::string_view) -> absl::StatusOr<bool> {
                           ++n;
                           return true;
                         })
                  .ok());
  EXPECT_EQ(n, 50);
  v1::Job j;
  ASSERT_TRUE(*(*store)->Get(Cf::kJobs, JobKey(33), &j));
  EXPECT_EQ(j.spec().name(), "n33");
}

TEST(StoreTest, ReadEventsAfterSeqWithLimit) {
  std::string dir = FreshDir("events");
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok());
  Batch b = (*store)->NewBatch();
  for (uint64_t job : {1, 2}) {
    for (int64_t seq = 1; seq <= 10; ++seq) {
      v1::Event e;
      e.set_job_id(job);
      e.set_seq(seq);
      b.Put(Cf::kEvents, EventKey(job, seq), e);
    }
  }
  ASSERT_TRUE((*store)->Commit(std::move(b)).ok());
  std::vector<std::string> vals;
  ASSERT_TRUE((*store)->ReadEvents(1, 4, 3, &vals).ok());
  ASSERT_EQ(vals.size(), 3u);
  std::vector<int64_t> seqs;
  for (auto& v : vals) {
    v1::Event e;
    ASSERT_TRUE(DecodeValue(v, &e, Cf::kEvents, "").ok());
    EXPECT_EQ(e.job_id(), 1u);
    seqs.push_back(e.seq());
  }
  EXPECT_EQ(seqs, (std::vector<int64_t>{5, 6, 7}));
  vals.clear();
  ASSERT_TRUE((*store)->ReadEvents(1, 10, 100, &vals).ok());
  EXPECT_TRUE(vals.empty());  // does not run into job 2's events
}

// Batches commit in enqueue order even when their waiters wake in another
// order: the later value of a key wins.
TEST(StoreTest, CommitsInEnqueueOrder) {
  std::string dir = FreshDir("order");
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok());
  Batch b1 = (*store)->NewBatch();
  b1.Put(Cf::kJobs, JobKey(1), MakeJob(1, "first"));
  Batch b2 = (*store)->NewBatch();
  b2.Put(Cf::kJobs, JobKey(1), MakeJob(1, "second"));
  uint64_t t1 = (*store)->Enqueue(std::move(b1));
  uint64_t t2 = (*store)->Enqueue(std::move(b2));
  EXPECT_LT(t1, t2);
  EXPECT_EQ((*store)->LastEnqueued(), t2);
  ASSERT_TRUE((*store)->WaitDurable(t2).ok());
  ASSERT_TRUE((*store)->WaitDurable(t1).ok());
  v1::Job j;
  ASSERT_TRUE(*(*store)->Get(Cf::kJobs, JobKey(1), &j));
  EXPECT_EQ(j.spec().name(), "second");
  EXPECT_EQ((*store)->Stats().groups, 1u);  // one synced write covered both
}

// Concurrent committers share synced writes (group commit) and every batch
// lands.
TEST(StoreTest, ConcurrentCommitsAreGrouped) {
  std::string dir = FreshDir("group");
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok());
  constexpr int kThreads = 16, kPerThread = 100;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        uint64_t id = t * kPerThread + i + 1;
        Batch b = (*store)->NewBatch();
        b.Put(Cf::kJobs, JobKey(id), MakeJob(id, "x"));
        if (!(*store)->Commit(std::move(b)).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  CommitStats st = (*store)->Stats();
  EXPECT_EQ(st.batches, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_LT(st.groups, st.batches);
  int n = 0;
  ASSERT_TRUE((*store)
                  ->Scan(Cf::kJobs, "", "",
                         [&](absl::string_view, absl::string_view) -> absl::StatusOr<bool> {
                           ++n;
                           return true;
                         })
                  .ok());
  EXPECT_EQ(n, kThreads * kPerThread);
}

// kill -9 a process in the middle of committing: every batch it reported as
// durable is there after reopening.
TEST(StoreTest, AcknowledgedWritesSurviveKill9) {
  std::string dir = FreshDir("kill9");
  for (int round = 0; round < 3; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      auto store = Store::Open(dir);
      if (!store.ok()) _exit(2);
      std::vector<std::thread> threads;
      for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
          for (uint64_t i = 0;; ++i) {
            uint64_t id = (static_cast<uint64_t>(round) << 40) | (static_cast<uint64_t>(t) << 32) | i;
            Batch b = (*store)->NewBatch();
            b.Put(Cf::kJobs, JobKey(id), MakeJob(id, "k"));
            if (!(*store)->Commit(std::move(b)).ok()) _exit(3);
            // 8-byte writes to a pipe are atomic.
            if (write(fds[1], &id, sizeof(id)) != sizeof(id)) _exit(4);
          }
        });
      }
      for (auto& th : threads) th.join();
      _exit(0);
    }
    close(fds[1]);
    std::vector<uint64_t> acked;
    uint64_t id;
    while (acked.size() < 400 && read(fds[0], &id, sizeof(id)) == sizeof(id)) acked.push_back(id);
    kill(pid, SIGKILL);
    // Drain acknowledgements written before the kill landed.
    while (read(fds[0], &id, sizeof(id)) == sizeof(id)) acked.push_back(id);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with " << WEXITSTATUS(status);
    ASSERT_GE(acked.size(), 400u);

    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    std::set<uint64_t> present;
    ASSERT_TRUE((*store)
                    ->Scan(Cf::kJobs, "", "",
                           [&](absl::string_view k, absl::string_view) -> absl::StatusOr<bool> {
                             present.insert(DecodeU64(k));
                             return true;
                           })
                    .ok());
    for (uint64_t a : acked) ASSERT_TRUE(present.count(a)) << "lost acknowledged key " << a;
  }
}

}  // namespace
}  // namespace llmt::store
