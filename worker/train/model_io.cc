#include "worker/train/model_io.h"

#include <google/protobuf/util/json_util.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fs.h"
#include "common/status.h"
#include "storage/checkpoint.h"
#include "storage/safetensors.h"

namespace llmt::train {

absl::StatusOr<model::ModelConfig> ModelConfigFromSpec(const llmt::v1::JobSpec& spec,
                                                      int tokenizer_vocab) {
  const auto& m = spec.model();
  model::ModelConfig c;
  if (m.family() == "gpt2") {
    c.family = model::Family::kGpt2;
  } else if (m.family() == "llama") {
    c.family = model::Family::kLlama;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("model.family: unknown family '", m.family(), "' (gpt2|llama)"));
  }
  if (m.vocab_size() > 0 && tokenizer_vocab > 0 && m.vocab_size() < tokenizer_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.vocab_size: ", m.vocab_size(), " is smaller than the tokenizer's vocabulary (",
        tokenizer_vocab, " in ", spec.data().dir(), "/manifest.json)"));
  }
  c.vocab_size = m.vocab_size() > 0 ? m.vocab_size() : tokenizer_vocab;
  c.d_model = m.d_model();
  c.n_layer = m.n_layer();
  c.n_head = m.n_head();
  c.n_kv_head = m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head();
  c.d_ff = m.d_ff();
  c.max_seq_len = m.max_seq_len();
  if (m.norm_eps() > 0) c.norm_eps = static_cast<float>(m.norm_eps());
  if (m.rope_theta() > 0) c.rope_theta = static_cast<float>(m.rope_theta());
  if (m.init_std() > 0) c.init_std = static_cast<float>(m.init_std());
  return c;
}

absl::Status SaveModelWeights(model::Model& m, const std::string& path) {
  return SaveModelWeights(m.params_info(), m.params(), path);
}

absl::Status LoadModelWeights(model::Model& m, const std::string& path) {
  return LoadModelWeights(m.params_info(), m.params(), path);
}

absl::Status SaveModelWeights(const std::vector<model::ParamInfo>& info, const float* params,
                              const std::string& path) {
  std::vector<storage::TensorRef> refs;
  for (const auto& p : info) {
    refs.push_back({p.name, p.shape, params + p.offset});
  }
  return storage::WriteSafetensors(path, refs, {{"format", "pt"}, {"producer", "llmt"}});
}

absl::Status LoadModelWeights(const std::vector<model::ParamInfo>& info, float* params,
                              const std::string& path) {
  ASSIGN_OR_RETURN(auto file, storage::ReadSafetensors(path));
  for (const auto& p : info) {
    auto it = file.tensors.find(p.name);
    if (it == file.tensors.end()) {
      return absl::DataLossError(absl::StrCat(path, ": tensor ", p.name, " is missing"));
    }
    if (it->second.shape != p.shape) {
      std::string want, got;
      for (auto d : p.shape) absl::StrAppend(&want, want.empty() ? "" : ",", d);
      for (auto d : it->second.shape) absl::StrAppend(&got, got.empty() ? "" : ",", d);
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", p.name, " has shape [", got,
                                                     "], the model expects [", want, "]"));
    }
    std::copy(it->second.data.begin(), it->second.data.end(), params + p.offset);
  }
  return absl::OkStatus();
}

absl::Status SaveOptimizer(const std::vector<model::ParamInfo>& info, int64_t num_params,
                           const OptimizerState& opt, const std::string& path) {
  if (opt.lo != 0 || static_cast<int64_t>(opt.m.size()) != num_params) {
    return absl::InternalError("SaveOptimizer needs the full optimizer state");
  }
  std::vector<storage::TensorRef> refs;
  for (const auto& p : info) {
    refs.push_back({"exp_avg." + p.name, p.shape, opt.m.data() + p.offset});
    refs.push_back({"exp_avg_sq." + p.name, p.shape, opt.v.data() + p.offset});
  }
  return storage::WriteSafetensors(path, refs, {{"optimizer", "adamw"}});
}

std::string OptimizerShardName(int rank, int world) {
  return absl::StrFormat("optimizer-rank%05d-of-%05d.safetensors", rank, world);
}

absl::Status SaveOptimizerShard(const OptimizerState& opt, int64_t total, const std::string& path) {
  const int64_t len = static_cast<int64_t>(opt.m.size());
  std::vector<storage::TensorRef> refs = {{"exp_avg", {len}, opt.m.data()},
                                          {"exp_avg_sq", {len}, opt.v.data()}};
  return storage::WriteSafetensors(path, refs,
                                   {{"optimizer", "adamw"},
                                    {"offset", std::to_string(opt.lo)},
                                    {"total", std::to_string(total)}});
}

absl::Status LoadOptimizer(const std::vector<model::ParamInfo>& info, int64_t num_params,
                           const std::string& ckpt_dir, int64_t lo, int64_t hi,
                           OptimizerState* opt) {
  const int64_t total = num_params;
  opt->lo = lo;
  opt->m.assign(hi - lo, 0.f);
  opt->v.assign(hi - lo, 0.f);
  // Copies src[0, n) that sits at flat offset `at` into the [lo, hi) window.
  auto place = [&](const std::vector<float>& src, int64_t at, std::vector<float>* dst) {
    const int64_t a = std::max(at, lo), b = std::min<int64_t>(at + src.size(), hi);
    if (a < b) std::copy(src.begin() + (a - at), src.begin() + (b - at), dst->begin() + (a - lo));
  };
  const std::string full = fs::JoinPath(ckpt_dir, "optimizer.safetensors");
  if (fs::Exists(full)) {
    ASSIGN_OR_RETURN(auto file, storage::ReadSafetensors(full));
    for (const auto& p : info) {
      for (auto [prefix, buf] :
           {std::pair{"exp_avg.", &opt->m}, std::pair{"exp_avg_sq.", &opt->v}}) {
        auto it = file.tensors.find(prefix + p.name);
        if (it == file.tensors.end() || it->second.data.size() != static_cast<size_t>(p.numel)) {
          return absl::DataLossError(absl::StrCat(full, ": optimizer tensor ", prefix, p.name,
                                                  " is missing or has the wrong size"));
        }
        place(it->second.data, p.offset, buf);
      }
    }
    return absl::OkStatus();
  }
  // ZeRO-1 shards: they must tile [0, total) exactly.
  ASSIGN_OR_RETURN(auto names, fs::ListDir(ckpt_dir));
  int64_t covered = 0;
  for (const auto& name : names) {
    if (name.rfind("optimizer-rank", 0) != 0) continue;
    const std::string path = fs::JoinPath(ckpt_dir, name);
    ASSIGN_OR_RETURN(auto file, storage::ReadSafetensors(path));
    int64_t offset = 0, file_total = 0;
    if (!absl::SimpleAtoi(file.metadata["offset"], &offset) ||
        !absl::SimpleAtoi(file.metadata["total"], &file_total) || file_total != total) {
      return absl::DataLossError(absl::StrCat(path, ": shard metadata (offset/total) missing or for a ",
                                              "model of ", file_total, " parameters, not ", total));
    }
    auto m = file.tensors.find("exp_avg"), v = file.tensors.find("exp_avg_sq");
    if (m == file.tensors.end() || v == file.tensors.end() ||
        m->second.data.size() != v->second.data.size() ||
        offset + static_cast<int64_t>(m->second.data.size()) > total) {
      return absl::DataLossError(absl::StrCat(path, ": exp_avg/exp_avg_sq missing or inconsistent"));
    }
    place(m->second.data, offset, &opt->m);
    place(v->second.data, offset, &opt->v);
    covered += static_cast<int64_t>(m->second.data.size());
  }
  if (covered != total) {
    return absl::DataLossError(absl::StrCat(ckpt_dir, ": optimizer state covers ", covered, " of ",
                                            total, " parameters (missing optimizer.safetensors or a ",
                                            "shard file)"));
  }
  return absl::OkStatus();
}

absl::Status SaveTrainerState(const llmt::v1::TrainerState& st, const std::string& path) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  std::string json;
  auto s = google::protobuf::util::MessageToJsonString(st, &json, o);
  if (!s.ok()) return absl::InternalError(absl::StrCat("serialising trainer state: ", s.ToString()));
  return fs::WriteFileSynced(path, json);
}

absl::StatusOr<llmt::v1::TrainerState> LoadTrainerState(const std::string& path) {
  ASSIGN_OR_RETURN(std::string json, fs::ReadFile(path));
  llmt::v1::TrainerState st;
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = false;
  auto s = google::protobuf::util::JsonStringToMessage(json, &st, o);
  if (!s.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid trainer state: ", s.ToString()));
  }
  return st;
}

absl::StatusOr<LoadedModel> LoadModelFromCheckpoint(const std::string& ckpt_dir, int B, int T) {
  ASSIGN_OR_RETURN(auto info, storage::VerifyCheckpoint(ckpt_dir));
  LoadedModel out;
  out.dir = info.dir;
  ASSIGN_OR_RETURN(out.state, LoadTrainerState(fs::JoinPath(ckpt_dir, "trainer_state.json")));
  ASSIGN_OR_RETURN(auto cfg, ModelConfigFromSpec(out.state.spec(), out.state.vocab_size()));
  if (T <= 0) T = cfg.max_seq_len;
  ASSIGN_OR_RETURN(out.model, model::Model::Create(cfg, B, T));
  RETURN_IF_ERROR(LoadModelWeights(*out.model, fs::JoinPath(ckpt_dir, "model.safetensors")));
  return out;
}

}  // namespace llmt::train
