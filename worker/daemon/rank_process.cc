#include "worker/daemon/rank_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/log.h"

extern char** environ;

namespace llmt::daemon {
namespace {

constexpr size_t kTailLines = 40;
constexpr size_t kMaxLineBytes = 64 * 1024;

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

void WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Only async-signal-safe calls between fork and exec: the daemon is
// multi-threaded and another thread may hold malloc's or the logger's lock.
[[noreturn]] void ChildExec(const LaunchSpec& spec, char** argv, char** envp, int ev_w, int out_w,
                            pid_t parent, const cpu_set_t* cpus) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(126);  // the daemon died before prctl took effect
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) sigaction(s, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // Move both pipe ends above the target numbers first, so dup2 below never
  // overwrites one with the other.
  int ev = fcntl(ev_w, F_DUPFD_CLOEXEC, 10);
  int out = fcntl(out_w, F_DUPFD_CLOEXEC, 10);
  int devnull = open("/dev/null", O_RDONLY);
  if (ev < 0 || out < 0 || devnull < 0) _exit(125);
  dup2(devnull, 0);
  dup2(out, 1);
  dup2(out, 2);
  dup2(ev, 3);  // dup2 clears FD_CLOEXEC on the new descriptor
  syscall(SYS_close_range, 4U, ~0U, 0U);
  if (!spec.cwd.empty() && chdir(spec.cwd.c_str()) != 0) {
    const char msg[] = "llmt-worker: cannot chdir to the working directory\n";
    WriteAll(2, msg, sizeof(msg) - 1);
    _exit(127);
  }
  if (cpus != nullptr) sched_setaffinity(0, sizeof(cpu_set_t), cpus);
  execve(argv[0], argv, envp);
  const char msg[] = "llmt-worker: exec of the trainer failed: ";
  WriteAll(2, msg, sizeof(msg) - 1);
  const char* err = strerror(errno);
  WriteAll(2, err, strlen(err));
  WriteAll(2, "\n", 1);
  _exit(127);
}

}  // namespace

std::string ExitInfo::Describe() const {
  if (exited) return absl::StrCat("exit code ", code);
  return absl::StrCat("killed by signal ", signal, " (", strsignal(signal), ")");
}

absl::StatusOr<std::unique_ptr<RankProcess>> RankProcess::Start(const LaunchSpec& spec,
                                                                EventFn on_event, LineFn on_line) {
  if (spec.argv.empty()) return absl::InvalidArgumentError("empty argv");
  if (access(spec.argv[0].c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("trainer executable '", spec.argv[0], "': ", strerror(errno)));
  }
  // Everything the child needs is built before fork.
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& kv : spec.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) {
      env.erase(kv);
    } else {
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
  }
  std::vector<std::string> env_strs;
  for (const auto& [k, v] : env) env_strs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : env_strs) envp.push_back(e.data());
  envp.push_back(nullptr);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  for (int c : spec.cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &cpus);
  }

  int log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Errno(absl::StrCat("opening log ", spec.log_path));
  int ev[2], out[2];
  if (pipe2(ev, O_CLOEXEC) != 0) {
    close(log_fd);
    return Errno("pipe");
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(log_fd);
    close(ev[0]);
    close(ev[1]);
    return Errno("pipe");
  }
  std::unique_ptr<RankProcess> p(new RankProcess());
  if (pipe2(p->wake_fd_, O_CLOEXEC) != 0) {
    for (int fd : {log_fd, ev[0], ev[1], out[0], out[1]}) close(fd);
    return Errno("pipe");
  }
  p->on_event_ = std::move(on_event);
  p->on_line_ = std::move(on_line);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {log_fd, ev[0], ev[1], out[0], out[1]}) close(fd);
    return Errno("fork");
  }
  if (pid == 0)
    ChildExec(spec, argv.data(), envp.data(), ev[1], out[1], parent,
              spec.cpus.empty() ? nullptr : &cpus);
  setpgid(pid, pid);  // as the child does: signals to the group work from now on
  close(ev[1]);
  close(out[1]);
  p->pid_ = pid;
  p->reader_ =
      std::thread([raw = p.get(), e = ev[0], o = out[0], log_fd] { raw->ReadLoop(e, o, log_fd); });
  return p;
}

void RankProcess::ReadLoop(int event_fd, int out_fd, int log_fd) {
  std::string ev_buf, out_buf;
  auto emit_event = [&](const std::string& line) {
    if (line.empty()) return;
    auto e = ParseTrainerEvent(line);
    if (!e.ok()) {
      LLMT_LOG(Warning) << "worker: pid " << pid_ << ": " << e.status().message();
      return;
    }
    if (on_event_) on_event_(*e);
  };
  auto emit_line = [&](std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // A progress bar redraws with '\r': keep the last rendering.
    if (auto cr = line.rfind('\r'); cr != std::string::npos) line = line.substr(cr + 1);
    WriteAll(log_fd, line.data(), line.size());
    WriteAll(log_fd, "\n", 1);
    {
      std::lock_guard<std::mutex> l(tail_mu_);
      tail_.push_back(line);
      if (tail_.size() > kTailLines) tail_.erase(tail_.begin());
    }
    if (on_line_) on_line_(line);
  };
  auto drain = [](std::string* buf, const std::function<void(std::string)>& fn, bool eof) {
    size_t start = 0, nl;
    while ((nl = buf->find('\n', start)) != std::string::npos) {
      fn(buf->substr(start, nl - start));
      start = nl + 1;
    }
    buf->erase(0, start);
    if (buf->size() > kMaxLineBytes || (eof && !buf->empty())) {
      fn(*buf);
      buf->clear();
    }
  };
  struct pollfd fds[3] = {{event_fd, POLLIN, 0}, {out_fd, POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
  bool ev_open = true, out_open = true;
  char chunk[16384];
  while (ev_open || out_open) {
    fds[0].fd = ev_open ? event_fd : -1;
    fds[1].fd = out_open ? out_fd : -1;
    int n = poll(fds, 3, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[2].revents) break;  // told to stop
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t r = read(fds[i].fd, chunk, sizeof(chunk));
      if (r < 0 && errno == EINTR) continue;
      bool eof = r <= 0;
      if (i == 0) {
        if (r > 0) ev_buf.append(chunk, static_cast<size_t>(r));
        drain(&ev_buf, emit_event, eof);
        if (eof) ev_open = false;
      } else {
        if (r > 0) out_buf.append(chunk, static_cast<size_t>(r));
        drain(&out_buf, emit_line, eof);
        if (eof) out_open = false;
      }
    }
  }
  close(event_fd);
  close(out_fd);
  close(log_fd);
  reader_done_ = true;
}

bool RankProcess::Poll(ExitInfo* info) {
  if (!reaped_) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r != pid_) return false;
    reaped_ = true;
    exit_.exited = WIFEXITED(status);
    exit_.code = exit_.exited ? WEXITSTATUS(status) : 0;
    exit_.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    // The rank's process group may hold stragglers (nothing the trainer
    // starts today); they must not outlive the rank.
    kill(-pid_, SIGKILL);
  }
  if (info) *info = exit_;
  return true;
}

void RankProcess::DrainOutput(int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!reader_done_ && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!reader_done_) WriteAll(wake_fd_[1], "x", 1);
  if (reader_.joinable()) reader_.join();
}

void RankProcess::Signal(int sig) {
  if (!reaped_ && pid_ > 0) kill(-pid_, sig);
}

std::vector<std::string> RankProcess::TailLines() const {
  std::lock_guard<std::mutex> l(tail_mu_);
  return tail_;
}

RankProcess::~RankProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(-pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    reaped_ = true;
  }
  DrainOutput(1000);
  for (int fd : wake_fd_) {
    if (fd >= 0) close(fd);
  }
}

}  // namespace llmt::daemon
