#include "worker/train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
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
#include "worker/data/loader.h"
#include "worker/model/model.h"
#include "worker/train/metrics_log.h"
#include "worker/train/model_io.h"
#include "worker/train/progress.h"
#include "worker/train/schedule.h"

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
  double Evaluate();
  absl::StatusOr<std::string> SaveCheckpoint(int64_t steps_done);
  void ApplyAdamW(int64_t adam_t, float lr, float grad_scale);

  TrainOptions opts_;
  v1::JobSpec spec_;
  std::string ckpt_root_;
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  std::unique_ptr<model::Model> model_;
  OptimizerState opt_;
  Schedule schedule_;
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

  kernels::cpu::SetNumThreads(spec_.train().threads());  // 0 = all cores

  data::LoaderOptions lo;
  lo.data_dir = spec_.data().dir();
  lo.split = "train";
  lo.batch_size = B_;
  lo.seq_len = T_;
  lo.seed = spec_.train().seed();
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
  ASSIGN_OR_RETURN(model_, model::Model::Create(cfg, B_, T_));
  model_->InitWeights(spec_.train().seed());
  opt_.m.assign(model_->num_params(), 0.f);
  opt_.v.assign(model_->num_params(), 0.f);
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
  state_.set_world_size(1);
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

  ASSIGN_OR_RETURN(metrics_, MetricsLog::Open(fs::JoinPath(opts_.out_dir, "metrics.jsonl"),
                                              state_.step()));
  progress_ = std::make_unique<ProgressPrinter>(opts_.progress, spec_.train().max_steps(),
                                                std::max(1, spec_.train().log_every()));

  const double ftok = model_->flops_per_token(T_);
  LLMT_LOG(Info) << absl::StrFormat(
      "model %s: %.2fM parameters, %.3f GFLOP/token (train), vocab %d, activations %.1f MiB; "
      "batch %d x %d x accum %d = %d tokens/step; %lld steps",
      spec_.model().family(), model_->num_params() / 1e6, ftok / 1e9, cfg.vocab_size,
      model_->activation_bytes() / 1048576.0, B_, T_, accum_, B_ * T_ * accum_,
      static_cast<long long>(spec_.train().max_steps()));
  return absl::OkStatus();
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
  RETURN_IF_ERROR(LoadModelWeights(*model_, fs::JoinPath(dir, "model.safetensors")));
  RETURN_IF_ERROR(LoadOptimizer(*model_, &opt_, fs::JoinPath(dir, "optimizer.safetensors")));
  RETURN_IF_ERROR(train_loader_->Restore(FromProto(st.train_loader())));
  // Keep the current spec (max_steps etc. may have been extended) but the
  // checkpoint's progress counters.
  st.set_format_version(kStateFormatVersion);
  *st.mutable_spec() = spec_;
  state_ = st;
  LLMT_LOG(Info) << "resumed from " << info.dir << " at step " << state_.step();
  return absl::OkStatus();
}

double TrainerImpl::Evaluate() {
  if (!val_loader_) return std::nan("");
  val_loader_->Reset();
  const int steps = std::max(1, spec_.eval().steps());
  double sum = 0;
  for (int i = 0; i < steps; ++i) {
    val_loader_->Next(inputs_.data(), targets_.data());
    sum += model_->Forward(inputs_.data(), targets_.data(), B_, T_);
  }
  return sum / steps;
}

void TrainerImpl::ApplyAdamW(int64_t adam_t, float lr, float grad_scale) {
  const auto& o = spec_.optim();
  float* p = model_->params();
  const float* g = model_->grads();
  for (const auto& info : model_->params_info()) {
    kernels::cpu::AdamW(p + info.offset, g + info.offset, opt_.m.data() + info.offset,
                        opt_.v.data() + info.offset, info.numel, lr, static_cast<float>(o.beta1()),
                        static_cast<float>(o.beta2()), static_cast<float>(o.eps()),
                        info.decay ? static_cast<float>(o.weight_decay()) : 0.f, adam_t, grad_scale);
  }
}

absl::StatusOr<std::string> TrainerImpl::SaveCheckpoint(int64_t steps_done) {
  auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(auto w, storage::CheckpointWriter::Begin(ckpt_root_, steps_done));
  RETURN_IF_ERROR(SaveModelWeights(*model_, w.PathFor("model.safetensors")));
  RETURN_IF_ERROR(SaveOptimizer(*model_, opt_, w.PathFor("optimizer.safetensors")));
  state_.set_step(steps_done);
  *state_.mutable_train_loader() = ToProto(train_loader_->state());
  state_.set_created_at(NowRfc3339());
  RETURN_IF_ERROR(SaveTrainerState(state_, w.PathFor("trainer_state.json")));
  // The tokenizer travels with the weights so `llmt sample` needs nothing else.
  RETURN_IF_ERROR(w.WriteFile("tokenizer.model", tokenizer_model_));
  ASSIGN_OR_RETURN(std::string dir, w.Commit());
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
  const double spike = spec_.train().loss_spike_factor();
  const double clip = spec_.optim().grad_clip();
  const int64_t tokens_per_step = static_cast<int64_t>(B_) * T_ * accum_;
  const int64_t n = model_->num_params();

  int64_t step = state_.step();  // steps already completed
  if (step >= max_steps) {
    LLMT_LOG(Info) << "nothing to do: already at step " << step << " of " << max_steps;
  }
  while (step < max_steps) {
    auto t0 = std::chrono::steady_clock::now();
    model_->ZeroGrad();
    double loss = 0;
    for (int micro = 0; micro < accum_; ++micro) {
      train_loader_->Next(inputs_.data(), targets_.data());
      loss += model_->Forward(inputs_.data(), targets_.data(), B_, T_);
      model_->Backward(1.0f / accum_);
    }
    loss /= accum_;
    double gnorm = kernels::cpu::L2Norm(model_->grads(), n);
    const float lr = static_cast<float>(schedule_.LrAt(step));

    // Bad-step detection: non-finite loss/gradients, or a loss spike far above
    // the running mean. The batch is consumed but the weights don't move.
    std::string bad_reason;
    if (!std::isfinite(loss)) {
      bad_reason = "loss is not finite";
    } else if (!std::isfinite(gnorm)) {
      bad_reason = "gradient norm is not finite";
    } else if (spike > 0 && state_.loss_ema() > 0 && step > schedule_.warmup_steps &&
               loss > spike * state_.loss_ema()) {
      bad_reason = absl::StrFormat("loss %.4f is over %.1fx its running mean %.4f", loss, spike,
                                   state_.loss_ema());
    }
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
      state_.set_loss_ema(state_.loss_ema() == 0 ? loss : 0.95 * state_.loss_ema() + 0.05 * loss);
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
    const bool stopping = StopRequested();
    if (val_loader_ && (last || (eval_every > 0 && step % eval_every == 0))) {
      double vl = Evaluate();
      m.has_val = true;
      m.val_loss = vl;
      state_.set_last_val_loss(vl);
      if (state_.best_val_loss() == 0 || vl < state_.best_val_loss()) state_.set_best_val_loss(vl);
      result.final_val_loss = vl;
    }
    RETURN_IF_ERROR(metrics_->Append(m));
    progress_->Update(m);
    if (opts_.observer) opts_.observer->OnStep(m);

    if (last || stopping || (ckpt_every > 0 && step % ckpt_every == 0)) {
      ASSIGN_OR_RETURN(result.last_checkpoint, SaveCheckpoint(step));
    }
    if (stopping && !last) {
      progress_->Finish();
      LLMT_LOG(Info) << "stop requested: checkpoint written at step " << step
                     << "; continue with --resume auto";
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
