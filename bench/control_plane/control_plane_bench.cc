// Control-plane benchmark against the real llmt-coordinator binary on
// loopback (synced RocksDB writes, as in production):
//   1. CreateJob throughput and latency (p50/p99) with 1, 8 and 64 concurrent
//      clients, each on its own connection; also the mean number of
//      transitions per synced write (group commit) from /metrics.
//   2. ListJobs paging over 10,000 jobs (unfiltered and filtered).
//   3. Restart time with 10,000 jobs: kill -9 (WAL replay) and SIGTERM
//      (clean), from spawn to serving and to the first answered GetJob.
// Prints a table. Usage:
//   control_plane_bench [--coordinator=PATH] [--dir=DIR] [--seconds=3] [--jobs=10000]
//                       [--sections=store,create,list]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "common/fs.h"
#include "storage/store/store.h"
#include "grpcpp/grpcpp.h"
#include "llmt/v1/coordinator.grpc.pb.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using llmt::v1::JobService;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Options {
  std::string coordinator = LLMT_COORDINATOR_BIN;
  std::string dir = "/tmp/llmt-control-plane-bench";
  double seconds = 3;
  int jobs = 10000;
  std::string sections = "store,create,list";  // which parts to run
  bool Has(const std::string& s) const { return absl::StrContains(sections, s); }
};

class Coordinator {
 public:
  Coordinator(std::string bin, std::string dir) : bin_(std::move(bin)), dir_(std::move(dir)) {}
  ~Coordinator() { Kill(SIGKILL); }

  // Returns seconds from spawn until the port file appears (serving).
  double Start() {
    std::string port_file = dir_ + "/ports";
    (void)llmt::fs::RemoveAll(port_file);
    std::vector<std::string> args = {bin_,
                                     "--data_dir=" + dir_ + "/db",
                                     "--jobs_dir=" + dir_ + "/jobs",
                                     "--listen=127.0.0.1:0",
                                     "--http_listen=127.0.0.1:0",
                                     "--lease_timeout=1h",
                                     "--port_file=" + port_file};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    std::string log = dir_ + "/coordinator.log";
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    auto t0 = Clock::now();
    if (posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) {
      std::fprintf(stderr, "cannot start %s\n", bin_.c_str());
      std::exit(1);
    }
    posix_spawn_file_actions_destroy(&fa);
    while (Since(t0) < 30) {
      auto text = llmt::fs::ReadFile(port_file);
      if (text.ok()) {
        double secs = Since(t0);
        for (absl::string_view line : absl::StrSplit(*text, '\n')) {
          std::vector<std::string> kv = absl::StrSplit(line, '=');
          if (kv.size() == 2 && kv[0] == "grpc_port") (void)absl::SimpleAtoi(kv[1], &port_);
          if (kv.size() == 2 && kv[0] == "http_port") (void)absl::SimpleAtoi(kv[1], &http_port_);
        }
        return secs;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    std::fprintf(stderr, "coordinator did not start; see %s\n", log.c_str());
    std::exit(1);
  }

  void Kill(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // A channel of its own (not sharing a connection with other clients).
  std::shared_ptr<grpc::Channel> NewChannel(int salt) {
    grpc::ChannelArguments args;
    args.SetInt("llmt.bench.client", salt);  // distinct args -> distinct subchannel
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                     grpc::InsecureChannelCredentials(), args);
  }
  int http_port() const { return http_port_; }
  // CPU seconds (user + system) the coordinator process has used.
  double CpuSeconds() const {
    auto stat = llmt::fs::ReadFile(absl::StrCat("/proc/", pid_, "/stat"));
    if (!stat.ok()) return 0;
    // Fields after the ")" that ends the command name: state is field 3,
    // utime 14, stime 15.
    std::vector<std::string> f = absl::StrSplit(stat->substr(stat->rfind(')') + 2), ' ');
    double ticks = 0, v = 0;
    if (f.size() > 12 && absl::SimpleAtod(f[11], &v)) ticks += v;
    if (f.size() > 12 && absl::SimpleAtod(f[12], &v)) ticks += v;
    return ticks / sysconf(_SC_CLK_TCK);
  }

 private:
  std::string bin_, dir_;
  pid_t pid_ = -1;
  int port_ = 0, http_port_ = 0;
};

llmt::v1::JobSpec Spec(int i) {
  llmt::v1::JobSpec s;
  s.set_name(absl::StrCat("bench-", i));
  s.mutable_model()->set_family("gpt2");
  s.mutable_model()->set_d_model(768);
  s.mutable_model()->set_n_layer(12);
  s.mutable_model()->set_n_head(12);
  s.mutable_model()->set_max_seq_len(1024);
  s.mutable_data()->set_dir("/data/fineweb-10b");
  s.mutable_train()->set_batch_size(16);
  s.mutable_train()->set_seq_len(1024);
  s.mutable_train()->set_max_steps(5000);
  s.mutable_optim()->set_lr(6e-4);
  s.mutable_checkpoint()->set_every_steps(500);
  s.mutable_checkpoint()->set_keep_last(3);
  (*s.mutable_labels())["team"] = i % 4 == 0 ? "nlp" : "vision";
  return s;
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return c;
}

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()));
  return v[i];
}

// Reads one series value from /metrics (e.g. "..._sum").
double Metric(int http_port, const std::string& name) {
  std::string cmd = absl::StrCat("curl -s http://127.0.0.1:", http_port, "/metrics");
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return 0;
  char line[1024];
  double v = 0;
  while (fgets(line, sizeof(line), f) != nullptr) {
    absl::string_view l(line);
    if (absl::StartsWith(l, name + " ")) {
      (void)absl::SimpleAtod(absl::StripAsciiWhitespace(l.substr(name.size() + 1)), &v);
    }
  }
  pclose(f);
  return v;
}

std::atomic<int> g_next_job{0};

// Store-level: synced commits per second with `threads` committers, either
// through the group-commit queue or serialised by one mutex around each
// synced write (what a naive "lock, write, unlock" coordinator would do).
double StoreCommitsPerSecond(const std::string& dir, int threads, bool serialise,
                             double seconds) {
  (void)llmt::fs::RemoveAll(dir);
  auto store = llmt::store::Store::Open(dir);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    std::exit(1);
  }
  std::mutex mu;
  std::atomic<int> n{0};
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      llmt::v1::Job job;
      *job.mutable_spec() = Spec(t);
      for (uint64_t i = 0; Since(t0) < seconds; ++i) {
        job.set_id((static_cast<uint64_t>(t) << 40) | i);
        llmt::store::Batch b = (*store)->NewBatch();
        b.Put(llmt::store::Cf::kJobs, llmt::store::JobKey(job.id()), job);
        if (serialise) {
          std::lock_guard<std::mutex> l(mu);
          (void)(*store)->Commit(std::move(b));
        } else {
          (void)(*store)->Commit(std::move(b));
        }
        n++;
      }
    });
  }
  for (auto& t : ts) t.join();
  return n.load() / Since(t0);
}

struct LoadResult {
  int calls = 0, errors = 0;
  double seconds = 0;
  std::vector<double> lat;
};

// `clients` threads create jobs for `seconds` (or until `max_calls`).
LoadResult CreateLoad(Coordinator& c, int clients, double seconds, int max_calls) {
  std::vector<std::shared_ptr<grpc::Channel>> chans;
  for (int i = 0; i < clients; ++i) chans.push_back(c.NewChannel(i));
  // Connect every client before timing.
  for (auto& ch : chans) ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::vector<LoadResult> per(clients);
  std::atomic<int> issued{0};
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      auto stub = JobService::NewStub(chans[i]);
      while (Since(t0) < seconds && issued.fetch_add(1) < max_calls) {
        int n = g_next_job++;
        llmt::v1::CreateJobRequest r;
        *r.mutable_spec() = Spec(n);
        r.set_request_id(absl::StrCat("bench-", n));
        llmt::v1::Job j;
        auto s0 = Clock::now();
        grpc::Status st = stub->CreateJob(Ctx().get(), r, &j);
        per[i].lat.push_back(Since(s0));
        per[i].calls++;
        if (!st.ok()) {
          if (per[i].errors++ == 0) std::fprintf(stderr, "CreateJob: %s\n", st.error_message().c_str());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  LoadResult all;
  all.seconds = Since(t0);
  for (auto& p : per) {
    all.calls += p.calls;
    all.errors += p.errors;
    all.lat.insert(all.lat.end(), p.lat.begin(), p.lat.end());
  }
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--coordinator=")) o.coordinator = std::string(a);
    else if (absl::ConsumePrefix(&a, "--dir=")) o.dir = std::string(a);
    else if (absl::ConsumePrefix(&a, "--seconds=")) (void)absl::SimpleAtod(a, &o.seconds);
    else if (absl::ConsumePrefix(&a, "--jobs=")) (void)absl::SimpleAtoi(a, &o.jobs);
    else if (absl::ConsumePrefix(&a, "--sections=")) o.sections = std::string(a);
    else {
      std::fprintf(stderr,
                   "usage: control_plane_bench [--coordinator=PATH] [--dir=DIR] [--seconds=3] "
                   "[--jobs=10000] [--sections=store,create,list]\n");
      return 2;
    }
  }
  (void)llmt::fs::RemoveAll(o.dir);
  auto register_worker = [](Coordinator& c) {
    // One registered worker so jobs are schedulable (its single core runs one).
    auto ws = llmt::v1::WorkerService::NewStub(c.NewChannel(-1));
    llmt::v1::RegisterWorkerRequest r;
    r.set_worker_id("bench-worker");
    r.mutable_capacity()->set_cpu_cores(1);
    llmt::v1::RegisterWorkerResponse resp;
    grpc::Status s = ws->RegisterWorker(Ctx().get(), r, &resp);
    if (!s.ok()) {
      std::fprintf(stderr, "RegisterWorker: %s\n", s.error_message().c_str());
      std::exit(1);
    }
  };
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  std::printf("llmt control-plane benchmark (coordinator %s, data in %s, %u CPUs, load %.1f)\n",
              o.coordinator.c_str(), o.dir.c_str(), std::thread::hardware_concurrency(), load[0]);
  if (o.Has("store")) std::printf("Store: synced 1-job commits/s (in process, %.0f s each)\n", o.seconds / 2);
  if (o.Has("store")) std::printf("%8s %16s %22s\n", "threads", "group commit", "mutex around write");
  for (int t : {1, 8, 64}) {
    if (!o.Has("store")) break;
    double g = StoreCommitsPerSecond(o.dir + "/store", t, false, o.seconds / 2);
    double s = StoreCommitsPerSecond(o.dir + "/store", t, true, o.seconds / 2);
    std::printf("%8d %16.0f %22.0f\n", t, g, s);
  }
  std::printf("\n");
  if (o.Has("create")) {
    (void)llmt::fs::MakeDirs(o.dir + "/throughput");
    Coordinator coord(o.coordinator, o.dir + "/throughput");
    double first_start = coord.Start();
    register_worker(coord);
    std::printf("fresh start to serving: %.0f ms\n\n", first_start * 1e3);
    std::printf("CreateJob (sync durability, one connection per client, %.0f s each)\n",
                o.seconds);
    std::printf("%8s %10s %10s %10s %10s %10s %10s %12s\n", "clients", "calls", "jobs/s",
                "p50 ms", "p99 ms", "max ms", "per fsync", "server CPU");
    for (int clients : {1, 8, 64}) {
      double sum0 = Metric(coord.http_port(), "llmt_coordinator_store_commit_group_size_sum");
      double cnt0 = Metric(coord.http_port(), "llmt_coordinator_store_commit_group_size_count");
      double cpu0 = coord.CpuSeconds();
      LoadResult r = CreateLoad(coord, clients, o.seconds, 1 << 30);
      double cpu = coord.CpuSeconds() - cpu0;
      double sum1 = Metric(coord.http_port(), "llmt_coordinator_store_commit_group_size_sum");
      double cnt1 = Metric(coord.http_port(), "llmt_coordinator_store_commit_group_size_count");
      double group = cnt1 > cnt0 ? (sum1 - sum0) / (cnt1 - cnt0) : 0;
      std::printf("%8d %10d %10.0f %10.2f %10.2f %10.2f %10.1f %9.0f us%s\n", clients, r.calls,
                  r.calls / r.seconds, Pct(r.lat, 50) * 1e3, Pct(r.lat, 99) * 1e3,
                  Pct(r.lat, 100) * 1e3, group, cpu / std::max(1, r.calls) * 1e6,
                  r.errors ? absl::StrCat("  (", r.errors, " errors)").c_str() : "");
    }
    coord.Kill(SIGTERM);
  }

  if (!o.Has("list")) return 0;
  // A fresh store holding exactly --jobs jobs for listing and restarts.
  (void)llmt::fs::MakeDirs(o.dir + "/listing");
  Coordinator coord(o.coordinator, o.dir + "/listing");
  coord.Start();
  register_worker(coord);
  g_next_job = 0;
  {
    auto t0 = Clock::now();
    LoadResult r = CreateLoad(coord, 64, 1e9, o.jobs);
    std::printf("\nstored %d jobs in %.1f s (%d errors)\n", r.calls, Since(t0), r.errors);
  }

  std::printf("\nListJobs over %d jobs (all pages)\n", g_next_job.load());
  std::printf("%-28s %8s %8s %12s %10s %10s\n", "query", "page", "pages", "total ms", "p50 ms",
              "p99 ms");
  auto stub = JobService::NewStub(coord.NewChannel(1000));
  for (auto [filter, page] : std::vector<std::pair<std::string, int>>{
           {"", 100}, {"", 1000}, {"labels.team=nlp", 100}, {"state=RUNNING", 100}}) {
    llmt::v1::ListJobsRequest r;
    r.set_page_size(page);
    r.set_filter(filter);
    std::vector<double> lat;
    int pages = 0, jobs = 0;
    auto t0 = Clock::now();
    do {
      llmt::v1::ListJobsResponse resp;
      auto s0 = Clock::now();
      grpc::Status st = stub->ListJobs(Ctx().get(), r, &resp);
      lat.push_back(Since(s0));
      if (!st.ok()) {
        std::fprintf(stderr, "ListJobs: %s\n", st.error_message().c_str());
        break;
      }
      jobs += resp.jobs_size();
      ++pages;
      r.set_page_token(resp.next_page_token());
    } while (!r.page_token().empty());
    std::printf("%-28s %8d %8d %12.1f %10.2f %10.2f   (%d jobs)\n",
                filter.empty() ? "(none)" : filter.c_str(), page, pages, Since(t0) * 1e3,
                Pct(lat, 50) * 1e3, Pct(lat, 99) * 1e3, jobs);
  }

  // The first kill -9 replays the WAL written while filling the store (the
  // worst case); recovery flushes it, so later restarts replay little.
  std::printf("\nRestart with %d jobs (3 restarts each, in order)\n", g_next_job.load());
  std::printf("%-10s %26s %26s\n", "stop", "spawn->serving ms", "spawn->first GetJob ms");
  for (int sig : {SIGKILL, SIGTERM}) {
    std::vector<double> serve, first;
    for (int rep = 0; rep < 3; ++rep) {
      stub.reset();
      coord.Kill(sig);
      auto t0 = Clock::now();
      serve.push_back(coord.Start());
      auto ch = coord.NewChannel(2000 + rep);
      auto s = JobService::NewStub(ch);
      llmt::v1::GetJobRequest g;
      g.set_name("jobs/1");
      llmt::v1::Job j;
      while (!s->GetJob(Ctx().get(), g, &j).ok() && Since(t0) < 30) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      first.push_back(Since(t0));
      stub = JobService::NewStub(coord.NewChannel(3000 + rep));
    }
    std::printf("%-10s %26s %26s\n", sig == SIGKILL ? "kill -9" : "SIGTERM",
                absl::StrFormat("%.0f / %.0f / %.0f", serve[0] * 1e3, serve[1] * 1e3,
                                serve[2] * 1e3)
                    .c_str(),
                absl::StrFormat("%.0f / %.0f / %.0f", first[0] * 1e3, first[1] * 1e3,
                                first[2] * 1e3)
                    .c_str());
  }
  coord.Kill(SIGTERM);
  return 0;
}
