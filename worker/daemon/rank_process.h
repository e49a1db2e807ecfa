// One trainer process (one rank of one attempt) supervised by llmt-worker.
//
// The child gets the event pipe's write end as fd 3 (LLMT_EVENT_FD=3) and its
// stdout+stderr on a second pipe; a reader thread parses events and copies
// output lines to the rank's log file, handing both to callbacks. The child
// runs in its own process group (a Ctrl-C on the daemon's terminal reaches the
// daemon only, which then stops its ranks in order) and dies with the daemon
// (PR_SET_PDEATHSIG = SIGKILL): a rank whose daemon is gone is fenced by the
// coordinator and must not keep writing checkpoints.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/daemon/trainer_events.h"

namespace llmt::daemon {

struct LaunchSpec {
  std::vector<std::string> argv;  // argv[0]: path of the executable
  // Added to (or overriding) the daemon's environment, "NAME=value"; a bare
  // "NAME" removes the variable.
  std::vector<std::string> env;
  std::string cwd;        // "" = the daemon's
  std::string log_path;   // stdout+stderr copy (appended)
  std::vector<int> cpus;  // CPU affinity; empty = inherit
};

struct ExitInfo {
  bool exited = false;  // normal exit (code valid) vs killed by a signal
  int code = 0;
  int signal = 0;
  std::string Describe() const;  // "exit code 3" / "killed by signal 9 (Killed)"
};

class RankProcess {
 public:
  using EventFn = std::function<void(const TrainerEvent&)>;
  using LineFn = std::function<void(const std::string&)>;

  // Forks and execs. Must be called from a thread that lives as long as the
  // daemon (PR_SET_PDEATHSIG fires when the forking *thread* exits).
  // Callbacks run on the reader thread.
  static absl::StatusOr<std::unique_ptr<RankProcess>> Start(const LaunchSpec& spec,
                                                            EventFn on_event, LineFn on_line);
  ~RankProcess();  // SIGKILLs and reaps if still running, joins the reader
  RankProcess(const RankProcess&) = delete;
  RankProcess& operator=(const RankProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Non-blocking reap. True once the process has exited (and then `info`).
  bool Poll(ExitInfo* info);
  bool exited() const { return reaped_; }
  const ExitInfo& exit_info() const { return exit_; }
  // Waits for the reader to drain the pipes after the exit (bounded: a
  // grandchild holding the pipes open must not wedge the daemon).
  void DrainOutput(int timeout_ms);
  void Signal(int sig);
  // The last `n` output lines (for failure messages).
  std::vector<std::string> TailLines() const;

 private:
  RankProcess() = default;
  void ReadLoop(int event_fd, int out_fd, int log_fd);

  pid_t pid_ = -1;
  bool reaped_ = false;
  ExitInfo exit_;
  EventFn on_event_;
  LineFn on_line_;
  std::thread reader_;
  std::atomic<bool> reader_done_{false};
  int wake_fd_[2] = {-1, -1};  // tells the reader to stop waiting
  mutable std::mutex tail_mu_;
  std::vector<std::string> tail_;  // ring of the last lines
};

}  // namespace llmt::daemon
