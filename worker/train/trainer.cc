#include "worker/train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <optional>
#include <vector>

#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/spec.h"
#include "common/status.h"
#include "kernels/cpu/runtime.h"
#include "kernels/optimizer.h"
#include "kernels/reduce.h"
#include "storage/checkpoint.h"
#include "worker/comm/collective.h"
#include "worker/comm/comm_queue.h"
#include "worker/data/loader.h"
#include "worker/model/cuda_model.h"
#include "worker/model/model.h"
#include "worker/train/metrics_log.h"
#include "worker/train/model_io.h"
#include "worker/train/progress.h"
#include "worker/train/schedule.h"
#include "worker/train/step_guard.h"

namespace llmt::train {
namespace {

std::atomic<bool> g_stop{false};
void OnStopSignal(int) { g_stop.store(true); }

constexpr int kStateFormatVersion = 1;

std::string NowRfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

v1::LoaderCursor ToProto(const data::LoaderState& s) {
  v1::LoaderCursor c;
  c.set_seed(s.seed);
  c.set_rng_state(s.rng_state);
  c.set_shard(s.shard);
  c.set_offset(s.offset);
  c.set_batches(s.batches);
  return c;
}

data::LoaderState FromProto(const v1::LoaderCursor& c) {
  data::LoaderState s;
  s.seed = c.seed();
  s.rng_state = c.rng_state();
  s.shard = c.shard();
  s.offset = c.offset();
  s.batches = c.batches();
  return s;
}

class TrainerImpl final : public Trainer {
 public:
  explicit TrainerImpl(const TrainOptions& o) : opts_(o), spec_(o.spec) {}

  absl::Status Init();
  absl::StatusOr<TrainResult> Run() override;

 private:
  absl::Status Resume(const std::string& dir);
  absl::StatusOr<double> Evaluate();
  absl::StatusOr<std::string> SaveCheckpoint(int64_t steps_done);
  // Averages gradients over ranks (all-reduce, or reduce-scatter onto this
  // rank's shard with ZeRO-1) and returns the global gradient L2 norm.
  absl::StatusOr<double> SyncGradients();
  bool is_root() const { return comm_->rank() == 0; }
  void ApplyAdamW(int64_t adam_t, float lr, float grad_scale);
  // Queues averaged all-reduces of grads[offset, offset + count) in buckets
  // (host or device memory, as the collective expects), after `wait_ready`
  // when given (GPU: until the device has computed the range).
  void EnqueueGradAllReduce(float* grads, int64_t offset, int64_t count,
                            std::function<absl::Status()> wait_ready);
  // train.device: cuda — builds gpu_ and checks what the GPU path supports.
  absl::Status InitGpuModel(const model::ModelConfig& cfg);
  // Host copies for checkpoint files: the CPU model's own buffer, or the GPU
  // master weights / moments staged into host_params_ / opt_.
  absl::StatusOr<const float*> HostParams();
  absl::Status StageOptimizerOnHost();
  // Stochastic-rounding bits of AdamW update number adam_t: different every
  // step, replayed identically on resume.
  uint64_t SrSeed(int64_t adam_t) const {
    return spec_.train().seed() * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(adam_t);
  }

  TrainOptions opts_;
  v1::JobSpec spec_;
  std::unique_ptr<comm::Collective> owned_comm_;
  comm::Collective* comm_ = nullptr;
  // Data parallel without ZeRO (CPU and GPU): each block's gradients are
  // all-reduced on comm_queue_'s thread as soon as the last micro-step's
  // backward has finished that block, overlapping communication with the rest
  // of backward (on a GPU, NCCL runs on its own stream beside the backward).
  bool overlap_ = false;
  std::unique_ptr<comm::CommQueue> comm_queue_;
  int world_ = 1;
  // Gradients go through the collective: several ranks, or a real collective
  // even at world size 1 (LLMT_COMM_FORCE), so a one-GPU machine exercises
  // the multi-rank path.
  bool distributed_ = false;
  bool zero_ = false;
  comm::ShardLayout layout_;    // ZeRO-1 shards over the flat parameter buffer
  int64_t opt_lo_ = 0, opt_hi_ = 0;  // the range this rank's optimizer updates
  std::string ckpt_root_;
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  // Exactly one of model_ (train.device: cpu) and gpu_ (cuda) is set.
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<model::CudaModel> gpu_;
  const std::vector<model::ParamInfo>* info_ = nullptr;
  int64_t n_ = 0;  // parameters
  std::vector<float> host_params_;  // GPU: staging for checkpoint files
  OptimizerState opt_;
  Schedule schedule_;
  StepGuard guard_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<ProgressPrinter> progress_;
  std::vector<int32_t> inputs_, targets_;
  std::string tokenizer_model_;  // bytes of data.dir/tokenizer.model
  int B_ = 0, T_ = 0, accum_ = 1;

  // Persistent state (saved in trainer_state.json).
  v1::TrainerState state_;
};

absl::Status TrainerImpl::Init() {
  B_ = spec_.train().batch_size();
  T_ = spec_.train().seq_len();
  accum_ = std::max(1, spec_.train().grad_accum_steps());
  ckpt_root_ = fs::JoinPath(opts_.out_dir, "checkpoints");
  RETURN_IF_ERROR(fs::MakeDirs(opts_.out_dir));
  comm_ = opts_.comm;
  if (comm_ == nullptr) {
    owned_comm_ = std::make_unique<comm::LocalCollective>();
    comm_ = owned_comm_.get();
  }
  world_ = comm_->world_size();
  distributed_ = world_ > 1 || std::string(comm_->backend()) != "local";
  zero_ = spec_.train().zero() == 1;

  kernels::cpu::SetNumThreads(spec_.train().threads());  // 0 = all cores

  data::LoaderOptions lo;
  lo.data_dir = spec_.data().dir();
  lo.split = "train";
  lo.batch_size = B_;
  lo.seq_len = T_;
  lo.seed = spec_.train().seed();
  lo.rank = comm_->rank();
  lo.world_size = world_;
  ASSIGN_OR_RETURN(train_loader_, data::DataLoader::Open(lo));
  lo.split = "val";
  lo.sequential = true;
  auto val = data::DataLoader::Open(lo);
  if (val.ok()) {
    val_loader_ = std::move(val).value();
  } else {
    LLMT_LOG(Warning) << "no validation split (" << val.status().message()
                      << "); validation is skipped";
  }

  ASSIGN_OR_RETURN(tokenizer_model_,
                   fs::ReadFile(fs::JoinPath(spec_.data().dir(), "tokenizer.model")));
  ASSIGN_OR_RETURN(auto cfg, ModelConfigFromSpec(spec_, train_loader_->vocab_size()));
  if (spec_.train().device() == "cuda") {
    RETURN_IF_ERROR(InitGpuModel(cfg));
  } else {
    ASSIGN_OR_RETURN(model_, model::Model::Create(cfg, B_, T_));
    model_->InitWeights(spec_.train().seed());
    info_ = &model_->params_info();
    n_ = model_->num_params();
    // Ranks start from identical weights (same seed); the broadcast makes that
    // a guarantee rather than an assumption about deterministic init.
    RETURN_IF_ERROR(comm_->Broadcast(model_->params(), static_cast<size_t>(n_), 0));
  }
  const int64_t n = n_;
  // LLMT_OVERLAP_COMM=0 reduces after the backward instead (A/B, debugging).
  const char* overlap_env = std::getenv("LLMT_OVERLAP_COMM");
  overlap_ =
      !zero_ && distributed_ && !(overlap_env != nullptr && std::string(overlap_env) == "0");
  if (overlap_) comm_queue_ = std::make_unique<comm::CommQueue>(comm_);
  // 16-float alignment keeps each shard's AdamW loop on 64-byte boundaries.
  layout_ = comm::ShardLayout::Even(static_cast<size_t>(n), world_, 16);
  opt_lo_ = zero_ ? static_cast<int64_t>(layout_.offset(comm_->rank())) : 0;
  opt_hi_ = zero_ ? opt_lo_ + static_cast<int64_t>(layout_.len(comm_->rank())) : n;
  opt_.lo = opt_lo_;
  if (!gpu_) {  // the GPU keeps its moments on the device
    opt_.m.assign(opt_hi_ - opt_lo_, 0.f);
    opt_.v.assign(opt_hi_ - opt_lo_, 0.f);
  }
  inputs_.resize(static_cast<size_t>(B_) * T_);
  targets_.resize(static_cast<size_t>(B_) * T_);

  ASSIGN_OR_RETURN(schedule_.kind, Schedule::ParseKind(spec_.schedule().kind()));
  schedule_.lr = spec_.optim().lr();
  schedule_.warmup_steps = spec_.schedule().warmup_steps();
  schedule_.max_steps = spec_.train().max_steps();
  schedule_.min_lr_ratio = spec_.schedule().min_lr_ratio();
  schedule_.decay_fraction = spec_.schedule().decay_fraction();

  state_.set_format_version(kStateFormatVersion);
  *state_.mutable_spec() = spec_;
  state_.set_tokenizer_hash(train_loader_->tokenizer_hash());
  state_.set_world_size(world_);
  state_.set_vocab_size(cfg.vocab_size);

  // Resume.
  std::string resume_dir;
  if (opts_.resume == "auto") {
    auto latest = storage::LatestValidCheckpoint(ckpt_root_);
    if (latest.ok()) {
      resume_dir = latest->dir;
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    }
  } else if (!opts_.resume.empty()) {
    resume_dir = opts_.resume;
  } else {
    auto existing = storage::ListCheckpoints(ckpt_root_);
    if (existing.ok() && !existing->empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          ckpt_root_, " already holds checkpoints (newest ", existing->back().dir,
          "); pass --resume auto to continue that run or choose another --out"));
    }
  }
  if (!resume_dir.empty()) RETURN_IF_ERROR(Resume(resume_dir));
  guard_ = StepGuard(spec_.train().loss_spike_factor(), schedule_.warmup_steps, state_.loss_ema(),
                     state_.grad_norm_ema());

  // Only rank 0 writes metrics and prints progress.
  if (is_root()) {
    ASSIGN_OR_RETURN(metrics_, MetricsLog::Open(fs::JoinPath(opts_.out_dir, "metrics.jsonl"),
                                                state_.step()));
  }
  progress_ = std::make_unique<ProgressPrinter>(
      is_root() ? opts_.progress : TrainOptions::Progress::kNone, spec_.train().max_steps(),
      std::max(1, spec_.train().log_every()));
  if (!is_root()) return absl::OkStatus();

  const double ftok = model::TrainFlopsPerToken(cfg, n_, T_);
  if (gpu_) {
    LLMT_LOG(Info) << "GPU " << gpu_->DeviceDescription() << ", precision "
                   << spec_.train().precision() << ", recompute " << spec_.train().recompute()
                   << "; device memory:\n"
                   << gpu_->MemoryReport();
  }
  LLMT_LOG(Info) << absl::StrFormat(
      "model %s on %s: %.2fM parameters, %.3f GFLOP/token (train), vocab %d%s; "
      "batch %d x %d x accum %d x %d rank(s) = %d tokens/step; %lld steps%s",
      spec_.model().family(), spec_.train().device(), n_ / 1e6, ftok / 1e9, cfg.vocab_size,
      model_ ? absl::StrFormat(", activations %.1f MiB", model_->activation_bytes() / 1048576.0)
             : std::string(),
      B_, T_, accum_, world_, B_ * T_ * accum_ * world_,
      static_cast<long long>(spec_.train().max_steps()),
      distributed_ ? absl::StrCat("; ", comm_->backend(),
                                  zero_ ? " data parallel, ZeRO-1" : " data parallel")
                   : "");
  return absl::OkStatus();
}

absl::Status TrainerImpl::InitGpuModel(const model::ModelConfig& cfg) {
  const auto& t = spec_.train();
  if (zero_) {
    return absl::UnimplementedError(
        "train.zero: 1 is not supported with train.device: cuda yet (the GPU keeps the whole "
        "optimizer state); use train.zero: 0");
  }
  if (world_ > 1 && std::string(comm_->backend()) != "nccl") {
    return absl::FailedPreconditionError(absl::StrCat(
        "train.device: cuda with ", world_, " ranks needs the NCCL collective, got ",
        comm_->backend()));
  }
  model::CudaModelOptions o;
  // A rank of a multi-GPU run uses the device its NCCL communicator was
  // built on (LOCAL_RANK); a single process uses train.device_index.
  o.device = comm_->device() >= 0 ? comm_->device() : t.device_index();
  ASSIGN_OR_RETURN(o.precision, model::ParsePrecision(t.precision()));
  ASSIGN_OR_RETURN(o.recompute, model::ParseRecompute(t.recompute()));
  o.stochastic_rounding = t.stochastic_rounding();
  auto created = model::CudaModel::Create(cfg, B_, T_, o);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat("job '", spec_.name(), "': ", created.status().message()));
  }
  gpu_ = std::move(created).value();
  RETURN_IF_ERROR(gpu_->InitWeights(t.seed()));
  info_ = &gpu_->params_info();
  n_ = gpu_->num_params();
  if (world_ > 1) {
    RETURN_IF_ERROR(comm_->Broadcast(gpu_->device_params(), static_cast<size_t>(n_), 0));
    gpu_->RefreshParamCopy(/*sr_seed=*/0);
  }
  return absl::OkStatus();
}

absl::StatusOr<const float*> TrainerImpl::HostParams() {
  if (!gpu_) return model_->params();
  host_params_.resize(static_cast<size_t>(n_));
  RETURN_IF_ERROR(gpu_->GetParams(host_params_.data()));
  return host_params_.data();
}

absl::Status TrainerImpl::StageOptimizerOnHost() {
  if (!gpu_) return absl::OkStatus();
  opt_.lo = 0;
  opt_.m.resize(static_cast<size_t>(n_));
  opt_.v.resize(static_cast<size_t>(n_));
  return gpu_->GetOptimizerState(opt_.m.data(), opt_.v.data());
}

absl::Status TrainerImpl::Resume(const std::string& dir) {
  ASSIGN_OR_RETURN(auto info, storage::VerifyCheckpoint(dir));
  ASSIGN_OR_RETURN(auto st, LoadTrainerState(fs::JoinPath(dir, "trainer_state.json")));
  if (!google::protobuf::util::MessageDifferencer::Equals(st.spec().model(), spec_.model())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " was trained with a different model section (",
        "model: ", st.spec().model().ShortDebugString(),
        ") than the spec (", spec_.model().ShortDebugString(), ")"));
  }
  if (st.tokenizer_hash() != train_loader_->tokenizer_hash()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " was trained with tokenizer ", st.tokenizer_hash().substr(0, 12),
        " but ", spec_.data().dir(), " uses tokenizer ", train_loader_->tokenizer_hash().substr(0, 12)));
  }
  if (gpu_) {
    host_params_.resize(static_cast<size_t>(n_));
    RETURN_IF_ERROR(
        LoadModelWeights(*info_, host_params_.data(), fs::JoinPath(dir, "model.safetensors")));
    RETURN_IF_ERROR(gpu_->SetParams(host_params_.data()));
    // The bf16 copy the continuous run would hold: rounded by the last
    // applied update (adam_t = steps - skipped steps).
    const int64_t last_update = st.step() - st.skipped_steps_total();
    if (spec_.train().stochastic_rounding() && last_update > 0) {
      gpu_->RefreshParamCopy(SrSeed(last_update));
    }
    RETURN_IF_ERROR(LoadOptimizer(*info_, n_, dir, opt_lo_, opt_hi_, &opt_));
    RETURN_IF_ERROR(gpu_->SetOptimizerState(opt_.m.data(), opt_.v.data()));
    opt_.m = {};  // the device holds them now
    opt_.v = {};
  } else {
    RETURN_IF_ERROR(LoadModelWeights(*model_, fs::JoinPath(dir, "model.safetensors")));
    RETURN_IF_ERROR(LoadOptimizer(*info_, n_, dir, opt_lo_, opt_hi_, &opt_));
  }
  RETURN_IF_ERROR(train_loader_->Restore(FromProto(st.train_loader())));
  // Keep the current spec (max_steps etc. may have been extended) but the
  // checkpoint's progress counters.
  st.set_format_version(kStateFormatVersion);
  *st.mutable_spec() = spec_;
  state_ = st;
  if (is_root()) {
    LLMT_LOG(Info) << "resumed from " << info.dir << " at step " << state_.step()
                   << (st.world_size() != world_
                           ? absl::StrCat(" (saved by ", st.world_size(), " rank(s), now ", world_, ")")
                           : "");
  }
  state_.set_world_size(world_);
  return absl::OkStatus();
}

absl::StatusOr<double> TrainerImpl::Evaluate() {
  val_loader_->Reset();
  const int steps = std::max(1, spec_.eval().steps());
  double sum = 0;
  for (int i = 0; i < steps; ++i) {
    val_loader_->Next(inputs_.data(), targets_.data());
    if (gpu_) {
      ASSIGN_OR_RETURN(double l, gpu_->Forward(inputs_.data(), targets_.data(), B_, T_));
      sum += l;
    } else {
      sum += model_->Forward(inputs_.data(), targets_.data(), B_, T_);
    }
  }
  double mean = sum / steps;
  // Each rank evaluated its slice of the same global val batches.
  RETURN_IF_ERROR(comm_->AllReduceScalar(&mean, comm::ReduceOp::kAvg));
  return mean;
}

absl::StatusOr<double> TrainerImpl::SyncGradients() {
  if (gpu_) {
    if (distributed_ && !overlap_) {
      // NCCL reads the device buffer on its own stream: the backward must be done.
      RETURN_IF_ERROR(gpu_->Synchronize());
      RETURN_IF_ERROR(comm_->AllReduceAvg(gpu_->device_grads(), static_cast<size_t>(n_)));
    }
    // Every rank now holds the same averaged gradient (ZeRO-1 is refused on
    // cuda), so the local norm is the global one.
    return gpu_->GradNorm();
  }
  float* g = model_->grads();
  const int64_t n = n_;
  double sumsq = 0;
  if (!distributed_ || overlap_) {  // nothing to reduce, or already reduced during backward
    sumsq = kernels::cpu::SumSquares(g, n);
  } else if (zero_) {
    // Each rank needs only its shard's averaged gradient.
    RETURN_IF_ERROR(comm_->ReduceScatter(g, g + opt_lo_, layout_, comm::ReduceOp::kAvg));
    sumsq = kernels::cpu::SumSquares(g + opt_lo_, opt_hi_ - opt_lo_);
    RETURN_IF_ERROR(comm_->AllReduceScalar(&sumsq, comm::ReduceOp::kSum));
  } else {
    // Buckets bound the transient memory Gloo needs per call.
    constexpr int64_t kBucket = 8 << 20;  // floats (32 MiB)
    for (int64_t off = 0; off < n; off += kBucket) {
      RETURN_IF_ERROR(comm_->AllReduceAvg(g + off, static_cast<size_t>(std::min(kBucket, n - off))));
    }
    sumsq = kernels::cpu::SumSquares(g, n);
  }
  return std::sqrt(sumsq);
}

void TrainerImpl::EnqueueGradAllReduce(float* grads, int64_t offset, int64_t count,
                                       std::function<absl::Status()> wait_ready) {
  // Buckets bound the transient memory Gloo needs per call.
  constexpr int64_t kBucket = 8 << 20;  // floats (32 MiB)
  if (wait_ready) {
    // GPU: the range is final once the device has run the backward this far;
    // the queue's thread waits for that, not the host thread enqueueing kernels.
    comm_queue_->Enqueue("wait for gradients",
                         [w = std::move(wait_ready)](comm::Collective&) { return w(); });
  }
  for (int64_t off = offset; off < offset + count; off += kBucket) {
    const size_t len = static_cast<size_t>(std::min(kBucket, offset + count - off));
    float* p = grads + off;
    comm_queue_->Enqueue(absl::StrCat("gradient all-reduce [", off, ", +", len, ")"),
                         [p, len](comm::Collective& c) { return c.AllReduceAvg(p, len); });
  }
}

void TrainerImpl::ApplyAdamW(int64_t adam_t, float lr, float grad_scale) {
  const auto& o = spec_.optim();
  if (gpu_) {
    model::AdamWHyper h;
    h.lr = lr;
    h.beta1 = static_cast<float>(o.beta1());
    h.beta2 = static_cast<float>(o.beta2());
    h.eps = static_cast<float>(o.eps());
    h.weight_decay = static_cast<float>(o.weight_decay());
    h.step = adam_t;
    h.grad_scale = grad_scale;
    // Stochastic-rounding bits differ every step but replay identically on resume.
    h.seed = SrSeed(adam_t);
    gpu_->AdamWStep(h);
    return;
  }
  float* p = model_->params();
  const float* g = model_->grads();
  // Each parameter tensor's part inside [opt_lo_, opt_hi_) (everything
  // without ZeRO); the tensor decides whether weight decay applies.
  for (const auto& info : model_->params_info()) {
    const int64_t a = std::max(info.offset, opt_lo_);
    const int64_t b = std::min(info.offset + info.numel, opt_hi_);
    if (a >= b) continue;
    kernels::cpu::AdamW(p + a, g + a, opt_.m.data() + (a - opt_lo_), opt_.v.data() + (a - opt_lo_),
                        b - a, lr, static_cast<float>(o.beta1()), static_cast<float>(o.beta2()),
                        static_cast<float>(o.eps()),
                        info.decay ? static_cast<float>(o.weight_decay()) : 0.f, adam_t, grad_scale);
  }
}

// Rank 0 stages the checkpoint and tells the others where; with ZeRO-1 every
// rank writes its optimizer shard there; once all ranks report success rank 0
// writes the model and trainer state and commits (manifest + rename), so the
// committed directory always holds every rank's part.
absl::StatusOr<std::string> TrainerImpl::SaveCheckpoint(int64_t steps_done) {
  auto t0 = std::chrono::steady_clock::now();
  std::optional<storage::CheckpointWriter> w;
  std::string staging(4096, '\0');
  absl::Status root_status;
  if (is_root()) {
    auto begun = storage::CheckpointWriter::Begin(ckpt_root_, steps_done);
    if (begun.ok()) {
      w.emplace(std::move(begun).value());
      staging.replace(0, w->temp_dir().size(), w->temp_dir());
    } else {
      root_status = begun.status();  // the others learn of it through the empty path
    }
  }
  if (world_ > 1) RETURN_IF_ERROR(comm_->Broadcast(staging.data(), staging.size(), 0));
  staging.resize(staging.find('\0'));
  if (staging.empty()) {
    return root_status.ok() ? absl::AbortedError("rank 0 could not stage the checkpoint")
                            : root_status;
  }
  absl::Status shard_status;
  if (zero_ && !opt_.m.empty()) {
    shard_status = SaveOptimizerShard(
        opt_, n_,
        fs::JoinPath(staging, OptimizerShardName(comm_->rank(), world_)));
  }
  // Every rank reports whether its shard made it, so all agree on failure.
  double failed = shard_status.ok() ? 0 : 1;
  if (world_ > 1) RETURN_IF_ERROR(comm_->AllReduceScalar(&failed, comm::ReduceOp::kMax));
  if (!shard_status.ok()) return shard_status;
  if (failed > 0) return absl::AbortedError("another rank failed to write its optimizer shard");
  if (!is_root()) return staging;

  ASSIGN_OR_RETURN(const float* params, HostParams());
  RETURN_IF_ERROR(SaveModelWeights(*info_, params, w->PathFor("model.safetensors")));
  if (!zero_) {
    RETURN_IF_ERROR(StageOptimizerOnHost());
    RETURN_IF_ERROR(SaveOptimizer(*info_, n_, opt_, w->PathFor("optimizer.safetensors")));
    if (gpu_) {
      opt_.m = {};  // 8 bytes per parameter of host memory, only while writing
      opt_.v = {};
    }
  }
  state_.set_step(steps_done);
  *state_.mutable_train_loader() = ToProto(train_loader_->state());
  state_.set_created_at(NowRfc3339());
  RETURN_IF_ERROR(SaveTrainerState(state_, w->PathFor("trainer_state.json")));
  // The tokenizer travels with the weights so `llmt sample` needs nothing else.
  RETURN_IF_ERROR(w->WriteFile("tokenizer.model", tokenizer_model_));
  ASSIGN_OR_RETURN(std::string dir, w->Commit());
  RETURN_IF_ERROR(storage::ApplyRetention(ckpt_root_, spec_.checkpoint().keep_last()));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  LLMT_LOG(Info) << absl::StrFormat("checkpoint %s written in %.2f s", dir, secs);
  if (opts_.observer) opts_.observer->OnCheckpoint(steps_done, dir, state_.last_val_loss());
  return dir;
}

absl::StatusOr<TrainResult> TrainerImpl::Run() {
  TrainResult result;
  const int64_t max_steps = spec_.train().max_steps();
  const int64_t eval_every = spec_.eval().every_steps();
  const int64_t ckpt_every = spec_.checkpoint().every_steps();
  const int max_bad = spec_.train().max_bad_steps() > 0 ? spec_.train().max_bad_steps() : 5;
  const double clip = spec_.optim().grad_clip();
  const int64_t tokens_per_step = static_cast<int64_t>(B_) * T_ * accum_ * world_;

  int64_t step = state_.step();  // steps already completed
  if (step >= max_steps) {
    LLMT_LOG(Info) << "nothing to do: already at step " << step << " of " << max_steps;
  }
  while (step < max_steps) {
    auto t0 = std::chrono::steady_clock::now();
    double loss = 0;
    if (gpu_) {
      gpu_->ZeroGrad();
      for (int micro = 0; micro < accum_; ++micro) {
        train_loader_->Next(inputs_.data(), targets_.data());
        if (overlap_ && micro + 1 == accum_) {
          gpu_->SetGradReadyHook(
              [this](int64_t offset, int64_t count, std::function<absl::Status()> wait_ready) {
                EnqueueGradAllReduce(gpu_->device_grads(), offset, count, std::move(wait_ready));
              });
        }
        RETURN_IF_ERROR(gpu_->ForwardBackward(inputs_.data(), targets_.data(), 1.0f / accum_));
      }
      if (overlap_) {
        gpu_->SetGradReadyHook(nullptr);
        RETURN_IF_ERROR(comm_queue_->Drain());
      }
      ASSIGN_OR_RETURN(loss, gpu_->TakeLoss());
    } else {
      model_->ZeroGrad();
      for (int micro = 0; micro < accum_; ++micro) {
        train_loader_->Next(inputs_.data(), targets_.data());
        loss += model_->Forward(inputs_.data(), targets_.data(), B_, T_);
        if (overlap_ && micro + 1 == accum_) {
          model_->SetGradReadyHook([this](int64_t offset, int64_t count) {
            EnqueueGradAllReduce(model_->grads(), offset, count, nullptr);
          });
        }
        model_->Backward(1.0f / accum_);
      }
      loss /= accum_;
      if (overlap_) {
        model_->SetGradReadyHook(nullptr);
        // Every bucket must be done before the next collective call (the
        // loss below) and before anything reads the gradients.
        RETURN_IF_ERROR(comm_queue_->Drain());
      }
    }
    RETURN_IF_ERROR(comm_->AllReduceScalar(&loss, comm::ReduceOp::kAvg));
    ASSIGN_OR_RETURN(double gnorm, SyncGradients());
    const float lr = static_cast<float>(schedule_.LrAt(step));

    // Bad-step detection: non-finite loss/gradients, or a loss or gradient
    // spike far above its running mean. The batch is consumed but the weights
    // don't move.
    const std::string bad_reason = guard_.Check(step, loss, gnorm);
    state_.set_loss_ema(guard_.loss_ema());
    state_.set_grad_norm_ema(guard_.grad_norm_ema());
    StepMetrics m;
    if (!bad_reason.empty()) {
      state_.set_bad_steps_in_row(state_.bad_steps_in_row() + 1);
      state_.set_skipped_steps_total(state_.skipped_steps_total() + 1);
      LLMT_LOG(Warning) << "step " << step + 1 << " skipped: " << bad_reason << " ("
                        << state_.bad_steps_in_row() << " in a row)";
      if (state_.bad_steps_in_row() >= max_bad) {
        return absl::AbortedError(absl::StrFormat(
            "training stopped at step %lld: %d bad steps in a row (last: %s); lower optim.lr, "
            "set optim.grad_clip, or resume from an earlier checkpoint",
            static_cast<long long>(step + 1), state_.bad_steps_in_row(), bad_reason));
      }
      m.skipped = true;
    } else {
      state_.set_bad_steps_in_row(0);
      // Clipping is fused into AdamW as a gradient scale (no extra pass over g).
      const float grad_scale = (clip > 0 && gnorm > clip) ? static_cast<float>(clip / gnorm) : 1.f;
      const int64_t adam_t = step + 1 - state_.skipped_steps_total();
      ApplyAdamW(adam_t, lr, grad_scale);
      if (zero_ && world_ > 1) {
        // Every rank updated its shard; gather the full parameters.
        RETURN_IF_ERROR(comm_->AllGather(model_->params(), layout_));
      }
    }
    ++step;
    state_.set_step(step);
    state_.set_tokens_seen(state_.tokens_seen() + tokens_per_step);
    state_.set_train_loss(loss);

    const double step_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.step = step;
    m.max_steps = max_steps;
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = gnorm;
    m.step_ms = step_s * 1e3;
    m.tokens_per_s = tokens_per_step / step_s;
    m.tokens_seen = state_.tokens_seen();

    const bool last = step == max_steps;
    // Ranks must agree on stopping at the same step (signals arrive whenever).
    double stop_flag = StopRequested() ? 1 : 0;
    RETURN_IF_ERROR(comm_->AllReduceScalar(&stop_flag, comm::ReduceOp::kMax));
    const bool stopping = stop_flag > 0;
    if (val_loader_ && (last || (eval_every > 0 && step % eval_every == 0))) {
      ASSIGN_OR_RETURN(double vl, Evaluate());
      m.has_val = true;
      m.val_loss = vl;
      state_.set_last_val_loss(vl);
      if (state_.best_val_loss() == 0 || vl < state_.best_val_loss()) state_.set_best_val_loss(vl);
      result.final_val_loss = vl;
    }
    if (metrics_) RETURN_IF_ERROR(metrics_->Append(m));
    progress_->Update(m);
    if (opts_.observer && is_root()) opts_.observer->OnStep(m);

    if (last || stopping || (ckpt_every > 0 && step % ckpt_every == 0)) {
      ASSIGN_OR_RETURN(result.last_checkpoint, SaveCheckpoint(step));
    }
    if (stopping && !last) {
      progress_->Finish();
      if (is_root()) {
        LLMT_LOG(Info) << "stop requested: checkpoint written at step " << step
                       << "; continue with --resume auto";
      }
      result.stopped_by_signal = true;
      break;
    }
  }
  progress_->Finish();
  result.final_step = step;
  if (result.final_val_loss == 0 && state_.last_val_loss() > 0) {
    result.final_val_loss = state_.last_val_loss();
  }
  return result;
}

}  // namespace

void InstallStopSignalHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}
bool StopRequested() { return g_stop.load(); }
void RequestStop() { g_stop.store(true); }

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainOptions& opts) {
  auto t = std::make_unique<TrainerImpl>(opts);
  RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Trainer>(std::move(t));
}

}  // namespace llmt::train
