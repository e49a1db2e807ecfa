// safetensors reader/writer. The header is parsed with common/json (Debian 12
// has no JSON library we want in the engine's dependency set).
#include "storage/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json.h"
#include "common/status.h"

namespace llmt::storage {
namespace {

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeader = 100ull << 20;
// A header is two levels deep; the limit only stops hostile nesting early.
// Repeated keys are not rejected by the parser: a repeated tensor name is
// reported below as "tensor X: duplicate tensor name".
constexpr json::ParseOptions kHeaderJson{.max_depth = 64};

// ----------------------------------------------------------- conversion ----

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | mant << 13;  // inf / nan
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A JSON integer literal (no fraction or exponent) that fits int64 and is >= 0,
// or -1. Strings holding digits, which json::Value::AsInt64 also accepts, are
// not integers in a safetensors header.
int64_t NonNegativeInt(const json::Value& v) {
  if (!v.is_number()) return -1;
  auto i = v.AsInt64();
  return i.ok() && *i >= 0 ? *i : -1;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// ----------------------------------------------------------------- files ----

absl::Status ErrnoError(const std::string& path, const std::string& what) {
  const int e = errno;
  const std::string msg = absl::StrCat(path, ": ", what, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(path, "write");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Read-only mapping of a whole file, unmapped on destruction.
class MappedFile {
 public:
  ~MappedFile() {
    if (data_ != nullptr && data_ != MAP_FAILED) munmap(data_, size_);
  }
  absl::Status Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(path, "open");
    struct stat st;
    if (fstat(fd, &st) != 0) {
      absl::Status s = ErrnoError(path, "stat");
      ::close(fd);
      return s;
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      data_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data_ == MAP_FAILED) {
        absl::Status s = ErrnoError(path, "mmap");
        ::close(fd);
        return s;
      }
    }
    ::close(fd);
    return absl::OkStatus();
  }
  const unsigned char* data() const { return static_cast<const unsigned char*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header.append("\"__metadata__\":{");
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      if (!mfirst) header.push_back(',');
      mfirst = false;
      json::AppendQuoted(&header, k);
      header.push_back(':');
      json::AppendQuoted(&header, v);
    }
    header.push_back('}');
    first = false;
  }
  uint64_t offset = 0;
  std::map<std::string, int> seen;
  for (const TensorRef& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": invalid tensor name '", t.name, "'"));
    }
    if (!seen.emplace(t.name, 0).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", t.name, ": duplicate name"));
    }
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t.name,
                                                       ": negative dimension in shape ",
                                                       ShapeString(t.shape)));
      }
      numel *= static_cast<uint64_t>(d);
    }
    if (numel > 0 && t.data == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", t.name, ": no data for shape ", ShapeString(t.shape)));
    }
    if (!first) header.push_back(',');
    first = false;
    json::AppendQuoted(&header, t.name);
    absl::StrAppend(&header, ":{\"dtype\":\"F32\",\"shape\":[", absl::StrJoin(t.shape, ","),
                    "],\"data_offsets\":[", offset, ",", offset + numel * 4, "]}");
    offset += numel * 4;
  }
  header.push_back('}');
  // Pad with spaces so the data section starts 8-byte aligned.
  while (header.size() % 8 != 0) header.push_back(' ');

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(path, "open for writing");
  unsigned char len[8];
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  absl::Status st = WriteAll(fd, len, 8, path);
  if (st.ok()) st = WriteAll(fd, header.data(), header.size(), path);
  for (const TensorRef& t : tensors) {
    if (!st.ok()) break;
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    if (numel > 0) st = WriteAll(fd, t.data, numel * 4, path);
  }
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoError(path, "fsync");
  if (::close(fd) != 0 && st.ok()) st = ErrnoError(path, "close");
  return st;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  MappedFile file;
  RETURN_IF_ERROR(file.Open(path));
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (file.size() < 8) {
    return fail(absl::StrCat("file too short for a safetensors header (", file.size(), " bytes)"));
  }
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(file.data()[i]) << (8 * i);
  if (hlen > kMaxHeader) return fail(absl::StrCat("header length ", hlen, " exceeds 100 MB"));
  if (8 + hlen > file.size()) {
    return fail(absl::StrCat("header length ", hlen, " exceeds the file size ", file.size(),
                             " (truncated file?)"));
  }
  const std::string_view htext(reinterpret_cast<const char*>(file.data()) + 8, hlen);
  auto root = json::Parse(htext, kHeaderJson);
  if (!root.ok()) return fail(absl::StrCat("header JSON: ", root.status().message()));
  if (!root->is_object()) return fail("header JSON is not an object");

  const unsigned char* data = file.data() + 8 + hlen;
  const uint64_t data_size = file.size() - 8 - hlen;
  SafetensorsFile out;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, v] : root->object()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return fail("__metadata__ is not an object");
      for (const auto& [k, mv] : v.object()) {
        if (!mv.is_string()) {
          return fail(absl::StrCat("__metadata__.", k, ": value is not a string"));
        }
        out.metadata[k] = mv.str();
      }
      continue;
    }
    auto tfail = [&](const std::string& what) {
      return fail(absl::StrCat("tensor ", name, ": ", what));
    };
    if (out.tensors.count(name) != 0) return tfail("duplicate tensor name");
    if (!v.is_object()) return tfail("entry is not an object");
    const json::Value* dtype = nullptr;
    const json::Value* shape = nullptr;
    const json::Value* offsets = nullptr;
    for (const auto& [k, f] : v.object()) {
      if (k == "dtype") {
        dtype = &f;
      } else if (k == "shape") {
        shape = &f;
      } else if (k == "data_offsets") {
        offsets = &f;
      } else {
        return tfail(absl::StrCat("unknown field '", k, "'"));
      }
    }
    if (dtype == nullptr || !dtype->is_string()) return tfail("missing string 'dtype'");
    if (shape == nullptr || !shape->is_array()) return tfail("missing array 'shape'");
    if (offsets == nullptr || !offsets->is_array() || offsets->array().size() != 2) {
      return tfail("'data_offsets' must be [begin, end]");
    }
    int elem = 0;
    if (dtype->str() == "F32") {
      elem = 4;
    } else if (dtype->str() == "F16" || dtype->str() == "BF16") {
      elem = 2;
    } else {
      return tfail(
          absl::StrCat("unsupported dtype ", dtype->str(), " (supported: F32, F16, BF16)"));
    }
    Tensor t;
    uint64_t numel = 1;
    for (const json::Value& d : shape->array()) {
      const int64_t dim = NonNegativeInt(d);
      if (dim < 0) return tfail("shape entries must be non-negative integers");
      if (dim > 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / dim) {
        return tfail("shape too large");
      }
      numel *= static_cast<uint64_t>(dim);
      t.shape.push_back(dim);
    }
    const int64_t begin_i = NonNegativeInt(offsets->array()[0]);
    const int64_t end_i = NonNegativeInt(offsets->array()[1]);
    if (begin_i < 0 || end_i < 0) return tfail("data_offsets must be non-negative integers");
    const uint64_t begin = begin_i, end = end_i;
    if (begin > end) return tfail(absl::StrCat("data_offsets [", begin, ", ", end, "] decrease"));
    if (end - begin != numel * elem) {
      return tfail(absl::StrCat("shape ", ShapeString(t.shape), " of ", dtype->str(), " needs ",
                                numel * elem, " bytes but data_offsets [", begin, ", ", end,
                                "] span ", end - begin));
    }
    if (end > data_size) {
      return tfail(absl::StrCat("data_offsets [", begin, ", ", end,
                                "] run past the end of the data section (", data_size,
                                " bytes; truncated file?)"));
    }
    t.data.resize(numel);
    const unsigned char* src = data + begin;
    if (elem == 4) {
      if (numel > 0) std::memcpy(t.data.data(), src, numel * 4);
    } else {
      const bool bf16 = dtype->str() == "BF16";
      for (uint64_t i = 0; i < numel; ++i) {
        const uint16_t h = static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
        t.data[i] = bf16 ? Bf16ToFloat(h) : HalfToFloat(h);
      }
    }
    auto [it, inserted] = out.tensors.emplace(name, std::move(t));
    spans.push_back({begin, end, &it->first});
  }
  // Tensors must tile the data section exactly: no overlaps, gaps or tail.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const Span& s : spans) {
    if (s.begin < cursor) {
      return fail(absl::StrCat("tensor ", *s.name, ": data_offsets [", s.begin, ", ", s.end,
                               "] overlap the previous tensor"));
    }
    if (s.begin > cursor) {
      return fail(absl::StrCat("tensor ", *s.name, ": gap of ", s.begin - cursor,
                               " bytes before its data"));
    }
    cursor = s.end;
  }
  if (cursor != data_size) {
    return fail(absl::StrCat("data section has ", data_size - cursor,
                             " bytes not covered by any tensor"));
  }
  return out;
}

}  // namespace llmt::storage
