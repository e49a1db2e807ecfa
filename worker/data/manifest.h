// The prepared dataset: DIR/manifest.json (written by Prepare, read by the
// loader) and the deterministic document -> split assignment.
//
// manifest.json (format "llmt-shards", version 1):
//   vocab_size, bos_id, eos_id, dtype ("uint16" | "uint32"), tokenizer_hash
//   (SHA-256 hex of DIR/tokenizer.model), tokenizer {file, sha256, trained},
//   splits {train|val: {tokens, documents, shards: [{file, tokens, bytes,
//   sha256}]}}, counts {documents_in, documents_out, documents_empty_or_short,
//   documents_duplicate, bytes_in, bytes_out, train_tokens, val_tokens},
//   sources [{path, bytes, documents_in, documents_out[, skipped]}],
//   options {inputs, vocab_size, tokenizer_model, val_fraction, seed,
//   min_doc_chars, shard_tokens}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/json.h"

namespace llmt::data {

inline constexpr char kManifestFormat[] = "llmt-shards";
inline constexpr int kManifestVersion = 1;

// SplitMix64 finaliser: a cheap, well-mixed, platform-independent hash step.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A document's split depends only on its content hash and the seed, so
// adding or removing other documents never moves it between train and val.
inline uint64_t SplitHash(uint64_t doc_hash, uint64_t seed) {
  return Mix64(doc_hash ^ Mix64(seed));
}
inline bool IsValidation(uint64_t split_hash, double val_fraction) {
  return static_cast<double>(split_hash >> 11) * 0x1.0p-53 < val_fraction;
}

struct ManifestShard {
  std::string file;  // base name inside the data dir
  uint64_t tokens = 0;
  uint64_t bytes = 0;
  std::string sha256;
};

struct Manifest {
  std::string path;  // DIR/manifest.json
  int vocab_size = 0;
  int bos_id = -1, eos_id = -1;
  uint32_t token_bytes = 2;
  std::string tokenizer_hash;
  std::vector<ManifestShard> train, val;
  json::Value raw;  // everything else (counts, sources, options)

  const std::vector<ManifestShard>* split(const std::string& name) const {
    if (name == "train") return &train;
    if (name == "val") return &val;
    return nullptr;
  }
};

// Reads and checks DIR/manifest.json; errors name the file and the field.
absl::StatusOr<Manifest> ReadManifest(const std::string& data_dir);

}  // namespace llmt::data
