// Time source for the coordinator. Leases, backoff and timestamps read it, so
// tests drive expiry with a FakeClock instead of sleeping.
#pragma once

#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace llmt::coord {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : now_(start) {}
  absl::Time Now() override {
    std::lock_guard<std::mutex> l(mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard<std::mutex> l(mu_);
    now_ += d;
  }

 private:
  std::mutex mu_;
  absl::Time now_;
};

inline int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }

}  // namespace llmt::coord
