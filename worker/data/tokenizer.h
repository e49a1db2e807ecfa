// Tokenizer: a thin wrapper over SentencePiece. SentencePiece 0.1.97's headers
// clash with Abseil's, so tokenizer.cc includes no Abseil header and this
// interface uses only std types; callers wrap errors into absl::Status.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llmt::data {

class Tokenizer {
 public:
  ~Tokenizer();
  // Returns nullptr and sets *error (naming the file) on failure.
  static std::unique_ptr<Tokenizer> Load(const std::string& model_path, std::string* error);

  std::vector<int32_t> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  // SHA-256 (hex) of the serialized model file: identifies the tokenizer in
  // shard headers, manifests and checkpoints.
  const std::string& hash() const { return hash_; }

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string hash_;
};

struct TokenizerTrainOptions {
  std::string input_file;  // one sentence/document per line
  std::string model_prefix;  // writes <prefix>.model and <prefix>.vocab
  int vocab_size = 8192;
  int num_threads = 2;
  uint64_t seed = 0;
  int64_t max_sentences = 2000000;
};
// BPE with byte fallback; returns false and sets *error on failure.
bool TrainTokenizer(const TokenizerTrainOptions& opts, std::string* error);

}  // namespace llmt::data
