#include "worker/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/fs.h"

namespace llmt::data {
namespace {

// Tokens are stored and mmap'd in native order; the format is little-endian.
static_assert(std::endian::native == std::endian::little, "shards assume a little-endian host");

constexpr size_t kWriteBuffer = 1 << 20;

template <typename T>
void Put(std::string* s, size_t off, T v) {
  std::memcpy(s->data() + off, &v, sizeof(T));
}

template <typename T>
T Get(std::string_view s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof(T));
  return v;
}

absl::Status ErrnoStatus(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

std::string EncodeShardHeader(const ShardHeader& h) {
  std::string s(kShardHeaderBytes, '\0');
  std::memcpy(s.data(), kShardMagic, sizeof(kShardMagic));
  Put<uint32_t>(&s, 8, h.version);
  Put<uint32_t>(&s, 12, h.header_bytes);
  Put<uint32_t>(&s, 16, h.token_bytes);
  Put<uint32_t>(&s, 20, h.vocab_size);
  Put<uint64_t>(&s, 24, h.num_tokens);
  std::memcpy(s.data() + 32, h.tokenizer_hash.data(),
              std::min<size_t>(64, h.tokenizer_hash.size()));
  return s;
}

absl::StatusOr<ShardHeader> DecodeShardHeader(std::string_view bytes, const std::string& path) {
  if (bytes.size() < kShardHeaderBytes) {
    return absl::DataLossError(absl::StrCat("shard ", path, " is truncated: ", bytes.size(),
                                            " bytes, smaller than the ", kShardHeaderBytes,
                                            "-byte header"));
  }
  if (std::memcmp(bytes.data(), kShardMagic, sizeof(kShardMagic)) != 0) {
    return absl::DataLossError(
        absl::StrCat("shard ", path, " has a bad magic number (not an llmt token shard)"));
  }
  ShardHeader h;
  h.version = Get<uint32_t>(bytes, 8);
  if (h.version != kShardVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", path, " has unsupported format version ", h.version,
                     " (this build reads version ", kShardVersion, "); re-run llmt prepare"));
  }
  h.header_bytes = Get<uint32_t>(bytes, 12);
  h.token_bytes = Get<uint32_t>(bytes, 16);
  h.vocab_size = Get<uint32_t>(bytes, 20);
  h.num_tokens = Get<uint64_t>(bytes, 24);
  h.tokenizer_hash.assign(bytes.data() + 32, 64);
  if (h.header_bytes != kShardHeaderBytes) {
    return absl::DataLossError(absl::StrCat("shard ", path, " has header size ", h.header_bytes,
                                            ", expected ", kShardHeaderBytes));
  }
  if (h.token_bytes != 2 && h.token_bytes != 4) {
    return absl::DataLossError(absl::StrCat("shard ", path, " has token width ", h.token_bytes,
                                            " bytes, expected 2 or 4"));
  }
  if (h.token_bytes != TokenBytesForVocab(h.vocab_size)) {
    return absl::DataLossError(absl::StrCat("shard ", path, " stores ", h.token_bytes,
                                            "-byte tokens for vocab size ", h.vocab_size));
  }
  return h;
}

// ---- ShardWriter ------------------------------------------------------------

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::unique_ptr<ShardWriter>> ShardWriter::Create(
    const std::string& path, uint32_t token_bytes, uint32_t vocab_size,
    const std::string& tokenizer_hash) {
  std::unique_ptr<ShardWriter> w(new ShardWriter());
  w->path_ = path;
  w->header_.token_bytes = token_bytes;
  w->header_.vocab_size = vocab_size;
  w->header_.tokenizer_hash = tokenizer_hash;
  w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return ErrnoStatus(absl::StrCat("cannot create shard ", path));
  // Placeholder header; Finish() rewrites it with the final token count.
  w->buf_ = EncodeShardHeader(w->header_);
  w->buf_.reserve(kWriteBuffer + 4096);
  return w;
}

absl::Status ShardWriter::Append(const int32_t* ids, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<uint32_t>(id) >= header_.vocab_size) {
      return absl::InternalError(absl::StrCat("token id ", id, " outside vocabulary of ",
                                              header_.vocab_size, " writing ", path_));
    }
    if (header_.token_bytes == 2) {
      uint16_t v = static_cast<uint16_t>(id);
      buf_.append(reinterpret_cast<const char*>(&v), 2);
    } else {
      uint32_t v = static_cast<uint32_t>(id);
      buf_.append(reinterpret_cast<const char*>(&v), 4);
    }
    if (buf_.size() >= kWriteBuffer) {
      if (auto st = Flush(); !st.ok()) return st;
    }
  }
  header_.num_tokens += n;
  return absl::OkStatus();
}

absl::Status ShardWriter::Flush() {
  size_t done = 0;
  while (done < buf_.size()) {
    ssize_t k = ::write(fd_, buf_.data() + done, buf_.size() - done);
    if (k < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(absl::StrCat("cannot write shard ", path_));
    }
    done += static_cast<size_t>(k);
  }
  buf_.clear();
  return absl::OkStatus();
}

absl::StatusOr<ShardInfo> ShardWriter::Finish() {
  if (auto st = Flush(); !st.ok()) return st;
  std::string h = EncodeShardHeader(header_);
  if (::pwrite(fd_, h.data(), h.size(), 0) != static_cast<ssize_t>(h.size())) {
    return ErrnoStatus(absl::StrCat("cannot write header of shard ", path_));
  }
  if (::fsync(fd_) != 0) return ErrnoStatus(absl::StrCat("cannot fsync shard ", path_));
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return ErrnoStatus(absl::StrCat("cannot close shard ", path_));
  ShardInfo info;
  info.file = fs::Basename(path_);
  info.tokens = header_.num_tokens;
  info.bytes = kShardHeaderBytes + header_.num_tokens * header_.token_bytes;
  auto sha = fs::Sha256File(path_);
  if (!sha.ok()) return sha.status();
  info.sha256 = *sha;
  return info;
}

// ---- ShardReader ------------------------------------------------------------

ShardReader::~ShardReader() {
  if (map_ != nullptr) ::munmap(map_, map_len_);
}

absl::StatusOr<std::unique_ptr<ShardReader>> ShardReader::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("shard ", path, " is missing"));
    return ErrnoStatus(absl::StrCat("cannot open shard ", path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    auto s = ErrnoStatus(absl::StrCat("cannot stat shard ", path));
    ::close(fd);
    return s;
  }
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  r->map_len_ = static_cast<size_t>(st.st_size);
  if (r->map_len_ > 0) {
    r->map_ = ::mmap(nullptr, r->map_len_, PROT_READ, MAP_SHARED, fd, 0);
    if (r->map_ == MAP_FAILED) {
      r->map_ = nullptr;
      auto s = ErrnoStatus(absl::StrCat("cannot mmap shard ", path));
      ::close(fd);
      return s;
    }
  }
  ::close(fd);  // the mapping stays valid
  auto h = DecodeShardHeader(r->file_bytes(), path);
  if (!h.ok()) return h.status();
  r->header_ = *h;
  const uint64_t want = kShardHeaderBytes + h->num_tokens * h->token_bytes;
  if (r->map_len_ != want) {
    return absl::DataLossError(
        absl::StrCat("shard ", path, r->map_len_ < want ? " is truncated" : " has trailing data",
                     ": header says ", h->num_tokens, " tokens (", want,
                     " bytes) but the file has ", r->map_len_, " bytes"));
  }
  r->tokens_ = static_cast<const unsigned char*>(r->map_) + kShardHeaderBytes;
  return r;
}

void ShardReader::Copy(uint64_t begin, uint64_t n, int32_t* out) const {
  if (header_.token_bytes == 2) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < n; ++i) out[i] = p[i];
  } else {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(p[i]);
  }
}

void ShardReader::AdviseRandom() const {
  if (map_ != nullptr) ::madvise(map_, map_len_, MADV_RANDOM);
}

}  // namespace llmt::data
