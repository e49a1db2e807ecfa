#include "cli/local_commands.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/args.h"
#include "cli/launcher.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/spec.h"
#include "common/status.h"
#include "storage/checkpoint.h"
#include "worker/comm/env.h"
#ifdef LLMT_WITH_SERVICES
#include "worker/daemon/coordinator_store.h"
#endif
#include "worker/data/loader.h"
#include "worker/data/prepare.h"
#include "worker/data/stats.h"
#include "worker/data/tokenizer.h"
#include "worker/train/event_pipe.h"
#include "worker/train/model_io.h"
#include "worker/train/sampler.h"
#include "worker/train/trainer.h"

namespace llmt::cli {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int Fail(const absl::Status& s, int code = kExitFailure) {
  std::fprintf(stderr, "llmt: error: %s\n", std::string(s.message()).c_str());
  return code;
}

// Bad specs and bad flags are usage errors (exit 2); the rest are failures.
int FailFor(const absl::Status& s) {
  return Fail(s, absl::IsInvalidArgument(s) ? kExitUsage : kExitFailure);
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

absl::StatusOr<std::string> ResolveCheckpoint(const std::string& dir) {
  if (fs::Exists(fs::JoinPath(dir, "manifest.json"))) return dir;
  std::string root = fs::IsDir(fs::JoinPath(dir, "checkpoints")) ? fs::JoinPath(dir, "checkpoints") : dir;
  if (!fs::IsDir(root)) return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  auto latest = storage::LatestValidCheckpoint(root);
  if (!latest.ok()) {
    return absl::NotFoundError(absl::StrCat("no valid checkpoint in ", root, ": ", latest.status().message()));
  }
  return latest->dir;
}

absl::StatusOr<std::unique_ptr<data::Tokenizer>> LoadTokenizer(const std::string& path) {
  std::string err;
  auto tok = data::Tokenizer::Load(path, &err);
  if (!tok) return absl::NotFoundError(err);
  return tok;
}

}  // namespace

// ---------------------------------------------------------------- prepare
int RunPrepare(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::puts(
        "usage: llmt prepare --input PATH [--input PATH ...] --out DIR [--vocab-size N]\n"
        "                    [--tokenizer FILE.model] [--val-fraction F] [--seed S] [--overwrite]\n\n"
        "Trains a SentencePiece BPE tokenizer (or reuses --tokenizer), cleans and deduplicates the\n"
        "documents, and writes DIR/{tokenizer.model,train_*.bin,val_*.bin,manifest.json}.\n"
        "Inputs: plain-text files or directories (documents are blank-line separated paragraphs)\n"
        "and .jsonl files with a \"text\" field. '-' reads the text from standard input.");
    return 0;
  }
  auto args = Args::Parse(argc, argv, 2,
                          {"input", "out", "vocab-size", "tokenizer", "val-fraction", "seed",
                           "threads", "min-doc-chars"},
                          {"overwrite"});
  if (!args.ok()) return Fail(args.status(), kExitUsage);
  data::PrepareOptions o;
  o.inputs = args->GetAll("input");
  for (const auto& p : args->positional()) o.inputs.push_back(p);
  o.out_dir = args->Get("out");
  o.tokenizer_model = args->Get("tokenizer");
  o.overwrite = args->Has("overwrite");
  if (o.inputs.empty() || o.out_dir.empty()) {
    return Fail(absl::InvalidArgumentError("prepare needs --input PATH and --out DIR (see --help)"),
                kExitUsage);
  }
  auto vocab = args->GetInt("vocab-size", o.vocab_size);
  auto valf = args->GetDouble("val-fraction", o.val_fraction);
  auto seed = args->GetInt("seed", static_cast<int64_t>(o.seed));
  auto threads = args->GetInt("threads", 0);
  auto min_chars = args->GetInt("min-doc-chars", o.min_doc_chars);
  for (const auto* s : {&vocab.status(), &valf.status(), &seed.status(), &threads.status(), &min_chars.status()}) {
    if (!s->ok()) return Fail(*s, kExitUsage);
  }
  o.vocab_size = static_cast<int>(*vocab);
  o.val_fraction = *valf;
  o.seed = static_cast<uint64_t>(*seed);
  o.threads = static_cast<int>(*threads);
  o.min_doc_chars = static_cast<int>(*min_chars);
  auto report = data::Prepare(o);
  if (!report.ok()) return FailFor(report.status());
  std::printf("%s\nwrote %s\n", report->ToString().c_str(), o.out_dir.c_str());
  return 0;
}

// ---------------------------------------------------------------- train
int RunTrain(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::puts(
        "usage: llmt train SPEC.yaml [--set path=value ...] [--out DIR] [--resume auto|DIR]\n"
        "                  [--progress bar|lines|none] [--nproc N]\n\n"
        "Trains the model described by SPEC.yaml (see examples/). Writes DIR/metrics.jsonl and\n"
        "DIR/checkpoints/step-XXXXXXXX/. DIR defaults to the spec's output_dir, else runs/<name>.\n"
        "SIGTERM or Ctrl-C: finish the step, write a checkpoint, exit 0; --resume auto continues.\n\n"
        "Data parallel: --nproc N runs N local ranks (Gloo over loopback); the global batch is\n"
        "batch_size x grad_accum_steps x N. Across machines, start one `llmt train` per rank with\n"
        "WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT set (as torchrun does). train.zero: 1 shards the\n"
        "optimizer state (ZeRO-1). LLMT_COMM_TIMEOUT_S bounds every collective (default 300).");
    return 0;
  }
  auto args = Args::Parse(argc, argv, 2, {"set", "out", "resume", "progress", "nproc"}, {});
  if (!args.ok()) return Fail(args.status(), kExitUsage);
  auto nproc = args->GetInt("nproc", 1);
  if (!nproc.ok()) return Fail(nproc.status(), kExitUsage);
  if (*nproc > 1) {
    // Launcher: the same command line minus --nproc, once per rank.
    std::vector<std::string> child = {argv[0]};
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--nproc") {
        ++i;
        continue;
      }
      if (a.rfind("--nproc=", 0) == 0) continue;
      child.push_back(a);
    }
    return LaunchLocalRanks(static_cast<int>(*nproc), child);
  }
  if (args->positional().size() != 1) {
    return Fail(absl::InvalidArgumentError("train needs exactly one SPEC.yaml (see --help)"), kExitUsage);
  }
  const std::string spec_path = args->positional()[0];
  auto spec = spec::LoadFile(spec_path, args->GetAll("set"));
  if (!spec.ok()) return Fail(spec.status(), kExitUsage);

  train::TrainOptions o;
  o.spec = *spec;
  o.out_dir = args->Get("out", spec->output_dir());
  if (o.out_dir.empty()) {
    std::string name = spec->name().empty() ? fs::Basename(spec_path) : spec->name();
    if (auto dot = name.rfind('.'); dot != std::string::npos && spec->name().empty()) name.resize(dot);
    o.out_dir = fs::JoinPath("runs", name);
  }
  o.resume = args->Get("resume");
  const std::string progress = args->Get("progress", "auto");
  if (progress == "bar") o.progress = train::TrainOptions::Progress::kBar;
  else if (progress == "lines") o.progress = train::TrainOptions::Progress::kLines;
  else if (progress == "none") o.progress = train::TrainOptions::Progress::kNone;
  else if (progress != "auto") {
    return Fail(absl::InvalidArgumentError("--progress: expected bar, lines, none or auto"), kExitUsage);
  }

  // A rank of a multi-process run (launched by --nproc or by hand/torchrun-style,
  // or by llmt-worker with the coordinator's rendezvous KV: LLMT_RDZV_COORDINATOR).
  std::unique_ptr<comm::Collective> collective;
  // Gradients live where the model does: NCCL for GPU ranks, Gloo for CPU ranks.
  const comm::CommDevice comm_device =
      spec->train().device() == "cuda" ? comm::CommDevice::kCuda : comm::CommDevice::kCpu;
#ifdef LLMT_WITH_SERVICES
  if (daemon::CoordinatorRendezvousRequested()) {
    auto c = daemon::MakeCoordinatorCollectiveFromEnv(comm_device);
    if (!c.ok()) return Fail(c.status());
    if ((*c)->world_size() > 1) {
      collective = std::move(c).value();
      o.comm = collective.get();
      if (collective->rank() != 0) o.progress = train::TrainOptions::Progress::kNone;
    }
  } else
#endif
  {
    auto comm_env = comm::ParseCommEnv();
    if (!comm_env.ok()) return Fail(comm_env.status(), kExitUsage);
    if (comm_env->world_size > 1 || comm_env->force) {
      auto c = comm::MakeCollective(*comm_env, comm_device);
      if (!c.ok()) return Fail(c.status());
      collective = std::move(c).value();
      o.comm = collective.get();
      if (comm_env->rank != 0) o.progress = train::TrainOptions::Progress::kNone;
    }
  }

  // Under llmt-worker: progress, checkpoints and the outcome go up a pipe.
  std::unique_ptr<train::EventPipeObserver> events;
  if (int fd = train::EventPipeObserver::FdFromEnv(); fd >= 0) {
    events = std::make_unique<train::EventPipeObserver>(fd);
    o.observer = events.get();
  }
  train::InstallStopSignalHandlers();
  auto trainer = train::Trainer::Create(o);
  if (!trainer.ok()) {
    if (events) events->OnExit(false, 0, std::string(trainer.status().message()));
    return FailFor(trainer.status());
  }
  auto result = (*trainer)->Run();
  if (events) {
    events->OnExit(result.ok(), result.ok() ? result->final_step : 0,
                   result.ok() ? (result->stopped_by_signal ? "stopped by signal after a checkpoint"
                                                            : "completed")
                               : std::string(result.status().message()));
  }
  if (!result.ok()) {
    if (collective) {
      return Fail(absl::Status(result.status().code(),
                               absl::StrCat("rank ", collective->rank(), ": ", result.status().message())));
    }
    return Fail(result.status());
  }
  if (collective && collective->rank() != 0) return 0;
  if (result->final_val_loss > 0) {
    std::printf("final step %lld: val loss %.4f, perplexity %.2f\n",
                static_cast<long long>(result->final_step), result->final_val_loss,
                std::exp(result->final_val_loss));
  }
  if (!result->last_checkpoint.empty()) std::printf("checkpoint: %s\n", result->last_checkpoint.c_str());
  return 0;
}

// ---------------------------------------------------------------- eval
int RunEval(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::puts(
        "usage: llmt eval --checkpoint DIR [--data DIR] [--json] [--batches N]\n\n"
        "Prints validation loss and perplexity of a checkpoint on the val split of a prepared data\n"
        "directory (default: the one it was trained on). DIR may be a checkpoint, a run directory or\n"
        "a checkpoints/ directory (the newest valid checkpoint is used).");
    return 0;
  }
  auto args = Args::Parse(argc, argv, 2, {"checkpoint", "data", "batches"}, {"json"});
  if (!args.ok()) return Fail(args.status(), kExitUsage);
  if (!args->Has("checkpoint")) return Fail(absl::InvalidArgumentError("eval needs --checkpoint DIR"), kExitUsage);
  auto ckpt = ResolveCheckpoint(args->Get("checkpoint"));
  if (!ckpt.ok()) return Fail(ckpt.status());
  auto state = train::LoadTrainerState(fs::JoinPath(*ckpt, "trainer_state.json"));
  if (!state.ok()) return Fail(state.status());
  const int B = state->spec().train().batch_size();
  const int T = state->spec().train().seq_len();
  auto loaded = train::LoadModelFromCheckpoint(*ckpt, B, T);
  if (!loaded.ok()) return Fail(loaded.status());

  data::LoaderOptions lo;
  lo.data_dir = args->Get("data", state->spec().data().dir());
  lo.split = "val";
  lo.batch_size = B;
  lo.seq_len = T;
  lo.sequential = true;
  auto loader = data::DataLoader::Open(lo);
  if (!loader.ok()) return Fail(loader.status());
  if ((*loader)->tokenizer_hash() != state->tokenizer_hash()) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        lo.data_dir, "/manifest.json: tokenizer ", (*loader)->tokenizer_hash().substr(0, 12),
        " differs from the one checkpoint ", *ckpt, " was trained with (",
        state->tokenizer_hash().substr(0, 12), "); evaluate on data prepared with its tokenizer")));
  }
  if ((*loader)->vocab_size() > loaded->model->config().vocab_size) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        lo.data_dir, ": vocabulary of ", (*loader)->vocab_size(), " tokens exceeds the model's ",
        loaded->model->config().vocab_size)));
  }
  const int64_t per_batch = static_cast<int64_t>(B) * T;
  auto max_batches = args->GetInt("batches", 0);
  if (!max_batches.ok()) return Fail(max_batches.status(), kExitUsage);
  // One pass over the split in non-overlapping windows.
  int64_t batches = std::max<int64_t>(1, static_cast<int64_t>((*loader)->windows_per_pass()) / B);
  if (*max_batches > 0) batches = std::min(batches, *max_batches);
  std::vector<int32_t> in(per_batch), tgt(per_batch);
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    (*loader)->Next(in.data(), tgt.data());
    sum += loaded->model->Forward(in.data(), tgt.data(), B, T);
  }
  const double loss = sum / batches;
  // The context-free baseline: what a model that ignores context would score.
  auto unigram = data::UnigramEntropyNats(lo.data_dir, "train");
  const double h1 = unigram.ok() ? *unigram : std::nan("");
  if (args->Has("json")) {
    std::printf("{\"checkpoint\":\"%s\",\"step\":%lld,\"val_loss\":%.6f,\"perplexity\":%.6f,"
                "\"tokens\":%lld,\"unigram_entropy\":%s}\n",
                ckpt->c_str(), static_cast<long long>(state->step()), loss, std::exp(loss),
                static_cast<long long>(batches * per_batch),
                unigram.ok() ? absl::StrFormat("%.6f", h1).c_str() : "null");
  } else {
    std::printf("checkpoint %s (step %lld)\nval loss %.4f | perplexity %.2f | %lld tokens\n", ckpt->c_str(),
                static_cast<long long>(state->step()), loss, std::exp(loss),
                static_cast<long long>(batches * per_batch));
    if (unigram.ok()) {
      std::printf("unigram entropy of the training tokens %.4f nats (perplexity %.1f): the model is "
                  "%.2f nats below it\n", h1, std::exp(h1), h1 - loss);
    }
  }
  return 0;
}

// ---------------------------------------------------------------- sample
int RunSample(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::puts(
        "usage: llmt sample --checkpoint DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
        "                   [--top-k K] [--top-p P] [--seed S] [--tokenizer FILE.model]\n\n"
        "Prints the prompt and a sampled continuation. The tokenizer is the one stored in the\n"
        "checkpoint (or --tokenizer).");
    return 0;
  }
  auto args = Args::Parse(argc, argv, 2,
                          {"checkpoint", "prompt", "max-tokens", "temperature", "top-k", "top-p",
                           "seed", "tokenizer"},
                          {});
  if (!args.ok()) return Fail(args.status(), kExitUsage);
  if (!args->Has("checkpoint")) return Fail(absl::InvalidArgumentError("sample needs --checkpoint DIR"), kExitUsage);
  train::SampleOptions so;
  auto max_tokens = args->GetInt("max-tokens", 100);
  auto temp = args->GetDouble("temperature", 0.8);
  auto top_k = args->GetInt("top-k", 0);
  auto top_p = args->GetDouble("top-p", 1.0);
  auto seed = args->GetInt("seed", 0);
  for (const auto* s : {&max_tokens.status(), &temp.status(), &top_k.status(), &top_p.status(), &seed.status()}) {
    if (!s->ok()) return Fail(*s, kExitUsage);
  }
  if (*top_p <= 0 || *top_p > 1) return Fail(absl::InvalidArgumentError("--top-p: must be in (0, 1]"), kExitUsage);
  if (*temp < 0) return Fail(absl::InvalidArgumentError("--temperature: must be >= 0"), kExitUsage);
  so.max_tokens = static_cast<int>(*max_tokens);
  so.temperature = static_cast<float>(*temp);
  so.top_k = static_cast<int>(*top_k);
  so.top_p = static_cast<float>(*top_p);
  so.seed = static_cast<uint64_t>(*seed);

  auto ckpt = ResolveCheckpoint(args->Get("checkpoint"));
  if (!ckpt.ok()) return Fail(ckpt.status());
  auto loaded = train::LoadModelFromCheckpoint(*ckpt, 1, 0);
  if (!loaded.ok()) return Fail(loaded.status());
  std::string tok_path = args->Get("tokenizer", fs::JoinPath(*ckpt, "tokenizer.model"));
  auto tok = LoadTokenizer(tok_path);
  if (!tok.ok()) return Fail(tok.status());
  if ((*tok)->vocab_size() > loaded->model->config().vocab_size) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        tok_path, ": vocabulary of ", (*tok)->vocab_size(), " exceeds the model's ",
        loaded->model->config().vocab_size)));
  }
  const std::string prompt = args->Get("prompt");
  // Documents are separated by EOS in training data, so EOS marks "start of a document".
  const std::vector<int32_t> prompt_ids = (*tok)->Encode(prompt);
  std::vector<int32_t> ids = {static_cast<int32_t>((*tok)->eos_id())};
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  so.vocab_limit = (*tok)->vocab_size();
  so.stop_token = (*tok)->eos_id();
  auto out = train::Sample(*loaded->model, ids, so, loaded->model->config().max_seq_len);
  if (!out.empty() && out.back() == (*tok)->eos_id()) out.pop_back();
  // Decode prompt and continuation together so word boundaries come out right.
  std::vector<int32_t> all = prompt_ids;
  all.insert(all.end(), out.begin(), out.end());
  std::printf("%s\n", (*tok)->Decode(all).c_str());
  return 0;
}

}  // namespace llmt::cli
