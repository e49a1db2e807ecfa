// A rank that dies (SIGKILL) or hangs (SIGSTOP) makes the other ranks' next
// collective fail within the timeout with an error naming it, never hang.
// Ranks are forked processes (a thread cannot be killed); each child reports
// its outcome in a file the parent checks. Children are forked before this
// process creates any thread, and always leave with _exit.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "comm_test_util.h"
#include "gtest/gtest.h"
#include "worker/comm/gloo_collective.h"

namespace llmt::comm {
namespace {

using std::chrono::milliseconds;
using testing::FreePort;
using testing::FreshDir;
using Clock = std::chrono::steady_clock;

enum class Fault { kKill, kStop };

struct Outcome {
  bool reported = false;
  int code = -1;  // absl::StatusCode
  double seconds = 0;
  std::string message;
};

struct Scenario {
  int world = 4;
  int victim = 2;
  Fault fault = Fault::kKill;
  bool tcp_store = false;
  milliseconds timeout{3000};
};

// Child body: join, run one healthy all-reduce + barrier, then the victim
// kills or stops itself and the others run the next all-reduce and record how
// it failed. Returns the child's exit code.
int RunRank(const Scenario& sc, int rank, const std::string& dir, int port) {
  std::shared_ptr<Store> store;
  if (sc.tcp_store) {
    auto s = rank == 0 ? TcpStore::Host(port)
                       : TcpStore::Connect("127.0.0.1", port, milliseconds(10000));
    if (!s.ok()) return 10;
    store = std::move(*s);
  } else {
    auto s = FileStore::Open(dir + "/store");
    if (!s.ok()) return 10;
    store = std::move(*s);
  }
  GlooOptions o;
  o.timeout = sc.timeout;
  o.rendezvous_timeout = std::chrono::seconds(20);
  auto c = GlooCollective::Create(store, rank, sc.world, o);
  if (!c.ok()) return 11;
  std::vector<float> v(100000, 1.f);
  if (!(*c)->AllReduceSum(v.data(), v.size()).ok() || v[0] != sc.world) return 12;
  if (!(*c)->Barrier().ok()) return 13;
  if (rank == sc.victim) {
    raise(sc.fault == Fault::kKill ? SIGKILL : SIGSTOP);
    _exit(14);  // only reached after SIGCONT, which the test never sends
  }
  std::this_thread::sleep_for(milliseconds(100));  // let the victim go first
  auto t0 = Clock::now();
  absl::Status s = (*c)->AllReduceSum(v.data(), v.size());
  const double dt = testing::SecondsSince(t0);
  // A broken group stays broken.
  absl::Status again = (*c)->Barrier();
  std::ofstream f(dir + "/result." + std::to_string(rank));
  f << static_cast<int>(s.code()) << "\n"
    << dt << "\n"
    << static_cast<int>(again.code()) << "\n"
    << s.message() << "\n";
  f.close();
  return 0;
}

// Forks the ranks, waits (bounded) for the survivors, kills leftovers, and
// returns each survivor's outcome.
std::vector<Outcome> RunScenario(const Scenario& sc) {
  const std::string dir = FreshDir("fail");
  const int port = sc.tcp_store ? FreePort() : 0;
  std::vector<pid_t> pids;
  for (int r = 0; r < sc.world; ++r) {
    pid_t pid = fork();
    if (pid == 0) _exit(RunRank(sc, r, dir, port));
    pids.push_back(pid);
  }
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  std::vector<int> status(sc.world, -1);
  for (int r = 0; r < sc.world; ++r) {
    if (r == sc.victim) continue;
    while (true) {
      int st;
      pid_t got = waitpid(pids[r], &st, WNOHANG);
      if (got == pids[r]) {
        status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
        break;
      }
      if (Clock::now() > deadline) {
        ADD_FAILURE() << "rank " << r << " hung";
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &st, 0);
        break;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  kill(pids[sc.victim], SIGKILL);
  int st;
  waitpid(pids[sc.victim], &st, 0);

  std::vector<Outcome> out(sc.world);
  for (int r = 0; r < sc.world; ++r) {
    if (r == sc.victim) continue;
    EXPECT_EQ(status[r], 0) << "rank " << r << " exit status";
    std::ifstream f(dir + "/result." + std::to_string(r));
    if (!f) continue;
    std::string code, secs, again;
    std::getline(f, code);
    std::getline(f, secs);
    std::getline(f, again);
    std::stringstream rest;
    rest << f.rdbuf();
    Outcome& o = out[r];
    o.reported = absl::SimpleAtoi(code, &o.code) && absl::SimpleAtod(secs, &o.seconds);
    o.message = rest.str();
    int again_code = -1;
    EXPECT_TRUE(absl::SimpleAtoi(again, &again_code));
    EXPECT_EQ(again_code, static_cast<int>(absl::StatusCode::kFailedPrecondition))
        << "rank " << r << ": a later call on the broken group";
  }
  return out;
}

TEST(GlooFailureTest, KilledRankIsNamedQuickly) {
  Scenario sc;
  sc.fault = Fault::kKill;
  sc.timeout = milliseconds(10000);
  std::vector<Outcome> out = RunScenario(sc);
  for (int r = 0; r < sc.world; ++r) {
    if (r == sc.victim) continue;
    const Outcome& o = out[r];
    ASSERT_TRUE(o.reported) << "rank " << r;
    EXPECT_EQ(o.code, static_cast<int>(absl::StatusCode::kUnavailable)) << o.message;
    // The dead peer's closed connection is noticed at once; the only wait is
    // the diagnosis grace (timeout / 10 = 1 s), far below the 10 s timeout.
    EXPECT_LT(o.seconds, 3.0) << o.message;
    EXPECT_NE(o.message.find("Peer rank 2 (pid"), std::string::npos) << o.message;
    EXPECT_NE(o.message.find("did not report"), std::string::npos) << o.message;
    EXPECT_NE(o.message.find("all_reduce"), std::string::npos) << o.message;
  }
}

TEST(GlooFailureTest, HungRankTimesOutNamingIt) {
  Scenario sc;
  sc.fault = Fault::kStop;
  sc.world = 3;
  sc.victim = 1;
  sc.timeout = milliseconds(2000);
  std::vector<Outcome> out = RunScenario(sc);
  for (int r = 0; r < sc.world; ++r) {
    if (r == sc.victim) continue;
    const Outcome& o = out[r];
    ASSERT_TRUE(o.reported) << "rank " << r;
    EXPECT_EQ(o.code, static_cast<int>(absl::StatusCode::kDeadlineExceeded)) << o.message;
    EXPECT_GE(o.seconds, 1.0) << o.message;
    EXPECT_LT(o.seconds, 2.0 + 1.0) << o.message;  // timeout plus scheduling slack
    EXPECT_NE(o.message.find("Peer rank 1 (pid"), std::string::npos) << o.message;
  }
}

TEST(GlooFailureTest, KilledStoreHostIsReported) {
  Scenario sc;
  sc.fault = Fault::kKill;
  sc.world = 3;
  sc.victim = 0;  // rank 0 also hosts the TCP store
  sc.tcp_store = true;
  sc.timeout = milliseconds(10000);
  std::vector<Outcome> out = RunScenario(sc);
  for (int r = 1; r < sc.world; ++r) {
    const Outcome& o = out[r];
    ASSERT_TRUE(o.reported) << "rank " << r;
    EXPECT_EQ(o.code, static_cast<int>(absl::StatusCode::kUnavailable)) << o.message;
    EXPECT_LT(o.seconds, 3.0) << o.message;
    EXPECT_NE(o.message.find("rank 0 has probably died"), std::string::npos) << o.message;
  }
}

}  // namespace
}  // namespace llmt::comm
