// Minimal leveled logging to stderr (Debian 12's Abseil predates absl/log).
#pragma once

#include <sstream>
#include <string>

namespace llmt {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Thread-safe: one line per call, prefixed with time and level.
void LogLine(LogLevel level, const std::string& msg);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { LogLine(level_, stream_.str()); }
  std::ostringstream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace llmt

#define LLMT_LOG(level)                                                        \
  if (::llmt::LogLevel::k##level < ::llmt::GetLogLevel()) {                    \
  } else                                                                       \
    ::llmt::LogMessage(::llmt::LogLevel::k##level).stream()
