#include "common/spec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/fs.h"
#include "common/status.h"

namespace llmt::spec {
namespace {

namespace pb = google::protobuf;
using FD = pb::FieldDescriptor;
using llmt::v1::JobSpec;

// ---------------------------------------------------------------------------
// Small helpers

// Shortest text that parses back to exactly `v` ("0.0003", "1e-08").
std::string FormatDouble(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string JsonQuote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  out += "\"";
  return out;
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c >> 5) == 0x6) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c >> 4) == 0xE) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c >> 3) == 0x1E) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates, beyond U+10FFFF.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// Optimal string alignment distance (Levenshtein plus adjacent transposition).
int EditDistance(absl::string_view a, absl::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

// "Batch-Size" -> "batchsize": how people misspell field names.
std::string Normalize(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (c != '_' && c != '-') out.push_back(absl::ascii_tolower(c));
  }
  return out;
}

// Fields that are plain JobSpec sections (our own messages), as opposed to
// well-known types whose JSON mapping is special.
bool IsPlainMessage(const pb::Descriptor* d) { return d->file()->package() != "google.protobuf"; }

void FindFieldPaths(const pb::Descriptor* d, const std::string& prefix, absl::string_view key,
                    int depth, std::vector<std::string>* out) {
  if (depth > 3) return;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    if (!prefix.empty() && Normalize(f->name()) == Normalize(key)) out->push_back(path);
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE && !f->is_map() && IsPlainMessage(f->message_type())) {
      FindFieldPaths(f->message_type(), path, key, depth + 1, out);
    }
  }
}

// " (did you mean batch_size?)" or "" when nothing is close.
std::string Suggest(const pb::Descriptor* d, const std::string& key, const pb::Descriptor* root) {
  const std::string nk = Normalize(key);
  std::string best;
  int best_d = std::numeric_limits<int>::max();
  for (int i = 0; i < d->field_count(); ++i) {
    const std::string& name = d->field(i)->name();
    const std::string nn = Normalize(name);
    int dist = nn == nk ? 0 : EditDistance(nk, nn);
    // "optimizer" for "optim": a longer spelling of a short field name.
    if (dist > 0 && nn.size() >= 4 && nk.size() > nn.size() && absl::StartsWith(nk, nn)) dist = 1;
    if (dist < best_d) {
      best_d = dist;
      best = name;
    }
  }
  const int limit = nk.size() <= 4 ? 1 : (nk.size() <= 8 ? 2 : 3);
  if (!best.empty() && best_d <= limit) return absl::StrCat(" (did you mean ", best, "?)");
  // The right name in the wrong section ("batch_size" at the top level).
  std::vector<std::string> paths;
  FindFieldPaths(root, "", key, 0, &paths);
  if (!paths.empty()) return absl::StrCat(" (did you mean ", absl::StrJoin(paths, " or "), "?)");
  return "";
}

std::string Describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", n.Scalar(), "'");
    default:
      return "nothing";
  }
}

// ---------------------------------------------------------------------------
// YAML -> JSON, type-directed by the message Descriptor.
//
// YAML scalars are untyped text; converting them by what the target field
// expects (rather than by how YAML would guess) means `name: 123` is the
// string "123", `max_steps: "100"` is the integer 100, and every mismatch can
// be reported with its field path before protobuf sees the document.

struct Problem {
  std::string path, what;
};

class Converter {
 public:
  explicit Converter(const pb::Descriptor* root) : root_(root) {}

  std::string ConvertMessage(const YAML::Node& node, const pb::Descriptor* d,
                             const std::string& path) {
    std::string out = "{";
    bool first = true;
    std::set<int> seen;
    // Copies, not references: yaml-cpp's iterator-> returns a temporary proxy.
    for (const auto& kv : node) {
      const YAML::Node key = kv.first;
      const YAML::Node value = kv.second;
      if (!key.IsScalar()) {
        Fail(path, absl::StrCat("keys must be plain names, got ", Describe(key)));
        continue;
      }
      const std::string name = key.Scalar();
      const std::string fpath = path.empty() ? name : absl::StrCat(path, ".", name);
      const FD* f = d->FindFieldByName(name);
      if (f == nullptr) {
        for (int i = 0; i < d->field_count() && f == nullptr; ++i) {
          if (d->field(i)->json_name() == name) f = d->field(i);
        }
      }
      if (f == nullptr) {
        Fail(fpath, absl::StrCat("unknown field", Suggest(d, name, root_)));
        continue;
      }
      if (!seen.insert(f->number()).second) {
        Fail(fpath, absl::StrCat("duplicate field (", f->name(), " is already set above)"));
        continue;
      }
      if (value.IsNull()) continue;  // "key:" or "key: ~" means "use the default"
      std::string v;
      if (!ConvertField(value, f, fpath, &v)) continue;
      absl::StrAppend(&out, first ? "" : ",", JsonQuote(f->name()), ":", v);
      first = false;
    }
    out += "}";
    return out;
  }

  const std::vector<Problem>& problems() const { return problems_; }
  void Fail(const std::string& path, std::string what) {
    problems_.push_back({path, std::move(what)});
  }

 private:
  bool ConvertField(const YAML::Node& n, const FD* f, const std::string& path, std::string* out) {
    if (f->is_map()) {
      if (!n.IsMap()) {
        Fail(path, absl::StrCat("expected a mapping of key: value, got ", Describe(n)));
        return false;
      }
      const FD* kf = f->message_type()->map_key();
      const FD* vf = f->message_type()->map_value();
      std::string s = "{";
      std::set<std::string> keys;
      bool ok = true;
      for (const auto& kv : n) {
        const YAML::Node key = kv.first;
        const YAML::Node value = kv.second;
        if (!key.IsScalar()) {
          Fail(path, absl::StrCat("map keys must be scalars, got ", Describe(key)));
          ok = false;
          continue;
        }
        const std::string k = key.Scalar();
        const std::string kpath = absl::StrCat(path, ".", k);
        std::string kjson;
        if (!ConvertScalar(key, kf, kpath + " (key)", &kjson)) {
          ok = false;
          continue;
        }
        if (!keys.insert(k).second) {
          Fail(kpath, "duplicate key");
          ok = false;
          continue;
        }
        if (value.IsNull()) {
          Fail(kpath, "missing value");
          ok = false;
          continue;
        }
        std::string v;
        if (!ConvertSingle(value, vf, kpath, &v)) {
          ok = false;
          continue;
        }
        absl::StrAppend(&s, keys.size() == 1 ? "" : ",", JsonQuote(k), ":", v);
      }
      *out = s + "}";
      return ok;
    }
    if (f->is_repeated()) {
      if (!n.IsSequence()) {
        Fail(path, absl::StrCat("expected a list, got ", Describe(n)));
        return false;
      }
      std::string s = "[";
      bool ok = true;
      for (size_t i = 0; i < n.size(); ++i) {
        std::string v;
        const std::string ipath = absl::StrCat(path, "[", i, "]");
        const YAML::Node item = n[i];
        if (item.IsNull()) {
          Fail(ipath, "null list element");
          ok = false;
          continue;
        }
        if (!ConvertSingle(item, f, ipath, &v)) {
          ok = false;
          continue;
        }
        absl::StrAppend(&s, s.size() == 1 ? "" : ",", v);
      }
      *out = s + "]";
      return ok;
    }
    return ConvertSingle(n, f, path, out);
  }

  bool ConvertSingle(const YAML::Node& n, const FD* f, const std::string& path, std::string* out) {
    if (f->cpp_type() != FD::CPPTYPE_MESSAGE) return ConvertScalar(n, f, path, out);
    if (!IsPlainMessage(f->message_type())) {
      Fail(path, absl::StrCat("unsupported field type ", f->message_type()->full_name()));
      return false;
    }
    if (!n.IsMap()) {
      Fail(path, absl::StrCat("expected a mapping (a section with fields), got ", Describe(n)));
      return false;
    }
    const size_t before = problems_.size();
    *out = ConvertMessage(n, f->message_type(), path);
    return problems_.size() == before;
  }

  static const char* Expected(const FD* f) {
    switch (f->cpp_type()) {
      case FD::CPPTYPE_INT32:
      case FD::CPPTYPE_INT64:
        return "an integer";
      case FD::CPPTYPE_UINT32:
      case FD::CPPTYPE_UINT64:
        return "a non-negative integer";
      case FD::CPPTYPE_DOUBLE:
      case FD::CPPTYPE_FLOAT:
        return "a number";
      case FD::CPPTYPE_BOOL:
        return "true or false";
      case FD::CPPTYPE_ENUM:
        return "an enum value";
      default:
        return "a string";
    }
  }

  // Integers: plain decimal, or an exactly integral number ("1e6", "8.0"),
  // which YAML authors write for step counts.
  template <typename T>
  bool ParseInt(const std::string& s, T* v) {
    if (absl::SimpleAtoi(s, v)) return true;
    double d;
    if (!absl::SimpleAtod(s, &d) || !std::isfinite(d) || d != std::floor(d)) return false;
    if (std::fabs(d) > 9007199254740992.0) return false;  // 2^53: beyond exact doubles
    if (d < static_cast<double>(std::numeric_limits<T>::min()) ||
        d > static_cast<double>(std::numeric_limits<T>::max())) {
      return false;
    }
    *v = static_cast<T>(d);
    return true;
  }

  bool ConvertScalar(const YAML::Node& n, const FD* f, const std::string& path, std::string* out) {
    if (!n.IsScalar()) {
      Fail(path, absl::StrCat("expected ", Expected(f), ", got ", Describe(n)));
      return false;
    }
    const std::string s(absl::StripAsciiWhitespace(n.Scalar()));
    auto bad = [&](absl::string_view extra = "") {
      Fail(path, absl::StrCat("expected ", Expected(f), ", got '", n.Scalar(), "'", extra));
      return false;
    };
    switch (f->cpp_type()) {
      case FD::CPPTYPE_STRING: {
        if (!IsValidUtf8(n.Scalar())) {
          Fail(path, "not valid UTF-8");
          return false;
        }
        if (f->type() == FD::TYPE_BYTES) {
          *out = JsonQuote(absl::Base64Escape(n.Scalar()));
        } else {
          *out = JsonQuote(n.Scalar());
        }
        return true;
      }
      case FD::CPPTYPE_INT32: {
        int64_t v;
        if (!ParseInt(s, &v)) return bad();
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
          Fail(path, absl::StrCat("value ", s, " is out of range for a 32-bit integer"));
          return false;
        }
        *out = absl::StrCat(v);
        return true;
      }
      case FD::CPPTYPE_INT64: {
        int64_t v;
        if (!ParseInt(s, &v)) return bad();
        *out = absl::StrCat("\"", v, "\"");  // proto JSON: 64-bit ints as strings
        return true;
      }
      case FD::CPPTYPE_UINT32:
      case FD::CPPTYPE_UINT64: {
        if (absl::StartsWith(s, "-")) return bad();
        uint64_t v;
        if (!ParseInt(s, &v)) return bad();
        if (f->cpp_type() == FD::CPPTYPE_UINT32 && v > std::numeric_limits<uint32_t>::max()) {
          Fail(path, absl::StrCat("value ", s, " is out of range for a 32-bit integer"));
          return false;
        }
        *out = absl::StrCat("\"", v, "\"");
        return true;
      }
      case FD::CPPTYPE_DOUBLE:
      case FD::CPPTYPE_FLOAT: {
        double v;
        if (!absl::SimpleAtod(s, &v)) return bad();
        if (!std::isfinite(v)) {
          Fail(path, absl::StrCat("expected a finite number, got '", n.Scalar(), "'"));
          return false;
        }
        *out = FormatDouble(v);
        return true;
      }
      case FD::CPPTYPE_BOOL: {
        const std::string l = absl::AsciiStrToLower(s);
        if (l == "true" || l == "yes" || l == "on") {
          *out = "true";
        } else if (l == "false" || l == "no" || l == "off") {
          *out = "false";
        } else {
          return bad();
        }
        return true;
      }
      case FD::CPPTYPE_ENUM: {
        int32_t num;
        if (absl::SimpleAtoi(s, &num)) {
          *out = absl::StrCat(num);
          return true;
        }
        if (f->enum_type()->FindValueByName(s) == nullptr) {
          std::vector<std::string> names;
          for (int i = 0; i < f->enum_type()->value_count(); ++i) {
            names.push_back(f->enum_type()->value(i)->name());
          }
          return bad(absl::StrCat(" (one of ", absl::StrJoin(names, ", "), ")"));
        }
        *out = JsonQuote(s);
        return true;
      }
      default:
        break;
    }
    return bad();
  }

  const pb::Descriptor* root_;
  std::vector<Problem> problems_;
};

// ---------------------------------------------------------------------------
// --set overrides

struct Override {
  std::string text;               // as given, for messages
  std::vector<std::string> path;  // split on '.'
  std::string value;
};

absl::StatusOr<Override> ParseOverride(const std::string& text, const std::string& source) {
  auto err = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": --set ", text, ": ", what));
  };
  size_t eq = text.find('=');
  if (eq == std::string::npos) return err("expected path=value (e.g. train.batch_size=8)");
  Override o;
  o.text = text;
  std::string path(absl::StripAsciiWhitespace(text.substr(0, eq)));
  o.value = text.substr(eq + 1);
  if (path.empty()) return err("empty field path before '='");
  o.path = absl::StrSplit(path, '.');
  for (const auto& seg : o.path) {
    if (seg.empty()) return err("empty segment in the field path");
  }
  return o;
}

absl::Status ApplyOverride(YAML::Node root, const Override& o, const std::string& source) {
  YAML::Node cur = root;
  std::string walked;
  for (size_t i = 0; i + 1 < o.path.size(); ++i) {
    const std::string& seg = o.path[i];
    walked = walked.empty() ? seg : absl::StrCat(walked, ".", seg);
    YAML::Node child = cur[seg];
    if (!child || child.IsNull()) {
      cur[seg] = YAML::Node(YAML::NodeType::Map);
      child = cur[seg];
    } else if (!child.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": --set ", o.text, ": ", walked,
                                                     " is ", Describe(child),
                                                     ", not a section with fields"));
    }
    // Node assignment would copy into `cur`; reset() rebinds the handle.
    cur.reset(child);
  }
  cur[o.path.back()] = o.value;
  return absl::OkStatus();
}

// Segment-wise prefix test in either direction: an error at "train" (from
// --set train=5) or at "train.batchsize" (from --set train.batchsize=8) both
// come from the override.
bool PathsRelated(const std::string& problem_path, const std::vector<std::string>& ov) {
  std::vector<std::string> p = absl::StrSplit(problem_path, '.');
  size_t n = std::min(p.size(), ov.size());
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != ov[i]) return false;
  }
  return true;
}

absl::Status ProblemsToStatus(const std::vector<Problem>& problems, const std::string& source,
                              const std::vector<Override>& overrides) {
  std::vector<std::string> lines;
  for (const auto& p : problems) {
    std::string line =
        absl::StrCat(source, ": ", p.path.empty() ? "(top level)" : p.path, ": ", p.what);
    for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {
      if (!p.path.empty() && PathsRelated(p.path, it->path)) {
        absl::StrAppend(&line, " (from --set ", it->text, ")");
        break;
      }
    }
    lines.push_back(std::move(line));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

absl::StatusOr<JobSpec> JsonToSpec(const std::string& json, const std::string& source) {
  JobSpec spec;
  pb::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = pb::util::JsonStringToMessage(json, &spec, opts);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", std::string(st.message())));
  }
  return spec;
}

absl::StatusOr<JobSpec> ConvertTree(YAML::Node root, const std::string& source,
                                    const std::vector<std::string>& override_texts) {
  std::vector<Override> overrides;
  for (const auto& t : override_texts) {
    ASSIGN_OR_RETURN(Override o, ParseOverride(t, source));
    overrides.push_back(std::move(o));
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": the top level must be a mapping of JobSpec sections, got ", Describe(root)));
  }
  for (const auto& o : overrides) RETURN_IF_ERROR(ApplyOverride(root, o, source));

  Converter conv(JobSpec::descriptor());
  std::string json = conv.ConvertMessage(root, JobSpec::descriptor(), "");
  if (!conv.problems().empty()) return ProblemsToStatus(conv.problems(), source, overrides);
  // The converter has already checked names and types, so protobuf's own
  // (strict) parser failing here would be a converter bug; its message is
  // still passed on rather than swallowed.
  return JsonToSpec(json, source);
}

absl::StatusOr<YAML::Node> LoadYaml(const std::string& text, const std::string& source) {
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(text);
    if (docs.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": expected one YAML document, found ",
                                                     docs.size(), " (separated by ---)"));
    }
    return docs.empty() ? YAML::Node() : docs[0];
  } catch (const YAML::Exception& e) {
    std::string where = source;
    if (!e.mark.is_null()) absl::StrAppend(&where, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid YAML: ", e.msg));
  }
}

absl::StatusOr<JobSpec> Finish(absl::StatusOr<JobSpec> spec, const std::string& source) {
  if (!spec.ok()) return spec;
  ApplyDefaults(&*spec);
  RETURN_IF_ERROR(Validate(*spec, source));
  return spec;
}

// ---------------------------------------------------------------------------
// Validation

class Checker {
 public:
  explicit Checker(const std::string& source) : source_(source) {}
  void Fail(absl::string_view path, absl::string_view what) {
    errors_.push_back(absl::StrCat(source_, ": ", path, ": ", what));
  }
  template <typename T>
  void Positive(absl::string_view path, T v) {
    if (!(v > 0) || !std::isfinite(static_cast<double>(v))) {
      Fail(path, absl::StrCat("must be > 0, got ", Str(v)));
    }
  }
  template <typename T>
  void NonNegative(absl::string_view path, T v) {
    if (!(v >= 0) || !std::isfinite(static_cast<double>(v))) {
      Fail(path, absl::StrCat("must be >= 0, got ", Str(v)));
    }
  }
  void OneOf(absl::string_view path, const std::string& v, std::vector<std::string> allowed) {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
    Fail(path, absl::StrCat("must be one of ", absl::StrJoin(allowed, ", "), "; got '", v, "'"));
  }
  absl::Status Result() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
  }
  template <typename T>
  static std::string Str(T v) {
    if constexpr (std::is_floating_point_v<T>) {
      return FormatDouble(v);
    } else {
      return absl::StrCat(v);
    }
  }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

bool ValidNameChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.'; }

// ---------------------------------------------------------------------------
// Output: reflection over set fields, so ToJson and ToYaml agree and map keys
// come out sorted (protobuf's printer emits maps in hash order).

bool IsEmptyMessage(const pb::Message& m) {
  std::vector<const FD*> fields;
  m.GetReflection()->ListFields(m, &fields);
  for (const FD* f : fields) {
    if (f->cpp_type() != FD::CPPTYPE_MESSAGE || f->is_repeated()) return false;
    if (!IsEmptyMessage(m.GetReflection()->GetMessage(m, f))) return false;
  }
  return true;
}

std::vector<const FD*> OutputFields(const pb::Message& m) {
  std::vector<const FD*> fields, out;
  m.GetReflection()->ListFields(m, &fields);
  for (const FD* f : fields) {
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE && !f->is_repeated() &&
        IsEmptyMessage(m.GetReflection()->GetMessage(m, f))) {
      continue;
    }
    out.push_back(f);
  }
  return out;
}

// Scalar text of field f (index i when repeated). `json` selects protobuf's
// JSON conventions (64-bit ints and non-finite doubles as strings).
std::string ScalarText(const pb::Message& m, const FD* f, int i, bool json, bool* quote) {
  const pb::Reflection* r = m.GetReflection();
  const bool rep = f->is_repeated();
  *quote = false;
  auto dbl = [&](double v) {
    if (std::isfinite(v)) return FormatDouble(v);
    *quote = json;
    if (std::isnan(v)) return std::string(json ? "NaN" : ".nan");
    return std::string(v > 0 ? (json ? "Infinity" : ".inf") : (json ? "-Infinity" : "-.inf"));
  };
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32:
      return absl::StrCat(rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f));
    case FD::CPPTYPE_UINT32:
      return absl::StrCat(rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f));
    case FD::CPPTYPE_INT64:
      *quote = json;
      return absl::StrCat(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
    case FD::CPPTYPE_UINT64:
      *quote = json;
      return absl::StrCat(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
    case FD::CPPTYPE_DOUBLE:
      return dbl(rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f));
    case FD::CPPTYPE_FLOAT:
      return dbl(rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
    case FD::CPPTYPE_BOOL:
      return (rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f)) ? "true" : "false";
    case FD::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* e = rep ? r->GetRepeatedEnum(m, f, i) : r->GetEnum(m, f);
      *quote = true;
      return e->name();
    }
    case FD::CPPTYPE_STRING: {
      std::string s = rep ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
      *quote = true;
      return f->type() == FD::TYPE_BYTES ? absl::Base64Escape(s) : s;
    }
    default:
      return "";
  }
}

void AppendJson(const pb::Message& m, std::string* out);

void AppendJsonValue(const pb::Message& m, const FD* f, int i, std::string* out) {
  const pb::Reflection* r = m.GetReflection();
  if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
    AppendJson(f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f), out);
    return;
  }
  bool quote;
  std::string s = ScalarText(m, f, i, /*json=*/true, &quote);
  out->append(quote ? JsonQuote(s) : s);
}

// Map entries sorted by key text so that equal maps print identically.
std::vector<std::pair<std::string, const pb::Message*>> SortedMapEntries(const pb::Message& m,
                                                                         const FD* f) {
  const pb::Reflection* r = m.GetReflection();
  std::vector<std::pair<std::string, const pb::Message*>> entries;
  for (int i = 0; i < r->FieldSize(m, f); ++i) {
    const pb::Message& e = r->GetRepeatedMessage(m, f, i);
    bool quote;
    entries.emplace_back(ScalarText(e, f->message_type()->map_key(), 0, false, &quote), &e);
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  // A map parsed from the wire may repeat a key; the last one wins.
  std::vector<std::pair<std::string, const pb::Message*>> dedup;
  for (auto& e : entries) {
    if (!dedup.empty() && dedup.back().first == e.first) {
      dedup.back() = e;
    } else {
      dedup.push_back(e);
    }
  }
  return dedup;
}

void AppendJson(const pb::Message& m, std::string* out) {
  const pb::Reflection* r = m.GetReflection();
  out->push_back('{');
  bool first = true;
  for (const FD* f : OutputFields(m)) {
    absl::StrAppend(out, first ? "" : ",", JsonQuote(f->name()), ":");
    first = false;
    if (f->is_map()) {
      out->push_back('{');
      bool first_entry = true;
      for (const auto& [key, entry] : SortedMapEntries(m, f)) {
        absl::StrAppend(out, first_entry ? "" : ",", JsonQuote(key), ":");
        first_entry = false;
        AppendJsonValue(*entry, f->message_type()->map_value(), 0, out);
      }
      out->push_back('}');
    } else if (f->is_repeated()) {
      out->push_back('[');
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (i > 0) out->push_back(',');
        AppendJsonValue(m, f, i, out);
      }
      out->push_back(']');
    } else {
      AppendJsonValue(m, f, 0, out);
    }
  }
  out->push_back('}');
}

// Strings that a YAML reader would take for a number, bool or null get quoted.
bool NeedsYamlQuotes(const std::string& s) {
  if (s.empty()) return true;
  const std::string l = absl::AsciiStrToLower(s);
  static const std::set<std::string> kWords = {"true", "false", "yes",  "no",   "on",
                                               "off",  "y",     "n",    "null", "~",
                                               ".inf", "-.inf", ".nan", "+.inf"};
  if (kWords.count(l) > 0) return true;
  double d;
  if (absl::SimpleAtod(s, &d)) return true;
  return absl::ascii_isspace(s.front()) || absl::ascii_isspace(s.back());
}

void EmitYamlScalar(YAML::Emitter& e, const pb::Message& m, const FD* f, int i) {
  bool quote;
  std::string s = ScalarText(m, f, i, /*json=*/false, &quote);
  if (quote && NeedsYamlQuotes(s)) {
    e << YAML::DoubleQuoted << s;
  } else {
    e << s;
  }
}

void EmitYaml(YAML::Emitter& e, const pb::Message& m) {
  const pb::Reflection* r = m.GetReflection();
  e << YAML::BeginMap;
  for (const FD* f : OutputFields(m)) {
    e << YAML::Key << f->name() << YAML::Value;
    if (f->is_map()) {
      e << YAML::BeginMap;
      for (const auto& [key, entry] : SortedMapEntries(m, f)) {
        const FD* vf = f->message_type()->map_value();
        if (NeedsYamlQuotes(key)) {
          e << YAML::Key << YAML::DoubleQuoted << key << YAML::Value;
        } else {
          e << YAML::Key << key << YAML::Value;
        }
        if (vf->cpp_type() == FD::CPPTYPE_MESSAGE) {
          EmitYaml(e, entry->GetReflection()->GetMessage(*entry, vf));
        } else {
          EmitYamlScalar(e, *entry, vf, 0);
        }
      }
      e << YAML::EndMap;
    } else if (f->is_repeated()) {
      e << YAML::BeginSeq;
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
          EmitYaml(e, r->GetRepeatedMessage(m, f, i));
        } else {
          EmitYamlScalar(e, m, f, i);
        }
      }
      e << YAML::EndSeq;
    } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      EmitYaml(e, r->GetMessage(m, f));
    } else {
      EmitYamlScalar(e, m, f, 0);
    }
  }
  e << YAML::EndMap;
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API

absl::StatusOr<JobSpec> ParseYamlRaw(const std::string& yaml_text, const std::string& source,
                                     const std::vector<std::string>& overrides) {
  ASSIGN_OR_RETURN(YAML::Node root, LoadYaml(yaml_text, source));
  return ConvertTree(root, source, overrides);
}

absl::StatusOr<JobSpec> ParseYaml(const std::string& yaml_text, const std::string& source,
                                  const std::vector<std::string>& overrides) {
  return Finish(ParseYamlRaw(yaml_text, source, overrides), source);
}

absl::StatusOr<JobSpec> LoadFile(const std::string& path,
                                 const std::vector<std::string>& overrides) {
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  return ParseYaml(text, path, overrides);
}

absl::StatusOr<JobSpec> ParseJsonRaw(const std::string& json, const std::string& source) {
  // JSON is (for all practical documents) YAML, so the same type-directed
  // converter gives the same field-path errors. A document yaml-cpp cannot
  // read goes straight to protobuf's JSON parser.
  YAML::Node root;
  try {
    root = YAML::Load(json);
  } catch (const YAML::Exception&) {
    return JsonToSpec(json, source);
  }
  if (!root.IsMap() && !root.IsNull()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object, got ", Describe(root)));
  }
  return ConvertTree(root, source, {});
}

absl::StatusOr<JobSpec> ParseJson(const std::string& json, const std::string& source) {
  return Finish(ParseJsonRaw(json, source), source);
}

void ApplyDefaults(JobSpec* spec) {
  auto* m = spec->mutable_model();
  const bool gpt2 = m->family() == "gpt2";
  const bool llama = m->family() == "llama";
  if (gpt2 || llama) {
    if (m->n_kv_head() == 0) m->set_n_kv_head(m->n_head());
    if (m->d_ff() == 0 && m->d_model() > 0) {
      if (gpt2) {
        if (m->d_model() <= std::numeric_limits<int32_t>::max() / 4) m->set_d_ff(4 * m->d_model());
      } else {
        // SwiGLU keeps the parameter count of a 4*d_model MLP with three
        // matrices: int(2/3 * 4 * d_model), rounded up to a multiple of 64.
        const int64_t hidden = 8LL * m->d_model() / 3;
        const int64_t d_ff = (hidden + 63) / 64 * 64;
        if (d_ff <= std::numeric_limits<int32_t>::max()) m->set_d_ff(static_cast<int32_t>(d_ff));
      }
    }
    if (llama && m->rope_theta() == 0) m->set_rope_theta(10000.0);
  }
  if (m->norm_eps() == 0) m->set_norm_eps(1e-5);
  if (m->init_std() == 0) m->set_init_std(0.02);

  auto* t = spec->mutable_train();
  if (t->grad_accum_steps() == 0) t->set_grad_accum_steps(1);
  if (t->device().empty()) t->set_device("cpu");
  // The CUDA engine trains in bf16 with fp32 master weights; the CPU engine
  // is fp32 only (job.proto: "fp32 (default on cpu)").
  if (t->precision().empty()) t->set_precision(t->device() == "cuda" ? "bf16" : "fp32");
  if (t->seq_len() == 0) t->set_seq_len(m->max_seq_len());
  if (t->recompute().empty()) t->set_recompute("none");
  if (t->log_every() == 0) t->set_log_every(1);
  if (t->max_bad_steps() == 0) t->set_max_bad_steps(5);

  auto* o = spec->mutable_optim();
  if (o->beta1() == 0) o->set_beta1(0.9);
  if (o->beta2() == 0) o->set_beta2(0.95);
  if (o->eps() == 0) o->set_eps(1e-8);

  auto* s = spec->mutable_schedule();
  if (s->kind().empty()) s->set_kind("cosine");
  if (s->kind() == "wsd" && s->decay_fraction() == 0) s->set_decay_fraction(0.2);

  auto* e = spec->mutable_eval();
  if (e->steps() == 0) e->set_steps(20);

  auto* r = spec->mutable_resources();
  if (r->ranks() == 0) r->set_ranks(1);
  if (r->cpus_per_rank() == 0) r->set_cpus_per_rank(1);
  if (r->gpus_per_rank() == 0 && t->device() == "cuda") r->set_gpus_per_rank(1);
}

absl::Status Validate(const JobSpec& input, const std::string& source) {
  JobSpec spec = input;
  ApplyDefaults(&spec);
  Checker c(source);

  if (!spec.name().empty()) {
    const std::string& n = spec.name();
    if (n.size() > 128 || !std::all_of(n.begin(), n.end(), ValidNameChar) || n.front() == '.' ||
        n.front() == '-') {
      c.Fail("name", absl::StrCat("must be at most 128 of [A-Za-z0-9._-], not starting with "
                                  "'.' or '-'; got '",
                                  n, "'"));
    }
  }
  for (const auto& [k, v] : spec.labels()) {
    if (k.empty()) c.Fail("labels", "label keys must not be empty");
  }
  c.NonNegative("max_restarts", spec.max_restarts());

  const auto& m = spec.model();
  const bool gpt2 = m.family() == "gpt2", llama = m.family() == "llama";
  if (m.family().empty()) {
    c.Fail("model.family", "required: gpt2 or llama");
  } else {
    c.OneOf("model.family", m.family(), {"gpt2", "llama"});
  }
  c.Positive("model.d_model", m.d_model());
  c.Positive("model.n_layer", m.n_layer());
  c.Positive("model.n_head", m.n_head());
  // A 0 left after ApplyDefaults means the default could not be derived
  // (unknown family, bad n_head / d_model); that error is reported already,
  // so don't pile "must be > 0" on top of it.
  if (m.n_kv_head() != 0) c.Positive("model.n_kv_head", m.n_kv_head());
  if (m.d_ff() != 0 || ((gpt2 || llama) && m.d_model() > 0)) c.Positive("model.d_ff", m.d_ff());
  c.Positive("model.max_seq_len", m.max_seq_len());
  c.NonNegative("model.vocab_size", m.vocab_size());
  c.Positive("model.norm_eps", m.norm_eps());
  c.Positive("model.init_std", m.init_std());
  if (llama) c.Positive("model.rope_theta", m.rope_theta());
  if (m.d_model() > 0 && m.n_head() > 0) {
    if (m.d_model() % m.n_head() != 0) {
      c.Fail("model.d_model", absl::StrCat("must be divisible by model.n_head (", m.n_head(),
                                           "), got ", m.d_model()));
    } else if (llama && (m.d_model() / m.n_head()) % 2 != 0) {
      c.Fail("model.d_model", absl::StrCat("head size d_model/n_head = ", m.d_model() / m.n_head(),
                                           " must be even for rotary embeddings"));
    }
  }
  if (m.n_head() > 0 && m.n_kv_head() > 0) {
    if (gpt2 && m.n_kv_head() != m.n_head()) {
      c.Fail("model.n_kv_head",
             absl::StrCat("gpt2 has no grouped-query attention: must equal model.n_head (",
                          m.n_head(), ") or be 0, got ", m.n_kv_head()));
    } else if (m.n_head() % m.n_kv_head() != 0) {
      c.Fail("model.n_kv_head",
             absl::StrCat("must divide model.n_head (", m.n_head(), "), got ", m.n_kv_head()));
    }
  }

  if (spec.data().dir().empty()) {
    c.Fail("data.dir", "required: the directory written by `llmt prepare`");
  }

  const auto& t = spec.train();
  c.Positive("train.batch_size", t.batch_size());
  c.Positive("train.seq_len", t.seq_len());
  if (t.seq_len() > 0 && m.max_seq_len() > 0 && t.seq_len() > m.max_seq_len()) {
    c.Fail("train.seq_len",
           absl::StrCat("must be <= model.max_seq_len (", m.max_seq_len(), "), got ", t.seq_len()));
  }
  c.Positive("train.grad_accum_steps", t.grad_accum_steps());
  c.Positive("train.max_steps", t.max_steps());
  c.OneOf("train.device", t.device(), {"cpu", "cuda"});
  c.NonNegative("train.device_index", t.device_index());
  c.OneOf("train.precision", t.precision(), {"fp32", "bf16"});
  if (t.precision() == "bf16" && t.device() != "cuda") {
    c.Fail("train.precision",
           absl::StrCat("bf16 requires train.device: cuda (the CPU engine is fp32 only); "
                        "train.device is '",
                        t.device(), "'"));
  }
  c.NonNegative("train.threads", t.threads());
  c.OneOf("train.recompute", t.recompute(), {"none", "gelu", "norm_gelu"});
  if (t.zero() != 0 && t.zero() != 1) {
    c.Fail("train.zero", absl::StrCat("must be 0 or 1 (ZeRO stage), got ", t.zero()));
  }
  c.Positive("train.log_every", t.log_every());
  c.Positive("train.max_bad_steps", t.max_bad_steps());
  if (!std::isfinite(t.loss_spike_factor()) ||
      (t.loss_spike_factor() != 0 && !(t.loss_spike_factor() > 1))) {
    c.Fail("train.loss_spike_factor",
           absl::StrCat("must be 0 (off) or > 1, got ", FormatDouble(t.loss_spike_factor())));
  }

  const auto& o = spec.optim();
  c.Positive("optim.lr", o.lr());
  c.NonNegative("optim.weight_decay", o.weight_decay());
  for (auto [name, v] : {std::pair<const char*, double>{"optim.beta1", o.beta1()},
                         std::pair<const char*, double>{"optim.beta2", o.beta2()}}) {
    if (!(v > 0 && v < 1)) c.Fail(name, absl::StrCat("must be in (0, 1), got ", FormatDouble(v)));
  }
  c.Positive("optim.eps", o.eps());
  c.NonNegative("optim.grad_clip", o.grad_clip());

  const auto& s = spec.schedule();
  c.OneOf("schedule.kind", s.kind(), {"cosine", "linear", "constant", "wsd"});
  c.NonNegative("schedule.warmup_steps", s.warmup_steps());
  if (t.max_steps() > 0 && s.warmup_steps() >= t.max_steps()) {
    c.Fail("schedule.warmup_steps",
           absl::StrCat("must be < train.max_steps (", t.max_steps(), "), got ", s.warmup_steps()));
  }
  if (!(s.min_lr_ratio() >= 0 && s.min_lr_ratio() <= 1)) {
    c.Fail("schedule.min_lr_ratio",
           absl::StrCat("must be in [0, 1], got ", FormatDouble(s.min_lr_ratio())));
  }
  if (s.kind() == "wsd" || s.decay_fraction() != 0) {
    if (!(s.decay_fraction() > 0 && s.decay_fraction() <= 1)) {
      c.Fail("schedule.decay_fraction",
             absl::StrCat("must be in (0, 1], got ", FormatDouble(s.decay_fraction())));
    } else if (s.kind() == "wsd" && t.max_steps() > 0 && s.warmup_steps() >= 0) {
      // Same rounding as the trainer's schedule.
      const int64_t decay = std::max<int64_t>(
          1, static_cast<int64_t>(std::llround(s.decay_fraction() * t.max_steps())));
      if (s.warmup_steps() + decay > t.max_steps()) {
        c.Fail("schedule.decay_fraction",
               absl::StrCat("warmup (", s.warmup_steps(), " steps) plus decay (", decay,
                            " steps) exceed train.max_steps (", t.max_steps(), ")"));
      }
    }
  }

  c.NonNegative("eval.every_steps", spec.eval().every_steps());
  c.Positive("eval.steps", spec.eval().steps());
  c.NonNegative("checkpoint.every_steps", spec.checkpoint().every_steps());
  c.NonNegative("checkpoint.keep_last", spec.checkpoint().keep_last());
  c.NonNegative("checkpoint.keep_best", spec.checkpoint().keep_best());

  const auto& r = spec.resources();
  c.Positive("resources.ranks", r.ranks());
  c.NonNegative("resources.gpus_per_rank", r.gpus_per_rank());
  c.Positive("resources.cpus_per_rank", r.cpus_per_rank());
  if (t.device() == "cpu" && r.gpus_per_rank() > 0) {
    c.Fail("resources.gpus_per_rank",
           absl::StrCat("must be 0 when train.device is cpu, got ", r.gpus_per_rank()));
  }
  return c.Result();
}

std::string ToJson(const JobSpec& spec) {
  std::string out;
  AppendJson(spec, &out);
  return out;
}

std::string ToYaml(const JobSpec& spec) {
  YAML::Emitter e;
  e.SetIndent(2);
  EmitYaml(e, spec);
  std::string out = e.c_str();
  if (out == "{}" || out.empty()) return "{}\n";
  out.push_back('\n');
  return out;
}

}  // namespace llmt::spec
