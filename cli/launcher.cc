#include "cli/launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace llmt::cli {
namespace {

// Children's pids for the signal handler (async-signal-safe access only).
constexpr int kMaxRanks = 256;
volatile pid_t g_children[kMaxRanks];
volatile int g_nchildren = 0;

void Forward(int sig) {
  for (int i = 0; i < g_nchildren; ++i) {
    if (g_children[i] > 0) kill(g_children[i], sig);
  }
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "unknown status";
}

}  // namespace

int LaunchLocalRanks(int nproc, const std::vector<std::string>& child_argv) {
  if (nproc < 1 || nproc > kMaxRanks) {
    std::fprintf(stderr, "llmt: error: --nproc must be in [1, %d]\n", kMaxRanks);
    return 2;
  }
  char tmpl[] = "/tmp/llmt-rdzv-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::fprintf(stderr, "llmt: error: cannot create a rendezvous directory in /tmp: %s\n",
                 std::strerror(errno));
    return 1;
  }
  const std::string store_dir = tmpl;
  int timeout_s = 300;
  if (const char* t = std::getenv("LLMT_COMM_TIMEOUT_S")) absl::SimpleAtoi(t, &timeout_s);

  struct sigaction sa {};
  sa.sa_handler = Forward;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::vector<pid_t> pids(nproc, -1);
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("LLMT_STORE_DIR", store_dir.c_str(), 1);
      setenv("LLMT_RUN_ID", std::to_string(getppid()).c_str(), 1);
      std::vector<char*> args;
      for (const auto& a : child_argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv("/proc/self/exe", args.data());
      std::perror("llmt: exec");
      _exit(127);
    }
    if (pid < 0) {
      std::perror("llmt: fork");
      Forward(SIGKILL);
      return 1;
    }
    pids[r] = pid;
    g_children[r] = pid;
    g_nchildren = r + 1;
  }

  int exit_code = 0;
  int running = nproc;
  int first_failed = -1;
  std::chrono::steady_clock::time_point kill_deadline{};
  while (running > 0) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int rank = -1;
      for (int r = 0; r < nproc; ++r) {
        if (pids[r] == pid) rank = r;
      }
      if (rank < 0) continue;
      --running;
      g_children[rank] = -1;
      pids[rank] = -1;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && first_failed < 0) {
        first_failed = rank;
        exit_code = 1;
        std::fprintf(stderr, "llmt: rank %d of %d failed (%s)%s\n", rank, nproc,
                     Describe(status).c_str(),
                     running > 0 ? "; the other ranks stop at their next collective" : "");
        // Peers notice a dead rank at once (closed connection); a hung one
        // costs at most the collective timeout. Past that, stop waiting.
        kill_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s + 10);
      } else if (!ok) {
        // Same wording as the first failure: which rank noticed first is a race.
        std::fprintf(stderr, "llmt: rank %d of %d failed (%s)\n", rank, nproc, Describe(status).c_str());
      }
      continue;
    }
    if (first_failed >= 0 && std::chrono::steady_clock::now() > kill_deadline) {
      std::fprintf(stderr, "llmt: ranks still running %d s after rank %d failed; killing them\n",
                   timeout_s + 10, first_failed);
      Forward(SIGKILL);
      kill_deadline = std::chrono::steady_clock::now() + std::chrono::hours(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::error_code ec;
  std::filesystem::remove_all(store_dir, ec);
  return exit_code;
}

}  // namespace llmt::cli
