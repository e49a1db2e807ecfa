// bench/cpu_train: CPU training throughput of the engine (fwd + bwd + AdamW,
// fp32) for GPT-2 124M and the demo model. Each model runs in a child process
// (this binary re-executed) so its peak RSS is its own. Prints a table.
//
//   bench_cpu_train [--threads 2] [--steps 7] [--warmup 2] [--model all|gpt2-124m|demo]
//                   [--clip] [--profile] [--spin]
//
// Children run with OMP_WAIT_POLICY=passive unless the caller set it (or
// --spin): on a shared 2-core VM, libgomp's default spin-waiting made
// single parallel regions take a whole scheduler slice whenever another
// process held the other core (10-100x slower small ops); idle threads that
// sleep cost ~microseconds per region on a quiet machine.
//
// Measured on the 2-core AVX2/FMA EPYC VM (quiet, load < 1, 2 threads):
//   gpt2-124m 4x64:  ~178 tokens/s (median step ~1.43 s, best 1.32 s), ~134 GFLOP/s,
//                    peak RSS 2.2 GiB; GEMMs ~88% of the step, AdamW ~9%.
//   demo 8x128:      ~1570-1890 tokens/s (median step 0.54-0.65 s), peak RSS 0.4 GiB.
// With other jobs on the cores the numbers fall roughly with the CPU share.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/runtime.h"
#include "kernels/optimizer.h"
#include "kernels/reduce.h"
#include "worker/model/model.h"

namespace {

using llmt::model::Family;
using llmt::model::Model;
using llmt::model::ModelConfig;
namespace k = llmt::kernels::cpu;

struct Spec {
  const char* name;
  ModelConfig cfg;
  int B, T;
};

std::vector<Spec> Specs() {
  ModelConfig g;
  g.family = Family::kGpt2;
  g.vocab_size = 50304;
  g.d_model = 768;
  g.n_layer = 12;
  g.n_head = 12;
  g.n_kv_head = 12;
  g.d_ff = 3072;
  g.max_seq_len = 1024;
  ModelConfig d;
  d.family = Family::kGpt2;
  d.vocab_size = 4096;
  d.d_model = 384;
  d.n_layer = 6;
  d.n_head = 6;
  d.n_kv_head = 6;
  d.d_ff = 1536;
  d.max_seq_len = 128;
  return {{"gpt2-124m", g, 4, 64}, {"demo", d, 8, 128}};
}

struct Options {
  int threads = 2;
  int steps = 7;
  int warmup = 2;
  std::string model = "all";
  bool clip = false;
  bool profile = false;
  bool spin = false;
  bool child = false;
};

void Usage() {
  std::printf(
      "usage: bench_cpu_train [--threads N] [--steps N] [--warmup N]\n"
      "                       [--model all|gpt2-124m|demo] [--clip] [--profile] [--spin]\n"
      "Times fp32 training steps (forward + backward + AdamW) of the CPU engine and prints\n"
      "tokens/s, the median step time and the peak RSS per model.\n"
      "  --threads  kernel threads (default 2)      --steps   timed steps (default 7, >= 5)\n"
      "  --warmup   untimed first steps (default 2) --clip    add global-norm clipping\n"
      "  --profile  print a per-section time table\n"
      "  --spin     keep libgomp's default spin-waiting (default: OMP_WAIT_POLICY=passive\n"
      "             unless already set in the environment)\n");
}

// Child: run one model, print "RESULT ..." on stdout.
int RunOne(const Spec& s, const Options& o) {
  k::SetNumThreads(o.threads);
  auto m_or = Model::Create(s.cfg, s.B, s.T);
  if (!m_or.ok()) {
    std::fprintf(stderr, "%s: %s\n", s.name, std::string(m_or.status().message()).c_str());
    return 1;
  }
  Model& m = **m_or;
  m.InitWeights(1);
  const int64_t n = m.num_params();
  k::HostBuffer mom(n), var(n);
  if (mom.data() == nullptr || var.data() == nullptr) {
    std::fprintf(stderr, "%s: cannot allocate optimizer state\n", s.name);
    return 1;
  }
  std::mt19937 rng(7);
  std::vector<int32_t> in(s.B * s.T), tg(s.B * s.T);
  std::vector<double> times;
  float loss = 0;
  for (int step = 1; step <= o.warmup + o.steps; ++step) {
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = static_cast<int32_t>(rng() % s.cfg.vocab_size);
      tg[i] = static_cast<int32_t>(rng() % s.cfg.vocab_size);
    }
    if (step == o.warmup + 1 && o.profile) {
      k::ProfileReset();
      k::SetProfiling(true);
    }
    const auto t0 = std::chrono::steady_clock::now();
    m.ZeroGrad();
    loss = m.Forward(in.data(), tg.data(), s.B, s.T);
    m.Backward(1.f);
    float scale = 1.f;
    if (o.clip) {
      k::ProfileScope p("clip_norm");
      const double norm = k::L2Norm(m.grads(), n);
      if (norm > 1.0) scale = static_cast<float>(1.0 / norm);
    }
    {
      k::ProfileScope p("adamw");
      for (const auto& pi : m.params_info()) {
        k::AdamW(m.params() + pi.offset, m.grads() + pi.offset, mom.data() + pi.offset,
                 var.data() + pi.offset, pi.numel, 6e-4f, 0.9f, 0.95f, 1e-8f,
                 pi.decay ? 0.1f : 0.f, step, scale);
      }
    }
    const double dt =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step > o.warmup) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double best = times.front();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double tok_s = s.B * s.T / median;
  std::printf("RESULT %s %d %d %lld %.3f %.3f %.2f %.1f %.1f %.4f %.2f\n", s.name, s.B, s.T,
              static_cast<long long>(n), median * 1e3, best * 1e3, tok_s, ru.ru_maxrss / 1024.0,
              m.activation_bytes() / 1048576.0, loss,
              tok_s * m.flops_per_token(s.T) / 1e9);
  if (o.profile) {
    std::printf("PROFILE %s (%d steps)\n%s", s.name, o.steps, k::ProfileReport().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      Usage();
      return 0;
    } else if (a == "--threads") {
      o.threads = std::atoi(next());
    } else if (a == "--steps") {
      o.steps = std::atoi(next());
    } else if (a == "--warmup") {
      o.warmup = std::atoi(next());
    } else if (a == "--model") {
      o.model = next();
    } else if (a == "--clip") {
      o.clip = true;
    } else if (a == "--profile") {
      o.profile = true;
    } else if (a == "--spin") {
      o.spin = true;
    } else if (a == "--child") {
      o.child = true;
    } else {
      std::fprintf(stderr, "unknown flag %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (o.steps < 5 || o.warmup < 0 || o.threads < 1) {
    std::fprintf(stderr, "need --steps >= 5, --warmup >= 0, --threads >= 1\n");
    return 2;
  }
  std::vector<Spec> specs;
  for (const Spec& s : Specs()) {
    if (o.model == "all" || o.model == s.name) specs.push_back(s);
  }
  if (specs.empty()) {
    std::fprintf(stderr, "unknown --model %s (all, gpt2-124m, demo)\n", o.model.c_str());
    return 2;
  }
  if (o.child) return RunOne(specs.front(), o);

  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const std::string env =
      (policy == nullptr && !o.spin) ? "OMP_WAIT_POLICY=passive " : "";
  std::printf("CPU training benchmark: fp32, fwd + bwd + AdamW%s, %d threads, median of %d "
              "steps after %d warm-up, OMP_WAIT_POLICY=%s\n\n",
              o.clip ? " + clip" : "", o.threads, o.steps, o.warmup,
              policy != nullptr ? policy : (o.spin ? "(libgomp default)" : "passive"));
  std::printf("%-10s %6s %11s %9s %9s %9s %8s %9s %9s %8s\n", "model", "BxT", "params",
              "tokens/s", "step_ms", "best_ms", "GFLOP/s", "peak_MiB", "arena_MiB", "loss");
  int rc = 0;
  for (const Spec& s : specs) {
    std::string cmd = "/proc/self/exe --child --model " + std::string(s.name) + " --threads " +
                      std::to_string(o.threads) + " --steps " + std::to_string(o.steps) +
                      " --warmup " + std::to_string(o.warmup) + (o.clip ? " --clip" : "") +
                      (o.profile ? " --profile" : "");
    // popen runs /bin/sh, whose /proc/self/exe is the shell: resolve ours first.
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len <= 0) {
      std::fprintf(stderr, "cannot resolve /proc/self/exe\n");
      return 1;
    }
    self[len] = '\0';
    cmd.replace(0, std::strlen("/proc/self/exe"), env + "'" + self + "'");
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return 1;
    std::string out;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, got);
    const int st = pclose(p);
    char name[64];
    int B, T;
    long long params;
    double ms, best, tok, rss, arena, loss, gflops;
    const size_t at = out.find("RESULT ");
    if (st != 0 || at == std::string::npos ||
        std::sscanf(out.c_str() + at, "RESULT %63s %d %d %lld %lf %lf %lf %lf %lf %lf %lf", name,
                    &B, &T, &params, &ms, &best, &tok, &rss, &arena, &loss, &gflops) != 11) {
      std::fprintf(stderr, "%s: benchmark child failed:\n%s\n", s.name, out.c_str());
      rc = 1;
      continue;
    }
    char bt[32];
    std::snprintf(bt, sizeof(bt), "%dx%d", B, T);
    std::printf("%-10s %6s %11lld %9.1f %9.1f %9.1f %8.1f %9.0f %9.0f %8.4f\n", name, bt, params,
                tok, ms, best, gflops, rss, arena, loss);
    const size_t prof = out.find("PROFILE ");
    if (prof != std::string::npos) std::printf("\n%s\n", out.c_str() + prof);
  }
  std::printf(
      "\ntokens/s and GFLOP/s use the median step (step_ms); best_ms is the fastest step.\n"
      "GFLOP/s counts 6*N + 6*L*d_model*T flops per token (Model::flops_per_token).\n");
  return rc;
}
