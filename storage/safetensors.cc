// safetensors reader/writer with a small strict JSON parser for the header
// (Debian 12 has no JSON library we want in the engine's dependency set).
#include "storage/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace llmt::storage {
namespace {

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeader = 100ull << 20;
constexpr int kMaxDepth = 64;

// ------------------------------------------------------------------ JSON ----

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = kNull;
  bool boolean = false;
  bool is_int = false;  // number without fraction/exponent that fits int64
  int64_t integer = 0;
  std::string str;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;  // in file order
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  absl::Status Parse(Json* out) {
    SkipWs();
    absl::Status st = Value(out, 0);
    if (!st.ok()) return st;
    SkipWs();
    if (pos_ != s_.size()) return Error("trailing characters after the JSON value");
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("header JSON: ", what, " at byte ", pos_));
  }
  void SkipWs() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(std::string_view lit) {
    if (s_.substr(pos_, lit.size()) != lit) return false;
    pos_ += lit.size();
    return true;
  }

  absl::Status Value(Json* v, int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    if (pos_ >= s_.size()) return Error("unexpected end");
    const char c = s_[pos_];
    if (c == '{') return Object(v, depth);
    if (c == '[') return Array(v, depth);
    if (c == '"') {
      v->kind = Json::kString;
      return String(&v->str);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return Number(v);
    if (Consume("true")) {
      v->kind = Json::kBool;
      v->boolean = true;
      return absl::OkStatus();
    }
    if (Consume("false")) {
      v->kind = Json::kBool;
      return absl::OkStatus();
    }
    if (Consume("null")) return absl::OkStatus();
    return Error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }

  absl::Status Object(Json* v, int depth) {
    v->kind = Json::kObject;
    ++pos_;  // '{'
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("expected a string key");
      std::string key;
      absl::Status st = String(&key);
      if (!st.ok()) return st;
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Error("expected ':'");
      ++pos_;
      SkipWs();
      Json child;
      st = Value(&child, depth + 1);
      if (!st.ok()) return st;
      v->obj.emplace_back(std::move(key), std::move(child));
      SkipWs();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error("expected ',' or '}'");
    }
  }

  absl::Status Array(Json* v, int depth) {
    v->kind = Json::kArray;
    ++pos_;  // '['
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipWs();
      Json child;
      absl::Status st = Value(&child, depth + 1);
      if (!st.ok()) return st;
      v->arr.push_back(std::move(child));
      SkipWs();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error("expected ',' or ']'");
    }
  }

  absl::Status Number(Json* v) {
    v->kind = Json::kNumber;
    const size_t start = pos_;
    const bool neg = s_[pos_] == '-';
    if (neg) ++pos_;
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Error("bad number");
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9') {
      return Error("leading zero in number");
    }
    bool overflow = false;
    uint64_t mag = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      const uint64_t d = s_[pos_] - '0';
      if (mag > (std::numeric_limits<uint64_t>::max() - d) / 10) overflow = true;
      mag = mag * 10 + d;
      ++pos_;
    }
    bool frac = false;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      frac = true;
      ++pos_;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Error("bad fraction");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      frac = true;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Error("bad exponent");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    const uint64_t limit = neg ? uint64_t{1} << 63 : (uint64_t{1} << 63) - 1;
    v->is_int = !frac && !overflow && mag <= limit;
    if (v->is_int) v->integer = neg ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
    v->str = std::string(s_.substr(start, pos_ - start));
    return absl::OkStatus();
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  absl::Status Hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) return Error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        v |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        v |= c - 'A' + 10;
      } else {
        return Error("bad \\u escape");
      }
    }
    *out = v;
    return absl::OkStatus();
  }

  absl::Status String(std::string* out) {
    ++pos_;  // '"'
    while (true) {
      if (pos_ >= s_.size()) return Error("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return Error("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          absl::Status st = Hex4(&cp);
          if (!st.ok()) return st;
          if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
            uint32_t lo = 0;
            if (!Consume("\\u")) return Error("unpaired surrogate");
            st = Hex4(&lo);
            if (!st.ok()) return st;
            if (lo < 0xDC00 || lo >= 0xE000) return Error("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return Error("unpaired surrogate");
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          return Error("bad escape");
      }
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

void AppendJsonString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out->append(buf);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

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
      AppendJsonString(k, &header);
      header.push_back(':');
      AppendJsonString(v, &header);
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
    AppendJsonString(t.name, &header);
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
  Json root;
  {
    absl::Status st = JsonParser(htext).Parse(&root);
    if (!st.ok()) return fail(std::string(st.message()));
  }
  if (root.kind != Json::kObject) return fail("header JSON is not an object");

  const unsigned char* data = file.data() + 8 + hlen;
  const uint64_t data_size = file.size() - 8 - hlen;
  SafetensorsFile out;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, v] : root.obj) {
    if (name == "__metadata__") {
      if (v.kind != Json::kObject) return fail("__metadata__ is not an object");
      for (const auto& [k, mv] : v.obj) {
        if (mv.kind != Json::kString) {
          return fail(absl::StrCat("__metadata__.", k, ": value is not a string"));
        }
        out.metadata[k] = mv.str;
      }
      continue;
    }
    auto tfail = [&](const std::string& what) {
      return fail(absl::StrCat("tensor ", name, ": ", what));
    };
    if (out.tensors.count(name) != 0) return tfail("duplicate tensor name");
    if (v.kind != Json::kObject) return tfail("entry is not an object");
    const Json* dtype = nullptr;
    const Json* shape = nullptr;
    const Json* offsets = nullptr;
    for (const auto& [k, f] : v.obj) {
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
    if (dtype == nullptr || dtype->kind != Json::kString) return tfail("missing string 'dtype'");
    if (shape == nullptr || shape->kind != Json::kArray) return tfail("missing array 'shape'");
    if (offsets == nullptr || offsets->kind != Json::kArray || offsets->arr.size() != 2) {
      return tfail("'data_offsets' must be [begin, end]");
    }
    int elem = 0;
    if (dtype->str == "F32") {
      elem = 4;
    } else if (dtype->str == "F16" || dtype->str == "BF16") {
      elem = 2;
    } else {
      return tfail(absl::StrCat("unsupported dtype ", dtype->str, " (supported: F32, F16, BF16)"));
    }
    Tensor t;
    uint64_t numel = 1;
    for (const Json& d : shape->arr) {
      if (d.kind != Json::kNumber || !d.is_int || d.integer < 0) {
        return tfail("shape entries must be non-negative integers");
      }
      if (d.integer > 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / d.integer) {
        return tfail("shape too large");
      }
      numel *= static_cast<uint64_t>(d.integer);
      t.shape.push_back(d.integer);
    }
    for (const Json& o : offsets->arr) {
      if (o.kind != Json::kNumber || !o.is_int || o.integer < 0) {
        return tfail("data_offsets must be non-negative integers");
      }
    }
    const uint64_t begin = offsets->arr[0].integer, end = offsets->arr[1].integer;
    if (begin > end) return tfail(absl::StrCat("data_offsets [", begin, ", ", end, "] decrease"));
    if (end - begin != numel * elem) {
      return tfail(absl::StrCat("shape ", ShapeString(t.shape), " of ", dtype->str, " needs ",
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
      const bool bf16 = dtype->str == "BF16";
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
