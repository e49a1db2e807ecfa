// Collective bandwidth benchmark (a program that prints a table, not a test).
//
// For each message size it times one collective across N ranks and reports
// the median over several iterations, with bandwidth as nccl-tests defines
// it: algbw = bytes / time, busbw = algbw * 2(n-1)/n for all-reduce and
// algbw * (n-1)/n for reduce-scatter and all-gather (bytes = the full
// buffer), so busbw is comparable with the link bandwidth whatever n is.
// Each iteration's time is the slowest rank's (a max all-reduce after it).
// The table shows the median (the figure to quote) and the best iteration
// (what the transport can do when the machine is otherwise idle; on a shared
// machine the median includes scheduling delays).
//
// Ranks are forked processes: Gloo over loopback TCP with a FileStore
// rendezvous; NCCL with one process per GPU when the build has NCCL and a GPU
// is visible (otherwise the NCCL section prints why it is skipped).
//
//   bench_comm [--ranks N] [--min-bytes B] [--max-bytes B] [--iters K]
//              [--op all_reduce|reduce_scatter|all_gather|all]
//              [--backend gloo|nccl|all]
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/comm/collective.h"
#include "worker/comm/gloo_collective.h"
#include "worker/comm/store.h"
#ifdef LLMT_HAVE_NCCL
#include <cuda_runtime.h>

#include "worker/comm/nccl_collective.h"
#endif

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  int ranks = 2;
  size_t min_bytes = 4 << 10;
  size_t max_bytes = 64 << 20;
  int iters = 0;  // 0 = adaptive
  std::string op = "all_reduce";
  std::string backend = "all";
};

void Usage() {
  std::fprintf(stderr,
               "usage: bench_comm [--ranks N (2)] [--min-bytes B (4096)] [--max-bytes B "
               "(67108864)]\n"
               "                  [--iters K (adaptive)] [--op all_reduce|reduce_scatter|"
               "all_gather|all]\n"
               "                  [--backend gloo|nccl|all]\n");
}

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](std::string* v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--help" || a == "-h") {
      Usage();
      exit(0);
    } else if (a == "--ranks" && next(&v) && absl::SimpleAtoi(v, &f->ranks) && f->ranks >= 1) {
    } else if (a == "--min-bytes" && next(&v) && absl::SimpleAtoi(v, &f->min_bytes)) {
    } else if (a == "--max-bytes" && next(&v) && absl::SimpleAtoi(v, &f->max_bytes)) {
    } else if (a == "--iters" && next(&v) && absl::SimpleAtoi(v, &f->iters) && f->iters > 0) {
    } else if (a == "--op" && next(&f->op) &&
               (f->op == "all_reduce" || f->op == "reduce_scatter" || f->op == "all_gather" ||
                f->op == "all")) {
    } else if (a == "--backend" && next(&f->backend) &&
               (f->backend == "gloo" || f->backend == "nccl" || f->backend == "all")) {
    } else {
      std::fprintf(stderr, "bad or incomplete argument: %s\n", a.c_str());
      Usage();
      return false;
    }
  }
  if (f->min_bytes < 4 || f->max_bytes < f->min_bytes) {
    std::fprintf(stderr, "need 4 <= --min-bytes <= --max-bytes\n");
    return false;
  }
  return true;
}

std::string HumanBytes(size_t b) {
  if (b >= (1u << 20) && b % (1u << 20) == 0) return absl::StrCat(b >> 20, " MiB");
  if (b >= (1u << 10) && b % (1u << 10) == 0) return absl::StrCat(b >> 10, " KiB");
  return absl::StrCat(b, " B");
}

double BusFactor(const std::string& op, int n) {
  if (n == 1) return 0;
  return op == "all_reduce" ? 2.0 * (n - 1) / n : static_cast<double>(n - 1) / n;
}

// Allocates and frees the benchmark buffer on the backend's memory.
struct Buffers {
  virtual ~Buffers() = default;
  virtual float* Alloc(size_t n) = 0;
  virtual void Free(float* p) = 0;
  virtual void Fill(float* p, size_t n, float v) = 0;
  virtual float Read(const float* p) = 0;
};

struct HostBuffers : Buffers {
  float* Alloc(size_t n) override { return new float[n]; }
  void Free(float* p) override { delete[] p; }
  void Fill(float* p, size_t n, float v) override { std::fill(p, p + n, v); }
  float Read(const float* p) override { return *p; }
};

#ifdef LLMT_HAVE_NCCL
struct DeviceBuffers : Buffers {
  float* Alloc(size_t n) override {
    float* p = nullptr;
    cudaMalloc(&p, n * sizeof(float));
    return p;
  }
  void Free(float* p) override { cudaFree(p); }
  void Fill(float* p, size_t n, float v) override {
    std::vector<float> h(n, v);
    cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  float Read(const float* p) override {
    float v = 0;
    cudaMemcpy(&v, p, sizeof(float), cudaMemcpyDeviceToHost);
    return v;
  }
};
#endif

// One rank's part of the sweep; rank 0 prints. Returns a process exit code.
int Sweep(Collective& c, Buffers& mem, const Flags& f, const std::string& op,
          const std::string& title) {
  const int n = c.world_size();
  const bool lead = c.rank() == 0;
  if (lead) {
    std::printf("\n# %s, %s, %d rank%s; time = slowest rank, busbw from the median\n", op.c_str(),
                title.c_str(), n, n == 1 ? "" : "s");
    std::printf("%10s %10s %6s %12s %12s %12s %12s %12s\n", "size", "floats", "iters", "median(us)",
                "min(us)", "algbw(GB/s)", "busbw(GB/s)", "best_busbw");
    std::fflush(stdout);
  }
  for (size_t bytes = f.min_bytes; bytes <= f.max_bytes; bytes *= 4) {
    const size_t count = std::max<size_t>(1, bytes / sizeof(float));
    const ShardLayout layout = ShardLayout::Even(count, n);
    float* buf = mem.Alloc(count);
    mem.Fill(buf, count, 1.f);
    // Enough iterations for a stable median, fewer for big messages.
    const int iters =
        f.iters > 0 ? f.iters
                    : static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / bytes, 5, 50));
    const int warmup = 2;
    std::vector<double> times;
    for (int it = 0; it < warmup + iters; ++it) {
      absl::Status s = c.Barrier();
      const auto t0 = Clock::now();
      if (s.ok()) {
        if (op == "all_reduce") {
          s = c.AllReduceSum(buf, count);
        } else if (op == "reduce_scatter") {
          s = c.ReduceScatter(buf, buf + layout.offset(c.rank()), layout, ReduceOp::kSum);
        } else {
          s = c.AllGather(buf, layout);
        }
      }
      double t = std::chrono::duration<double>(Clock::now() - t0).count();
      if (s.ok()) s = c.AllReduceScalar(&t, ReduceOp::kMax);
      if (!s.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", c.rank(), s.ToString().c_str());
        return 1;
      }
      if (it == 0 && op == "all_reduce" && mem.Read(buf) != static_cast<float>(n)) {
        std::fprintf(stderr, "rank %d: wrong all-reduce result %g (want %d)\n", c.rank(),
                     mem.Read(buf), n);
        return 1;
      }
      if (it >= warmup) times.push_back(t);
    }
    mem.Free(buf);
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    const double best = times.front();
    const double gb = static_cast<double>(count * sizeof(float)) / 1e9;
    const double algbw = gb / t;
    if (lead) {
      std::printf("%10s %10zu %6d %12.1f %12.1f %12.3f %12.3f %12.3f\n", HumanBytes(bytes).c_str(),
                  count, iters, t * 1e6, best * 1e6, algbw, algbw * BusFactor(op, n),
                  gb / best * BusFactor(op, n));
      std::fflush(stdout);
    }
  }
  return 0;
}

std::vector<std::string> Ops(const Flags& f) {
  if (f.op == "all") return {"all_reduce", "reduce_scatter", "all_gather"};
  return {f.op};
}

// Forks `ranks` processes running body(rank) and waits for them; true if all
// exited 0. Children never return.
bool ForkRanks(int ranks, const std::function<int(int)>& body) {
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      int rc = body(r);
      std::fflush(stdout);
      _exit(rc);
    }
    pids.push_back(pid);
  }
  bool ok = true;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  return ok;
}

int GlooRank(int rank, const Flags& f, const std::string& dir) {
  auto store = FileStore::Open(dir);
  if (!store.ok()) return 2;
  GlooOptions o;
  o.timeout = std::chrono::seconds(120);
  auto c = GlooCollective::Create(std::shared_ptr<Store>(std::move(*store)), rank, f.ranks, o);
  if (!c.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, c.status().ToString().c_str());
    return 2;
  }
  HostBuffers mem;
  for (const auto& op : Ops(f)) {
    if (int rc = Sweep(**c, mem, f, op, "gloo over loopback TCP (one process per rank)")) {
      return rc;
    }
  }
  return (*c)->Barrier().ok() ? 0 : 1;
}

#ifdef LLMT_HAVE_NCCL
int NcclRank(int rank, const Flags& f, const std::string& dir) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  if (gpus == 0) {
    if (rank == 0) std::printf("\n# nccl: skipped, no CUDA device visible\n");
    return 0;
  }
  const int world = std::min(f.ranks, gpus);
  if (rank >= world) return 0;
  if (rank == 0 && world < f.ranks) {
    std::printf("\n# nccl: %d GPU%s visible, running %d rank%s\n", gpus, gpus == 1 ? "" : "s",
                world, world == 1 ? " (busbw is 0 by definition with one rank)" : "s");
  }
  auto store = FileStore::Open(dir);
  if (!store.ok()) return 2;
  NcclOptions o;
  o.device = rank;
  o.timeout = std::chrono::seconds(120);
  auto c = NcclCollective::Create(std::shared_ptr<Store>(std::move(*store)), rank, world, o);
  if (!c.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, c.status().ToString().c_str());
    return 2;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, rank);
  DeviceBuffers mem;
  for (const auto& op : Ops(f)) {
    if (int rc = Sweep(**c, mem, f, op, absl::StrCat("nccl on ", prop.name))) return rc;
  }
  return (*c)->Barrier().ok() ? 0 : 1;
}
#endif

int Main(int argc, char** argv) {
  Flags f;
  if (!ParseFlags(argc, argv, &f)) return 2;
  char tmpl[] = "/tmp/llmt-bench-comm-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string base = tmpl;
  std::printf("llmt comm benchmark: %ld CPU cores online; busbw as nccl-tests defines it\n",
              sysconf(_SC_NPROCESSORS_ONLN));
  bool ok = true;
  if (f.backend != "nccl") {
    ok = ForkRanks(f.ranks, [&](int r) { return GlooRank(r, f, base + "/gloo"); }) && ok;
  }
  if (f.backend != "gloo") {
#ifdef LLMT_HAVE_NCCL
    ok = ForkRanks(f.ranks, [&](int r) { return NcclRank(r, f, base + "/nccl"); }) && ok;
#else
    std::printf("\n# nccl: skipped, this build has no NCCL (configure with CUDA and NCCL)\n");
#endif
  }
  std::string cmd = "rm -rf '" + base + "'";
  if (system(cmd.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", base.c_str());
  if (!ok) std::fprintf(stderr, "bench_comm: a rank failed\n");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace llmt::comm

int main(int argc, char** argv) { return llmt::comm::Main(argc, argv); }
