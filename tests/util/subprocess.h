// Test helpers for running the real binaries: run-to-completion with captured
// output, and background processes that are always reaped.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

namespace llmt::testing {

struct RunResult {
  int exit_code = -1;  // -signal if killed by a signal
  std::string output;  // stdout + stderr
};

// Runs argv to completion (timeout in seconds, then SIGKILL).
RunResult RunCommand(const std::vector<std::string>& argv, int timeout_s = 300);

// A child process with stdout+stderr redirected to `log_path`.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_path);
  ~Process();  // SIGKILLs and reaps if still running
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits up to timeout_s; returns exit code (or -signal), or -1000 on timeout.
  int Wait(int timeout_s);
  bool Running();

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

std::string ReadFileOrEmpty(const std::string& path);
// The non-empty lines of `text` (e.g. a metrics.jsonl file).
std::vector<std::string> Lines(const std::string& text);
// Path of a binary in the build tree, e.g. Binary("cli/llmt").
std::string Binary(const std::string& rel);
// A fresh empty directory under the test temp dir.
std::string FreshDir(const std::string& name);
bool WaitFor(const std::function<bool()>& pred, int timeout_ms);

}  // namespace llmt::testing
