// Rendezvous KV scoped to an attempt: backs gloo::rendezvous::Store and
// carries NCCL's unique id from rank 0 to the other ranks. Kept in memory:
// rendezvous happens once at attempt start, and an attempt whose rendezvous
// is cut by a coordinator restart fails and restarts like any other.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace llmt::coord {

class Rendezvous {
 public:
  // Limits that keep a misbehaving client from exhausting memory.
  static constexpr size_t kMaxKeysPerAttempt = 4096;
  static constexpr size_t kMaxValueBytes = 1 << 20;

  absl::Status Set(uint64_t attempt_id, const std::string& key, const std::string& value);
  absl::StatusOr<std::string> Get(uint64_t attempt_id, const std::string& key);
  // Waits until every key exists or `timeout` passes (DEADLINE_EXCEEDED
  // naming the missing keys). Returns ABORTED when the attempt is dropped or
  // the KV shuts down while waiting.
  absl::StatusOr<std::vector<std::string>> Wait(uint64_t attempt_id,
                                                const std::vector<std::string>& keys,
                                                absl::Duration timeout);
  absl::StatusOr<int64_t> Add(uint64_t attempt_id, const std::string& key, int64_t delta);
  // Forgets an attempt's keys (the attempt ended) and wakes its waiters.
  void Drop(uint64_t attempt_id);
  void Shutdown();
  size_t AttemptCount();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::map<std::string, std::string>> kv_;
  std::map<uint64_t, uint64_t> dropped_gen_;  // attempt -> generation when dropped
  uint64_t generation_ = 0;
  bool shutdown_ = false;
};

}  // namespace llmt::coord
