#include "common/json.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace llmt::json {

Value Value::Bool(bool b) {
  Value v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}

Value Value::Int(int64_t x) {
  Value v;
  v.type_ = Type::kNumber;
  v.str_ = std::to_string(x);
  return v;
}

Value Value::Uint(uint64_t x) {
  Value v;
  v.type_ = Type::kNumber;
  v.str_ = std::to_string(x);
  return v;
}

Value Value::Double(double x) {
  Value v;
  if (!std::isfinite(x)) return v;  // JSON has no NaN/Inf: write null
  v.type_ = Type::kNumber;
  char buf[32];
  // %.17g round-trips every double exactly.
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  v.str_ = buf;
  return v;
}

Value Value::String(std::string s) {
  Value v;
  v.type_ = Type::kString;
  v.str_ = std::move(s);
  return v;
}

Value Value::Array() {
  Value v;
  v.type_ = Type::kArray;
  return v;
}

Value Value::Object() {
  Value v;
  v.type_ = Type::kObject;
  return v;
}

const Value* Value::Find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const auto& [k, v] : object_) {
    if (k == key) return &v;
  }
  return nullptr;
}

Value& Value::Set(std::string key, Value v) {
  if (type_ != Type::kObject) return *this;
  for (auto& [k, old] : object_) {
    if (k == key) {
      old = std::move(v);
      return *this;
    }
  }
  object_.emplace_back(std::move(key), std::move(v));
  return *this;
}

Value& Value::Push(Value v) {
  if (type_ == Type::kArray) array_.push_back(std::move(v));
  return *this;
}

namespace {

// The value as an integer of type I: a number or a string holding exactly
// its decimal digits; `what` names I in the error.
template <typename I>
absl::StatusOr<I> ParseInteger(const Value& v, const char* what) {
  if (!v.is_number() && !v.is_string()) {
    return absl::InvalidArgumentError("expected an integer (number or string)");
  }
  const std::string& text = v.str();
  I out = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec != std::errc() || p != text.data() + text.size() || text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", what, ", got ", text));
  }
  return out;
}

}  // namespace

absl::StatusOr<uint64_t> Value::AsUint64() const {
  return ParseInteger<uint64_t>(*this, "an unsigned 64-bit integer");
}

absl::StatusOr<int64_t> Value::AsInt64() const {
  return ParseInteger<int64_t>(*this, "a 64-bit integer");
}

absl::StatusOr<double> Value::AsDouble() const {
  if (!is_number()) return absl::InvalidArgumentError("expected a number");
  errno = 0;
  char* end = nullptr;
  double d = std::strtod(str_.c_str(), &end);
  if (end != str_.c_str() + str_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("bad number ", str_));
  }
  return d;
}

void AppendQuoted(std::string* out, std::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
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

void Value::SerializeTo(std::string* out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(indent) * d, ' ');
  };
  switch (type_) {
    case Type::kNull:
      out->append("null");
      break;
    case Type::kBool:
      out->append(bool_ ? "true" : "false");
      break;
    case Type::kNumber:
      out->append(str_);
      break;
    case Type::kString:
      AppendQuoted(out, str_);
      break;
    case Type::kArray:
      out->push_back('[');
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i > 0) out->push_back(',');
        newline(depth + 1);
        array_[i].SerializeTo(out, indent, depth + 1);
      }
      if (!array_.empty()) newline(depth);
      out->push_back(']');
      break;
    case Type::kObject:
      out->push_back('{');
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i > 0) out->push_back(',');
        newline(depth + 1);
        AppendQuoted(out, object_[i].first);
        out->append(indent < 0 ? ":" : ": ");
        object_[i].second.SerializeTo(out, indent, depth + 1);
      }
      if (!object_.empty()) newline(depth);
      out->push_back('}');
      break;
  }
}

std::string Value::Serialize(int indent) const {
  std::string out;
  SerializeTo(&out, indent, 0);
  return out;
}

// Recursive-descent parser over a string_view.
class Parser {
 public:
  Parser(std::string_view text, const ParseOptions& options) : s_(text), options_(options) {}

  absl::StatusOr<Value> ParseDocument() {
    Value v;
    SkipWs();
    if (!ParseValue(&v, 0)) return Error();
    SkipWs();
    if (pos_ != s_.size()) {
      err_ = "unexpected data after the JSON value";
      return Error();
    }
    return v;
  }

 private:
  absl::Status Error() const {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at line ", line, ", column ", col, ": ", err_));
  }

  bool Fail(std::string msg) {
    err_ = std::move(msg);
    return false;
  }

  void SkipWs() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) {
      return Fail(absl::StrCat("unexpected token (expected ", std::string(word), ")"));
    }
    pos_ += word.size();
    return true;
  }

  bool ParseValue(Value* v, int depth) {
    if (depth > options_.max_depth) return Fail("nesting too deep");
    if (pos_ >= s_.size()) return Fail("unexpected end of input");
    char c = s_[pos_];
    switch (c) {
      case '{':
        return ParseObject(v, depth);
      case '[':
        return ParseArray(v, depth);
      case '"':
        v->type_ = Value::Type::kString;
        return ParseString(&v->str_);
      case 't':
        v->type_ = Value::Type::kBool;
        v->bool_ = true;
        return Literal("true");
      case 'f':
        v->type_ = Value::Type::kBool;
        v->bool_ = false;
        return Literal("false");
      case 'n':
        v->type_ = Value::Type::kNull;
        return Literal("null");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(v);
        return Fail(absl::StrCat("unexpected character '", std::string(1, c), "'"));
    }
  }

  bool ParseObject(Value* v, int depth) {
    v->type_ = Value::Type::kObject;
    ++pos_;  // '{'
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    std::unordered_set<std::string> seen;  // only with reject_duplicate_keys
    while (true) {
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a string key");
      const size_t key_pos = pos_;
      std::string key;
      if (!ParseString(&key)) return false;
      if (options_.reject_duplicate_keys && !seen.insert(key).second) {
        pos_ = key_pos;  // point at the repeated key
        return Fail(absl::StrCat("duplicate key \"", key, "\""));
      }
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected ':' after key");
      ++pos_;
      SkipWs();
      Value member;
      if (!ParseValue(&member, depth + 1)) return false;
      v->object_.emplace_back(std::move(key), std::move(member));
      SkipWs();
      if (pos_ >= s_.size()) return Fail("unterminated object");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or '}' in object");
    }
  }

  bool ParseArray(Value* v, int depth) {
    v->type_ = Value::Type::kArray;
    ++pos_;  // '['
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipWs();
      Value item;
      if (!ParseValue(&item, depth + 1)) return false;
      v->array_.push_back(std::move(item));
      SkipWs();
      if (pos_ >= s_.size()) return Fail("unterminated array");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or ']' in array");
    }
  }

  bool ParseNumber(Value* v) {
    size_t start = pos_;
    auto digits = [&] {
      size_t n = 0;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        ++pos_;
        ++n;
      }
      return n;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;  // no leading zeros
    } else if (digits() == 0) {
      return Fail("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return Fail("bad number: digits expected after '.'");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) return Fail("bad number: digits expected in exponent");
    }
    v->type_ = Value::Type::kNumber;
    v->str_ = std::string(s_.substr(start, pos_ - start));
    return true;
  }

  bool Hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) return Fail("truncated \\u escape");
    uint32_t x = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      x <<= 4;
      if (c >= '0' && c <= '9') {
        x |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        x |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        x |= c - 'A' + 10;
      } else {
        return Fail("bad hex digit in \\u escape");
      }
    }
    *out = x;
    return true;
  }

  bool ParseString(std::string* out) {
    ++pos_;  // opening quote
    while (true) {
      // Copy the run of plain bytes in one go.
      size_t run = pos_;
      while (run < s_.size() && s_[run] != '"' && s_[run] != '\\' &&
             static_cast<unsigned char>(s_[run]) >= 0x20) {
        ++run;
      }
      out->append(s_.data() + pos_, run - pos_);
      pos_ = run;
      if (pos_ >= s_.size()) return Fail("unterminated string");
      char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c != '\\') return Fail("unescaped control character in string");
      ++pos_;
      if (pos_ >= s_.size()) return Fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            // A high surrogate must be followed by an escaped low surrogate.
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') {
              return Fail("unpaired high surrogate in \\u escape");
            }
            pos_ += 2;
            uint32_t lo;
            if (!Hex4(&lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return Fail("unpaired high surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Fail("unpaired low surrogate in \\u escape");
          }
          AppendUtf8(out, cp);
          break;
        }
        default:
          --pos_;
          return Fail(absl::StrCat("bad escape '\\", std::string(1, e), "'"));
      }
    }
  }

  std::string_view s_;
  const ParseOptions options_;
  size_t pos_ = 0;
  std::string err_;
};

absl::StatusOr<Value> Parse(std::string_view text, const ParseOptions& options) {
  return Parser(text, options).ParseDocument();
}

namespace {

absl::StatusOr<const Value*> Member(const Value& obj, std::string_view key,
                                    std::string_view where) {
  const Value* v = obj.Find(key);
  if (v == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(where), ": missing field \"", std::string(key), "\""));
  }
  return v;
}

}  // namespace

absl::StatusOr<uint64_t> GetUint64(const Value& obj, std::string_view key, std::string_view where) {
  auto v = Member(obj, key, where);
  if (!v.ok()) return v.status();
  auto r = (*v)->AsUint64();
  if (!r.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(where), ": field \"",
                                                   std::string(key), "\": ", r.status().message()));
  }
  return *r;
}

absl::StatusOr<int64_t> GetInt64(const Value& obj, std::string_view key, std::string_view where) {
  auto v = Member(obj, key, where);
  if (!v.ok()) return v.status();
  auto r = (*v)->AsInt64();
  if (!r.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(where), ": field \"",
                                                   std::string(key), "\": ", r.status().message()));
  }
  return *r;
}

absl::StatusOr<std::string> GetString(const Value& obj, std::string_view key,
                                      std::string_view where) {
  auto v = Member(obj, key, where);
  if (!v.ok()) return v.status();
  if (!(*v)->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(where), ": field \"", std::string(key), "\" is not a string"));
  }
  return (*v)->str();
}

}  // namespace llmt::json
