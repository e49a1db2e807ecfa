// Durable coordinator state in RocksDB: one column family per kind of record
// (jobs, attempts, workers, checkpoints, events, idempotency keys, meta).
// Values are protobuf messages behind a one-byte format version, so a future
// layout change can be detected instead of misparsed.
//
// Writes are WriteBatches committed with sync=true through a group-commit
// queue: callers Enqueue() a batch (under whatever lock orders their state
// transitions) and then WaitDurable() outside that lock. The first waiter
// becomes the leader, merges every queued batch into one WriteBatch and
// issues a single synced write; the others sleep until it lands. This keeps
// the order in which batches were enqueued (RocksDB's own group commit
// orders writers by arrival at its queue, which would let two transitions of
// one job reach disk in the wrong order once the caller's lock is released)
// while one fsync covers many concurrent RPCs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"
#include "rocksdb/db.h"

namespace llmt::store {

enum class Cf : int {
  kJobs = 0,
  kAttempts,
  kWorkers,
  kCheckpoints,
  kEvents,
  kIdempotency,
  kMeta,
  kCount,
};
const char* CfName(Cf cf);

// Value format version written before every serialized message.
inline constexpr char kValueFormatV1 = 1;

// Keys. Numeric parts are big-endian so byte order = numeric order, which
// gives ListJobs its stable order and makes per-job ranges contiguous.
std::string U64Key(uint64_t v);
uint64_t DecodeU64(absl::string_view key, size_t offset = 0);
std::string JobKey(uint64_t job_id);
std::string AttemptKey(uint64_t job_id, uint64_t attempt_id);
std::string CheckpointKey(uint64_t job_id, int64_t step);
std::string EventKey(uint64_t job_id, int64_t seq);

std::string EncodeValue(const google::protobuf::MessageLite& msg);
// The error names the column family and key.
absl::Status DecodeValue(absl::string_view value, google::protobuf::MessageLite* msg, Cf cf,
                         absl::string_view key);

struct StoreOptions {
  bool sync = true;  // fsync every commit group (false only for tests of speed limits)
  // Small memtables bound WAL replay after kill -9 (restart time).
  size_t write_buffer_size = 8 << 20;
  uint64_t max_total_wal_size = 32 << 20;
};

class Store;

// One atomic state transition.
class Batch {
 public:
  void Put(Cf cf, absl::string_view key, const google::protobuf::MessageLite& msg);
  void PutRaw(Cf cf, absl::string_view key, absl::string_view value);
  void Delete(Cf cf, absl::string_view key);
  int Count() const { return static_cast<int>(ops_.size()); }
  bool empty() const { return ops_.empty(); }

 private:
  friend class Store;
  // Operations are kept as plain records and turned into one
  // rocksdb::WriteBatch per commit group (RocksDB has no public way to
  // concatenate WriteBatches).
  struct Op {
    Cf cf;
    bool del;
    std::string key;
    std::string value;
  };
  Batch() = default;
  std::vector<Op> ops_;
};

struct CommitStats {
  uint64_t batches = 0;  // batches committed
  uint64_t groups = 0;   // synced writes issued
};

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir,
                                                     const StoreOptions& options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  Batch NewBatch() { return Batch(); }

  // Queues `batch`; tickets grow in call order and commit in that order.
  uint64_t Enqueue(Batch batch);
  // Blocks until every batch up to `ticket` is durable. A write error is
  // sticky: the in-memory state of the caller no longer matches the disk, so
  // every later wait fails too and the process should exit.
  absl::Status WaitDurable(uint64_t ticket);
  absl::Status Commit(Batch batch) { return WaitDurable(Enqueue(std::move(batch))); }
  // Ticket of the newest enqueued batch (0 = none): waiting for it makes a
  // read of in-memory state safe to reveal.
  uint64_t LastEnqueued();
  CommitStats Stats();
  // Called by the commit leader after each synced write (group size, seconds).
  void SetCommitObserver(std::function<void(int, double)> fn) { observer_ = std::move(fn); }

  // Reads (see committed data only).
  absl::StatusOr<bool> Get(Cf cf, absl::string_view key, google::protobuf::MessageLite* msg);
  // Calls fn(key, value) for every record of `cf` with key starting with
  // `prefix` and > `start_after` (when non-empty), in key order, while fn
  // returns true (an error status stops the scan and is returned).
  absl::Status Scan(Cf cf, absl::string_view prefix, absl::string_view start_after,
                    const std::function<absl::StatusOr<bool>(absl::string_view key,
                                                             absl::string_view value)>& fn);
  // Events of a job with seq > after_seq, ascending, at most `limit`.
  absl::Status ReadEvents(uint64_t job_id, int64_t after_seq, int limit,
                          std::vector<std::string>* values);
  // Largest key of `cf` ("" when empty).
  absl::StatusOr<std::string> LastKey(Cf cf);
  // Flushes memtables (used before a clean shutdown so the next open replays
  // no WAL).
  absl::Status Flush();
  const std::string& dir() const { return dir_; }

 private:
  friend class Batch;
  Store() = default;
  rocksdb::ColumnFamilyHandle* Handle(Cf cf) const { return handles_[static_cast<int>(cf)]; }

  std::string dir_;
  StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::function<void(int, double)> observer_;

  struct Pending {
    uint64_t ticket;
    std::vector<Batch::Op> ops;
  };
  std::mutex qmu_;
  std::condition_variable qcv_;
  std::deque<Pending> queue_;
  uint64_t next_ticket_ = 1;
  uint64_t durable_ = 0;
  bool writing_ = false;
  absl::Status error_;
  CommitStats stats_;
};

}  // namespace llmt::store
