#include "worker/daemon/daemon.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/spec.h"
#include "common/status.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "storage/checkpoint.h"
#include "worker/daemon/capacity.h"

namespace llmt::daemon {
namespace {

constexpr char kVersion[] = "llmt-worker 0.1";
// Reported as the exit code of a rank the worker could not start.
constexpr int kNotStartedExitCode = 127;

std::string Cwd() {
  char buf[4096];
  return getcwd(buf, sizeof(buf)) != nullptr ? std::string(buf) : std::string(".");
}

std::string Absolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return fs::JoinPath(Cwd(), path);
}

// "file:///x" or "/x" -> "/x".
std::string UriPath(const std::string& uri) {
  absl::string_view v = uri;
  absl::ConsumePrefix(&v, "file://");
  return std::string(v);
}

// vocab_size from a prepared data directory's manifest.json (0 if unreadable).
int DataVocabSize(const std::string& data_dir) {
  auto text = fs::ReadFile(fs::JoinPath(data_dir, "manifest.json"));
  if (!text.ok()) return 0;
  google::protobuf::Struct obj;
  if (!google::protobuf::util::JsonStringToMessage(*text, &obj).ok()) return 0;
  auto it = obj.fields().find("vocab_size");
  if (it == obj.fields().end() || !it->second.has_number_value()) return 0;
  return static_cast<int>(it->second.number_value());
}

const char* OutcomeName(v1::AttemptOutcome o) {
  switch (o) {
    case v1::ATTEMPT_OUTCOME_SUCCEEDED:
      return "SUCCEEDED";
    case v1::ATTEMPT_OUTCOME_FAILED:
      return "FAILED";
    case v1::ATTEMPT_OUTCOME_STOPPED:
      return "STOPPED";
    default:
      return "UNSPECIFIED";
  }
}

}  // namespace

double TrainFlopsPerToken(const v1::JobSpec& spec, int vocab_size) {
  const auto& m = spec.model();
  const double V = vocab_size, C = m.d_model(), L = m.n_layer(), S = m.max_seq_len();
  const double T = spec.train().seq_len() > 0 ? spec.train().seq_len() : S;
  if (V <= 0 || C <= 0 || L <= 0 || m.n_head() <= 0) return 0;
  double n = 0;
  if (m.family() == "gpt2") {
    const double F = m.d_ff() > 0 ? m.d_ff() : 4 * C;
    // wte, wpe; per layer ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj; ln_f.
    n = V * C + S * C +
        L * (2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C)) + 2 * C;
  } else if (m.family() == "llama") {
    if (m.d_ff() <= 0) return 0;
    const double F = m.d_ff();
    const double kv = (m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head()) * (C / m.n_head());
    // embed; per layer input norm, q, k, v, o, post-attn norm, gate, up, down; norm; lm_head.
    n = V * C + L * (C + C * C + 2 * kv * C + C * C + C + 3 * F * C) + C + V * C;
  } else {
    return 0;
  }
  return 6 * n + 6 * L * C * T;
}

struct Daemon::Rank {
  uint64_t attempt_id = 0;
  int rank = 0;
  int world_size = 1;
  std::string job;
  v1::JobSpec spec;
  std::vector<int> cpus;
  std::string gpu_uuid;
  double flops_per_token = 0, peak_flops = 0;
  bool stop_sent = false;  // SIGTERM (or SIGKILL) sent by this daemon
  bool killed = false;     // SIGKILL sent
  absl::Time kill_at = absl::InfiniteFuture();
  std::string stop_why;
  std::atomic<int> pid{0};

  metrics::Gauge *loss = nullptr, *val = nullptr, *lr = nullptr, *gnorm = nullptr, *tps = nullptr,
                 *mfu = nullptr, *gpu_mem = nullptr, *running = nullptr;
  metrics::Histogram *step_hist = nullptr, *ckpt_hist = nullptr;
  metrics::Counter *steps = nullptr, *ckpt_bytes = nullptr;

  // Written by the reader thread.
  std::mutex mu;
  bool has_exit = false;
  TrainerEvent exit_event;
  int64_t last_step = 0;
  absl::Time last_step_time = absl::InfinitePast();
  absl::Time last_gpu_query = absl::InfinitePast();

  // Last member: destroyed first, joining the reader while the rest is alive.
  std::unique_ptr<RankProcess> proc;
};

Daemon::Daemon(const DaemonOptions& options) : options_(options) {}

Daemon::~Daemon() {
  ranks_.clear();  // SIGKILLs anything still running
  outbox_.reset();
  http_.reset();
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(const DaemonOptions& options) {
  if (options.worker_id.empty()) return absl::InvalidArgumentError("--worker_id: empty");
  if (options.trainer.empty() || access(options.trainer.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("--trainer: '", options.trainer, "' is not an executable llmt binary"));
  }
  std::unique_ptr<Daemon> d(new Daemon(options));
  d->options_.state_dir = Absolute(options.state_dir);
  RETURN_IF_ERROR(fs::MakeDirs(fs::JoinPath(d->options_.state_dir, "logs")));
  RETURN_IF_ERROR(fs::MakeDirs(fs::JoinPath(d->options_.state_dir, "attempts")));
  ASSIGN_OR_RETURN(d->capacity_, BuildCapacity(options.gpus, options.cpus));
  d->allowed_cpus_ = AllowedCpus();
  d->cpu_load_.assign(d->allowed_cpus_.size(), 0);
  d->cpu_rotate_ = std::hash<std::string>()(options.worker_id) % d->allowed_cpus_.size();
  d->metrics_ = std::make_unique<WorkerMetrics>(&d->registry_);
  ASSIGN_OR_RETURN(d->channel_, rpc::MakeChannel(options.coordinator));
  d->stub_ = v1::WorkerService::NewStub(d->channel_);
  OutboxOptions oo;
  oo.worker_id = options.worker_id;
  oo.token = options.coordinator.token;
  oo.rpc_timeout = options.rpc_timeout;
  oo.progress_interval = options.progress_interval;
  Daemon* self = d.get();
  d->outbox_ = std::make_unique<Outbox>(
      d->channel_, oo,
      [self](uint64_t attempt, const std::string&) {
        std::lock_guard<std::mutex> l(self->mu_);
        self->fenced_.insert(attempt);
        self->wake_ = true;
        self->cv_.notify_all();
      },
      d->metrics_->reports_pending, d->metrics_->report_retries);
  if (!options.http_listen.empty()) {
    ASSIGN_OR_RETURN(
        d->http_, metrics::HttpServer::Start(
                      options.http_listen, &d->registry_,
                      {{"/healthz",
                        [] {
                          return metrics::HttpResponse{200, "text/plain", "ok\n"};
                        }},
                       {"/readyz", [self] {
                          return self->ready_.load()
                                     ? metrics::HttpResponse{200, "text/plain", "ready\n"}
                                     : metrics::HttpResponse{503, "text/plain", "not registered\n"};
                        }}}));
  }
  if (!options.port_file.empty()) {
    RETURN_IF_ERROR(
        fs::WriteFileAtomic(options.port_file, absl::StrCat("http_port=", d->http_port(), "\n")));
  }
  std::string gpus;
  for (const auto& g : d->capacity_.gpus()) {
    absl::StrAppend(&gpus, gpus.empty() ? "" : ", ", g.index(), ": ", g.model(), " (",
                    g.memory_bytes() >> 30, " GiB)");
  }
  LLMT_LOG(Info) << "worker " << options.worker_id << ": " << d->capacity_.cpu_cores()
                 << " CPU cores, " << d->capacity_.gpus_size() << " GPUs"
                 << (gpus.empty() ? "" : " [" + gpus + "]") << "; coordinator "
                 << options.coordinator.address << "; metrics on port " << d->http_port();
  return d;
}

void Daemon::RequestStop() {
  std::lock_guard<std::mutex> l(mu_);
  stop_requested_ = true;
  wake_ = true;
  cv_.notify_all();
}

std::vector<v1::RunningRank> Daemon::RunningRanks() const {
  std::vector<v1::RunningRank> out;
  for (const auto& [key, r] : ranks_) {
    if (r->proc && r->proc->exited()) continue;
    v1::RunningRank rr;
    rr.set_attempt_id(key.first);
    rr.set_rank(key.second);
    out.push_back(rr);
  }
  return out;
}

absl::Status Daemon::Register() {
  v1::RegisterWorkerRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_address(options_.advertise_host);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  req.set_hostname(host);
  *req.mutable_capacity() = capacity_;
  for (const auto& [k, v] : options_.labels) (*req.mutable_labels())[k] = v;
  req.set_version(kVersion);
  for (const auto& rr : RunningRanks()) *req.add_running() = rr;
  v1::RegisterWorkerResponse resp;
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.coordinator.token, options_.rpc_timeout);
  RETURN_IF_ERROR(rpc::FromGrpc(stub_->RegisterWorker(&ctx, req, &resp)));
  session_ = resp.session();
  if (resp.heartbeat_interval_ms() > 0) {
    heartbeat_interval_ = absl::Milliseconds(resp.heartbeat_interval_ms());
  }
  if (resp.lease_timeout_ms() > 0) lease_timeout_ = absl::Milliseconds(resp.lease_timeout_ms());
  registered_ = true;
  last_heartbeat_ok_ = absl::Now();
  metrics_->registrations->Inc();
  metrics_->connected->Set(1);
  ready_ = true;
  LLMT_LOG(Info) << "worker " << options_.worker_id << ": registered (session " << session_
                 << ", heartbeat every " << heartbeat_interval_ << ", lease " << lease_timeout_
                 << ")";
  return absl::OkStatus();
}

void Daemon::HeartbeatOnce() {
  absl::Time now = absl::Now();
  if (!registered_) {
    absl::Status s = Register();
    if (s.ok()) {
      retry_backoff_ = absl::Milliseconds(100);
      next_heartbeat_ = now;  // fetch the desired set right away
      return;
    }
    metrics_->connected->Set(0);
    metrics_->heartbeat_failures->Inc();
    if (now - last_complaint_ > absl::Seconds(10)) {
      LLMT_LOG(Warning) << "worker " << options_.worker_id << ": registration failed: " << s
                        << " (retrying)";
      last_complaint_ = now;
    }
    next_heartbeat_ = now + retry_backoff_;
    retry_backoff_ = std::min(retry_backoff_ * 2, absl::Seconds(2));
    return;
  }
  v1::HeartbeatRequest req;
  req.set_worker_id(options_.worker_id);
  req.set_session(session_);
  req.set_draining(draining_);
  for (const auto& rr : RunningRanks()) *req.add_running() = rr;
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  rpc::PrepareContext(&ctx, options_.coordinator.token, options_.rpc_timeout);
  absl::Status s = rpc::FromGrpc(stub_->Heartbeat(&ctx, req, &resp));
  LLMT_LOG(Debug) << "worker " << options_.worker_id << ": heartbeat " << s.code() << " in "
                  << (absl::Now() - now);
  if (s.ok()) {
    // A silence longer than the lease: the coordinator may have declared this
    // worker lost and re-placed its attempts elsewhere.
    const bool after_silence = now - last_heartbeat_ok_ > lease_timeout_;
    if (metrics_->connected->Value() == 0) {
      LLMT_LOG(Info) << "worker " << options_.worker_id << ": coordinator reachable again after "
                     << (now - last_heartbeat_ok_);
    }
    last_heartbeat_ok_ = absl::Now();
    if (resp.heartbeat_interval_ms() > 0) {
      heartbeat_interval_ = absl::Milliseconds(resp.heartbeat_interval_ms());
    }
    if (resp.lease_timeout_ms() > 0) lease_timeout_ = absl::Milliseconds(resp.lease_timeout_ms());
    metrics_->connected->Set(1);
    retry_backoff_ = absl::Milliseconds(100);
    next_heartbeat_ = now + heartbeat_interval_;
    Reconcile(resp, after_silence);
    return;
  }
  metrics_->heartbeat_failures->Inc();
  if (absl::IsNotFound(s)) {
    // The coordinator does not know this worker (its state was reset).
    LLMT_LOG(Warning) << "worker " << options_.worker_id << ": " << s.message()
                      << "; registering again";
    registered_ = false;
    next_heartbeat_ = now;
    return;
  }
  if (absl::IsFailedPrecondition(s)) {
    // Another RegisterWorker superseded this session: whatever runs here may
    // already run elsewhere.
    LLMT_LOG(Warning) << "worker " << options_.worker_id << ": " << s.message()
                      << "; killing all ranks and registering again (is another llmt-worker "
                         "running with --worker_id="
                      << options_.worker_id << "?)";
    for (auto& [key, r] : ranks_) StopRank(*r, /*kill_now=*/true, "session superseded");
    registered_ = false;
    // Two daemons with one id would otherwise supersede each other in a tight loop.
    next_heartbeat_ = now + retry_backoff_;
    retry_backoff_ = std::min(retry_backoff_ * 2, absl::Seconds(2));
    return;
  }
  metrics_->connected->Set(0);
  if (now - last_complaint_ > absl::Seconds(10)) {
    LLMT_LOG(Warning) << "worker " << options_.worker_id << ": heartbeat failed: " << s
                      << " (ranks keep running; retrying)";
    last_complaint_ = now;
  }
  // Retry sooner than the interval: a restarted coordinator should see this
  // worker again quickly.
  next_heartbeat_ = now + std::min(heartbeat_interval_, absl::Milliseconds(500));
}

void Daemon::Reconcile(const v1::HeartbeatResponse& resp, bool after_silence) {
  std::set<Key> desired;
  std::set<uint64_t> fenced;
  {
    std::lock_guard<std::mutex> l(mu_);
    fenced = fenced_;
  }
  for (const auto& d : resp.desired()) {
    for (const auto& ra : d.local_ranks()) {
      if (ra.worker_id() != options_.worker_id) continue;
      Key key{d.attempt_id(), ra.rank()};
      desired.insert(key);
      if (ranks_.count(key) || finished_.count(key) || fenced.count(d.attempt_id())) continue;
      if (draining_) {
        // Placed here before the coordinator saw the drain: hand it back. A
        // STOPPED result requeues the job elsewhere without using a restart;
        // ignoring it would leave it STARTING until this worker's lease ran
        // out and then count as a failure.
        ReportNotStarted(d, ra.rank(), "worker shutting down", v1::ATTEMPT_OUTCOME_STOPPED);
        continue;
      }
      StartRank(d, ra);
    }
  }
  for (auto& [key, r] : ranks_) {
    if (desired.count(key) || r->stop_sent) continue;
    StopRank(*r, after_silence,
             after_silence ? "no longer desired after a silence longer than the lease "
                             "(possibly re-placed elsewhere)"
                           : "no longer desired by the coordinator");
  }
}

std::vector<int> Daemon::TakeCpus(int n) {
  const size_t size = allowed_cpus_.size();
  n = std::max(1, std::min<int>(n, static_cast<int>(size)));
  std::vector<size_t> order(size);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (cpu_load_[a] != cpu_load_[b]) return cpu_load_[a] < cpu_load_[b];
    return (a + size - cpu_rotate_) % size < (b + size - cpu_rotate_) % size;
  });
  std::vector<int> out;
  for (int i = 0; i < n; ++i) {
    ++cpu_load_[order[i]];
    out.push_back(allowed_cpus_[order[i]]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void Daemon::ReleaseCpus(const std::vector<int>& cpus) {
  for (int c : cpus) {
    auto it = std::find(allowed_cpus_.begin(), allowed_cpus_.end(), c);
    if (it != allowed_cpus_.end() && cpu_load_[it - allowed_cpus_.begin()] > 0) {
      --cpu_load_[it - allowed_cpus_.begin()];
    }
  }
}

void Daemon::ReportNotStarted(const v1::DesiredAttempt& d, int rank, const std::string& why,
                              v1::AttemptOutcome outcome) {
  LLMT_LOG(Warning) << "worker " << options_.worker_id << ": attempt " << d.attempt_id() << " rank "
                    << rank << " of " << d.job() << " not started: " << why;
  v1::ReportAttemptResultRequest res;
  res.set_attempt_id(d.attempt_id());
  res.set_rank(rank);
  res.set_outcome(outcome);
  res.set_exit_code(kNotStartedExitCode);
  res.set_message(absl::StrCat("not started on worker ", options_.worker_id, ": ", why));
  res.set_final_step(d.resume_step());
  outbox_->AddResult(std::move(res));
  finished_.insert({d.attempt_id(), rank});
  metrics_->ranks_ended.WithLabels({OutcomeName(outcome)})->Inc();
}

void Daemon::StartRank(const v1::DesiredAttempt& d, const v1::RankAssignment& ra) {
  const uint64_t id = d.attempt_id();
  const int rank = ra.rank();
  auto r = std::make_unique<Rank>();
  r->attempt_id = id;
  r->rank = rank;
  r->world_size = std::max(1, d.world_size());
  r->job = d.job();
  r->spec = d.spec();
  r->last_step = d.resume_step();

  // Check what this machine must provide before spending a process on it.
  const std::string data_dir = Absolute(r->spec.data().dir());
  if (r->spec.data().dir().empty() || !fs::IsDir(data_dir)) {
    ReportNotStarted(d, rank,
                     absl::StrCat("data.dir '", r->spec.data().dir(), "' does not exist",
                                  data_dir != r->spec.data().dir()
                                      ? absl::StrCat(" (resolved to ", data_dir, ")")
                                      : std::string()));
    return;
  }
  const std::string out_dir = r->spec.output_dir();
  if (out_dir.empty()) {
    ReportNotStarted(d, rank, "the spec has no output_dir");
    return;
  }
  if (absl::Status s = fs::MakeDirs(out_dir); !s.ok()) {
    ReportNotStarted(d, rank, absl::StrCat("output_dir: ", s.message()));
    return;
  }
  const std::string attempt_dir = fs::JoinPath(options_.state_dir, absl::StrCat("attempts/", id));
  const std::string spec_path = fs::JoinPath(attempt_dir, absl::StrCat("spec-rank", rank, ".yaml"));
  if (absl::Status s = fs::MakeDirs(attempt_dir); !s.ok()) {
    ReportNotStarted(d, rank, std::string(s.message()));
    return;
  }
  // A GPU rank sees only its own devices (CUDA_VISIBLE_DEVICES below), as 0..n-1.
  if (ra.gpu_indices_size() > 0) r->spec.mutable_train()->set_device_index(0);
  if (absl::Status s = fs::WriteFileAtomic(spec_path, spec::ToYaml(r->spec)); !s.ok()) {
    ReportNotStarted(d, rank, std::string(s.message()));
    return;
  }

  LaunchSpec ls;
  ls.argv = {options_.trainer, "train", spec_path, "--out", out_dir, "--progress", "lines"};
  if (!d.resume_uri().empty()) {
    ls.argv.insert(ls.argv.end(), {"--resume", UriPath(d.resume_uri())});
  } else if (d.ordinal() > 0) {
    // No committed checkpoint, but an earlier attempt of this job may have
    // written one whose commit never reached the coordinator.
    ls.argv.insert(ls.argv.end(), {"--resume", "auto"});
  }
  ls.log_path = fs::JoinPath(options_.state_dir, absl::StrCat("logs/job-", d.job_id(), "-attempt-",
                                                              id, "-rank-", rank, ".log"));
  ls.env = {"LLMT_EVENT_FD=3",
            absl::StrCat("WORLD_SIZE=", r->world_size),
            absl::StrCat("RANK=", rank),
            absl::StrCat("LLMT_JOB=", d.job()),
            absl::StrCat("LLMT_ATTEMPT_ID=", id),
            "MASTER_ADDR",
            "MASTER_PORT",
            "LLMT_STORE_DIR"};
  if (r->world_size > 1) {
    const auto& c = options_.coordinator;
    ls.env.insert(
        ls.env.end(),
        {"LLMT_RDZV_COORDINATOR=" + c.address, absl::StrCat("LLMT_RDZV_ATTEMPT=", id),
         "LLMT_RDZV_TOKEN=" + c.token, std::string("LLMT_RDZV_TLS=") + (c.tls ? "1" : "0"),
         "LLMT_RDZV_TLS_CA=" + c.tls_ca, "LLMT_RDZV_TLS_CERT=" + c.tls_cert,
         "LLMT_RDZV_TLS_KEY=" + c.tls_key, "LLMT_RDZV_TLS_SERVER_NAME=" + c.tls_server_name,
         "LLMT_COMM_HOST=" + options_.advertise_host, absl::StrCat("LLMT_RUN_ID=attempt-", id)});
  } else {
    ls.env.insert(ls.env.end(), {"LLMT_RDZV_COORDINATOR", "LLMT_RDZV_TOKEN"});
  }
  int ncpus = 0;
  std::string gpu_model;
  if (ra.gpu_indices_size() > 0) {
    std::vector<std::string> visible;
    for (int g : ra.gpu_indices()) {
      for (const auto& info : capacity_.gpus()) {
        if (info.index() != g) continue;
        visible.push_back(info.uuid().empty() ? std::to_string(g) : info.uuid());
        if (r->gpu_uuid.empty()) r->gpu_uuid = info.uuid();
        gpu_model = info.model();
      }
    }
    // The rank sees only its GPUs, as device 0.
    ls.env.push_back("CUDA_VISIBLE_DEVICES=" + absl::StrJoin(visible, ","));
    ls.env.push_back("LOCAL_RANK=0");
  } else {
    r->cpus = TakeCpus(std::max(1, ra.cpu_cores()));
    ls.cpus = r->cpus;
    ncpus = static_cast<int>(r->cpus.size());
    int local = 0;
    for (const auto& other : d.local_ranks()) local += other.rank() < rank ? 1 : 0;
    ls.env.push_back(absl::StrCat("LOCAL_RANK=", local));
  }

  const int vocab =
      r->spec.model().vocab_size() > 0 ? r->spec.model().vocab_size() : DataVocabSize(data_dir);
  r->flops_per_token = TrainFlopsPerToken(r->spec, vocab);
  if (options_.peak_flops_per_rank > 0) {
    r->peak_flops = options_.peak_flops_per_rank;
  } else if (ra.gpu_indices_size() > 0) {
    r->peak_flops = GpuPeakFlops(gpu_model, r->spec.train().precision()) * ra.gpu_indices_size();
  } else {
    r->peak_flops = CpuPeakFlops(ncpus);
  }

  const std::vector<std::string> labels = {d.job(), std::to_string(rank)};
  auto& m = *metrics_;
  r->loss = m.train_loss.WithLabels(labels);
  r->val = m.val_loss.WithLabels(labels);
  r->lr = m.learning_rate.WithLabels(labels);
  r->gnorm = m.grad_norm.WithLabels(labels);
  r->tps = m.tokens_per_second.WithLabels(labels);
  r->mfu = m.mfu_ratio.WithLabels(labels);
  r->running = m.attempts_running.WithLabels(labels);
  r->step_hist = m.step_duration.WithLabels(labels);
  r->ckpt_hist = m.checkpoint_duration.WithLabels(labels);
  r->steps = m.train_steps.WithLabels(labels);
  r->ckpt_bytes = m.checkpoint_bytes.WithLabels(labels);
  if (!r->gpu_uuid.empty()) r->gpu_mem = m.gpu_memory_used.WithLabels(labels);

  Rank* rp = r.get();
  Outbox* outbox = outbox_.get();
  auto proc = RankProcess::Start(
      ls, [this, rp](const TrainerEvent& ev) { OnEvent(rp, ev); },
      [outbox, id, rank](const std::string& line) { outbox->AddLogLine(id, rank, line); });
  if (!proc.ok()) {
    ReleaseCpus(r->cpus);
    ReportNotStarted(d, rank, std::string(proc.status().message()));
    return;
  }
  r->proc = std::move(proc).value();
  r->pid = r->proc->pid();
  r->running->Set(1);
  LLMT_LOG(Info) << "worker " << options_.worker_id << ": started " << d.job() << " attempt " << id
                 << " rank " << rank << "/" << r->world_size << " (pid " << r->proc->pid()
                 << (d.resume_uri().empty()
                         ? std::string(", fresh")
                         : absl::StrCat(", resuming from step ", d.resume_step()))
                 << (r->cpus.empty() ? std::string()
                                     : absl::StrCat(", cpus ", absl::StrJoin(r->cpus, ",")))
                 << "); log " << ls.log_path;
  ranks_[{id, rank}] = std::move(r);
}

void Daemon::OnEvent(Rank* r, const TrainerEvent& ev) {
  const absl::Time now = absl::Now();
  switch (ev.type) {
    case TrainerEvent::Type::kStep: {
      std::map<std::string, double> pm = ev.metrics;
      pm["max_steps"] = static_cast<double>(ev.max_steps);
      bool has_val = ev.metrics.count("val_loss") > 0;
      {
        std::lock_guard<std::mutex> l(r->mu);
        if (ev.step > r->last_step) r->steps->Inc(static_cast<double>(ev.step - r->last_step));
        r->last_step = ev.step;
        r->last_step_time = now;
        auto get = [&](const char* k) {
          auto it = ev.metrics.find(k);
          return it == ev.metrics.end() ? 0.0 : it->second;
        };
        r->loss->Set(get("loss"));
        r->lr->Set(get("lr"));
        r->gnorm->Set(get("grad_norm"));
        r->tps->Set(get("tokens_per_s"));
        if (has_val) r->val->Set(get("val_loss"));
        if (ev.metrics.count("step_ms")) r->step_hist->Observe(get("step_ms") / 1e3);
        if (r->flops_per_token > 0 && r->peak_flops > 0) {
          double mfu = get("tokens_per_s") * r->flops_per_token / (r->peak_flops * r->world_size);
          r->mfu->Set(mfu);
          pm["mfu"] = mfu;
        }
        if (r->gpu_mem != nullptr && now - r->last_gpu_query > absl::Seconds(5)) {
          r->last_gpu_query = now;
          int64_t used = GpuMemoryUsedByProcess(r->gpu_uuid, r->pid.load());
          if (used >= 0) r->gpu_mem->Set(static_cast<double>(used));
        }
      }
      const bool last = ev.max_steps > 0 && ev.step >= ev.max_steps;
      outbox_->AddProgress(r->attempt_id, r->rank, ev.step, pm, has_val || last);
      break;
    }
    case TrainerEvent::Type::kCheckpoint: {
      std::string dir = Absolute(ev.dir);
      {
        std::lock_guard<std::mutex> l(r->mu);
        // The trainer checkpoints right after the step event of the same step.
        if (r->last_step == ev.step && r->last_step_time != absl::InfinitePast()) {
          r->ckpt_hist->Observe(absl::ToDoubleSeconds(now - r->last_step_time));
        }
      }
      auto manifest = storage::ReadManifest(dir);
      auto sha = fs::Sha256File(fs::JoinPath(dir, "manifest.json"));
      if (!manifest.ok() || !sha.ok()) {
        LLMT_LOG(Warning) << "worker: checkpoint " << dir << " of attempt " << r->attempt_id
                          << " cannot be committed: "
                          << (manifest.ok() ? sha.status() : manifest.status());
        break;
      }
      int64_t bytes = fs::FileSize(fs::JoinPath(dir, "manifest.json")).value_or(0);
      for (const auto& f : manifest->files) bytes += f.size;
      r->ckpt_bytes->Inc(static_cast<double>(bytes));
      v1::CommitCheckpointRequest req;
      req.set_attempt_id(r->attempt_id);
      req.set_rank(r->rank);
      req.set_step(ev.step);
      req.set_uri(dir);
      req.set_bytes(bytes);
      req.set_sha256(*sha);
      for (const auto& [k, v] : ev.metrics) (*req.mutable_metrics())[k] = v;
      outbox_->AddCheckpoint(std::move(req));
      break;
    }
    case TrainerEvent::Type::kExit: {
      std::lock_guard<std::mutex> l(r->mu);
      r->has_exit = true;
      r->exit_event = ev;
      break;
    }
  }
}

void Daemon::StopRank(Rank& r, bool kill_now, const std::string& why) {
  if (!r.proc || r.proc->exited()) return;
  if (!r.stop_sent) {
    LLMT_LOG(Info) << "worker " << options_.worker_id << ": stopping " << r.job << " attempt "
                   << r.attempt_id << " rank " << r.rank << " (" << why << ")"
                   << (kill_now ? ": SIGKILL" : ": SIGTERM");
    r.stop_why = why;
  }
  r.stop_sent = true;
  if (kill_now) {
    r.proc->Signal(SIGKILL);
    r.killed = true;
  } else {
    r.proc->Signal(SIGTERM);
    r.kill_at = absl::Now() + options_.stop_grace;
  }
}

void Daemon::Enforce() {
  std::set<uint64_t> fenced;
  {
    std::lock_guard<std::mutex> l(mu_);
    fenced = fenced_;
  }
  const absl::Time now = absl::Now();
  for (auto& [key, r] : ranks_) {
    if (!r->proc || r->proc->exited() || r->killed) continue;
    if (fenced.count(key.first)) {
      StopRank(*r, /*kill_now=*/true, "the coordinator fenced the attempt");
    } else if (r->stop_sent && now > r->kill_at) {
      LLMT_LOG(Warning) << "worker " << options_.worker_id << ": attempt " << key.first << " rank "
                        << key.second << " did not exit within " << options_.stop_grace
                        << " of SIGTERM; SIGKILL";
      StopRank(*r, /*kill_now=*/true, r->stop_why);
    }
  }
}

void Daemon::ReapRanks() {
  for (auto it = ranks_.begin(); it != ranks_.end();) {
    Rank& r = *it->second;
    if (r.proc->Poll(nullptr)) {
      FinishRank(r);
      finished_.insert(it->first);
      it = ranks_.erase(it);
    } else {
      ++it;
    }
  }
}

void Daemon::FinishRank(Rank& r) {
  r.proc->DrainOutput(3000);  // the exit event and a last checkpoint come first
  const ExitInfo x = r.proc->exit_info();
  bool has_exit;
  TrainerEvent exit_ev;
  int64_t last_step;
  {
    std::lock_guard<std::mutex> l(r.mu);
    has_exit = r.has_exit;
    exit_ev = r.exit_event;
    last_step = r.last_step;
  }
  const int64_t max_steps = r.spec.train().max_steps();
  const int64_t final_step = has_exit && exit_ev.final_step > 0 ? exit_ev.final_step : last_step;
  v1::ReportAttemptResultRequest res;
  res.set_attempt_id(r.attempt_id);
  res.set_rank(r.rank);
  res.set_exit_code(x.exited ? x.code : 128 + x.signal);
  res.set_final_step(final_step);
  const bool clean = x.exited && x.code == 0 && has_exit && exit_ev.ok;
  if (clean && max_steps > 0 && final_step >= max_steps) {
    res.set_outcome(v1::ATTEMPT_OUTCOME_SUCCEEDED);
    res.set_message(absl::StrCat("finished at step ", final_step));
  } else if (r.stop_sent) {
    res.set_outcome(v1::ATTEMPT_OUTCOME_STOPPED);
    res.set_message(
        absl::StrCat(r.stop_why, "; ",
                     clean ? absl::StrCat("stopped at step ", final_step, " after a checkpoint")
                           : x.Describe()));
  } else {
    res.set_outcome(v1::ATTEMPT_OUTCOME_FAILED);
    std::string why;
    if (clean) {
      why = absl::StrCat("the trainer stopped at step ", final_step, " of ", max_steps,
                         " (a signal from outside the worker?)");
    } else if (has_exit && !exit_ev.message.empty()) {
      why = exit_ev.message;
    } else {
      why = x.Describe();
      // The trainer's own last error line says more than a bare exit code.
      auto tail = r.proc->TailLines();
      for (auto t = tail.rbegin(); t != tail.rend(); ++t) {
        if (absl::StrContains(*t, "error")) {
          why = absl::StrCat(why, ": ", *t);
          break;
        }
      }
    }
    res.set_message(why);
  }
  LLMT_LOG(Info) << "worker " << options_.worker_id << ": " << r.job << " attempt " << r.attempt_id
                 << " rank " << r.rank << " ended (" << x.Describe()
                 << "): " << OutcomeName(res.outcome()) << ": " << res.message();
  metrics_->ranks_ended.WithLabels({OutcomeName(res.outcome())})->Inc();
  r.running->Set(0);
  stale_series_.push_back({absl::Now() + options_.finished_series_ttl, r.job, r.rank});
  ReleaseCpus(r.cpus);
  outbox_->AddResult(std::move(res));
}

void Daemon::DropStaleSeries() {
  const absl::Time now = absl::Now();
  for (auto it = stale_series_.begin(); it != stale_series_.end();) {
    if (it->at > now) {
      ++it;
      continue;
    }
    // A later attempt of the same job may run the same rank here and hold
    // pointers to these series: then they stay, and that rank's own end
    // schedules them again.
    bool live = false;
    for (const auto& [key, rank] : ranks_) {
      if (rank->job == it->job && rank->rank == it->rank) live = true;
    }
    if (!live) metrics_->RemoveRank({it->job, std::to_string(it->rank)});
    it = stale_series_.erase(it);
  }
}

void Daemon::Run() {
  while (true) {
    bool stop;
    {
      std::lock_guard<std::mutex> l(mu_);
      stop = stop_requested_;
      wake_ = false;
    }
    if (stop && !draining_) {
      draining_ = true;
      LLMT_LOG(Info) << "worker " << options_.worker_id << ": shutting down; stopping "
                     << ranks_.size() << " rank(s)";
      // Tell the coordinator first, so that the jobs it requeues when these
      // ranks report STOPPED are not placed here again.
      if (registered_) HeartbeatOnce();
      for (auto& [key, r] : ranks_) {
        if (!r->stop_sent) StopRank(*r, /*kill_now=*/false, "worker shutting down");
      }
    }
    ReapRanks();
    DropStaleSeries();
    Enforce();
    if (draining_ && ranks_.empty()) break;
    if (absl::Now() >= next_heartbeat_) HeartbeatOnce();
    absl::Duration wait = std::min(next_heartbeat_ - absl::Now(), absl::Milliseconds(100));
    if (wait > absl::ZeroDuration()) {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait_for(l, absl::ToChronoNanoseconds(wait), [&] { return wake_; });
    }
  }
  // Deliver the last checkpoints and outcomes (bounded: the coordinator may be gone).
  if (!outbox_->Flush(absl::Seconds(5))) {
    LLMT_LOG(Warning) << "worker " << options_.worker_id << ": " << outbox_->Pending()
                      << " report(s) undelivered at exit";
  }
  ready_ = false;
  LLMT_LOG(Info) << "worker " << options_.worker_id << ": stopped";
}

}  // namespace llmt::daemon
