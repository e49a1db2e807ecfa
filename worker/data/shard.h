// Binary token shards written by `llmt prepare` and read (mmap'd) by the
// loader.
//
// Layout, little-endian, version 1:
//   offset  size  field
//        0     8  magic "LLMTSHRD"
//        8     4  version (1)
//       12     4  header_bytes (128): tokens start here
//       16     4  token_bytes: 2 (uint16, vocab <= 65536) or 4 (uint32)
//       20     4  vocab_size
//       24     8  num_tokens
//       32    64  tokenizer hash: SHA-256 hex of tokenizer.model
//       96    32  reserved, zero
//      128     -  num_tokens tokens; documents are separated by EOS (each
//                 document is followed by one EOS). A document may continue
//                 in the next shard when a shard reaches its token limit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::data {

inline constexpr char kShardMagic[8] = {'L', 'L', 'M', 'T', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardHeaderBytes = 128;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t header_bytes = kShardHeaderBytes;
  uint32_t token_bytes = 2;
  uint32_t vocab_size = 0;
  uint64_t num_tokens = 0;
  std::string tokenizer_hash;  // 64 hex chars
};

// 2 bytes per token when every id fits in uint16, else 4.
inline uint32_t TokenBytesForVocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

std::string EncodeShardHeader(const ShardHeader& h);  // exactly kShardHeaderBytes
// Checks magic, version, header size and token width; errors name `path`.
absl::StatusOr<ShardHeader> DecodeShardHeader(std::string_view bytes, const std::string& path);

struct ShardInfo {
  std::string file;  // base name, e.g. train_000000.bin
  uint64_t tokens = 0;
  uint64_t bytes = 0;  // whole file
  std::string sha256;
};

// Streams tokens into one shard file; Finish() fills in the header's token
// count, fsyncs and hashes the file.
class ShardWriter {
 public:
  ~ShardWriter();
  static absl::StatusOr<std::unique_ptr<ShardWriter>> Create(const std::string& path,
                                                             uint32_t token_bytes,
                                                             uint32_t vocab_size,
                                                             const std::string& tokenizer_hash);
  // Ids must be in [0, vocab_size).
  absl::Status Append(const int32_t* ids, size_t n);
  absl::StatusOr<ShardInfo> Finish();
  uint64_t num_tokens() const { return header_.num_tokens; }

 private:
  ShardWriter() = default;
  absl::Status Flush();

  std::string path_;
  int fd_ = -1;
  ShardHeader header_;
  std::string buf_;
};

// Read-only mmap of a shard after validating its header and size.
class ShardReader {
 public:
  ~ShardReader();
  static absl::StatusOr<std::unique_ptr<ShardReader>> Open(const std::string& path);

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return header_.num_tokens; }
  uint32_t token(uint64_t i) const {
    return header_.token_bytes == 2 ? reinterpret_cast<const uint16_t*>(tokens_)[i]
                                    : reinterpret_cast<const uint32_t*>(tokens_)[i];
  }
  // Copies tokens [begin, begin + n) as int32.
  void Copy(uint64_t begin, uint64_t n, int32_t* out) const;
  // Hints the kernel about the access pattern (random windows vs. a scan).
  void AdviseRandom() const;
  // Whole file bytes (header + tokens), e.g. for hashing.
  std::string_view file_bytes() const {
    return std::string_view(static_cast<const char*>(map_), map_len_);
  }

 private:
  ShardReader() = default;

  std::string path_;
  ShardHeader header_;
  void* map_ = nullptr;
  size_t map_len_ = 0;
  const unsigned char* tokens_ = nullptr;
};

}  // namespace llmt::data
