#include "coordinator/core.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/spec.h"
#include "common/status.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace llmt::coord {

using store::Cf;

namespace {

constexpr int kMaxLogLinesPerReport = 1000;
constexpr size_t kMaxLogLineBytes = 8192;
constexpr int kWatchBatch = 256;
constexpr int kMaxLabels = 64;

std::string DeterministicBytes(const google::protobuf::MessageLite& m) {
  std::string out;
  {
    // The stream trims `out` to the written size when it goes out of scope.
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeWithCachedSizes(&cos);
  }
  return out;
}

std::string SpecHash(const v1::JobSpec& spec) {
  spec.ByteSizeLong();  // fills the cached sizes SerializeWithCachedSizes needs
  return fs::Sha256Hex(DeterministicBytes(spec));
}

GangRequest GangFor(const v1::JobSpec& spec) {
  GangRequest g;
  g.ranks = std::max(1, spec.resources().ranks());
  g.gpus_per_rank = std::max(0, spec.resources().gpus_per_rank());
  g.cpus_per_rank = std::max(1, spec.resources().cpus_per_rank());
  return g;
}

bool IsActive(v1::AttemptState s) {
  return s == v1::ATTEMPT_STATE_STARTING || s == v1::ATTEMPT_STATE_RUNNING;
}

bool IsLive(v1::AttemptState s) { return IsActive(s) || s == v1::ATTEMPT_STATE_STOPPING; }

std::string AttemptLabel(const v1::Attempt& a) {
  return absl::StrCat("attempt ", a.attempt_id(), " (#", a.ordinal(), ") of ", JobName(a.job_id()));
}

std::string FormatTime(int64_t us) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMicros(us), absl::UTCTimeZone());
}

bool ValidWorkerId(const std::string& id) {
  if (id.empty() || id.size() > 253) return false;
  for (char c : id) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

// Normalises an absolute path lexically ("/a/./b/" -> "/a/b"); "" if it is
// relative or climbs with "..".
std::string CleanAbsPath(const std::string& p) {
  if (p.empty() || p[0] != '/') return "";
  std::vector<std::string> parts;
  for (absl::string_view s : absl::StrSplit(p, '/', absl::SkipEmpty())) {
    if (s == ".") continue;
    if (s == "..") return "";
    parts.emplace_back(s);
  }
  return "/" + absl::StrJoin(parts, "/");
}

// Filter for ListJobs: AND of `state=...`, `labels.k=v`, `name=...` terms.
struct JobFilter {
  std::set<v1::JobState> states;
  std::map<std::string, std::string> labels;
  std::string name_substr;
  bool Matches(const v1::Job& j) const {
    if (!states.empty() && !states.count(j.state())) return false;
    for (const auto& [k, v] : labels) {
      auto it = j.spec().labels().find(k);
      if (it == j.spec().labels().end() || it->second != v) return false;
    }
    if (!name_substr.empty() && !absl::StrContains(j.spec().name(), name_substr)) return false;
    return true;
  }
};

absl::StatusOr<v1::JobState> ParseStateName(absl::string_view s) {
  std::string up = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(s));
  if (!absl::StartsWith(up, "JOB_STATE_")) up = "JOB_STATE_" + up;
  v1::JobState st;
  if (!v1::JobState_Parse(up, &st) || st == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "filter: unknown state '", s, "' (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)"));
  }
  return st;
}

absl::StatusOr<JobFilter> ParseFilter(const std::string& text) {
  JobFilter f;
  std::string t(absl::StripAsciiWhitespace(text));
  if (t.empty()) return f;
  for (absl::string_view term : absl::StrSplit(t, " AND ")) {
    term = absl::StripAsciiWhitespace(term);
    size_t eq = term.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter: term '", term, "' is not FIELD=VALUE (terms are joined by AND)"));
    }
    std::string field(absl::StripAsciiWhitespace(term.substr(0, eq)));
    std::string value(absl::StripAsciiWhitespace(term.substr(eq + 1)));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (field == "state") {
      if (!value.empty() && value.front() == '(' && value.back() == ')') {
        for (absl::string_view s : absl::StrSplit(value.substr(1, value.size() - 2), " OR ")) {
          ASSIGN_OR_RETURN(v1::JobState st, ParseStateName(s));
          f.states.insert(st);
        }
      } else {
        ASSIGN_OR_RETURN(v1::JobState st, ParseStateName(value));
        f.states.insert(st);
      }
    } else if (absl::StartsWith(field, "labels.") && field.size() > 7) {
      f.labels[field.substr(7)] = value;
    } else if (field == "name") {
      f.name_substr = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "filter: unknown field '", field, "' (state, labels.KEY, name)"));
    }
  }
  return f;
}

}  // namespace

// ---------------------------------------------------------------------------

absl::StatusOr<uint64_t> ParseJobName(const std::string& name, const std::string& field) {
  absl::string_view id = name;
  absl::ConsumePrefix(&id, "jobs/");
  uint64_t v = 0;
  if (id.empty() || !absl::SimpleAtoi(id, &v) || v == 0 || absl::StrContains(id, "+")) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": expected a job name 'jobs/{id}', got '", name, "'"));
  }
  return v;
}

std::string JobName(uint64_t id) { return absl::StrCat("jobs/", id); }

const char* JobStateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_PENDING: return "PENDING";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

const char* AttemptStateName(v1::AttemptState s) {
  switch (s) {
    case v1::ATTEMPT_STATE_STARTING: return "STARTING";
    case v1::ATTEMPT_STATE_RUNNING: return "RUNNING";
    case v1::ATTEMPT_STATE_STOPPING: return "STOPPING";
    case v1::ATTEMPT_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::ATTEMPT_STATE_FAILED: return "FAILED";
    case v1::ATTEMPT_STATE_CANCELLED: return "CANCELLED";
    case v1::ATTEMPT_STATE_PREEMPTED: return "PREEMPTED";
    default: return "UNSPECIFIED";
  }
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

std::string CheckpointPath(const std::string& uri) {
  absl::string_view p = uri;
  if (absl::ConsumePrefix(&p, "file://")) return CleanAbsPath(std::string(p));
  if (absl::StrContains(p, "://")) return "";
  return CleanAbsPath(std::string(p));
}

CoordinatorMetrics::CoordinatorMetrics(metrics::Registry* r)
    : jobs(r->AddGauge("llmt_coordinator_jobs", "Jobs by state.", {"state"})),
      workers(r->AddGauge("llmt_coordinator_workers", "Registered workers by state.", {"state"})),
      queue_depth(r->AddGauge("llmt_coordinator_queue_depth", "Pending jobs.").Get()),
      live_attempts(r->AddGauge("llmt_coordinator_live_attempts",
                                "Attempts starting, running or stopping.")
                        .Get()),
      scheduling_latency(r->AddHistogram("llmt_coordinator_scheduling_latency_seconds",
                                         "Time from entering PENDING to being placed.", {},
                                         metrics::ExponentialBuckets(0.001, 4, 12))
                             .Get()),
      rpc_latency(r->AddHistogram("llmt_coordinator_rpc_duration_seconds",
                                  "gRPC handling time by method and status code.",
                                  {"service", "method", "code"})),
      unauthenticated(r->AddCounter("llmt_coordinator_unauthenticated_total",
                                    "Calls rejected for a missing or wrong token.",
                                    {"service"})),
      leases_expired(r->AddCounter("llmt_coordinator_leases_expired_total",
                                   "Worker leases that expired (worker marked LOST).")
                         .Get()),
      attempts_started(
          r->AddCounter("llmt_coordinator_attempts_started_total", "Attempts placed.").Get()),
      attempts_ended(r->AddCounter("llmt_coordinator_attempts_ended_total",
                                   "Attempts ended, by final state.", {"state"})),
      job_restarts(r->AddCounter("llmt_coordinator_job_restarts_total",
                                 "Jobs returned to PENDING after a failed attempt.")
                       .Get()),
      preemptions(
          r->AddCounter("llmt_coordinator_preemptions_total", "Attempts preempted.").Get()),
      checkpoints_committed(r->AddCounter("llmt_coordinator_checkpoints_committed_total",
                                          "Checkpoints committed to the registry.")
                                .Get()),
      checkpoints_gc_deleted(r->AddCounter("llmt_coordinator_checkpoints_gc_deleted_total",
                                           "Checkpoints deleted by retention.")
                                 .Get()),
      checkpoint_gc_bytes(r->AddCounter("llmt_coordinator_checkpoint_gc_bytes_total",
                                        "Bytes of checkpoint files deleted by retention.")
                              .Get()),
      commit_group_size(r->AddHistogram("llmt_coordinator_store_commit_group_size",
                                        "State transitions per synced RocksDB write.", {},
                                        metrics::ExponentialBuckets(1, 2, 10))
                            .Get()),
      commit_seconds(r->AddHistogram("llmt_coordinator_store_commit_seconds",
                                     "Latency of one synced RocksDB write.", {})
                         .Get()) {}

// One atomic state transition being built under mu_.
struct Coordinator::Txn {
  explicit Txn(store::Store* s) : batch(s->NewBatch()) {}
  store::Batch batch;
  bool events = false;
  std::set<uint64_t> dirty_jobs;           // written (once) at commit
  std::vector<uint64_t> dropped_attempts;  // rendezvous keys to forget after commit
};

Coordinator::Coordinator(store::Store* store, Clock* clock, CoordinatorOptions options,
                         metrics::Registry* registry)
    : store_(store), clock_(clock), options_(std::move(options)) {
  if (registry != nullptr) {
    metrics_ = std::make_unique<CoordinatorMetrics>(registry);
    CoordinatorMetrics* m = metrics_.get();
    store_->SetCommitObserver([m](int group, double secs) {
      m->commit_group_size->Observe(group);
      m->commit_seconds->Observe(secs);
    });
    registry->AddCollectHook([this] { UpdateGauges(); });
  }
}

Coordinator::~Coordinator() {
  Shutdown();
  store_->SetCommitObserver(nullptr);
}

void Coordinator::UpdateGauges() {
  std::lock_guard<std::mutex> l(mu_);
  std::map<v1::JobState, int> by_state;
  for (const auto& [id, e] : jobs_) by_state[e.job.state()]++;
  for (v1::JobState s : {v1::JOB_STATE_PENDING, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED,
                         v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
    metrics_->jobs.WithLabels({JobStateName(s)})->Set(by_state[s]);
  }
  int ready = 0, lost = 0, draining = 0;
  for (const auto& [id, w] : workers_) {
    ++(w.w.state() == v1::WORKER_STATE_READY      ? ready
       : w.w.state() == v1::WORKER_STATE_DRAINING ? draining
                                                  : lost);
  }
  metrics_->workers.WithLabels({"READY"})->Set(ready);
  metrics_->workers.WithLabels({"DRAINING"})->Set(draining);
  metrics_->workers.WithLabels({"LOST"})->Set(lost);
  metrics_->queue_depth->Set(pending_.size());
  metrics_->live_attempts->Set(live_attempts_.size());
}

// ---------------------------------------------------------------------------
// Recovery

absl::Status Coordinator::Recover() {
  std::unique_lock<std::mutex> l(mu_);
  absl::Time now = clock_->Now();

  v1::IdempotencyRecord schema;  // meta/schema: request_id field holds the version
  ASSIGN_OR_RETURN(bool has_schema, store_->Get(Cf::kMeta, "schema", &schema));
  if (has_schema && schema.request_id() != "1") {
    return absl::FailedPreconditionError(absl::StrCat(
        "store ", store_->dir(), " has schema version ", schema.request_id(),
        "; this coordinator understands version 1"));
  }
  if (!has_schema) {
    schema.set_request_id("1");
    schema.set_create_time_us(ToMicros(now));
    store::Batch b = store_->NewBatch();
    b.Put(Cf::kMeta, "schema", schema);
    RETURN_IF_ERROR(store_->Commit(std::move(b)));
  }

  RETURN_IF_ERROR(store_->Scan(
      Cf::kJobs, "", "", [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
        JobEntry e;
        RETURN_IF_ERROR(store::DecodeValue(v, &e.job, Cf::kJobs, k));
        uint64_t id = e.job.id();
        if (e.job.state() == v1::JOB_STATE_PENDING) {
          pending_.insert({-static_cast<int64_t>(e.job.spec().priority()), id});
        }
        next_job_id_ = std::max(next_job_id_, id + 1);
        jobs_.emplace(id, std::move(e));
        return true;
      }));
  RETURN_IF_ERROR(store_->Scan(
      Cf::kAttempts, "", "",
      [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
        v1::Attempt a;
        RETURN_IF_ERROR(store::DecodeValue(v, &a, Cf::kAttempts, k));
        next_attempt_id_ = std::max(next_attempt_id_, a.attempt_id() + 1);
        if (IsLive(a.state())) live_attempts_.insert(a.attempt_id());
        attempts_.emplace(a.attempt_id(), std::move(a));
        return true;
      }));
  RETURN_IF_ERROR(store_->Scan(
      Cf::kWorkers, "", "",
      [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
        WorkerEntry w;
        RETURN_IF_ERROR(store::DecodeValue(v, &w.w, Cf::kWorkers, k));
        // Heartbeats could not reach a dead coordinator: every worker gets a
        // full lease from now before it can be declared lost.
        w.lease_expiry = now + options_.lease_timeout;
        workers_.emplace(w.w.id(), std::move(w));
        return true;
      }));
  RETURN_IF_ERROR(store_->Scan(
      Cf::kCheckpoints, "", "",
      [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
        v1::Checkpoint c;
        RETURN_IF_ERROR(store::DecodeValue(v, &c, Cf::kCheckpoints, k));
        checkpoints_[c.job_id()][c.step()] = std::move(c);
        return true;
      }));
  RETURN_IF_ERROR(store_->Scan(
      Cf::kIdempotency, "", "",
      [&](absl::string_view k, absl::string_view v) -> absl::StatusOr<bool> {
        v1::IdempotencyRecord r;
        RETURN_IF_ERROR(store::DecodeValue(v, &r, Cf::kIdempotency, k));
        idempotency_.emplace(r.request_id(), std::move(r));
        return true;
      }));
  recovered_ = true;
  sched_dirty_ = true;
  LLMT_LOG(Info) << "coordinator: recovered " << jobs_.size() << " jobs (" << pending_.size()
                 << " pending), " << live_attempts_.size() << " live attempts, "
                 << workers_.size() << " workers from " << store_->dir();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Transition helpers (mu_ held)

absl::Status Coordinator::Commit(Txn& txn, std::unique_lock<std::mutex>& l) {
  for (uint64_t id : txn.dirty_jobs) PutJobNow(txn, jobs_[id]);
  uint64_t ticket =
      txn.batch.empty() ? store_->LastEnqueued() : store_->Enqueue(std::move(txn.batch));
  l.unlock();
  absl::Status s = store_->WaitDurable(ticket);
  if (!s.ok()) {
    // Memory is ahead of disk; only a restart from disk is consistent.
    LLMT_LOG(Error) << "coordinator: durable write failed, exiting: " << s;
    std::abort();
  }
  for (uint64_t id : txn.dropped_attempts) rendezvous_.Drop(id);
  if (txn.events) {
    std::lock_guard<std::mutex> wl(wake_mu_);
    ++watch_gen_;
    watch_cv_.notify_all();
  }
  return s;
}

absl::Status Coordinator::ReadBarrier(std::unique_lock<std::mutex>& l) {
  Txn txn(store_);
  return Commit(txn, l);
}

void Coordinator::Wake() {
  std::lock_guard<std::mutex> wl(wake_mu_);
  work_pending_ = true;
  work_cv_.notify_all();
}

void Coordinator::PutJobNow(Txn& txn, JobEntry& e) {
  txn.batch.Put(Cf::kJobs, store::JobKey(e.job.id()), e.job);
}

void Coordinator::MarkJob(Txn& txn, JobEntry& e) {
  // Bump now (once per transition) so replies built before Commit carry the
  // stored revision.
  if (txn.dirty_jobs.insert(e.job.id()).second) {
    e.job.set_revision(e.job.revision() + 1);
    e.job.set_update_time_us(ToMicros(clock_->Now()));
  }
}

void Coordinator::PutAttempt(Txn& txn, const v1::Attempt& a) {
  txn.batch.Put(Cf::kAttempts, store::AttemptKey(a.job_id(), a.attempt_id()), a);
}

void Coordinator::PutWorker(Txn& txn, const v1::Worker& w) {
  txn.batch.Put(Cf::kWorkers, w.id(), w);
}

void Coordinator::PutCheckpoint(Txn& txn, const v1::Checkpoint& c) {
  txn.batch.Put(Cf::kCheckpoints, store::CheckpointKey(c.job_id(), c.step()), c);
}

void Coordinator::AppendEvent(Txn& txn, JobEntry& e, v1::Event ev) {
  int64_t seq = e.job.last_event_seq() + 1;
  e.job.set_last_event_seq(seq);
  ev.set_job_id(e.job.id());
  ev.set_seq(seq);
  ev.set_time_us(ToMicros(clock_->Now()));
  txn.batch.Put(Cf::kEvents, store::EventKey(e.job.id(), seq), ev);
  txn.events = true;
  MarkJob(txn, e);
}

void Coordinator::AttemptEvent(Txn& txn, JobEntry& e, const v1::Attempt& a) {
  v1::Event ev;
  auto* ac = ev.mutable_attempt_change();
  ac->set_attempt_id(a.attempt_id());
  ac->set_state(a.state());
  ac->set_reason(a.reason());
  *ac->mutable_ranks() = a.ranks();
  AppendEvent(txn, e, std::move(ev));
}

void Coordinator::SetJobState(Txn& txn, JobEntry& e, v1::JobState to, const std::string& reason,
                              uint64_t attempt_id) {
  v1::JobState from = e.job.state();
  int64_t now = ToMicros(clock_->Now());
  std::pair<int64_t, uint64_t> qkey{-static_cast<int64_t>(e.job.spec().priority()), e.job.id()};
  if (from == v1::JOB_STATE_PENDING) pending_.erase(qkey);
  e.job.set_state(to);
  e.job.set_state_reason(reason);
  if (to == v1::JOB_STATE_PENDING) {
    pending_.insert(qkey);
    e.job.set_queued_time_us(now);
    sched_dirty_ = true;
  }
  if (IsTerminal(to)) e.job.set_end_time_us(now);
  v1::Event ev;
  auto* sc = ev.mutable_state_change();
  sc->set_from(from);
  sc->set_to(to);
  sc->set_reason(reason);
  sc->set_attempt_id(attempt_id);
  AppendEvent(txn, e, std::move(ev));
}

void Coordinator::MaybeFinalize(Txn& txn, JobEntry& e, v1::Attempt& a) {
  if (a.state() == v1::ATTEMPT_STATE_STOPPING) {
    bool all = std::all_of(a.ranks().begin(), a.ranks().end(),
                           [](const v1::RankAssignment& r) { return r.released(); });
    if (all) {
      a.set_state(a.stop_outcome());
      a.set_end_time_us(ToMicros(clock_->Now()));
      live_attempts_.erase(a.attempt_id());
      txn.dropped_attempts.push_back(a.attempt_id());
      if (metrics_) metrics_->attempts_ended.WithLabels({AttemptStateName(a.state())})->Inc();
      AttemptEvent(txn, e, a);
    }
  }
  // Released ranks free resources even before the attempt ends.
  sched_dirty_ = true;
  PutAttempt(txn, a);
}

void Coordinator::StopAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, v1::AttemptState outcome,
                              const std::string& reason) {
  if (!IsActive(a.state())) return;
  a.set_state(v1::ATTEMPT_STATE_STOPPING);
  a.set_stop_outcome(outcome);
  a.set_reason(reason);
  for (auto& r : *a.mutable_ranks()) {
    auto w = workers_.find(r.worker_id());
    if (w == workers_.end() || w->second.w.state() == v1::WORKER_STATE_LOST) r.set_released(true);
  }
  AttemptEvent(txn, e, a);
  MaybeFinalize(txn, e, a);
}

void Coordinator::FailAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, const std::string& reason) {
  bool was_active = IsActive(a.state());
  StopAttempt(txn, e, a, v1::ATTEMPT_STATE_FAILED, reason);
  if (!was_active || e.job.state() != v1::JOB_STATE_RUNNING ||
      e.job.current_attempt_id() != a.attempt_id()) {
    return;
  }
  std::string what = absl::StrCat("attempt ", a.attempt_id(), " failed: ", reason);
  int max = e.job.spec().max_restarts();
  if (e.job.restarts() < max) {
    int k = e.job.restarts() + 1;
    e.job.set_restarts(k);
    absl::Duration backoff = options_.restart_backoff;
    for (int i = 1; i < k && backoff < options_.restart_backoff_max; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.restart_backoff_max);
    absl::Time due = clock_->Now() + backoff;
    e.job.set_not_before_us(ToMicros(due));
    next_backoff_due_ = std::min(next_backoff_due_, due);
    std::string from = e.job.has_latest_checkpoint()
                           ? absl::StrCat("checkpoint step ", e.job.latest_checkpoint().step())
                           : std::string("the start (no checkpoint yet)");
    SetJobState(txn, e, v1::JOB_STATE_PENDING,
                absl::StrCat(what, "; restart ", k, " of ", max, " in ",
                             absl::FormatDuration(backoff), " from ", from),
                a.attempt_id());
    if (metrics_) metrics_->job_restarts->Inc();
  } else {
    SetJobState(txn, e, v1::JOB_STATE_FAILED,
                absl::StrCat(what, "; no restarts left (max_restarts=", max, ")"),
                a.attempt_id());
  }
  MarkJob(txn, e);
}

void Coordinator::RequeueAttempt(Txn& txn, JobEntry& e, v1::Attempt& a, const std::string& why) {
  const bool current = e.job.state() == v1::JOB_STATE_RUNNING &&
                       e.job.current_attempt_id() == a.attempt_id();
  StopAttempt(txn, e, a, v1::ATTEMPT_STATE_PREEMPTED, why);
  if (!current) return;
  e.job.set_preemptions(e.job.preemptions() + 1);
  SetJobState(txn, e, v1::JOB_STATE_PENDING,
              absl::StrCat(why, "; requeued to resume from its latest checkpoint (not counted "
                                "as a restart)"),
              a.attempt_id());
  MarkJob(txn, e);
  if (metrics_) metrics_->preemptions->Inc();
}

void Coordinator::LoseWorker(Txn& txn, WorkerEntry& w, const std::string& reason) {
  LLMT_LOG(Warning) << "coordinator: worker " << w.w.id() << " lost: " << reason;
  w.w.set_state(v1::WORKER_STATE_LOST);
  w.w.set_revision(w.w.revision() + 1);
  PutWorker(txn, w.w);
  std::vector<uint64_t> live(live_attempts_.begin(), live_attempts_.end());
  for (uint64_t id : live) {
    v1::Attempt& a = attempts_[id];
    bool touched = false;
    for (auto& r : *a.mutable_ranks()) {
      if (r.worker_id() == w.w.id() && !r.released()) {
        r.set_released(true);
        touched = true;
      }
    }
    if (!touched) continue;
    JobEntry& e = jobs_[a.job_id()];
    if (IsActive(a.state())) {
      FailAttempt(txn, e, a, absl::StrCat("worker ", w.w.id(), " lost (", reason, ")"));
    } else {
      MaybeFinalize(txn, e, a);
    }
  }
  sched_dirty_ = true;
}

std::vector<WorkerFree> Coordinator::TotalCapacity(bool include_lost) const {
  std::vector<WorkerFree> out;
  for (const auto& [id, w] : workers_) {
    if (!include_lost && w.w.state() != v1::WORKER_STATE_READY) continue;
    WorkerFree f;
    f.worker_id = id;
    for (const auto& g : w.w.capacity().gpus()) f.free_gpus.push_back(g.index());
    std::sort(f.free_gpus.begin(), f.free_gpus.end());
    f.free_cpus = w.w.capacity().cpu_cores();
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<WorkerFree> Coordinator::FreeResources(bool count_stopping_as_free) const {
  std::vector<WorkerFree> total = TotalCapacity(false);
  std::map<std::string, WorkerFree*> by_id;
  for (auto& f : total) by_id[f.worker_id] = &f;
  for (uint64_t id : live_attempts_) {
    const v1::Attempt& a = attempts_.at(id);
    if (count_stopping_as_free && a.state() == v1::ATTEMPT_STATE_STOPPING) continue;
    for (const auto& r : a.ranks()) {
      if (r.released()) continue;
      auto it = by_id.find(r.worker_id());
      if (it == by_id.end()) continue;
      WorkerFree* f = it->second;
      for (int g : r.gpu_indices()) {
        auto pos = std::find(f->free_gpus.begin(), f->free_gpus.end(), g);
        if (pos != f->free_gpus.end()) f->free_gpus.erase(pos);
      }
      f->free_cpus -= r.cpu_cores();
    }
  }
  return total;
}

void Coordinator::PlaceJob(Txn& txn, JobEntry& e, const std::vector<RankSlot>& slots) {
  absl::Time now = clock_->Now();
  v1::Attempt a;
  uint64_t id = next_attempt_id_++;
  a.set_attempt_id(id);
  a.set_job_id(e.job.id());
  a.set_name(absl::StrCat(JobName(e.job.id()), "/attempts/", id));
  a.set_ordinal(e.job.attempt_count());
  a.set_state(v1::ATTEMPT_STATE_STARTING);
  a.set_world_size(static_cast<int>(slots.size()));
  a.set_create_time_us(ToMicros(now));
  if (e.job.has_latest_checkpoint()) {
    a.set_resume_step(e.job.latest_checkpoint().step());
    a.set_resume_uri(e.job.latest_checkpoint().uri());
  }
  std::set<std::string> on;
  for (size_t r = 0; r < slots.size(); ++r) {
    auto* ra = a.add_ranks();
    ra->set_rank(static_cast<int>(r));
    ra->set_worker_id(slots[r].worker_id);
    for (int g : slots[r].gpus) ra->add_gpu_indices(g);
    ra->set_cpu_cores(slots[r].cpus);
    on.insert(slots[r].worker_id);
  }
  e.job.set_attempt_count(e.job.attempt_count() + 1);
  e.job.set_current_attempt_id(id);
  if (e.job.start_time_us() == 0) e.job.set_start_time_us(ToMicros(now));
  e.job.set_not_before_us(0);
  if (metrics_) {
    metrics_->scheduling_latency->Observe(
        std::max<int64_t>(0, ToMicros(now) - e.job.queued_time_us()) / 1e6);
    metrics_->attempts_started->Inc();
  }
  std::string where = absl::StrCat(
      "placed attempt ", id, " (", Describe(GangFor(e.job.spec())), ") on ", absl::StrJoin(on, ","),
      a.resume_uri().empty() ? std::string()
                             : absl::StrCat(", resuming from step ", a.resume_step()));
  SetJobState(txn, e, v1::JOB_STATE_RUNNING, where, id);
  AttemptEvent(txn, e, a);
  PutAttempt(txn, a);
  MarkJob(txn, e);
  attempts_[id] = std::move(a);
  live_attempts_.insert(id);
}

namespace {

void TakeSlots(const std::vector<RankSlot>& slots, std::vector<WorkerFree>* free) {
  for (const auto& s : slots) {
    for (auto& f : *free) {
      if (f.worker_id != s.worker_id) continue;
      for (int g : s.gpus) {
        auto pos = std::find(f.free_gpus.begin(), f.free_gpus.end(), g);
        if (pos != f.free_gpus.end()) f.free_gpus.erase(pos);
      }
      f.free_cpus -= s.cpus;
    }
  }
}

}  // namespace

// Strict priority order without backfill: the first job that could run on
// the ready workers but not with what is free now blocks everything behind
// it, so big gangs are not starved by a stream of small jobs. The pass stops
// there (jobs behind it cannot be placed), which keeps a pass cheap with a
// long queue; GetQueue derives the per-job reasons on demand.
void Coordinator::SchedulePass(Txn& txn, absl::Time now) {
  if (!sched_dirty_ && now < next_backoff_due_) return;
  sched_dirty_ = false;
  next_backoff_due_ = absl::InfiniteFuture();
  blocker_id_ = 0;
  blocker_detail_.clear();
  std::vector<WorkerFree> free = FreeResources(false);
  std::vector<WorkerFree> ready_total = TotalCapacity(false);
  std::map<std::tuple<int, int, int>, bool> fits_ready;  // by gang shape
  // Placing a job erases only its own entry (the iterator has moved past
  // it); preemption inserts entries but ends the pass.
  for (auto it = pending_.begin(); it != pending_.end();) {
    uint64_t id = it->second;
    ++it;
    JobEntry& e = jobs_[id];
    if (e.job.not_before_us() > ToMicros(now)) {
      next_backoff_due_ = std::min(next_backoff_due_, absl::FromUnixMicros(e.job.not_before_us()));
      continue;
    }
    if (live_attempts_.count(e.job.current_attempt_id())) continue;  // previous one stopping
    GangRequest req = GangFor(e.job.spec());
    auto shape = std::make_tuple(req.ranks, req.gpus_per_rank, req.cpus_per_rank);
    auto fit = fits_ready.find(shape);
    if (fit == fits_ready.end()) {
      fit = fits_ready.emplace(shape, PlaceGang(req, ready_total).has_value()).first;
    }
    if (!fit->second) continue;  // no ready worker set could hold it: skip, do not block
    auto slots = PlaceGang(req, free);
    if (slots) {
      PlaceJob(txn, e, *slots);
      TakeSlots(*slots, &free);
      continue;
    }
    int free_gpus = 0, free_cpus = 0;
    for (const auto& f : free) {
      free_gpus += static_cast<int>(f.free_gpus.size());
      free_cpus += f.free_cpus;
    }
    blocker_id_ = id;
    blocker_detail_ = absl::StrCat("waiting for resources: needs ", Describe(req), "; free now: ",
                                   free_gpus, " GPUs, ", free_cpus, " CPU cores across ",
                                   free.size(), " ready workers");
    if (options_.preemption) Preempt(txn, e, req);
    break;
  }
}

void Coordinator::Preempt(Txn& txn, JobEntry& e, const GangRequest& req) {
  std::vector<RunningGang> running;
  for (uint64_t aid : live_attempts_) {
    const v1::Attempt& a = attempts_[aid];
    if (!IsActive(a.state())) continue;
    RunningGang g;
    g.attempt_id = aid;
    g.job_id = a.job_id();
    g.priority = jobs_[a.job_id()].job.spec().priority();
    g.create_time_us = a.create_time_us();
    for (const auto& r : a.ranks()) {
      if (r.released()) continue;
      RankSlot s;
      s.worker_id = r.worker_id();
      s.gpus.assign(r.gpu_indices().begin(), r.gpu_indices().end());
      s.cpus = r.cpu_cores();
      g.slots.push_back(std::move(s));
    }
    running.push_back(std::move(g));
  }
  // Stopping attempts count as free: their resources are on the way back.
  auto victims =
      ChoosePreemptionVictims(req, e.job.spec().priority(), FreeResources(true), running);
  if (!victims) return;
  if (victims->empty()) {
    absl::StrAppend(&blocker_detail_, "; preempted jobs are stopping");
    return;
  }
  std::vector<std::string> names;
  for (uint64_t vid : *victims) {
    v1::Attempt& va = attempts_[vid];
    JobEntry& ve = jobs_[va.job_id()];
    std::string why = absl::StrCat("preempted by ", JobName(e.job.id()), " (priority ",
                                   e.job.spec().priority(), ")");
    StopAttempt(txn, ve, va, v1::ATTEMPT_STATE_PREEMPTED, why);
    ve.job.set_preemptions(ve.job.preemptions() + 1);
    SetJobState(txn, ve, v1::JOB_STATE_PENDING,
                absl::StrCat(why, "; will resume from its latest checkpoint"), vid);
    MarkJob(txn, ve);
    names.push_back(JobName(ve.job.id()));
    if (metrics_) metrics_->preemptions->Inc();
  }
  absl::StrAppend(&blocker_detail_, "; preempting ", absl::StrJoin(names, ", "));
  LLMT_LOG(Info) << "coordinator: " << JobName(e.job.id()) << " preempts "
                 << absl::StrJoin(names, ", ");
}

std::string Coordinator::WaitReason(const JobEntry& e, bool behind_blocker, absl::Time now,
                                    const std::vector<WorkerFree>& ready_total) const {
  if (e.job.not_before_us() > ToMicros(now)) {
    return absl::StrCat("restart backoff until ", FormatTime(e.job.not_before_us()), " (restart ",
                        e.job.restarts(), " of ", e.job.spec().max_restarts(), ")");
  }
  if (live_attempts_.count(e.job.current_attempt_id())) {
    return absl::StrCat("waiting for attempt ", e.job.current_attempt_id(),
                        " to stop on its workers");
  }
  GangRequest req = GangFor(e.job.spec());
  if (!PlaceGang(req, ready_total)) {
    return absl::StrCat("needs ", Describe(req), "; no set of ready workers (",
                        ready_total.size(), " ready) can hold it now");
  }
  if (e.job.id() == blocker_id_) return blocker_detail_;
  if (behind_blocker) {
    const JobEntry& b = jobs_.at(blocker_id_);
    return absl::StrCat("behind ", JobName(blocker_id_), " (priority ", b.job.spec().priority(),
                        ") which waits for resources");
  }
  return "not yet considered by the scheduler";
}

void Coordinator::ApplyRetention(Txn& txn, JobEntry& e) {
  int keep_last = e.job.spec().checkpoint().keep_last();
  int keep_best = e.job.spec().checkpoint().keep_best();
  if (keep_last <= 0) return;  // keep_last 0 = keep every checkpoint
  auto it = checkpoints_.find(e.job.id());
  if (it == checkpoints_.end()) return;
  std::vector<v1::Checkpoint*> committed;
  for (auto& [step, c] : it->second) {
    if (c.state() == v1::Checkpoint::COMMITTED) committed.push_back(&c);
  }
  std::set<int64_t> keep;
  // Newest keep_last by step.
  for (int i = static_cast<int>(committed.size()) - 1, n = 0; i >= 0 && n < keep_last; --i, ++n) {
    keep.insert(committed[i]->step());
  }
  // Best keep_best by val_loss (ties: newer first).
  std::vector<v1::Checkpoint*> scored;
  for (auto* c : committed) {
    if (c->metrics().count("val_loss")) scored.push_back(c);
  }
  std::sort(scored.begin(), scored.end(), [](v1::Checkpoint* a, v1::Checkpoint* b) {
    double la = a->metrics().at("val_loss"), lb = b->metrics().at("val_loss");
    return la != lb ? la < lb : a->step() > b->step();
  });
  for (int i = 0; i < keep_best && i < static_cast<int>(scored.size()); ++i) {
    keep.insert(scored[i]->step());
  }
  // Never delete what an attempt may be loading right now.
  if (e.job.has_latest_checkpoint()) keep.insert(e.job.latest_checkpoint().step());
  for (uint64_t aid : live_attempts_) {
    const v1::Attempt& a = attempts_[aid];
    if (a.job_id() == e.job.id() && !a.resume_uri().empty()) keep.insert(a.resume_step());
  }
  for (auto* c : committed) {
    if (keep.count(c->step())) continue;
    c->set_state(v1::Checkpoint::DELETING);
    PutCheckpoint(txn, *c);
  }
}

// ---------------------------------------------------------------------------
// JobService

absl::StatusOr<v1::Job> Coordinator::CreateJob(const v1::CreateJobRequest& req) {
  if (!req.has_spec()) return absl::InvalidArgumentError("spec: required");
  v1::JobSpec spec = req.spec();
  spec::ApplyDefaults(&spec);
  RETURN_IF_ERROR(spec::Validate(spec, "spec"));
  if (!spec.output_dir().empty() && CleanAbsPath(spec.output_dir()).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec: output_dir: '", spec.output_dir(),
        "' must be an absolute path (without '..') on the filesystem the workers share"));
  }
  if (spec.output_dir().empty() && CleanAbsPath(options_.jobs_dir).empty()) {
    return absl::InvalidArgumentError(
        "spec: output_dir: required (this coordinator has no absolute --jobs_dir default)");
  }
  if (spec.max_restarts() < 0) {
    return absl::InvalidArgumentError("spec: max_restarts: must be >= 0");
  }
  if (spec.labels_size() > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec: labels: at most ", kMaxLabels, " labels, got ", spec.labels_size()));
  }
  for (const auto& [k, v] : spec.labels()) {
    if (k.empty() || k.size() > 63 || v.size() > 256) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec: labels: key '", k, "' must be 1-63 characters with a value of at most 256"));
    }
  }
  if (req.request_id().size() > 256) {
    return absl::InvalidArgumentError("request_id: at most 256 characters");
  }
  std::string spec_hash = SpecHash(req.spec());

  std::unique_lock<std::mutex> l(mu_);
  if (!req.request_id().empty()) {
    auto it = idempotency_.find(req.request_id());
    if (it != idempotency_.end()) {
      if (it->second.spec_sha256() != spec_hash) {
        return absl::AlreadyExistsError(absl::StrCat(
            "request_id '", req.request_id(), "' was already used for ",
            JobName(it->second.job_id()), " with a different spec"));
      }
      v1::Job j = jobs_[it->second.job_id()].job;
      RETURN_IF_ERROR(ReadBarrier(l));
      return j;
    }
  }
  if (!spec.force_queue()) {
    GangRequest g = GangFor(spec);
    std::vector<WorkerFree> all = TotalCapacity(true);
    if (!PlaceGang(g, all)) {
      int max_gpus = 0, max_cpus = 0;
      for (const auto& w : all) {
        max_gpus = std::max(max_gpus, static_cast<int>(w.free_gpus.size()));
        max_cpus = std::max(max_cpus, w.free_cpus);
      }
      return absl::ResourceExhaustedError(absl::StrCat(
          "spec.resources: needs ", Describe(g), ", which no registered worker class can hold (",
          all.size(), " workers registered; largest has ", max_gpus, " GPUs and ", max_cpus,
          " CPU cores); set force_queue to queue it anyway"));
    }
  }

  absl::Time now = clock_->Now();
  uint64_t id = next_job_id_++;
  JobEntry e;
  e.job.set_id(id);
  e.job.set_name(JobName(id));
  if (spec.output_dir().empty()) {
    spec.set_output_dir(CleanAbsPath(fs::JoinPath(options_.jobs_dir, std::to_string(id))));
  } else {
    spec.set_output_dir(CleanAbsPath(spec.output_dir()));
  }
  *e.job.mutable_spec() = std::move(spec);
  e.job.set_state(v1::JOB_STATE_UNSPECIFIED);
  e.job.set_create_time_us(ToMicros(now));
  e.job.set_request_id(req.request_id());
  Txn txn(store_);
  SetJobState(txn, e, v1::JOB_STATE_PENDING, "submitted", 0);
  MarkJob(txn, e);
  if (!req.request_id().empty()) {
    v1::IdempotencyRecord r;
    r.set_request_id(req.request_id());
    r.set_job_id(id);
    r.set_spec_sha256(spec_hash);
    r.set_create_time_us(ToMicros(now));
    txn.batch.Put(Cf::kIdempotency, req.request_id(), r);
    idempotency_[req.request_id()] = r;
  }
  v1::Job out = e.job;
  jobs_.emplace(id, std::move(e));
  RETURN_IF_ERROR(Commit(txn, l));
  Wake();
  return out;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const v1::GetJobRequest& req) {
  ASSIGN_OR_RETURN(uint64_t id, ParseJobName(req.name()));
  std::unique_lock<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat(JobName(id), " not found"));
  v1::Job j = it->second.job;
  RETURN_IF_ERROR(ReadBarrier(l));
  return j;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const v1::ListJobsRequest& req) {
  if (req.page_size() < 0) return absl::InvalidArgumentError("page_size: must be >= 0");
  int page_size = req.page_size() == 0 ? options_.default_page_size
                                       : std::min(req.page_size(), options_.max_page_size);
  ASSIGN_OR_RETURN(JobFilter filter, ParseFilter(req.filter()));
  // Token: "v1|<last id>|<filter>", base64 (opaque to clients).
  uint64_t after = 0;
  if (!req.page_token().empty()) {
    std::string raw;
    std::vector<std::string> parts;
    if (absl::WebSafeBase64Unescape(req.page_token(), &raw)) {
      parts = absl::StrSplit(raw, absl::MaxSplits('|', 2));
    }
    if (parts.size() != 3 || parts[0] != "v1" || !absl::SimpleAtoi(parts[1], &after)) {
      return absl::InvalidArgumentError("page_token: not a token returned by ListJobs");
    }
    if (parts[2] != req.filter()) {
      return absl::InvalidArgumentError(
          "page_token: was issued for a different filter; start again without a token");
    }
  }
  v1::ListJobsResponse resp;
  std::unique_lock<std::mutex> l(mu_);
  int total = 0;
  uint64_t last = 0;
  bool more = false;
  bool unfiltered = absl::StripAsciiWhitespace(req.filter()).empty();
  if (unfiltered) {
    // No filter: start at the token instead of scanning every job.
    total = static_cast<int>(jobs_.size());
    for (auto it = jobs_.upper_bound(after); it != jobs_.end(); ++it) {
      if (resp.jobs_size() == page_size) {
        more = true;
        break;
      }
      *resp.add_jobs() = it->second.job;
      last = it->first;
    }
  } else {
    for (auto it = jobs_.upper_bound(after); it != jobs_.end(); ++it) {
      if (!filter.Matches(it->second.job)) continue;
      if (resp.jobs_size() == page_size) {
        more = true;
        break;
      }
      *resp.add_jobs() = it->second.job;
      last = it->first;
    }
    // Counting every match costs a full scan: only the first page pays it.
    if (req.page_token().empty()) {
      for (const auto& [id, e] : jobs_) total += filter.Matches(e.job);
    }
  }
  resp.set_total_size(total);
  if (more) {
    resp.set_next_page_token(
        absl::WebSafeBase64Escape(absl::StrCat("v1|", last, "|", req.filter())));
  }
  RETURN_IF_ERROR(ReadBarrier(l));
  return resp;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const v1::CancelJobRequest& req) {
  ASSIGN_OR_RETURN(uint64_t id, ParseJobName(req.name()));
  std::unique_lock<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat(JobName(id), " not found"));
  JobEntry& e = it->second;
  std::string reason = req.reason().empty() ? "cancelled" : absl::StrCat("cancelled: ", req.reason());
  Txn txn(store_);
  switch (e.job.state()) {
    case v1::JOB_STATE_CANCELLED:
      break;  // idempotent: a retried cancel gets the same answer
    case v1::JOB_STATE_SUCCEEDED:
    case v1::JOB_STATE_FAILED:
      return absl::FailedPreconditionError(
          absl::StrCat(JobName(id), " is already ", JobStateName(e.job.state()),
                       "; only PENDING or RUNNING jobs can be cancelled"));
    default: {
      auto a = attempts_.find(e.job.current_attempt_id());
      if (a != attempts_.end()) {
        StopAttempt(txn, e, a->second, v1::ATTEMPT_STATE_CANCELLED, "job cancelled");
      }
      SetJobState(txn, e, v1::JOB_STATE_CANCELLED, reason, e.job.current_attempt_id());
      MarkJob(txn, e);
    }
  }
  v1::Job out = e.job;
  RETURN_IF_ERROR(Commit(txn, l));
  Wake();
  return out;
}

absl::Status Coordinator::WatchJob(const v1::WatchJobRequest& req,
                                   const std::function<bool(const v1::Event&)>& send,
                                   const std::function<bool()>& cancelled) {
  ASSIGN_OR_RETURN(uint64_t id, ParseJobName(req.name()));
  if (req.after_seq() < 0) return absl::InvalidArgumentError("after_seq: must be >= 0");
  {
    std::unique_lock<std::mutex> l(mu_);
    if (!jobs_.count(id)) return absl::NotFoundError(absl::StrCat(JobName(id), " not found"));
  }
  int64_t last = req.after_seq();
  while (true) {
    uint64_t gen;
    {
      std::lock_guard<std::mutex> wl(wake_mu_);
      if (shutdown_) {
        return absl::UnavailableError(absl::StrCat(
            "coordinator shutting down; resume with after_seq=", last));
      }
      gen = watch_gen_;
    }
    if (cancelled()) return absl::CancelledError("client cancelled the watch");
    // Only durable events are in the store (the write returns after fsync),
    // so the stream never shows an event a crash could take back.
    std::vector<std::string> raw;
    RETURN_IF_ERROR(store_->ReadEvents(id, last, kWatchBatch, &raw));
    for (const std::string& v : raw) {
      v1::Event ev;
      RETURN_IF_ERROR(store::DecodeValue(v, &ev, Cf::kEvents, ""));
      if (!send(ev)) return absl::CancelledError("client went away");
      last = ev.seq();
      if (ev.has_state_change() && IsTerminal(ev.state_change().to())) return absl::OkStatus();
    }
    if (static_cast<int>(raw.size()) == kWatchBatch) continue;
    {
      std::unique_lock<std::mutex> l(mu_);
      const v1::Job& j = jobs_[id].job;
      if (IsTerminal(j.state()) && last >= j.last_event_seq()) return absl::OkStatus();
    }
    std::unique_lock<std::mutex> wl(wake_mu_);
    watch_cv_.wait_for(wl, std::chrono::milliseconds(250),
                       [&] { return watch_gen_ != gen || shutdown_; });
  }
}

absl::StatusOr<v1::ListCheckpointsResponse> Coordinator::ListCheckpoints(
    const v1::ListCheckpointsRequest& req) {
  ASSIGN_OR_RETURN(uint64_t id, ParseJobName(req.name()));
  std::unique_lock<std::mutex> l(mu_);
  if (!jobs_.count(id)) return absl::NotFoundError(absl::StrCat(JobName(id), " not found"));
  v1::ListCheckpointsResponse resp;
  auto it = checkpoints_.find(id);
  if (it != checkpoints_.end()) {
    for (const auto& [step, c] : it->second) {
      if (c.state() == v1::Checkpoint::COMMITTED || req.include_deleting()) {
        *resp.add_checkpoints() = c;
      }
    }
  }
  RETURN_IF_ERROR(ReadBarrier(l));
  return resp;
}

absl::StatusOr<v1::ListAttemptsResponse> Coordinator::ListAttempts(
    const v1::ListAttemptsRequest& req) {
  ASSIGN_OR_RETURN(uint64_t id, ParseJobName(req.name()));
  std::unique_lock<std::mutex> l(mu_);
  if (!jobs_.count(id)) return absl::NotFoundError(absl::StrCat(JobName(id), " not found"));
  v1::ListAttemptsResponse resp;
  for (const auto& [aid, a] : attempts_) {
    if (a.job_id() == id) *resp.add_attempts() = a;
  }
  std::sort(resp.mutable_attempts()->begin(), resp.mutable_attempts()->end(),
            [](const v1::Attempt& a, const v1::Attempt& b) { return a.ordinal() < b.ordinal(); });
  RETURN_IF_ERROR(ReadBarrier(l));
  return resp;
}

absl::StatusOr<v1::GetQueueResponse> Coordinator::GetQueue() {
  std::unique_lock<std::mutex> l(mu_);
  v1::GetQueueResponse resp;
  absl::Time now = clock_->Now();
  std::vector<WorkerFree> ready_total = TotalCapacity(false);
  bool behind = false;
  int pos = 0;
  for (const auto& [prio, id] : pending_) {
    const JobEntry& e = jobs_[id];
    auto* q = resp.add_entries();
    q->set_name(JobName(id));
    q->set_position(++pos);
    q->set_priority(e.job.spec().priority());
    q->set_queued_time_us(e.job.queued_time_us());
    q->set_reason(WaitReason(e, behind, now, ready_total));
    if (id == blocker_id_) behind = true;
  }
  RETURN_IF_ERROR(ReadBarrier(l));
  return resp;
}

absl::StatusOr<v1::ListWorkersResponse> Coordinator::ListWorkers() {
  std::unique_lock<std::mutex> l(mu_);
  v1::ListWorkersResponse resp;
  for (const auto& [id, w] : workers_) *resp.add_workers() = w.w;
  RETURN_IF_ERROR(ReadBarrier(l));
  return resp;
}

// ---------------------------------------------------------------------------
// WorkerService

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(
    const v1::RegisterWorkerRequest& req) {
  if (!ValidWorkerId(req.worker_id())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker_id: '", req.worker_id(), "' must be 1-253 characters of [A-Za-z0-9._-]"));
  }
  std::set<int> seen;
  for (const auto& g : req.capacity().gpus()) {
    if (g.index() < 0 || !seen.insert(g.index()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("capacity.gpus: index ", g.index(), " is negative or repeated"));
    }
  }
  if (req.capacity().cpu_cores() < 0) {
    return absl::InvalidArgumentError("capacity.cpu_cores: must be >= 0");
  }
  if (req.capacity().gpus_size() == 0 && req.capacity().cpu_cores() == 0) {
    return absl::InvalidArgumentError("capacity: a worker needs at least one GPU or CPU core");
  }
  std::unique_lock<std::mutex> l(mu_);
  absl::Time now = clock_->Now();
  Txn txn(store_);
  WorkerEntry& w = workers_[req.worker_id()];
  bool existed = !w.w.id().empty();
  uint64_t session = w.w.session() + 1;
  v1::Worker nw;
  nw.set_name("workers/" + req.worker_id());
  nw.set_id(req.worker_id());
  nw.set_address(req.address());
  nw.set_hostname(req.hostname());
  *nw.mutable_capacity() = req.capacity();
  *nw.mutable_labels() = req.labels();
  nw.set_state(v1::WORKER_STATE_READY);
  nw.set_session(session);
  nw.set_register_time_us(ToMicros(now));
  nw.set_last_heartbeat_us(ToMicros(now));
  nw.set_version(req.version());
  nw.set_revision(w.w.revision() + 1);
  w.w = nw;
  w.lease_expiry = now + options_.lease_timeout;
  PutWorker(txn, w.w);
  if (existed) {
    std::set<std::pair<uint64_t, int>> running;
    for (const auto& r : req.running()) running.insert({r.attempt_id(), r.rank()});
    std::vector<uint64_t> live(live_attempts_.begin(), live_attempts_.end());
    for (uint64_t id : live) {
      v1::Attempt& a = attempts_[id];
      std::vector<int> gone;
      for (auto& r : *a.mutable_ranks()) {
        if (r.worker_id() != req.worker_id() || r.released()) continue;
        if (running.count({id, r.rank()})) continue;
        r.set_released(true);
        gone.push_back(r.rank());
      }
      if (gone.empty()) continue;
      JobEntry& e = jobs_[a.job_id()];
      if (IsActive(a.state())) {
        FailAttempt(txn, e, a,
                    absl::StrCat("worker ", req.worker_id(), " restarted without rank ",
                                 absl::StrJoin(gone, ","), " running"));
      } else {
        MaybeFinalize(txn, e, a);
      }
    }
  }
  sched_dirty_ = true;
  LLMT_LOG(Info) << "coordinator: worker " << req.worker_id() << " registered (session "
                 << session << ", " << req.capacity().gpus_size() << " GPUs, "
                 << req.capacity().cpu_cores() << " CPU cores)";
  v1::RegisterWorkerResponse resp;
  *resp.mutable_worker() = w.w;
  resp.set_session(session);
  resp.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(options_.heartbeat_interval));
  resp.set_lease_timeout_ms(absl::ToInt64Milliseconds(options_.lease_timeout));
  RETURN_IF_ERROR(Commit(txn, l));
  Wake();
  return resp;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& req) {
  std::unique_lock<std::mutex> l(mu_);
  auto wit = workers_.find(req.worker_id());
  if (wit == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("workers/", req.worker_id(),
                                            " is not registered; call RegisterWorker"));
  }
  WorkerEntry& w = wit->second;
  if (req.session() != w.w.session()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "workers/", req.worker_id(), ": session ", req.session(), " was superseded by session ",
        w.w.session(), "; stop all attempts and call RegisterWorker"));
  }
  absl::Time now = clock_->Now();
  Txn txn(store_);
  w.lease_expiry = now + options_.lease_timeout;
  w.w.set_last_heartbeat_us(ToMicros(now));
  bool wake = false;
  if (w.w.state() == v1::WORKER_STATE_LOST) {
    // Its attempts were failed when the lease expired; the desired set below
    // no longer contains them, so the worker stops them (fencing).
    LLMT_LOG(Info) << "coordinator: worker " << req.worker_id() << " is back";
    w.w.set_state(req.draining() ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_READY);
    w.w.set_revision(w.w.revision() + 1);
    PutWorker(txn, w.w);
    sched_dirty_ = true;
    wake = true;
  } else if (req.draining() != (w.w.state() == v1::WORKER_STATE_DRAINING)) {
    // A drain takes the worker out of placement (TotalCapacity counts READY
    // workers only) before its ranks' results come in, so their requeued
    // jobs go elsewhere.
    LLMT_LOG(Info) << "coordinator: worker " << req.worker_id()
                   << (req.draining() ? " is draining (shutting down)" : " is ready again");
    w.w.set_state(req.draining() ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_READY);
    w.w.set_revision(w.w.revision() + 1);
    PutWorker(txn, w.w);
    sched_dirty_ = true;
    wake = true;
  }
  std::set<std::pair<uint64_t, int>> running;
  for (const auto& r : req.running()) running.insert({r.attempt_id(), r.rank()});
  v1::HeartbeatResponse resp;
  std::vector<uint64_t> live(live_attempts_.begin(), live_attempts_.end());
  for (uint64_t id : live) {
    v1::Attempt& a = attempts_[id];
    bool mine = false, changed = false;
    for (auto& r : *a.mutable_ranks()) {
      if (r.worker_id() != req.worker_id() || r.released()) continue;
      mine = true;
      bool runs = running.count({id, r.rank()}) > 0;
      if (a.state() == v1::ATTEMPT_STATE_STOPPING && !runs) {
        r.set_released(true);  // the worker confirmed it stopped
        changed = true;
      } else if (runs && !r.running()) {
        r.set_running(true);
        changed = true;
      }
    }
    if (!mine) continue;
    JobEntry& e = jobs_[a.job_id()];
    if (a.state() == v1::ATTEMPT_STATE_STARTING &&
        std::any_of(a.ranks().begin(), a.ranks().end(),
                    [](const v1::RankAssignment& r) { return r.running(); })) {
      a.set_state(v1::ATTEMPT_STATE_RUNNING);
      a.set_start_time_us(ToMicros(now));
      AttemptEvent(txn, e, a);
      MarkJob(txn, e);
      changed = true;
    }
    if (changed) {
      if (a.state() == v1::ATTEMPT_STATE_STOPPING) {
        MaybeFinalize(txn, e, a);
        wake = true;
      } else {
        PutAttempt(txn, a);
      }
    }
    if (!IsActive(a.state())) continue;
    auto* d = resp.add_desired();
    d->set_attempt_id(id);
    d->set_job(JobName(a.job_id()));
    d->set_job_id(a.job_id());
    *d->mutable_spec() = e.job.spec();
    d->set_world_size(a.world_size());
    d->set_resume_step(a.resume_step());
    d->set_resume_uri(a.resume_uri());
    d->set_ordinal(a.ordinal());
    for (const auto& r : a.ranks()) {
      *d->add_all_ranks() = r;
      if (r.worker_id() == req.worker_id() && !r.released()) *d->add_local_ranks() = r;
      auto pw = workers_.find(r.worker_id());
      if (pw != workers_.end()) (*d->mutable_worker_addresses())[r.worker_id()] = pw->second.w.address();
    }
  }
  resp.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(options_.heartbeat_interval));
  resp.set_lease_timeout_ms(absl::ToInt64Milliseconds(options_.lease_timeout));
  RETURN_IF_ERROR(Commit(txn, l));
  if (wake) Wake();
  return resp;
}

absl::StatusOr<v1::Attempt*> Coordinator::CurrentAttempt(uint64_t attempt_id, int rank,
                                                         const std::string& worker_id,
                                                         JobEntry** job) {
  auto it = attempts_.find(attempt_id);
  if (it == attempts_.end()) {
    return absl::NotFoundError(absl::StrCat("attempt ", attempt_id, " not found"));
  }
  v1::Attempt& a = it->second;
  JobEntry& e = jobs_[a.job_id()];
  if (e.job.current_attempt_id() != attempt_id || !IsLive(a.state())) {
    return absl::FailedPreconditionError(absl::StrCat(
        AttemptLabel(a), " is stale (state ", AttemptStateName(a.state()),
        ", current attempt ", e.job.current_attempt_id(), "); stop it"));
  }
  if (rank < 0 || rank >= a.ranks_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank: ", rank, " is outside 0..", a.ranks_size() - 1, " of ", AttemptLabel(a)));
  }
  const auto& ra = a.ranks(rank);
  if (!worker_id.empty() && ra.worker_id() != worker_id) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " of ", AttemptLabel(a),
                                                      " is placed on worker ", ra.worker_id(),
                                                      ", not ", worker_id, "; stop it"));
  }
  *job = &e;
  return &a;
}

absl::Status Coordinator::ReportProgress(const v1::ReportProgressRequest& req) {
  if (req.log_lines_size() > kMaxLogLinesPerReport) {
    return absl::InvalidArgumentError(absl::StrCat("log_lines: at most ", kMaxLogLinesPerReport,
                                                   " per report, got ", req.log_lines_size()));
  }
  std::unique_lock<std::mutex> l(mu_);
  JobEntry* e = nullptr;
  ASSIGN_OR_RETURN(v1::Attempt * a,
                   CurrentAttempt(req.attempt_id(), req.rank(), req.worker_id(), &e));
  absl::Time now = clock_->Now();
  Txn txn(store_);
  bool job_changed = false;
  if (a->state() == v1::ATTEMPT_STATE_STARTING) {
    a->set_state(v1::ATTEMPT_STATE_RUNNING);
    a->set_start_time_us(ToMicros(now));
    a->mutable_ranks(req.rank())->set_running(true);
    AttemptEvent(txn, *e, *a);
    PutAttempt(txn, *a);
    job_changed = true;
  }
  // Rank 0 speaks for the gang's progress; retries (same or lower step of
  // the same attempt) are dropped.
  const v1::Progress& prev = e->job.progress();
  bool fresh = prev.attempt_id() != a->attempt_id() || req.step() > prev.step();
  if (req.rank() == 0 && req.step() > 0 && fresh) {
    v1::Progress p;
    p.set_step(req.step());
    *p.mutable_metrics() = req.metrics();
    p.set_time_us(ToMicros(now));
    p.set_attempt_id(a->attempt_id());
    *e->job.mutable_progress() = p;
    v1::Event ev;
    auto* pp = ev.mutable_progress();
    pp->set_attempt_id(a->attempt_id());
    pp->set_rank(req.rank());
    *pp->mutable_progress() = p;
    AppendEvent(txn, *e, std::move(ev));
    job_changed = true;
  }
  for (const std::string& line : req.log_lines()) {
    v1::Event ev;
    auto* lg = ev.mutable_log();
    lg->set_attempt_id(a->attempt_id());
    lg->set_rank(req.rank());
    lg->set_text(line.size() > kMaxLogLineBytes ? line.substr(0, kMaxLogLineBytes) : line);
    AppendEvent(txn, *e, std::move(ev));
    job_changed = true;
  }
  if (job_changed) MarkJob(txn, *e);
  return Commit(txn, l);
}

absl::StatusOr<v1::Checkpoint> Coordinator::CommitCheckpoint(
    const v1::CommitCheckpointRequest& req) {
  if (req.step() < 0) return absl::InvalidArgumentError("step: must be >= 0");
  if (req.bytes() < 0) return absl::InvalidArgumentError("bytes: must be >= 0");
  std::string sha = absl::AsciiStrToLower(req.sha256());
  if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("sha256: '", req.sha256(), "' is not 64 hex digits"));
  }
  std::string path = CheckpointPath(req.uri());
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "uri: '", req.uri(), "' must be an absolute path or file:// URI without '..'"));
  }
  std::unique_lock<std::mutex> l(mu_);
  JobEntry* e = nullptr;
  ASSIGN_OR_RETURN(v1::Attempt * a,
                   CurrentAttempt(req.attempt_id(), req.rank(), req.worker_id(), &e));
  // Retention deletes what the registry holds: only accept directories
  // strictly inside the job's own output_dir.
  const std::string& out = e->job.spec().output_dir();
  if (out.empty() || !absl::StartsWith(path, out + "/")) {
    return absl::InvalidArgumentError(absl::StrCat("uri: '", req.uri(), "' is not inside ",
                                                   JobName(e->job.id()), "'s output_dir '",
                                                   out, "'"));
  }
  auto& by_step = checkpoints_[e->job.id()];
  auto existing = by_step.find(req.step());
  if (existing != by_step.end()) {
    if (existing->second.sha256() != sha || existing->second.uri() != req.uri()) {
      return absl::AlreadyExistsError(absl::StrCat(
          JobName(e->job.id()), "/checkpoints/", req.step(),
          " is already committed with a different sha256 or uri"));
    }
    v1::Checkpoint c = existing->second;
    RETURN_IF_ERROR(ReadBarrier(l));
    return c;
  }
  absl::Time now = clock_->Now();
  v1::Checkpoint c;
  c.set_name(absl::StrCat(JobName(e->job.id()), "/checkpoints/", req.step()));
  c.set_job_id(e->job.id());
  c.set_attempt_id(a->attempt_id());
  c.set_step(req.step());
  *c.mutable_metrics() = req.metrics();
  c.set_uri(req.uri());
  c.set_bytes(req.bytes());
  c.set_sha256(sha);
  c.set_create_time_us(ToMicros(now));
  c.set_state(v1::Checkpoint::COMMITTED);
  Txn txn(store_);
  by_step[c.step()] = c;
  PutCheckpoint(txn, c);
  if (!e->job.has_latest_checkpoint() || c.step() >= e->job.latest_checkpoint().step()) {
    *e->job.mutable_latest_checkpoint() = c;
  }
  v1::Event ev;
  *ev.mutable_checkpoint() = c;
  AppendEvent(txn, *e, std::move(ev));
  ApplyRetention(txn, *e);
  MarkJob(txn, *e);
  if (metrics_) metrics_->checkpoints_committed->Inc();
  RETURN_IF_ERROR(Commit(txn, l));
  Wake();  // the GC loop has files to delete
  return c;
}

absl::StatusOr<v1::ReportAttemptResultResponse> Coordinator::ReportAttemptResult(
    const v1::ReportAttemptResultRequest& req) {
  if (req.outcome() == v1::ATTEMPT_OUTCOME_UNSPECIFIED) {
    return absl::InvalidArgumentError("outcome: must be SUCCEEDED, FAILED or STOPPED");
  }
  std::unique_lock<std::mutex> l(mu_);
  auto it = attempts_.find(req.attempt_id());
  if (it == attempts_.end()) {
    return absl::NotFoundError(absl::StrCat("attempt ", req.attempt_id(), " not found"));
  }
  v1::Attempt& a = it->second;
  if (req.rank() < 0 || req.rank() >= a.ranks_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank: ", req.rank(), " is outside 0..", a.ranks_size() - 1, " of ",
                     AttemptLabel(a)));
  }
  v1::RankAssignment* r = a.mutable_ranks(req.rank());
  if (!req.worker_id().empty() && r->worker_id() != req.worker_id()) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", req.rank(), " of ",
                                                      AttemptLabel(a), " is placed on worker ",
                                                      r->worker_id(), ", not ", req.worker_id()));
  }
  v1::ReportAttemptResultResponse resp;
  Txn txn(store_);
  if (IsLive(a.state()) && !r->released()) {
    JobEntry& e = jobs_[a.job_id()];
    absl::Time now = clock_->Now();
    r->set_released(true);
    a.set_exit_code(req.exit_code());
    std::string who = absl::StrCat("rank ", req.rank(), " on worker ", r->worker_id());
    if (req.outcome() == v1::ATTEMPT_OUTCOME_SUCCEEDED) {
      r->set_succeeded(true);
      bool all = std::all_of(a.ranks().begin(), a.ranks().end(),
                             [](const v1::RankAssignment& x) { return x.succeeded(); });
      if (IsActive(a.state()) && all) {
        a.set_state(v1::ATTEMPT_STATE_SUCCEEDED);
        a.set_reason(req.message().empty() ? "every rank succeeded" : req.message());
        a.set_end_time_us(ToMicros(now));
        live_attempts_.erase(a.attempt_id());
        txn.dropped_attempts.push_back(a.attempt_id());
        if (metrics_) metrics_->attempts_ended.WithLabels({"SUCCEEDED"})->Inc();
        AttemptEvent(txn, e, a);
        if (e.job.state() == v1::JOB_STATE_RUNNING && e.job.current_attempt_id() == a.attempt_id()) {
          SetJobState(txn, e, v1::JOB_STATE_SUCCEEDED,
                      absl::StrCat("attempt ", a.attempt_id(), " succeeded at step ",
                                   req.final_step()),
                      a.attempt_id());
        }
        MarkJob(txn, e);
        PutAttempt(txn, a);
        sched_dirty_ = true;
      } else {
        MaybeFinalize(txn, e, a);
      }
    } else {
      std::string why =
          req.outcome() == v1::ATTEMPT_OUTCOME_FAILED
              ? absl::StrCat(who, " failed (exit code ", req.exit_code(), ")")
              : absl::StrCat(who, " was stopped by its worker");
      if (!req.message().empty()) absl::StrAppend(&why, ": ", req.message());
      if (IsActive(a.state()) && req.outcome() == v1::ATTEMPT_OUTCOME_STOPPED) {
        // The coordinator still wanted this rank, so its worker stopped it on
        // its own: shutting down (a drain) or a superseded session. That is
        // not the job's failure; like a preemption it must not use up one of
        // the job's max_restarts.
        RequeueAttempt(txn, e, a, why);
      } else if (IsActive(a.state())) {
        FailAttempt(txn, e, a, why);
      } else {
        MaybeFinalize(txn, e, a);
      }
      MarkJob(txn, e);
    }
  }
  resp.set_attempt_state(a.state());
  RETURN_IF_ERROR(Commit(txn, l));
  Wake();
  return resp;
}

absl::Status Coordinator::CheckKvAccess(uint64_t attempt_id) {
  std::unique_lock<std::mutex> l(mu_);
  auto it = attempts_.find(attempt_id);
  if (it == attempts_.end()) {
    return absl::NotFoundError(absl::StrCat("attempt ", attempt_id, " not found"));
  }
  if (!IsActive(it->second.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat(AttemptLabel(it->second), " is ", AttemptStateName(it->second.state()),
                     "; the rendezvous KV only serves starting or running attempts"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::KvSet(const v1::KvSetRequest& req) {
  RETURN_IF_ERROR(CheckKvAccess(req.attempt_id()));
  return rendezvous_.Set(req.attempt_id(), req.key(), req.value());
}

absl::StatusOr<v1::KvGetResponse> Coordinator::KvGet(const v1::KvGetRequest& req) {
  RETURN_IF_ERROR(CheckKvAccess(req.attempt_id()));
  ASSIGN_OR_RETURN(std::string v, rendezvous_.Get(req.attempt_id(), req.key()));
  v1::KvGetResponse resp;
  resp.set_value(std::move(v));
  return resp;
}

absl::StatusOr<v1::KvWaitResponse> Coordinator::KvWait(const v1::KvWaitRequest& req) {
  if (req.keys_size() == 0) return absl::InvalidArgumentError("keys: at least one key");
  if (req.timeout_ms() < 0) return absl::InvalidArgumentError("timeout_ms: must be >= 0");
  RETURN_IF_ERROR(CheckKvAccess(req.attempt_id()));
  absl::Duration timeout =
      req.timeout_ms() == 0 ? absl::Seconds(30) : absl::Milliseconds(req.timeout_ms());
  std::vector<std::string> keys(req.keys().begin(), req.keys().end());
  ASSIGN_OR_RETURN(std::vector<std::string> values,
                   rendezvous_.Wait(req.attempt_id(), keys, timeout));
  v1::KvWaitResponse resp;
  for (auto& v : values) resp.add_values(std::move(v));
  return resp;
}

absl::StatusOr<v1::KvAddResponse> Coordinator::KvAdd(const v1::KvAddRequest& req) {
  RETURN_IF_ERROR(CheckKvAccess(req.attempt_id()));
  ASSIGN_OR_RETURN(int64_t v, rendezvous_.Add(req.attempt_id(), req.key(), req.delta()));
  v1::KvAddResponse resp;
  resp.set_value(v);
  return resp;
}

// ---------------------------------------------------------------------------
// Background work

void Coordinator::Tick() {
  std::unique_lock<std::mutex> l(mu_);
  if (!recovered_) return;
  absl::Time now = clock_->Now();
  Txn txn(store_);
  for (auto& [id, w] : workers_) {
    if (w.w.state() != v1::WORKER_STATE_LOST && now > w.lease_expiry) {
      LoseWorker(txn, w,
                 absl::StrCat("lease expired: no heartbeat within ",
                              absl::FormatDuration(options_.lease_timeout)));
      if (metrics_) metrics_->leases_expired->Inc();
    }
  }
  SchedulePass(txn, now);
  if (txn.batch.empty() && txn.dirty_jobs.empty()) return;
  Commit(txn, l).IgnoreError();  // a failure aborts inside Commit
}

void Coordinator::WaitForWork(absl::Duration timeout) {
  std::unique_lock<std::mutex> wl(wake_mu_);
  work_cv_.wait_for(wl, absl::ToChronoNanoseconds(timeout),
                    [&] { return work_pending_ || shutdown_; });
  work_pending_ = false;
}

int Coordinator::RunCheckpointGc() {
  struct Doomed {
    uint64_t job;
    int64_t step;
    std::string path;
    int64_t bytes;
  };
  std::vector<Doomed> doomed;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [job, steps] : checkpoints_) {
      for (const auto& [step, c] : steps) {
        if (c.state() == v1::Checkpoint::DELETING) {
          doomed.push_back({job, step, CheckpointPath(c.uri()), c.bytes()});
        }
      }
    }
  }
  if (doomed.empty()) return 0;
  std::vector<Doomed> done;
  for (const Doomed& d : doomed) {
    // CommitCheckpoint only accepts clean absolute paths inside output_dir.
    absl::Status s = d.path.empty() ? absl::OkStatus() : fs::RemoveAll(d.path);
    if (!s.ok()) {
      LLMT_LOG(Warning) << "coordinator: checkpoint GC: " << s << " (will retry)";
      continue;
    }
    done.push_back(d);
  }
  std::unique_lock<std::mutex> l(mu_);
  Txn txn(store_);
  int64_t bytes = 0;
  for (const Doomed& d : done) {
    txn.batch.Delete(Cf::kCheckpoints, store::CheckpointKey(d.job, d.step));
    auto it = checkpoints_.find(d.job);
    if (it != checkpoints_.end()) it->second.erase(d.step);
    bytes += d.bytes;
  }
  Commit(txn, l).IgnoreError();
  if (metrics_) {
    metrics_->checkpoints_gc_deleted->Inc(done.size());
    metrics_->checkpoint_gc_bytes->Inc(bytes);
  }
  return static_cast<int>(done.size());
}

void Coordinator::Shutdown() {
  {
    std::lock_guard<std::mutex> wl(wake_mu_);
    shutdown_ = true;
    watch_cv_.notify_all();
    work_cv_.notify_all();
  }
  rendezvous_.Shutdown();
}

}  // namespace llmt::coord
