// SentencePiece wrapper. This translation unit must include no Abseil header:
// SentencePiece 0.1.97 declares its own `absl::string_view` alias, which
// clashes with Debian's Abseil. Errors travel as std::string.
#include "worker/data/tokenizer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <openssl/evp.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace llmt::data {
namespace {

std::string Sha256Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

bool ReadWhole(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = "cannot read " + path;
    return false;
  }
  *out = ss.str();
  return true;
}

// Writes and fsyncs `data` to `path` (the caller's staging directory is
// renamed into place later, so no temp-file dance is needed here).
bool WriteSynced(const std::string& path, const std::string& data, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *error = "cannot create " + path + ": " + std::strerror(errno);
    return false;
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      *error = "cannot write " + path + ": " + std::strerror(errno);
      ::close(fd);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  bool ok = ::fsync(fd) == 0;
  if (::close(fd) != 0) ok = false;
  if (!ok) *error = "cannot sync " + path + ": " + std::strerror(errno);
  return ok;
}

// Streams the training file line by line. Reading it ourselves (rather than
// passing --input) keeps paths with commas working: SentencePiece splits its
// repeated `input` flag on commas.
class FileSentenceIterator : public sentencepiece::SentenceIterator {
 public:
  explicit FileSentenceIterator(const std::string& path) : in_(path, std::ios::binary) {
    if (!in_) {
      status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                            "cannot open " + path);
      done_ = true;
      return;
    }
    Next();
  }
  bool done() const override { return done_; }
  void Next() override {
    if (done_) return;
    if (!std::getline(in_, line_)) done_ = true;
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::Load(const std::string& model_path, std::string* error) {
  std::string bytes, err;
  if (!ReadWhole(model_path, &bytes, &err)) {
    if (error) *error = "tokenizer model: " + err;  // err names the file
    return nullptr;
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  auto st = t->impl_->sp.LoadFromSerializedProto(bytes);
  if (!st.ok()) {
    if (error) {
      *error = model_path + " is not a SentencePiece model (" + st.ToString() + ")";
    }
    return nullptr;
  }
  t->hash_ = Sha256Hex(bytes);
  return t;
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  std::vector<int> ids;
  // Encode only fails on an unloaded model, which Load rules out.
  impl_->sp.Encode(text, &ids).IgnoreError();
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  const int n = impl_->sp.GetPieceSize();
  std::vector<int> in;
  in.reserve(ids.size());
  // A sampled or corrupt id outside the vocabulary would make SentencePiece
  // fail the whole call; dropping it keeps the rest of the text readable.
  for (int32_t id : ids) {
    if (id >= 0 && id < n) in.push_back(id);
  }
  std::string out;
  impl_->sp.Decode(in, &out).IgnoreError();
  return out;
}

int Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int Tokenizer::bos_id() const { return impl_->sp.bos_id(); }
int Tokenizer::eos_id() const { return impl_->sp.eos_id(); }

bool TrainTokenizer(const TokenizerTrainOptions& opts, std::string* error) {
  std::string err;
  auto fail = [&](const std::string& msg) {
    if (error) *error = msg;
    return false;
  };
  if (opts.vocab_size <= 0) return fail("vocab_size must be > 0");
  // Byte-level BPE: 256 byte pieces guarantee every string is encodable, so
  // NFKC-normalised text decodes back exactly. Whitespace is normalised by our
  // cleaner (not SentencePiece's), and newlines are kept: they reach the model
  // as the <0x0A> byte piece, as in Llama's tokenizer.
  std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opts.vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},
      {"normalization_rule_name", "nfkc"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "false"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", std::to_string(opts.num_threads > 0 ? opts.num_threads : 1)},
      {"input_sentence_size", std::to_string(opts.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", "65536"},
      // A small corpus may not support the requested vocabulary; take what it
      // supports instead of failing (the manifest records the real size).
      {"hard_vocab_limit", "false"},
      {"minloglevel", "1"},
  };
  // SentencePiece samples and shuffles sentences with a process-global
  // generator; seeding it makes the trained model (and its hash) reproducible.
  unsigned int seed = static_cast<unsigned int>(opts.seed ^ (opts.seed >> 32));
  if (seed == static_cast<unsigned int>(-1)) seed = 0;  // -1 means "random device"
  sentencepiece::SetRandomGeneratorSeed(seed);

  FileSentenceIterator it(opts.input_file);
  std::string model;
  auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!st.ok()) return fail("SentencePiece training failed: " + st.ToString());

  const std::string model_path = opts.model_prefix + ".model";
  if (!WriteSynced(model_path, model, &err)) return fail(err);

  // The .vocab file (piece<TAB>score) is for people reading the vocabulary.
  sentencepiece::SentencePieceProcessor sp;
  st = sp.LoadFromSerializedProto(model);
  if (!st.ok()) return fail("trained tokenizer does not load: " + st.ToString());
  std::string vocab;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    vocab += sp.IdToPiece(i);
    vocab += '\t';
    vocab += std::to_string(sp.GetScore(i));
    vocab += '\n';
  }
  if (!WriteSynced(opts.model_prefix + ".vocab", vocab, &err)) return fail(err);
  return true;
}

}  // namespace llmt::data
