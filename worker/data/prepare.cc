#include "worker/data/prepare.h"

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <thread>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/fs.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/data/clean.h"
#include "worker/data/corpus.h"
#include "worker/data/manifest.h"
#include "worker/data/shard.h"
#include "worker/data/tokenizer.h"

namespace llmt::data {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTokenizerTrainThreads = 2;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

struct Doc {
  std::string text;
  uint64_t split_hash = 0;
  bool val = false;
};

struct Source {
  std::string path;
  int64_t bytes = 0, docs_in = 0, docs_out = 0;
  std::string skipped;
};

// 128 bits of SHA-256: exact-duplicate detection without keeping a second
// copy of every document (a collision needs ~2^64 documents).
struct DocKey {
  uint64_t hi, lo;
  bool operator==(const DocKey& o) const { return hi == o.hi && lo == o.lo; }
};
struct DocKeyHash {
  size_t operator()(const DocKey& k) const { return static_cast<size_t>(k.lo); }
};

DocKey KeyOf(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr);
  DocKey k;
  std::memcpy(&k.hi, md, 8);
  std::memcpy(&k.lo, md + 8, 8);
  return k;
}

// Removes the staging directory unless the result was committed.
class StagingGuard {
 public:
  explicit StagingGuard(std::string dir) : dir_(std::move(dir)) {}
  ~StagingGuard() {
    if (!dir_.empty()) {
      auto st = fs::RemoveAll(dir_);
      if (!st.ok()) {
        LLMT_LOG(Warning) << "cleaning up: " << st.message();
      }
    }
  }
  void Release() { dir_.clear(); }

 private:
  std::string dir_;
};

// Writes one split's shards, starting a new shard every `max_tokens` tokens.
class SplitWriter {
 public:
  SplitWriter(std::string dir, std::string split, uint32_t token_bytes, uint32_t vocab,
              std::string hash, int64_t max_tokens)
      : dir_(std::move(dir)),
        split_(std::move(split)),
        token_bytes_(token_bytes),
        vocab_(vocab),
        hash_(std::move(hash)),
        max_tokens_(static_cast<uint64_t>(max_tokens)) {}

  absl::Status Append(const int32_t* ids, size_t n) {
    while (n > 0) {
      if (!cur_) {
        std::string name = absl::StrFormat("%s_%06d.bin", split_, shards_.size());
        ASSIGN_OR_RETURN(
            cur_, ShardWriter::Create(fs::JoinPath(dir_, name), token_bytes_, vocab_, hash_));
      }
      size_t take = std::min<uint64_t>(n, max_tokens_ - cur_->num_tokens());
      RETURN_IF_ERROR(cur_->Append(ids, take));
      ids += take;
      n -= take;
      tokens_ += take;
      if (cur_->num_tokens() >= max_tokens_) RETURN_IF_ERROR(Close());
    }
    return absl::OkStatus();
  }

  absl::Status Close() {
    if (!cur_) return absl::OkStatus();
    ASSIGN_OR_RETURN(ShardInfo info, cur_->Finish());
    shards_.push_back(std::move(info));
    cur_.reset();
    return absl::OkStatus();
  }

  const std::vector<ShardInfo>& shards() const { return shards_; }
  int64_t tokens() const { return static_cast<int64_t>(tokens_); }
  int64_t docs = 0;

 private:
  std::string dir_, split_;
  uint32_t token_bytes_, vocab_;
  std::string hash_;
  uint64_t max_tokens_;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<ShardInfo> shards_;
  uint64_t tokens_ = 0;
};

json::Value SplitJson(const SplitWriter& w) {
  json::Value shards = json::Value::Array();
  for (const ShardInfo& s : w.shards()) {
    shards.Push(json::Value::Object()
                    .Set("file", json::Value::String(s.file))
                    .Set("tokens", json::Value::Uint(s.tokens))
                    .Set("bytes", json::Value::Uint(s.bytes))
                    .Set("sha256", json::Value::String(s.sha256)));
  }
  return json::Value::Object()
      .Set("tokens", json::Value::Int(w.tokens()))
      .Set("documents", json::Value::Int(w.docs))
      .Set("shards", std::move(shards));
}

// Training text for SentencePiece: one line per sentence. Our documents keep
// newlines (they are encoded as the <0x0A> byte piece), so the trainer sees
// lines; very long lines are cut at spaces because SentencePiece skips
// sentences longer than its max_sentence_length.
std::string TokenizerTrainingText(const std::vector<Doc>& docs) {
  constexpr size_t kMaxLine = 16384;
  std::string out;
  for (const Doc& d : docs) {
    if (d.val) continue;  // the tokenizer never sees validation text
    std::string_view t(d.text);
    size_t start = 0;
    while (start < t.size()) {
      size_t end = t.find('\n', start);
      if (end == std::string_view::npos) end = t.size();
      std::string_view line = t.substr(start, end - start);
      start = end + 1;
      while (line.size() > kMaxLine) {
        size_t cut = line.rfind(' ', kMaxLine);
        if (cut == std::string_view::npos || cut == 0) cut = kMaxLine;
        out.append(line.substr(0, cut));
        out.push_back('\n');
        line.remove_prefix(cut);
        while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      }
      if (!line.empty()) {
        out.append(line);
        out.push_back('\n');
      }
    }
  }
  return out;
}

absl::Status CheckOutDir(const PrepareOptions& opts) {
  if (!fs::Exists(opts.out_dir)) return absl::OkStatus();
  if (!fs::IsDir(opts.out_dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", opts.out_dir, " exists and is not a directory"));
  }
  ASSIGN_OR_RETURN(auto names, fs::ListDir(opts.out_dir));
  if (!names.empty() && !opts.overwrite) {
    return absl::FailedPreconditionError(
        absl::StrCat("output directory ", opts.out_dir, " exists and is not empty (", names.size(),
                     " entries); choose another directory or pass --overwrite to replace it"));
  }
  return absl::OkStatus();
}

// Moves the finished staging directory into place; an existing non-empty
// out_dir (only with overwrite) is moved aside first and removed after.
absl::Status Commit(const std::string& staging, const PrepareOptions& opts) {
  std::string old;
  if (fs::Exists(opts.out_dir)) {
    ASSIGN_OR_RETURN(auto names, fs::ListDir(opts.out_dir));
    if (!names.empty()) {
      if (!opts.overwrite) {
        return absl::FailedPreconditionError(
            absl::StrCat("output directory ", opts.out_dir, " became non-empty while preparing"));
      }
      ASSIGN_OR_RETURN(old, fs::MakeTempDirBeside(opts.out_dir));
      RETURN_IF_ERROR(fs::RenameDurable(opts.out_dir, old));
    }
  }
  RETURN_IF_ERROR(fs::RenameDurable(staging, opts.out_dir));
  if (!old.empty()) RETURN_IF_ERROR(fs::RemoveAll(old));
  return absl::OkStatus();
}

absl::Status ValidateOptions(const PrepareOptions& o) {
  if (o.inputs.empty()) return absl::InvalidArgumentError("prepare: no --input given");
  if (o.out_dir.empty()) return absl::InvalidArgumentError("prepare: --out is required");
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: --val-fraction must be in [0, 1), got ", o.val_fraction));
  }
  if (o.tokenizer_model.empty() && (o.vocab_size < 300 || o.vocab_size > (1 << 20))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prepare: --vocab-size must be in [300, 1048576] (256 byte pieces + specials + "
        "merges), got ",
        o.vocab_size));
  }
  if (o.shard_tokens <= 0) {
    return absl::InvalidArgumentError("prepare: shard_tokens must be > 0");
  }
  if (o.min_doc_chars < 0) return absl::InvalidArgumentError("prepare: min_doc_chars must be >= 0");
  return absl::OkStatus();
}

absl::Status CheckEos(const Tokenizer& tok, const std::string& path) {
  if (tok.eos_id() >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "tokenizer ", path, " has no EOS piece; prepare needs one to separate documents"));
}

}  // namespace

std::string PrepareReport::ToString() const {
  return absl::StrFormat(
      "documents: %d in, %d kept, %d empty/short, %d duplicates\n"
      "bytes:     %d in, %d kept after cleaning\n"
      "tokens:    train %d in %d shard(s), val %d in %d shard(s)\n"
      "tokenizer: vocab %d, sha256 %s",
      docs_in, docs_out, docs_empty_or_short, docs_duplicate, bytes_in, bytes_out, train_tokens,
      train_shards, val_tokens, val_shards, vocab_size, tokenizer_hash);
}

absl::StatusOr<PrepareReport> Prepare(const PrepareOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  PrepareOptions opts = options;
  // "out/" would put the staging dir inside the output; "out/." likewise.
  opts.out_dir = std::filesystem::path(opts.out_dir).lexically_normal().string();
  while (opts.out_dir.size() > 1 && opts.out_dir.back() == '/') opts.out_dir.pop_back();
  if (opts.out_dir == "/" || opts.out_dir == "." || opts.out_dir == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: --out ", options.out_dir, " must name a new or empty directory"));
  }
  RETURN_IF_ERROR(CheckOutDir(opts));
  const auto t_start = Clock::now();
  const int threads = opts.threads > 0
                          ? opts.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  // A given tokenizer is checked before any work: it must load and have EOS.
  if (!opts.tokenizer_model.empty()) {
    std::string err;
    auto given = Tokenizer::Load(opts.tokenizer_model, &err);
    if (!given) return absl::InvalidArgumentError(absl::StrCat("--tokenizer: ", err));
    RETURN_IF_ERROR(CheckEos(*given, opts.tokenizer_model));
  }

  // ---- Read, clean, filter, deduplicate. -------------------------------
  ASSIGN_OR_RETURN(auto files, ExpandInputs(opts.inputs, opts.out_dir));
  PrepareReport rep;
  std::vector<Source> sources;
  std::vector<Doc> docs;
  std::unordered_set<DocKey, DocKeyHash> seen;
  for (const InputFile& f : files) {
    ASSIGN_OR_RETURN(FileDocuments fd, ReadDocuments(f));
    Source src{f.path, fd.bytes, 0, 0, fd.skipped};
    rep.bytes_in += fd.bytes;
    if (!fd.skipped.empty()) {
      LLMT_LOG(Warning) << "skipping " << f.path << ": " << fd.skipped;
    }
    for (std::string& text : fd.docs) {
      ++rep.docs_in;
      ++src.docs_in;
      if (CountChars(text) < opts.min_doc_chars) {
        ++rep.docs_empty_or_short;
        continue;
      }
      const DocKey key = KeyOf(text);
      if (!seen.insert(key).second) {
        ++rep.docs_duplicate;
        continue;
      }
      ++src.docs_out;
      rep.bytes_out += static_cast<int64_t>(text.size());
      Doc d;
      d.split_hash = SplitHash(key.hi, opts.seed);
      d.val = IsValidation(d.split_hash, opts.val_fraction);
      d.text = std::move(text);
      docs.push_back(std::move(d));
    }
    sources.push_back(std::move(src));
  }
  rep.docs_out = static_cast<int64_t>(docs.size());
  if (docs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("empty corpus after cleaning: ", files.size(), " file(s) under ",
                     absl::StrJoin(opts.inputs, ", "), " gave ", rep.docs_in, " document(s), ",
                     rep.docs_empty_or_short, " empty or shorter than ", opts.min_doc_chars,
                     " characters, ", rep.docs_duplicate, " duplicate(s)"));
  }
  // Tiny corpora: keep both splits usable. Moving the extreme-hash document
  // is as deterministic as the split itself and never happens on real data.
  {
    size_t n_val = std::count_if(docs.begin(), docs.end(), [](const Doc& d) { return d.val; });
    auto by_hash = [](const Doc& a, const Doc& b) { return a.split_hash < b.split_hash; };
    if (opts.val_fraction > 0 && n_val == 0 && docs.size() >= 2) {
      std::min_element(docs.begin(), docs.end(), by_hash)->val = true;
    } else if (n_val == docs.size()) {
      std::max_element(docs.begin(), docs.end(), by_hash)->val = false;
    }
  }
  LLMT_LOG(Info) << "prepare: " << files.size() << " file(s), " << rep.docs_in << " documents, "
                 << rep.docs_out << " kept (" << rep.docs_empty_or_short << " short, "
                 << rep.docs_duplicate << " duplicates) in "
                 << absl::StrFormat("%.1f", Seconds(t_start)) << " s";

  // ---- Stage everything beside out_dir. ---------------------------------
  ASSIGN_OR_RETURN(const std::string staging, fs::MakeTempDirBeside(opts.out_dir));
  StagingGuard guard(staging);
  const std::string model_path = fs::JoinPath(staging, "tokenizer.model");
  bool trained = false;
  if (!opts.tokenizer_model.empty()) {
    ASSIGN_OR_RETURN(std::string bytes, fs::ReadFile(opts.tokenizer_model));
    RETURN_IF_ERROR(fs::WriteFileSynced(model_path, bytes));
  } else {
    const auto t_tok = Clock::now();
    const std::string text_path = fs::JoinPath(staging, "tokenizer_train.txt");
    RETURN_IF_ERROR(fs::WriteFileSynced(text_path, TokenizerTrainingText(docs)));
    TokenizerTrainOptions to;
    to.input_file = text_path;
    to.model_prefix = fs::JoinPath(staging, "tokenizer");
    to.vocab_size = opts.vocab_size;
    // SentencePiece's BPE result depends on its thread count; fixing it keeps
    // the tokenizer (and its hash) a function of corpus, vocab size and seed
    // on every machine. Two threads cost little: training is ~2 s on the KJV.
    to.num_threads = kTokenizerTrainThreads;
    to.seed = opts.seed;
    std::string err;
    if (!TrainTokenizer(to, &err)) {
      return absl::InvalidArgumentError(absl::StrCat("cannot train a ", opts.vocab_size,
                                                     "-piece tokenizer on ",
                                                     absl::StrJoin(opts.inputs, ", "), ": ", err));
    }
    RETURN_IF_ERROR(fs::RemoveAll(text_path));
    trained = true;
    LLMT_LOG(Info) << "prepare: trained BPE tokenizer in "
                   << absl::StrFormat("%.1f", Seconds(t_tok)) << " s";
  }
  std::string err;
  auto tok = Tokenizer::Load(model_path, &err);
  if (!tok) return absl::InternalError(err);
  RETURN_IF_ERROR(CheckEos(*tok, model_path));
  const int vocab = tok->vocab_size();
  rep.vocab_size = vocab;
  rep.tokenizer_hash = tok->hash();
  const uint32_t token_bytes = TokenBytesForVocab(vocab);

  // ---- Tokenize on all threads, write shards in document order. --------
  const auto t_enc = Clock::now();
  SplitWriter train_w(staging, "train", token_bytes, vocab, tok->hash(), opts.shard_tokens);
  SplitWriter val_w(staging, "val", token_bytes, vocab, tok->hash(), opts.shard_tokens);
  const int32_t eos = tok->eos_id();
  constexpr size_t kBlockBytes = 32 << 20;  // bounds memory held as token vectors
  for (size_t begin = 0; begin < docs.size();) {
    size_t end = begin, bytes = 0;
    while (end < docs.size() && (bytes < kBlockBytes || end == begin))
      bytes += docs[end++].text.size();
    std::vector<std::vector<int32_t>> ids(end - begin);
    std::atomic<size_t> next{begin};
    auto work = [&] {
      // Dynamic assignment balances uneven documents; results land by index,
      // so the output does not depend on the thread count.
      for (size_t i; (i = next.fetch_add(1)) < end;) ids[i - begin] = tok->Encode(docs[i].text);
    };
    std::vector<std::thread> pool;
    const int n_threads = static_cast<int>(std::min<size_t>(threads, end - begin));
    for (int t = 1; t < n_threads; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
    for (size_t i = begin; i < end; ++i) {
      SplitWriter& w = docs[i].val ? val_w : train_w;
      auto& v = ids[i - begin];
      v.push_back(eos);
      RETURN_IF_ERROR(w.Append(v.data(), v.size()));
      ++w.docs;
    }
    begin = end;
  }
  RETURN_IF_ERROR(train_w.Close());
  RETURN_IF_ERROR(val_w.Close());
  rep.train_tokens = train_w.tokens();
  rep.val_tokens = val_w.tokens();
  rep.train_shards = static_cast<int>(train_w.shards().size());
  rep.val_shards = static_cast<int>(val_w.shards().size());
  LLMT_LOG(Info) << "prepare: tokenized " << rep.train_tokens + rep.val_tokens << " tokens on "
                 << threads << " thread(s) in " << absl::StrFormat("%.1f", Seconds(t_enc)) << " s";

  // ---- Manifest. ---------------------------------------------------------
  json::Value srcs = json::Value::Array();
  for (const Source& s : sources) {
    json::Value o = json::Value::Object()
                        .Set("path", json::Value::String(s.path))
                        .Set("bytes", json::Value::Int(s.bytes))
                        .Set("documents_in", json::Value::Int(s.docs_in))
                        .Set("documents_out", json::Value::Int(s.docs_out));
    if (!s.skipped.empty()) o.Set("skipped", json::Value::String(s.skipped));
    srcs.Push(std::move(o));
  }
  json::Value inputs = json::Value::Array();
  for (const auto& in : opts.inputs) inputs.Push(json::Value::String(in));
  json::Value manifest =
      json::Value::Object()
          .Set("format", json::Value::String(kManifestFormat))
          .Set("version", json::Value::Int(kManifestVersion))
          .Set("created_by", json::Value::String("llmt prepare"))
          .Set("vocab_size", json::Value::Int(vocab))
          .Set("bos_id", json::Value::Int(tok->bos_id()))
          .Set("eos_id", json::Value::Int(eos))
          .Set("dtype", json::Value::String(token_bytes == 2 ? "uint16" : "uint32"))
          .Set("tokenizer_hash", json::Value::String(tok->hash()))
          .Set("tokenizer", json::Value::Object()
                                .Set("file", json::Value::String("tokenizer.model"))
                                .Set("sha256", json::Value::String(tok->hash()))
                                .Set("trained", json::Value::Bool(trained))
                                .Set("type", json::Value::String("sentencepiece")))
          .Set("splits",
               json::Value::Object().Set("train", SplitJson(train_w)).Set("val", SplitJson(val_w)))
          .Set("counts",
               json::Value::Object()
                   .Set("documents_in", json::Value::Int(rep.docs_in))
                   .Set("documents_out", json::Value::Int(rep.docs_out))
                   .Set("documents_empty_or_short", json::Value::Int(rep.docs_empty_or_short))
                   .Set("documents_duplicate", json::Value::Int(rep.docs_duplicate))
                   .Set("bytes_in", json::Value::Int(rep.bytes_in))
                   .Set("bytes_out", json::Value::Int(rep.bytes_out))
                   .Set("train_tokens", json::Value::Int(rep.train_tokens))
                   .Set("val_tokens", json::Value::Int(rep.val_tokens)))
          .Set("sources", std::move(srcs))
          .Set("options", json::Value::Object()
                              .Set("inputs", std::move(inputs))
                              .Set("vocab_size", json::Value::Int(opts.vocab_size))
                              .Set("tokenizer_model", json::Value::String(opts.tokenizer_model))
                              .Set("val_fraction", json::Value::Double(opts.val_fraction))
                              .Set("seed", json::Value::Uint(opts.seed))
                              .Set("min_doc_chars", json::Value::Int(opts.min_doc_chars))
                              .Set("shard_tokens", json::Value::Int(opts.shard_tokens)));
  RETURN_IF_ERROR(
      fs::WriteFileSynced(fs::JoinPath(staging, "manifest.json"), manifest.Serialize(2) + "\n"));
  RETURN_IF_ERROR(fs::FsyncDir(staging));

  RETURN_IF_ERROR(Commit(staging, opts));
  guard.Release();
  LLMT_LOG(Info) << "prepare: wrote " << opts.out_dir << " in "
                 << absl::StrFormat("%.1f", Seconds(t_start)) << " s";
  return rep;
}

}  // namespace llmt::data
