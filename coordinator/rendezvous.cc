#include "coordinator/rendezvous.h"

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace llmt::coord {

absl::Status Rendezvous::Set(uint64_t attempt_id, const std::string& key,
                             const std::string& value) {
  if (key.empty()) return absl::InvalidArgumentError("key: must not be empty");
  if (value.size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("value: ", value.size(), " bytes exceeds the limit of ", kMaxValueBytes));
  }
  std::lock_guard<std::mutex> l(mu_);
  if (dropped_gen_.count(attempt_id)) {
    return absl::FailedPreconditionError(absl::StrCat("attempt ", attempt_id, " has ended"));
  }
  auto& m = kv_[attempt_id];
  if (m.size() >= kMaxKeysPerAttempt && !m.count(key)) {
    return absl::ResourceExhaustedError(absl::StrCat("attempt ", attempt_id, " already has ",
                                                     m.size(), " rendezvous keys"));
  }
  m[key] = value;
  cv_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::string> Rendezvous::Get(uint64_t attempt_id, const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = kv_.find(attempt_id);
  if (it != kv_.end()) {
    auto kit = it->second.find(key);
    if (kit != it->second.end()) return kit->second;
  }
  return absl::NotFoundError(absl::StrCat("key '", key, "' not set for attempt ", attempt_id));
}

absl::StatusOr<std::vector<std::string>> Rendezvous::Wait(uint64_t attempt_id,
                                                          const std::vector<std::string>& keys,
                                                          absl::Duration timeout) {
  auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  std::unique_lock<std::mutex> l(mu_);
  uint64_t start_gen = generation_;
  while (true) {
    if (shutdown_) return absl::AbortedError("rendezvous: coordinator is shutting down");
    auto d = dropped_gen_.find(attempt_id);
    if (d != dropped_gen_.end() && d->second > start_gen) {
      return absl::AbortedError(absl::StrCat("attempt ", attempt_id, " ended while waiting"));
    }
    std::vector<std::string> missing, values;
    auto it = kv_.find(attempt_id);
    for (const auto& k : keys) {
      if (it != kv_.end()) {
        auto kit = it->second.find(k);
        if (kit != it->second.end()) {
          values.push_back(kit->second);
          continue;
        }
      }
      missing.push_back(k);
    }
    if (missing.empty()) return values;
    if (cv_.wait_until(l, deadline) == std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("attempt ", attempt_id, ": timed out after ",
                       absl::FormatDuration(timeout), " waiting for keys: ",
                       absl::StrJoin(missing, ", ")));
    }
  }
}

absl::StatusOr<int64_t> Rendezvous::Add(uint64_t attempt_id, const std::string& key,
                                        int64_t delta) {
  if (key.empty()) return absl::InvalidArgumentError("key: must not be empty");
  std::lock_guard<std::mutex> l(mu_);
  if (dropped_gen_.count(attempt_id)) {
    return absl::FailedPreconditionError(absl::StrCat("attempt ", attempt_id, " has ended"));
  }
  auto& m = kv_[attempt_id];
  int64_t v = 0;
  auto it = m.find(key);
  if (it != m.end() && !absl::SimpleAtoi(it->second, &v)) {
    return absl::FailedPreconditionError(
        absl::StrCat("key '", key, "' holds a non-integer value; KvAdd needs decimal text"));
  }
  if (it == m.end() && m.size() >= kMaxKeysPerAttempt) {
    return absl::ResourceExhaustedError(absl::StrCat("attempt ", attempt_id, " already has ",
                                                     m.size(), " rendezvous keys"));
  }
  v += delta;
  m[key] = absl::StrCat(v);
  cv_.notify_all();
  return v;
}

void Rendezvous::Drop(uint64_t attempt_id) {
  std::lock_guard<std::mutex> l(mu_);
  kv_.erase(attempt_id);
  dropped_gen_[attempt_id] = ++generation_;
  // Bound the tombstones: old attempts never come back.
  while (dropped_gen_.size() > 10000) dropped_gen_.erase(dropped_gen_.begin());
  cv_.notify_all();
}

void Rendezvous::Shutdown() {
  std::lock_guard<std::mutex> l(mu_);
  shutdown_ = true;
  cv_.notify_all();
}

size_t Rendezvous::AttemptCount() {
  std::lock_guard<std::mutex> l(mu_);
  return kv_.size();
}

}  // namespace llmt::coord
