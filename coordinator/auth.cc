#include "coordinator/auth.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fs.h"

namespace llmt::coord {
namespace {

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<TokenSet> TokenSet::LoadFile(const std::string& path) {
  auto text = fs::ReadFile(path);
  if (!text.ok()) return text.status();
  TokenSet s;
  s.enabled_ = true;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    if (absl::StrContains(line, " ") || absl::StrContains(line, "\t")) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a token line holds one token without spaces"));
    }
    s.tokens_.emplace_back(line);
  }
  if (s.tokens_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no tokens (one per line)"));
  }
  return s;
}

TokenSet TokenSet::FromTokens(std::vector<std::string> tokens) {
  TokenSet s;
  s.enabled_ = true;
  s.tokens_ = std::move(tokens);
  return s;
}

bool TokenSet::Check(const std::string& authorization) const {
  if (!enabled_) return true;
  absl::string_view v = authorization;
  if (!absl::ConsumePrefix(&v, "Bearer ") && !absl::ConsumePrefix(&v, "bearer ")) return false;
  std::string presented(absl::StripAsciiWhitespace(v));
  bool ok = false;
  for (const auto& t : tokens_) ok |= ConstantTimeEquals(presented, t);
  return ok && !presented.empty();
}

}  // namespace llmt::coord
