#include "worker/daemon/outbox.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "worker/daemon/rpc_client.h"

namespace llmt::daemon {
namespace {

constexpr int kMaxLinesPerReport = 500;  // the coordinator takes up to 1000

}  // namespace

Outbox::Outbox(std::shared_ptr<grpc::Channel> channel, OutboxOptions options, FencedFn on_fenced,
               metrics::Gauge* pending, metrics::Counter* retries)
    : stub_(v1::WorkerService::NewStub(channel)),
      options_(std::move(options)),
      on_fenced_(std::move(on_fenced)),
      pending_gauge_(pending),
      retries_(retries) {
  // The first progress point also waits one interval: a trainer's first
  // steps come in a burst.
  last_progress_sent_ = absl::Now();
  sender_ = std::thread([this] { SendLoop(); });
}

Outbox::~Outbox() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (sender_.joinable()) sender_.join();
}

void Outbox::UpdateGauge() {
  if (pending_gauge_) pending_gauge_->Set(static_cast<double>(queue_.size()));
}

Outbox::Item* Outbox::OpenProgress(uint64_t attempt_id, int rank) {
  // Progress items of different ranks carry no ordering among themselves;
  // anything else (a checkpoint, a result) is a barrier.
  for (size_t i = queue_.size(); i-- > 0;) {
    Item& it = queue_[i];
    if (it.kind != Kind::kProgress) return nullptr;
    if (i == 0 && in_flight_) return nullptr;
    if (it.attempt_id == attempt_id && it.rank == rank) return &it;
  }
  return nullptr;
}

void Outbox::Push(Item item) {
  queue_.push_back(std::move(item));
  if (queue_.size() > options_.max_queued) {
    // Shed the oldest log-only report that is not in flight.
    for (size_t i = in_flight_ ? 1 : 0; i < queue_.size(); ++i) {
      Item& it = queue_[i];
      if (it.kind == Kind::kProgress && it.progress.step() == 0) {
        dropped_log_lines_ += it.progress.log_lines_size();
        queue_.erase(queue_.begin() + static_cast<long>(i));
        break;
      }
    }
  }
  UpdateGauge();
  cv_.notify_all();
}

void Outbox::AddProgress(uint64_t attempt_id, int rank, int64_t step,
                         const std::map<std::string, double>& metrics, bool keep) {
  std::lock_guard<std::mutex> l(mu_);
  Item* open = OpenProgress(attempt_id, rank);
  if (open == nullptr || !open->mergeable) {
    Item it;
    it.kind = Kind::kProgress;
    it.attempt_id = attempt_id;
    it.rank = rank;
    it.progress.set_worker_id(options_.worker_id);
    it.progress.set_attempt_id(attempt_id);
    it.progress.set_rank(rank);
    Push(std::move(it));
    open = &queue_.back();
  }
  open->progress.set_step(step);
  open->progress.mutable_metrics()->clear();
  for (const auto& [k, v] : metrics) (*open->progress.mutable_metrics())[k] = v;
  open->mergeable = !keep;
  cv_.notify_all();
}

void Outbox::AddLogLine(uint64_t attempt_id, int rank, const std::string& line) {
  std::lock_guard<std::mutex> l(mu_);
  Item* open = OpenProgress(attempt_id, rank);
  if (open == nullptr || open->progress.log_lines_size() >= kMaxLinesPerReport) {
    Item it;
    it.kind = Kind::kProgress;
    it.attempt_id = attempt_id;
    it.rank = rank;
    it.mergeable = true;  // step 0: a later progress point may fill it
    it.progress.set_worker_id(options_.worker_id);
    it.progress.set_attempt_id(attempt_id);
    it.progress.set_rank(rank);
    Push(std::move(it));
    open = &queue_.back();
  }
  open->progress.add_log_lines(line);
}

void Outbox::AddCheckpoint(v1::CommitCheckpointRequest req) {
  std::lock_guard<std::mutex> l(mu_);
  Item it;
  it.kind = Kind::kCheckpoint;
  it.attempt_id = req.attempt_id();
  it.rank = req.rank();
  req.set_worker_id(options_.worker_id);
  it.checkpoint = std::move(req);
  Push(std::move(it));
}

void Outbox::AddResult(v1::ReportAttemptResultRequest req) {
  std::lock_guard<std::mutex> l(mu_);
  Item it;
  it.kind = Kind::kResult;
  it.attempt_id = req.attempt_id();
  it.rank = req.rank();
  req.set_worker_id(options_.worker_id);
  it.result = std::move(req);
  Push(std::move(it));
}

size_t Outbox::PendingFor(uint64_t attempt_id) const {
  std::lock_guard<std::mutex> l(mu_);
  return std::count_if(queue_.begin(), queue_.end(),
                       [&](const Item& it) { return it.attempt_id == attempt_id; });
}

size_t Outbox::Pending() const {
  std::lock_guard<std::mutex> l(mu_);
  return queue_.size();
}

bool Outbox::connected() const {
  std::lock_guard<std::mutex> l(mu_);
  return connected_;
}

bool Outbox::Flush(absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  last_progress_sent_ = absl::InfinitePast();  // no rate limit for what is left
  cv_.notify_all();
  return idle_cv_.wait_for(l, absl::ToChronoNanoseconds(timeout),
                           [&] { return queue_.empty() && !in_flight_; });
}

absl::Status Outbox::Send(const Item& item) {
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.token, options_.rpc_timeout);
  switch (item.kind) {
    case Kind::kProgress: {
      v1::ReportProgressResponse resp;
      return rpc::FromGrpc(stub_->ReportProgress(&ctx, item.progress, &resp));
    }
    case Kind::kCheckpoint: {
      v1::Checkpoint resp;
      return rpc::FromGrpc(stub_->CommitCheckpoint(&ctx, item.checkpoint, &resp));
    }
    case Kind::kResult: {
      v1::ReportAttemptResultResponse resp;
      return rpc::FromGrpc(stub_->ReportAttemptResult(&ctx, item.result, &resp));
    }
  }
  return absl::InternalError("unknown report kind");
}

void Outbox::SendLoop() {
  std::unique_lock<std::mutex> l(mu_);
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time last_complaint = absl::InfinitePast();
  while (!stop_) {
    if (queue_.empty()) {
      idle_cv_.notify_all();
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      continue;
    }
    if (dropped_log_lines_ > 0) {
      LLMT_LOG(Warning) << "worker: dropped " << dropped_log_lines_
                        << " trainer log lines while the coordinator was unreachable";
      dropped_log_lines_ = 0;
    }
    // Only replaceable progress is queued: hold it for the rate limit.
    bool only_progress = std::all_of(queue_.begin(), queue_.end(), [](const Item& it) {
      return it.kind == Kind::kProgress && it.mergeable;
    });
    absl::Time now = absl::Now();
    absl::Time ready = last_progress_sent_ + options_.progress_interval;
    if (only_progress && now < ready) {
      cv_.wait_for(l, absl::ToChronoNanoseconds(ready - now));
      continue;
    }
    Item item = queue_.front();
    in_flight_ = true;
    l.unlock();
    absl::Status s = Send(item);
    l.lock();
    in_flight_ = false;
    if (s.ok()) {
      connected_ = true;
      backoff = absl::Milliseconds(100);
      if (item.kind == Kind::kProgress) last_progress_sent_ = absl::Now();
      queue_.pop_front();
      UpdateGauge();
      continue;
    }
    const bool auth = absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s);
    if (rpc::IsTransient(s) || auth || absl::IsResourceExhausted(s)) {
      connected_ = auth;  // an auth failure did reach the coordinator
      if (retries_) retries_->Inc();
      if (absl::Now() - last_complaint > absl::Seconds(30)) {
        LLMT_LOG(Warning) << "worker: reporting to the coordinator failed (" << s << "); retrying, "
                          << queue_.size() << " report(s) queued";
        last_complaint = absl::Now();
      }
      cv_.wait_for(l, absl::ToChronoNanoseconds(backoff), [&] { return stop_; });
      backoff = std::min(backoff * 2, absl::Seconds(2));
      continue;
    }
    connected_ = true;
    if ((absl::IsFailedPrecondition(s) || absl::IsNotFound(s)) && item.kind != Kind::kResult) {
      // Fenced: nothing more of this attempt's progress or checkpoints will
      // be accepted. Its results stay queued (harmless, and they release
      // resources if the coordinator still waits for them).
      uint64_t a = item.attempt_id;
      queue_.erase(std::remove_if(queue_.begin(), queue_.end(),
                                  [&](const Item& it) {
                                    return it.attempt_id == a && it.kind != Kind::kResult;
                                  }),
                   queue_.end());
      UpdateGauge();
      std::string why(s.message());
      l.unlock();
      LLMT_LOG(Warning) << "worker: attempt " << a << " was fenced by the coordinator: " << why;
      if (on_fenced_) on_fenced_(a, why);
      l.lock();
      continue;
    }
    // The coordinator refused this report for good (a bad request, or a
    // checkpoint already committed differently): log it and move on.
    LLMT_LOG(Warning) << "worker: coordinator refused a report for attempt " << item.attempt_id
                      << " rank " << item.rank << ": " << s;
    queue_.pop_front();
    UpdateGauge();
  }
}

}  // namespace llmt::daemon
