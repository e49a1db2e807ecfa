#include "worker/train/event_pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/train/metrics_log.h"

namespace llmt::train {

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

int EventPipeObserver::FdFromEnv() {
  const char* v = std::getenv("LLMT_EVENT_FD");
  int fd = -1;
  if (v == nullptr || !absl::SimpleAtoi(v, &fd) || fd < 0) return -1;
  if (fcntl(fd, F_GETFD) < 0) return -1;
  return fd;
}

void EventPipeObserver::WriteLine(const std::string& line) {
  // One write() per line: lines up to PIPE_BUF bytes are atomic on a pipe.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // the daemon went away; training goes on, checkpoints still land
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void EventPipeObserver::OnStep(const StepMetrics& m) {
  std::string line = MetricsLog::ToJsonLine(m);  // {"step":...}\n
  line.insert(1, absl::StrCat("\"type\":\"step\",\"max_steps\":", m.max_steps, ","));
  WriteLine(line);
}

void EventPipeObserver::OnCheckpoint(int64_t step, const std::string& dir, double val_loss) {
  WriteLine(absl::StrFormat("{\"type\":\"checkpoint\",\"step\":%d,\"dir\":\"%s\",\"val_loss\":%.6g}\n",
                            step, JsonEscape(dir), val_loss));
}

void EventPipeObserver::OnExit(bool ok, int64_t final_step, const std::string& message) {
  WriteLine(absl::StrFormat("{\"type\":\"exit\",\"ok\":%s,\"final_step\":%d,\"message\":\"%s\"}\n",
                            ok ? "true" : "false", final_step, JsonEscape(message)));
}

}  // namespace llmt::train
