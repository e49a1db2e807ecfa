// `llmt prepare`: corpus -> tokenizer -> cleaned, deduplicated, tokenized
// shards. Everything is written into a temp dir beside `out_dir` and renamed
// into place at the end, so a failure leaves nothing half-written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llmt::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or directories: plain text, or .jsonl with "text"
  std::string out_dir;
  int vocab_size = 8192;
  std::string tokenizer_model;      // reuse this .model instead of training one
  double val_fraction = 0.01;
  uint64_t seed = 1337;
  int min_doc_chars = 16;           // shorter documents are dropped
  int threads = 0;                  // encoding threads, 0 = all cores (output is the same
                                    // for any count; tokenizer training always uses 2)
  int64_t shard_tokens = 50'000'000;  // max tokens per shard
  bool overwrite = false;           // replace an existing out_dir
};

struct PrepareReport {
  int64_t docs_in = 0, docs_out = 0, docs_empty_or_short = 0, docs_duplicate = 0;
  int64_t bytes_in = 0, bytes_out = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  int train_shards = 0, val_shards = 0;
  int vocab_size = 0;
  std::string tokenizer_hash;
  std::string ToString() const;  // human summary, several lines
};

absl::StatusOr<PrepareReport> Prepare(const PrepareOptions& opts);

}  // namespace llmt::data
