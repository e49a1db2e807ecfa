// Glue between specs, models and checkpoint files: builds a ModelConfig from a
// JobSpec, saves/loads model + optimizer + trainer state in a checkpoint dir.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmt/v1/job.pb.h"
#include "llmt/v1/train_state.pb.h"
#include "worker/model/model.h"

namespace llmt::train {

// vocab: spec.model.vocab_size if set (must be >= tokenizer_vocab, which allows
// padding the embedding to a friendlier size), else tokenizer_vocab.
absl::StatusOr<model::ModelConfig> ModelConfigFromSpec(const llmt::v1::JobSpec& spec,
                                                      int tokenizer_vocab);

// Writes model.safetensors (HF names) into `path`.
absl::Status SaveModelWeights(model::Model& m, const std::string& path);
// Loads model.safetensors into m.params(); every tensor must be present with
// the expected shape; errors name the file and tensor.
absl::Status LoadModelWeights(model::Model& m, const std::string& path);
// The same on a flat host buffer in the `info` layout (the CUDA trainer
// stages its device weights through one).
absl::Status SaveModelWeights(const std::vector<model::ParamInfo>& info, const float* params,
                              const std::string& path);
absl::Status LoadModelWeights(const std::vector<model::ParamInfo>& info, float* params,
                              const std::string& path);

// AdamW moments for the parameter range [lo, lo + m.size()) of the flat
// buffer: all of it without ZeRO, this rank's shard with ZeRO-1.
struct OptimizerState {
  int64_t lo = 0;
  std::vector<float> m, v;
};
// Full state, one tensor pair per parameter ("exp_avg.<name>",
// "exp_avg_sq.<name>"): optimizer.safetensors.
absl::Status SaveOptimizer(const std::vector<model::ParamInfo>& info, int64_t num_params,
                           const OptimizerState& opt, const std::string& path);
// One ZeRO-1 shard as flat "exp_avg"/"exp_avg_sq" with its offset in the
// metadata: optimizer-rank00001-of-00004.safetensors.
std::string OptimizerShardName(int rank, int world);
absl::Status SaveOptimizerShard(const OptimizerState& opt, int64_t total, const std::string& path);
// Fills opt->m/v for [lo, hi) from whichever form the checkpoint holds (full
// file or any number of shards), so a run resumes with a different world size
// or ZeRO setting. Errors name the file.
absl::Status LoadOptimizer(const std::vector<model::ParamInfo>& info, int64_t num_params,
                           const std::string& ckpt_dir, int64_t lo, int64_t hi,
                           OptimizerState* opt);

absl::Status SaveTrainerState(const llmt::v1::TrainerState& st, const std::string& path);
absl::StatusOr<llmt::v1::TrainerState> LoadTrainerState(const std::string& path);

// For eval/sample: verifies the checkpoint, reads its trainer_state.json and
// model.safetensors, and builds a model for batch B x seq T (T=0: max_seq_len).
struct LoadedModel {
  std::unique_ptr<model::Model> model;
  llmt::v1::TrainerState state;
  std::string dir;
};
absl::StatusOr<LoadedModel> LoadModelFromCheckpoint(const std::string& ckpt_dir, int B, int T);

}  // namespace llmt::train
