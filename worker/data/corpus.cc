#include "worker/data/corpus.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string_view>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "common/json.h"
#include "worker/data/clean.h"

namespace llmt::data {
namespace {

namespace stdfs = std::filesystem;

bool IsJsonlPath(const std::string& path) { return absl::EndsWithIgnoreCase(path, ".jsonl"); }

bool Hidden(const stdfs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// True when `path` is `dir` or lies under it (both already canonical).
bool Under(const std::string& path, const std::string& dir) {
  if (dir.empty()) return false;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

}  // namespace

absl::StatusOr<std::vector<InputFile>> ExpandInputs(const std::vector<std::string>& inputs,
                                                    const std::string& exclude_dir) {
  std::error_code ec;
  std::string exclude;
  if (!exclude_dir.empty()) exclude = stdfs::weakly_canonical(exclude_dir, ec).string();
  std::vector<InputFile> out;
  for (const std::string& in : inputs) {
    if (in == kStdinInput) {
      out.push_back({in, false, false});
      continue;
    }
    auto st = stdfs::status(in, ec);
    if (ec || !stdfs::exists(st)) {
      return absl::NotFoundError(absl::StrCat("input ", in, " does not exist"));
    }
    if (stdfs::is_regular_file(st)) {
      out.push_back({in, false, IsJsonlPath(in)});
      continue;
    }
    if (!stdfs::is_directory(st)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", in, " is neither a regular file nor a directory"));
    }
    std::vector<std::string> found;
    stdfs::recursive_directory_iterator it(in, ec), end;
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot list input directory ", in, ": ", ec.message()));
    }
    for (; it != end; it.increment(ec)) {
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot walk input directory ", in, ": ", ec.message()));
      }
      const stdfs::path& p = it->path();
      if (Hidden(p)) {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (!exclude.empty() && Under(stdfs::weakly_canonical(p, ec).string(), exclude)) {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec)) found.push_back(p.string());
    }
    std::sort(found.begin(), found.end());
    for (auto& f : found) {
      bool jsonl = IsJsonlPath(f);
      out.push_back({std::move(f), true, jsonl});
    }
  }
  return out;
}

absl::StatusOr<std::string> ParseJsonlText(const std::string& line) {
  auto v = json::Parse(line);
  if (!v.ok()) {
    // The caller names file:line, so the parser's "line 1, " is noise.
    std::string msg(v.status().message());
    constexpr std::string_view kPrefix = "invalid JSON at line 1, ";
    if (absl::StartsWith(msg, std::string(kPrefix))) {
      msg = absl::StrCat("invalid JSON at ", msg.substr(kPrefix.size()));
    }
    return absl::InvalidArgumentError(msg);
  }
  if (!v->is_object()) return absl::InvalidArgumentError("line is not a JSON object");
  const json::Value* text = v->Find("text");
  if (text == nullptr) return absl::InvalidArgumentError("missing \"text\" field");
  if (!text->is_string()) return absl::InvalidArgumentError("\"text\" field is not a string");
  return text->str();
}

absl::StatusOr<std::string> ReadStdin() {
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) out.append(buf, n);
  if (std::ferror(stdin)) return absl::InternalError("cannot read standard input");
  return out;
}

absl::StatusOr<FileDocuments> ReadDocuments(const InputFile& file) {
  auto data = file.path == kStdinInput ? ReadStdin() : fs::ReadFile(file.path);
  if (!data.ok()) return data.status();
  FileDocuments out;
  out.bytes = static_cast<int64_t>(data->size());
  if (file.jsonl) {
    std::string_view all(*data);
    int64_t line_no = 0;
    size_t start = 0;
    while (start < all.size()) {
      size_t end = all.find('\n', start);
      if (end == std::string_view::npos) end = all.size();
      std::string line(all.substr(start, end - start));
      start = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (absl::StripAsciiWhitespace(line).empty()) continue;  // blank lines are not documents
      auto text = ParseJsonlText(line);
      if (!text.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.path, ":", line_no, ": ", text.status().message()));
      }
      out.docs.push_back(CleanText(*text));
    }
    return out;
  }
  if (size_t nul = data->find('\0'); nul != std::string::npos) {
    std::string why = absl::StrCat("looks binary (NUL byte at offset ", nul, ")");
    if (file.from_directory) {
      out.skipped = why;
      return out;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("input ", file.path, " ", why, "; pass plain-text files or .jsonl files"));
  }
  out.docs = SplitDocuments(CleanText(*data));
  return out;
}

}  // namespace llmt::data
