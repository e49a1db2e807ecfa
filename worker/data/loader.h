// Resumable data loader over the binary shards written by `llmt prepare`.
// Shards are mmap'd; training batches are seeded random (B, T+1) windows; the
// loader's full state (shard, offset, RNG) is saved in checkpoints so a
// resumed run sees exactly the batches it would have seen.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::data {

struct LoaderState {
  uint64_t seed = 0;
  uint64_t rng_state = 0;   // serialized generator state (splitmix/pcg word)
  uint32_t shard = 0;       // used by sequential (validation) mode
  uint64_t offset = 0;      // token offset within shard (sequential mode)
  uint64_t batches = 0;     // batches served so far
  // JSON round trip for trainer_state.json. 64-bit words (seed, rng_state)
  // are written as decimal strings, as protobuf's JSON mapping does, so
  // readers that hold numbers in doubles cannot round them; FromJson accepts
  // numbers or strings for every field.
  std::string ToJson() const;
  static absl::StatusOr<LoaderState> FromJson(const std::string& json);
};

struct LoaderOptions {
  std::string data_dir;       // directory with manifest.json
  std::string split = "train";  // "train" | "val"
  int batch_size = 1;         // B
  int seq_len = 0;            // T
  uint64_t seed = 0;
  bool sequential = false;    // val: deterministic in-order windows, wraps around
  // Data parallel: every rank advances the same RNG through a global batch of
  // B*world_size windows and keeps windows [rank*B, (rank+1)*B), so world_size
  // ranks at batch B see exactly what one rank at batch B*world_size sees.
  int rank = 0;
  int world_size = 1;
  // Also hash every shard against the manifest's sha256 and check that every
  // token id is < vocab_size. Reads all data once; off by default because the
  // header checks already catch truncation and mixed-up runs.
  bool verify = false;
};

class DataLoader {
 public:
  virtual ~DataLoader() = default;
  // Validates manifest.json and every shard header (magic, version, dtype,
  // size vs token count, tokenizer hash); errors name the file.
  static absl::StatusOr<std::unique_ptr<DataLoader>> Open(const LoaderOptions& opts);

  // Fills inputs[B*T] and targets[B*T] (targets = inputs shifted by one).
  virtual void Next(int32_t* inputs, int32_t* targets) = 0;
  virtual LoaderState state() const = 0;
  virtual absl::Status Restore(const LoaderState& s) = 0;
  virtual void Reset() = 0;  // back to the start (sequential mode)
  virtual int vocab_size() const = 0;
  virtual const std::string& tokenizer_hash() const = 0;
  virtual uint64_t num_tokens() const = 0;
  // Added for eval and sampling: the number of (T+1)-token windows in one
  // sequential pass over the split (windows never cross shard ends), and the
  // document separator id.
  virtual uint64_t windows_per_pass() const = 0;
  virtual int eos_id() const = 0;
};

}  // namespace llmt::data
