#include "storage/store/store.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"
#include "common/fs.h"
#include "common/log.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"

namespace llmt::store {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (s.IsNotFound()) code = absl::StatusCode::kNotFound;
  if (s.IsIOError()) code = absl::StatusCode::kUnavailable;
  if (s.IsCorruption()) code = absl::StatusCode::kDataLoss;
  if (s.IsInvalidArgument()) code = absl::StatusCode::kInvalidArgument;
  return absl::Status(code, absl::StrCat(what, ": ", s.ToString()));
}

rocksdb::Slice ToSlice(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
absl::string_view ToView(const rocksdb::Slice& s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

const char* CfName(Cf cf) {
  switch (cf) {
    case Cf::kJobs: return "jobs";
    case Cf::kAttempts: return "attempts";
    case Cf::kWorkers: return "workers";
    case Cf::kCheckpoints: return "checkpoints";
    case Cf::kEvents: return "events";
    case Cf::kIdempotency: return "idempotency";
    case Cf::kMeta: return "meta";
    case Cf::kCount: break;
  }
  return "?";
}

std::string U64Key(uint64_t v) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return k;
}

uint64_t DecodeU64(absl::string_view key, size_t offset) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && offset + i < key.size(); ++i) {
    v = (v << 8) | static_cast<uint8_t>(key[offset + i]);
  }
  return v;
}

std::string JobKey(uint64_t job_id) { return U64Key(job_id); }
std::string AttemptKey(uint64_t job_id, uint64_t attempt_id) {
  return U64Key(job_id) + U64Key(attempt_id);
}
// Steps and sequence numbers are non-negative; the cast keeps byte order.
std::string CheckpointKey(uint64_t job_id, int64_t step) {
  return U64Key(job_id) + U64Key(static_cast<uint64_t>(step));
}
std::string EventKey(uint64_t job_id, int64_t seq) {
  return U64Key(job_id) + U64Key(static_cast<uint64_t>(seq));
}

std::string EncodeValue(const google::protobuf::MessageLite& msg) {
  std::string out(1, kValueFormatV1);
  msg.AppendToString(&out);
  return out;
}

absl::Status DecodeValue(absl::string_view value, google::protobuf::MessageLite* msg, Cf cf,
                         absl::string_view key) {
  if (value.empty() || value[0] != kValueFormatV1) {
    return absl::DataLossError(absl::StrCat(
        "store: ", CfName(cf), "/", absl::BytesToHexString(key), ": unknown value format ",
        value.empty() ? -1 : static_cast<int>(value[0]), " (this build reads format 1)"));
  }
  if (!msg->ParseFromArray(value.data() + 1, static_cast<int>(value.size() - 1))) {
    return absl::DataLossError(absl::StrCat("store: ", CfName(cf), "/",
                                            absl::BytesToHexString(key), ": cannot parse ",
                                            msg->GetTypeName()));
  }
  return absl::OkStatus();
}

void Batch::Put(Cf cf, absl::string_view key, const google::protobuf::MessageLite& msg) {
  PutRaw(cf, key, EncodeValue(msg));
}

void Batch::PutRaw(Cf cf, absl::string_view key, absl::string_view value) {
  ops_.push_back(Op{cf, false, std::string(key), std::string(value)});
}

void Batch::Delete(Cf cf, absl::string_view key) {
  ops_.push_back(Op{cf, true, std::string(key), std::string()});
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir,
                                                   const StoreOptions& options) {
  if (auto s = fs::MakeDirs(dir); !s.ok()) return s;
  std::unique_ptr<Store> store(new Store());
  store->dir_ = dir;
  store->options_ = options;

  rocksdb::Options db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.max_total_wal_size = options.max_total_wal_size;
  db_opts.max_background_jobs = 2;
  db_opts.keep_log_file_num = 3;
  db_opts.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  // A torn last WAL record after kill -9 is expected; anything before it
  // was synced and must replay.
  db_opts.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;

  rocksdb::ColumnFamilyOptions cf_opts;
  cf_opts.write_buffer_size = options.write_buffer_size;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, cf_opts);
  for (int i = 0; i < static_cast<int>(Cf::kCount); ++i) {
    cfs.emplace_back(CfName(static_cast<Cf>(i)), cf_opts);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_opts, dir, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("store: opening RocksDB at ", dir));
  store->db_.reset(raw);
  // handles[0] is the default family, unused; keep ours indexed by Cf.
  store->db_->DestroyColumnFamilyHandle(handles[0]);
  store->handles_.assign(handles.begin() + 1, handles.end());
  return store;
}

Store::~Store() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  handles_.clear();
  if (db_) {
    rocksdb::Status s = db_->Close();
    if (!s.ok()) {
      LLMT_LOG(Warning) << "store: closing " << dir_ << ": " << s.ToString();
    }
  }
}

uint64_t Store::Enqueue(Batch batch) {
  std::lock_guard<std::mutex> l(qmu_);
  uint64_t t = next_ticket_++;
  queue_.push_back(Pending{t, std::move(batch.ops_)});
  return t;
}

uint64_t Store::LastEnqueued() {
  std::lock_guard<std::mutex> l(qmu_);
  return next_ticket_ - 1;
}

CommitStats Store::Stats() {
  std::lock_guard<std::mutex> l(qmu_);
  return stats_;
}

absl::Status Store::WaitDurable(uint64_t ticket) {
  std::unique_lock<std::mutex> l(qmu_);
  while (true) {
    if (!error_.ok()) return error_;
    if (durable_ >= ticket) return absl::OkStatus();
    if (writing_) {
      qcv_.wait(l);
      continue;
    }
    // Become the leader for everything queued so far.
    writing_ = true;
    std::deque<Pending> group;
    group.swap(queue_);
    l.unlock();
    auto t0 = std::chrono::steady_clock::now();
    rocksdb::WriteBatch wb;
    rocksdb::Status s;
    for (const Pending& p : group) {
      for (const Batch::Op& op : p.ops) {
        s = op.del ? wb.Delete(Handle(op.cf), ToSlice(op.key))
                   : wb.Put(Handle(op.cf), ToSlice(op.key), ToSlice(op.value));
        if (!s.ok()) break;
      }
      if (!s.ok()) break;
    }
    if (s.ok() && wb.Count() > 0) {
      rocksdb::WriteOptions wo;
      wo.sync = options_.sync;
      s = db_->Write(wo, &wb);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (observer_) observer_(static_cast<int>(group.size()), secs);
    l.lock();
    writing_ = false;
    if (!s.ok()) {
      error_ = FromRocks(s, absl::StrCat("store: synced write to ", dir_));
      LLMT_LOG(Error) << error_.message();
    } else {
      durable_ = group.back().ticket;
      stats_.batches += group.size();
      stats_.groups += 1;
    }
    qcv_.notify_all();
  }
}

absl::StatusOr<bool> Store::Get(Cf cf, absl::string_view key, google::protobuf::MessageLite* msg) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Handle(cf), ToSlice(key), &value);
  if (s.IsNotFound()) return false;
  if (!s.ok()) return FromRocks(s, absl::StrCat("store: get ", CfName(cf)));
  if (auto st = DecodeValue(value, msg, cf, key); !st.ok()) return st;
  return true;
}

absl::Status Store::Scan(
    Cf cf, absl::string_view prefix, absl::string_view start_after,
    const std::function<absl::StatusOr<bool>(absl::string_view, absl::string_view)>& fn) {
  rocksdb::ReadOptions ro;
  ro.total_order_seek = true;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, Handle(cf)));
  if (!start_after.empty()) {
    it->Seek(ToSlice(start_after));
    if (it->Valid() && ToView(it->key()) == start_after) it->Next();
  } else {
    it->Seek(ToSlice(prefix));
  }
  for (; it->Valid(); it->Next()) {
    absl::string_view k = ToView(it->key());
    if (k.substr(0, prefix.size()) != prefix) break;
    absl::StatusOr<bool> more = fn(k, ToView(it->value()));
    if (!more.ok()) return more.status();
    if (!*more) return absl::OkStatus();
  }
  return FromRocks(it->status(), absl::StrCat("store: scanning ", CfName(cf)));
}

absl::Status Store::ReadEvents(uint64_t job_id, int64_t after_seq, int limit,
                               std::vector<std::string>* values) {
  std::string prefix = U64Key(job_id);
  std::string start = EventKey(job_id, after_seq);
  return Scan(Cf::kEvents, prefix, start,
              [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
                values->emplace_back(v);
                return static_cast<int>(values->size()) < limit;
              });
}

absl::StatusOr<std::string> Store::LastKey(Cf cf) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), Handle(cf)));
  it->SeekToLast();
  if (!it->Valid()) {
    auto st = FromRocks(it->status(), absl::StrCat("store: last key of ", CfName(cf)));
    if (!st.ok()) return st;
    return std::string();
  }
  return std::string(ToView(it->key()));
}

absl::Status Store::Flush() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo, handles_), absl::StrCat("store: flushing ", dir_));
}

}  // namespace llmt::store
