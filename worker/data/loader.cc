// Loader over mmap'd shards.
//
// Random mode (training): each window is drawn uniformly from all (T+1)-token
// windows of the split that lie inside one shard: one bounded draw picks an
// index into the concatenated per-shard window ranges, which is the same as
// choosing a shard with probability proportional to its window count and then
// a uniform offset in it. The generator is SplitMix64, whose whole state is
// one 64-bit word, so LoaderState captures it exactly.
//
// Sequential mode (validation): windows start at offsets 0, T, 2T, ... of
// each shard in order (inputs of consecutive windows tile the shard; every
// token but a shard's last is a target exactly once), then wrap to shard 0.
#include "worker/data/loader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/data/manifest.h"
#include "worker/data/shard.h"

namespace llmt::data {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t InitialRng(uint64_t seed) { return Mix64(seed ^ 0x6C6F61646572ull /* "loader" */); }

struct Window {
  uint32_t shard;
  uint64_t offset;
};

class ShardLoader final : public DataLoader {
 public:
  ShardLoader(LoaderOptions o, Manifest m, std::vector<std::unique_ptr<ShardReader>> shards)
      : o_(std::move(o)), m_(std::move(m)), shards_(std::move(shards)) {
    const uint64_t T = static_cast<uint64_t>(o_.seq_len);
    for (uint32_t i = 0; i < shards_.size(); ++i) {
      const uint64_t n = shards_[i]->size();
      num_tokens_ += n;
      if (n >= T + 1) {
        starts_.push_back(total_windows_);
        eligible_.push_back(i);
        total_windows_ += n - T;       // offsets 0 .. n-T-1
        pass_windows_ += (n - 1) / T;  // offsets 0, T, 2T, ... with off+T < n
      }
      if (!o_.sequential) shards_[i]->AdviseRandom();
    }
    Reset();
  }

  void Next(int32_t* inputs, int32_t* targets) override {
    const int B = o_.batch_size, T = o_.seq_len;
    const int first = o_.rank * B;
    // Every rank walks the whole global batch so all ranks stay in lockstep
    // and the union over ranks equals one rank with batch B * world_size.
    for (int j = 0; j < B * o_.world_size; ++j) {
      const Window w = o_.sequential ? NextSequential() : NextRandom();
      if (j < first || j >= first + B) continue;
      const size_t b = static_cast<size_t>(j - first) * T;
      shards_[w.shard]->Copy(w.offset, T, inputs + b);
      shards_[w.shard]->Copy(w.offset + 1, T, targets + b);
    }
    ++batches_;
  }

  LoaderState state() const override {
    LoaderState s;
    s.seed = o_.seed;
    s.rng_state = rng_;
    s.shard = shard_;
    s.offset = offset_;
    s.batches = batches_;
    return s;
  }

  absl::Status Restore(const LoaderState& s) override {
    if (s.shard >= shards_.size() || s.offset > shards_[s.shard]->size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "loader state (shard ", s.shard, ", offset ", s.offset, ") does not fit split '",
          o_.split, "' of ", o_.data_dir, " (", shards_.size(),
          " shard(s)); was the data re-prepared since the checkpoint?"));
    }
    if (s.seed != o_.seed) {
      LLMT_LOG(Warning) << "loader: restoring state saved with seed " << s.seed
                        << " into a loader opened with seed " << o_.seed
                        << "; continuing the saved sequence";
    }
    rng_ = s.rng_state;
    shard_ = s.shard;
    offset_ = s.offset;
    batches_ = s.batches;
    return absl::OkStatus();
  }

  void Reset() override {
    rng_ = InitialRng(o_.seed);
    shard_ = 0;
    offset_ = 0;
    batches_ = 0;
  }

  int vocab_size() const override { return m_.vocab_size; }
  const std::string& tokenizer_hash() const override { return m_.tokenizer_hash; }
  uint64_t num_tokens() const override { return num_tokens_; }
  uint64_t windows_per_pass() const override { return pass_windows_; }
  int eos_id() const override { return m_.eos_id; }

 private:
  uint64_t NextU64() {
    rng_ += kGolden;
    uint64_t z = rng_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject).
  uint64_t Bounded(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(NextU64()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(NextU64()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  Window NextRandom() {
    const uint64_t u = Bounded(total_windows_);
    const size_t k = std::upper_bound(starts_.begin(), starts_.end(), u) - starts_.begin() - 1;
    return {eligible_[k], u - starts_[k]};
  }

  Window NextSequential() {
    const uint64_t T = static_cast<uint64_t>(o_.seq_len);
    // Open() guarantees one shard holds a window, so this terminates.
    while (offset_ + T + 1 > shards_[shard_]->size()) {
      shard_ = (shard_ + 1) % static_cast<uint32_t>(shards_.size());
      offset_ = 0;
    }
    Window w{shard_, offset_};
    offset_ += T;
    return w;
  }

  LoaderOptions o_;
  Manifest m_;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<uint64_t> starts_;    // first global window index of each eligible shard
  std::vector<uint32_t> eligible_;  // shards with at least T+1 tokens
  uint64_t total_windows_ = 0, pass_windows_ = 0, num_tokens_ = 0;
  uint64_t rng_ = 0, offset_ = 0, batches_ = 0;
  uint32_t shard_ = 0;
};

absl::Status CheckOptions(const LoaderOptions& o) {
  if (o.data_dir.empty()) return absl::InvalidArgumentError("loader: data_dir is empty");
  if (o.split != "train" && o.split != "val") {
    return absl::InvalidArgumentError(
        absl::StrCat("loader: split must be \"train\" or \"val\", got \"", o.split, "\""));
  }
  if (o.batch_size <= 0 || o.seq_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("loader: batch_size (", o.batch_size,
                                                   ") and seq_len (", o.seq_len, ") must be > 0"));
  }
  if (o.world_size <= 0 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("loader: rank ", o.rank, " outside world of size ", o.world_size));
  }
  return absl::OkStatus();
}

absl::Status VerifyContents(const ShardReader& r, const ManifestShard& ms, int vocab) {
  const std::string sha =
      fs::Sha256Hex(absl::string_view(r.file_bytes().data(), r.file_bytes().size()));
  if (sha != ms.sha256) {
    return absl::DataLossError(absl::StrCat("shard ", r.path(), " has sha256 ", sha,
                                            " but the manifest lists ", ms.sha256));
  }
  for (uint64_t i = 0; i < r.size(); ++i) {
    if (r.token(i) >= static_cast<uint32_t>(vocab)) {
      return absl::DataLossError(absl::StrCat("shard ", r.path(), ": token ", i, " has id ",
                                              r.token(i), " >= vocab size ", vocab));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Open(const LoaderOptions& opts) {
  RETURN_IF_ERROR(CheckOptions(opts));
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(opts.data_dir));
  const std::vector<ManifestShard>& list = *m.split(opts.split);
  if (list.empty()) {
    return absl::NotFoundError(absl::StrCat("data dir ", opts.data_dir, " has no '", opts.split,
                                            "' shards (", m.path, ")"));
  }
  // The tokenizer shipped with the data must be the one the shards used.
  const std::string model = fs::JoinPath(opts.data_dir, "tokenizer.model");
  if (fs::Exists(model)) {
    ASSIGN_OR_RETURN(std::string sha, fs::Sha256File(model));
    if (sha != m.tokenizer_hash) {
      return absl::FailedPreconditionError(absl::StrCat(model, " has sha256 ", sha, " but ", m.path,
                                                        " records tokenizer_hash ",
                                                        m.tokenizer_hash));
    }
  }
  std::vector<std::unique_ptr<ShardReader>> shards;
  uint64_t max_window = 0;
  for (const ManifestShard& ms : list) {
    const std::string path = fs::JoinPath(opts.data_dir, ms.file);
    ASSIGN_OR_RETURN(auto r, ShardReader::Open(path));
    const ShardHeader& h = r->header();
    if (h.tokenizer_hash != m.tokenizer_hash) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard ", path, " was tokenized with tokenizer ", h.tokenizer_hash, " but ", m.path,
          " records ", m.tokenizer_hash, " (shards from different prepare runs?)"));
    }
    if (static_cast<int64_t>(h.vocab_size) != m.vocab_size) {
      return absl::FailedPreconditionError(absl::StrCat("shard ", path, " has vocab size ",
                                                        h.vocab_size, " but ", m.path, " records ",
                                                        m.vocab_size));
    }
    if (h.token_bytes != m.token_bytes) {
      return absl::DataLossError(absl::StrCat("shard ", path, " stores ", h.token_bytes,
                                              "-byte tokens but ", m.path, " says ",
                                              m.token_bytes));
    }
    if (h.num_tokens != ms.tokens) {
      return absl::DataLossError(absl::StrCat("shard ", path, " holds ", h.num_tokens,
                                              " tokens but ", m.path, " lists ", ms.tokens));
    }
    if (opts.verify) RETURN_IF_ERROR(VerifyContents(*r, ms, m.vocab_size));
    max_window = std::max(max_window, r->size());
    shards.push_back(std::move(r));
  }
  if (max_window < static_cast<uint64_t>(opts.seq_len) + 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("split '", opts.split, "' of ", opts.data_dir,
                     " has no shard with seq_len+1 = ", opts.seq_len + 1, " tokens (largest has ",
                     max_window, "); use a shorter seq_len or more data"));
  }
  return std::unique_ptr<DataLoader>(new ShardLoader(opts, std::move(m), std::move(shards)));
}

// ---- LoaderState JSON ---------------------------------------------------------

std::string LoaderState::ToJson() const {
  return json::Value::Object()
      .Set("seed", json::Value::String(std::to_string(seed)))
      .Set("rng_state", json::Value::String(std::to_string(rng_state)))
      .Set("shard", json::Value::Uint(shard))
      .Set("offset", json::Value::Uint(offset))
      .Set("batches", json::Value::Uint(batches))
      .Serialize();
}

absl::StatusOr<LoaderState> LoaderState::FromJson(const std::string& text) {
  auto v = json::Parse(text);
  if (!v.ok()) return Annotate(v.status(), "loader state");
  if (!v->is_object()) return absl::InvalidArgumentError("loader state: not a JSON object");
  LoaderState s;
  const std::string w = "loader state";
  ASSIGN_OR_RETURN(s.seed, json::GetUint64(*v, "seed", w));
  ASSIGN_OR_RETURN(s.rng_state, json::GetUint64(*v, "rng_state", w));
  ASSIGN_OR_RETURN(uint64_t shard, json::GetUint64(*v, "shard", w));
  if (shard > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": shard ", shard, " out of range"));
  }
  s.shard = static_cast<uint32_t>(shard);
  ASSIGN_OR_RETURN(s.offset, json::GetUint64(*v, "offset", w));
  ASSIGN_OR_RETURN(s.batches, json::GetUint64(*v, "batches", w));
  return s;
}

}  // namespace llmt::data
