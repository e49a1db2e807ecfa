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
  // JSON round trip for trainer_state.json.
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
};

}  // namespace llmt::data
