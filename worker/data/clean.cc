#include "worker/data/clean.h"

#include "common/utf8.h"

namespace llmt::data {
namespace {

constexpr uint32_t kReplacement = 0xFFFD;

// Decodes one code point at s[*i], advancing *i. Invalid or overlong
// sequences, surrogates and values above U+10FFFF consume one byte and yield
// U+FFFD, so every input decodes to something.
uint32_t DecodeUtf8(std::string_view s, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(*i);
  if (c < 0x80) {
    ++*i;
    return c;
  }
  int len;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    ++*i;
    return kReplacement;
  }
  if (*i + len > s.size()) {
    ++*i;
    return kReplacement;
  }
  for (int k = 1; k < len; ++k) {
    unsigned char cc = b(*i + k);
    if ((cc & 0xC0) != 0x80) {
      ++*i;
      return kReplacement;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++*i;
    return kReplacement;
  }
  *i += len;
  return cp;
}

enum class Class { kNewline, kSpace, kDrop, kText };

Class Classify(uint32_t cp) {
  switch (cp) {
    case '\n':
    case '\r':
    case 0x0B:
    case 0x0C:
    case 0x85:
    case 0x2028:
    case 0x2029:
      return Class::kNewline;
    case ' ':
    case '\t':
    case 0xA0:
    case 0x1680:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return Class::kSpace;
    case 0xFEFF:
    case 0x200B:
    case 0x2060:
    case 0xFFFE:
    case 0xFFFF:
      return Class::kDrop;
    default:
      break;
  }
  if (cp >= 0x2000 && cp <= 0x200A) return Class::kSpace;
  if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) return Class::kDrop;
  return Class::kText;
}

bool IsClosingPunct(uint32_t cp) {
  switch (cp) {
    case '.':
    case ',':
    case ';':
    case ':':
    case '!':
    case '?':
    case '"':
    case '\'':
    case ')':
    case ']':
    case '}':
    case 0x201D:
    case 0x2019:
    case 0xBB:
    case 0x2026:
      return true;
    default:
      return false;
  }
}

}  // namespace

std::string CleanText(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  // Whitespace is emitted lazily, only once the next visible character
  // arrives: that trims lines and documents and collapses runs in one pass.
  bool pending_space = false;
  int pending_newlines = 0;
  bool line_has_text = false;
  size_t i = 0;
  while (i < raw.size()) {
    const bool cr = raw[i] == '\r';
    uint32_t cp = DecodeUtf8(raw, &i);
    if (cr && i < raw.size() && raw[i] == '\n') ++i;  // CRLF is one line break
    switch (Classify(cp)) {
      case Class::kNewline:
        pending_space = false;
        line_has_text = false;
        if (!out.empty() && pending_newlines < 2) ++pending_newlines;
        break;
      case Class::kSpace:
        if (line_has_text) pending_space = true;
        break;
      case Class::kDrop:
        break;
      case Class::kText:
        if (pending_newlines > 0) {
          out.append(static_cast<size_t>(pending_newlines), '\n');
          pending_newlines = 0;
        }
        if (pending_space) out.push_back(' ');
        pending_space = false;
        line_has_text = true;
        AppendUtf8(&out, cp);
        break;
    }
  }
  return out;
}

int64_t CountChars(std::string_view utf8) {
  int64_t n = 0;
  for (unsigned char c : utf8) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsHeading(std::string_view p) {
  if (p.empty() || p.find('\n') != std::string_view::npos) return false;
  if (CountChars(p) > kMaxHeadingChars) return false;
  bool alnum = false;
  uint32_t last = 0;
  size_t i = 0;
  while (i < p.size()) {
    uint32_t cp = DecodeUtf8(p, &i);
    // Any non-ASCII letter counts too; we only need to exclude lines of pure
    // punctuation or symbols ("* * *", "----").
    if ((cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || cp >= 0xC0) {
      alnum = true;
    }
    last = cp;
  }
  return alnum && !IsClosingPunct(last);
}

std::vector<std::string> SplitDocuments(std::string_view cleaned) {
  std::vector<std::string> docs;
  std::string pending;  // headings waiting for their paragraph
  size_t start = 0;
  while (start < cleaned.size()) {
    size_t end = cleaned.find("\n\n", start);
    if (end == std::string_view::npos) end = cleaned.size();
    std::string_view para = cleaned.substr(start, end - start);
    start = end + 2;
    if (para.empty()) continue;
    if (!pending.empty()) pending.push_back('\n');
    pending.append(para);
    if (!IsHeading(para)) {
      docs.push_back(std::move(pending));
      pending.clear();
    }
  }
  if (!pending.empty()) docs.push_back(std::move(pending));  // trailing headings
  return docs;
}

}  // namespace llmt::data
