#include "storage/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/fs.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

namespace llmt::storage {
namespace {

constexpr char kManifestName[] = "manifest.json";
constexpr char kFormatName[] = "llmt-checkpoint";

// manifest.json is read and written with common/json: the checkpoint library
// links no protobuf (the engine uses it standalone), and common/json depends
// on Abseil only, which keeps the dependency graph flat. The reader accepts
// all of RFC 8259 (so a manifest edited by hand or by another tool still
// reads), with a nesting limit against hostile input and no repeated keys
// (two readers could disagree about which "step" or "size" counts).
constexpr json::ParseOptions kManifestParse{.max_depth = 64, .reject_duplicate_keys = true};

std::string JsonQuote(absl::string_view s) {
  std::string out;
  json::AppendQuoted(&out, std::string_view(s.data(), s.size()));
  return out;
}

// File names a checkpoint may hold: flat, visible, not the manifest. Rejecting
// '/' and ".." keeps a tampered manifest from pointing outside the directory.
absl::Status CheckFileName(absl::string_view name) {
  if (name.empty() || name == "." || name == ".." || absl::StrContains(name, '/') ||
      absl::StrContains(name, '\0') || name.front() == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid checkpoint file name \"", name,
                     "\": must be a plain file name without '/' or a leading '.'"));
  }
  return absl::OkStatus();
}

bool IsHexSha256(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Temp dirs of writers in this process that have not committed yet, by
// basename ("<.step-X.tmp-PID-N>"; MakeTempDirBeside's counter is process-wide
// so basenames are unique). ApplyRetention must not delete these.
std::mutex g_active_mu;
std::set<std::string>& ActiveTempDirs() {
  static auto* s = new std::set<std::string>();
  return *s;
}
void RegisterActive(const std::string& tmp) {
  std::lock_guard<std::mutex> l(g_active_mu);
  ActiveTempDirs().insert(fs::Basename(tmp));
}
void UnregisterActive(const std::string& tmp) {
  std::lock_guard<std::mutex> l(g_active_mu);
  ActiveTempDirs().erase(fs::Basename(tmp));
}
bool IsActive(const std::string& basename) {
  std::lock_guard<std::mutex> l(g_active_mu);
  return ActiveTempDirs().count(basename) > 0;
}

// ".step-00000010.tmp-1234-7" (and "-old"/"-del" variants) -> 1234; -1 if the
// name is not a checkpoint temp dir.
int64_t TempDirPid(absl::string_view name) {
  if (!absl::StartsWith(name, ".step-")) return -1;
  size_t t = name.find(".tmp-");
  if (t == absl::string_view::npos) return -1;
  absl::string_view rest = name.substr(t + 5);
  size_t dash = rest.find('-');
  absl::string_view pid_text = rest.substr(0, dash);
  int64_t pid;
  if (pid_text.empty() || !absl::SimpleAtoi(pid_text, &pid) || pid <= 0) return -1;
  return pid;
}

bool ProcessAlive(int64_t pid) {
  if (pid <= 0 || pid > INT32_MAX) return false;
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return true;
  return errno == EPERM;  // exists but owned by someone else
}

std::string ErrnoText() { return std::strerror(errno); }

absl::Status DataLoss(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what));
}

// A JSON integer literal >= 0 that fits int64 (a string of digits, which
// json::Value::AsInt64 also accepts, is not one here).
absl::StatusOr<int64_t> JsonInt(const json::Value& obj, absl::string_view key,
                                const std::string& where) {
  const json::Value* v = obj.Find(std::string_view(key.data(), key.size()));
  if (v == nullptr) return DataLoss(where, absl::StrCat("missing \"", key, "\""));
  absl::StatusOr<int64_t> out = v->is_number() ? v->AsInt64() : absl::StatusOr<int64_t>(-1);
  if (!out.ok() || *out < 0) {
    return DataLoss(where, absl::StrCat("\"", key, "\" must be a non-negative integer"));
  }
  return *out;
}

absl::StatusOr<std::string> JsonString(const json::Value& obj, absl::string_view key,
                                       const std::string& where) {
  const json::Value* v = obj.Find(std::string_view(key.data(), key.size()));
  if (v == nullptr) return DataLoss(where, absl::StrCat("missing \"", key, "\""));
  if (!v->is_string()) return DataLoss(where, absl::StrCat("\"", key, "\" must be a string"));
  return v->str();
}

std::string ManifestJson(int64_t step, const std::vector<ManifestFile>& files) {
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"format\": ", JsonQuote(kFormatName), ",\n");
  absl::StrAppend(&out, "  \"format_version\": ", kCheckpointFormatVersion, ",\n");
  absl::StrAppend(&out, "  \"step\": ", step, ",\n");
  out += "  \"files\": [";
  for (size_t i = 0; i < files.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "\n" : ",\n", "    {\"name\": ", JsonQuote(files[i].name),
                    ", \"size\": ", files[i].size, ", \"sha256\": ", JsonQuote(files[i].sha256),
                    "}");
  }
  out += files.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

absl::StatusOr<Manifest> ParseManifest(absl::string_view text, const std::string& path) {
  auto doc = json::Parse(std::string_view(text.data(), text.size()), kManifestParse);
  if (!doc.ok()) return DataLoss(path, absl::StrCat("not valid JSON: ", doc.status().message()));
  if (!doc->is_object()) return DataLoss(path, "not a JSON object");
  Manifest m;
  ASSIGN_OR_RETURN(std::string format, JsonString(*doc, "format", path));
  if (format != kFormatName) {
    return DataLoss(path,
                    absl::StrCat("\"format\" is \"", format, "\", expected \"", kFormatName, "\""));
  }
  ASSIGN_OR_RETURN(int64_t version, JsonInt(*doc, "format_version", path));
  if (version < 1 || version > kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": format_version ", version,
                                                      " is not supported (this build reads 1..",
                                                      kCheckpointFormatVersion, "); upgrade llmt"));
  }
  m.format_version = static_cast<int>(version);
  ASSIGN_OR_RETURN(m.step, JsonInt(*doc, "step", path));
  const json::Value* files = doc->Find("files");
  if (files == nullptr || !files->is_array()) {
    return DataLoss(path, "\"files\" must be an array");
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < files->array().size(); ++i) {
    const json::Value& f = files->array()[i];
    std::string where = absl::StrCat(path, ": files[", i, "]");
    if (!f.is_object()) return DataLoss(where, "not an object");
    ManifestFile mf;
    ASSIGN_OR_RETURN(mf.name, JsonString(f, "name", where));
    if (auto st = CheckFileName(mf.name); !st.ok() || mf.name == kManifestName) {
      return DataLoss(where, absl::StrCat("bad file name \"", mf.name, "\""));
    }
    if (!seen.insert(mf.name).second) {
      return DataLoss(where, absl::StrCat("\"", mf.name, "\" listed twice"));
    }
    ASSIGN_OR_RETURN(mf.size, JsonInt(f, "size", where));
    ASSIGN_OR_RETURN(mf.sha256, JsonString(f, "sha256", where));
    if (!IsHexSha256(mf.sha256)) {
      return DataLoss(where,
                      absl::StrCat("\"sha256\" of ", mf.name, " is not 64 lowercase hex digits"));
    }
    m.files.push_back(std::move(mf));
  }
  return m;
}

// Sum of the sizes of the regular files directly in `dir` (best effort).
int64_t DirBytes(const std::string& dir) {
  auto names = fs::ListDir(dir);
  if (!names.ok()) return 0;
  int64_t total = 0;
  for (const auto& n : *names) {
    struct stat st;
    if (::lstat(fs::JoinPath(dir, n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += st.st_size;
    }
  }
  return total;
}

// Moves `dir` aside under a temp name, then deletes it, so a crash half-way
// through a large delete leaves a temp dir (cleaned next time) rather than a
// step-* dir with files missing.
absl::Status RemoveCheckpointDir(const std::string& dir) {
  static std::atomic<int> counter{0};
  std::string trash = fs::JoinPath(fs::Dirname(dir), absl::StrCat(".", fs::Basename(dir), ".tmp-",
                                                                  ::getpid(), "-del", counter++));
  if (::rename(dir.c_str(), trash.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();  // already gone
    return absl::InternalError(
        absl::StrCat("cannot move ", dir, " aside for deletion: ", ErrnoText()));
  }
  return fs::RemoveAll(trash);
}

// Removes an uncommitted writer's temp dir (destructor, move-assignment).
void AbandonTempDir(std::string* tmp_dir, bool committed) {
  if (tmp_dir->empty() || committed) return;
  auto st = fs::RemoveAll(*tmp_dir);
  if (!st.ok()) {
    LLMT_LOG(Warning) << "abandoned checkpoint: " << st.message();
  }
  UnregisterActive(*tmp_dir);
  tmp_dir->clear();
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step-%08d", step); }

int64_t ParseCheckpointDirName(absl::string_view name) {
  if (!absl::StartsWith(name, "step-")) return -1;
  absl::string_view digits = name.substr(5);
  if (digits.empty() || digits.size() > 18) return -1;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
  }
  int64_t step;
  if (!absl::SimpleAtoi(digits, &step)) return -1;
  return step;
}

// ---------------------------------------------------------------------------
// CheckpointWriter

absl::StatusOr<CheckpointWriter> CheckpointWriter::Begin(const std::string& root, int64_t step) {
  if (root.empty()) return absl::InvalidArgumentError("checkpoint root directory is empty");
  if (step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint step must be >= 0, got ", step));
  }
  RETURN_IF_ERROR(fs::MakeDirs(root));
  ASSIGN_OR_RETURN(std::string tmp,
                   fs::MakeTempDirBeside(fs::JoinPath(root, CheckpointDirName(step))));
  RegisterActive(tmp);
  CheckpointWriter w;
  w.root_ = root;
  w.tmp_dir_ = std::move(tmp);
  w.step_ = step;
  return w;
}

CheckpointWriter::CheckpointWriter(CheckpointWriter&& o) noexcept
    : root_(std::move(o.root_)),
      tmp_dir_(std::exchange(o.tmp_dir_, std::string())),
      step_(o.step_),
      committed_(o.committed_) {}

CheckpointWriter& CheckpointWriter::operator=(CheckpointWriter&& o) noexcept {
  if (this != &o) {
    AbandonTempDir(&tmp_dir_, committed_);
    root_ = std::move(o.root_);
    tmp_dir_ = std::exchange(o.tmp_dir_, std::string());
    step_ = o.step_;
    committed_ = o.committed_;
  }
  return *this;
}

CheckpointWriter::~CheckpointWriter() { AbandonTempDir(&tmp_dir_, committed_); }

std::string CheckpointWriter::PathFor(absl::string_view filename) const {
  return fs::JoinPath(tmp_dir_, filename);
}

absl::Status CheckpointWriter::WriteFile(absl::string_view filename, absl::string_view contents) {
  if (tmp_dir_.empty() || committed_) {
    return absl::FailedPreconditionError("checkpoint writer is already committed or moved from");
  }
  RETURN_IF_ERROR(CheckFileName(filename));
  if (filename == kManifestName) {
    return absl::InvalidArgumentError("manifest.json is written by Commit(), not by the caller");
  }
  return fs::WriteFileSynced(PathFor(filename), contents);
}

absl::StatusOr<std::string> CheckpointWriter::Commit() {
  if (tmp_dir_.empty() || committed_) {
    return absl::FailedPreconditionError("checkpoint writer is already committed or moved from");
  }
  const std::string final_dir = fs::JoinPath(root_, CheckpointDirName(step_));
  auto fail = [&](absl::string_view what) {
    return absl::FailedPreconditionError(
        absl::StrCat("committing checkpoint ", final_dir, ": ", what));
  };

  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(tmp_dir_));
  std::vector<ManifestFile> files;
  for (const auto& name : names) {
    const std::string path = fs::JoinPath(tmp_dir_, name);
    if (name == kManifestName) return fail("manifest.json must not be written by the caller");
    if (!CheckFileName(name).ok()) return fail(absl::StrCat("invalid file name \"", name, "\""));
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
      return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ErrnoText()));
    }
    if (!S_ISREG(st.st_mode)) return fail(absl::StrCat(name, " is not a regular file"));
    // Files written through PathFor() by other code may not be fsynced yet.
    RETURN_IF_ERROR(fs::FsyncPath(path));
    ManifestFile f;
    f.name = name;
    ASSIGN_OR_RETURN(f.size, fs::FileSize(path));
    ASSIGN_OR_RETURN(f.sha256, fs::Sha256File(path));
    files.push_back(std::move(f));
  }
  if (files.empty()) return fail("no files were written");

  // The manifest goes last: its presence (under the final name) is what marks
  // the checkpoint complete.
  RETURN_IF_ERROR(
      fs::WriteFileSynced(fs::JoinPath(tmp_dir_, kManifestName), ManifestJson(step_, files)));
  RETURN_IF_ERROR(fs::FsyncDir(tmp_dir_));

  if (!fs::Exists(final_dir)) {
    RETURN_IF_ERROR(fs::RenameDurable(tmp_dir_, final_dir));
  } else {
    // Re-saving a step (e.g. after resuming from it): swap atomically so that
    // a valid step-X exists at every instant, then delete the old contents.
    LLMT_LOG(Warning) << "replacing existing checkpoint " << final_dir;
    if (::renameat2(AT_FDCWD, tmp_dir_.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) ==
        0) {
      RETURN_IF_ERROR(fs::FsyncDir(root_));
      // tmp_dir_ now holds the previous checkpoint; it is still registered
      // as active, so a concurrent retention pass leaves it to us.
      auto rm = fs::RemoveAll(tmp_dir_);
      if (!rm.ok()) {
        LLMT_LOG(Warning) << "removing replaced checkpoint: " << rm.message();
      }
    } else if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
      // Filesystem without RENAME_EXCHANGE: move the old one aside first.
      std::string old = absl::StrCat(tmp_dir_, "-old");
      if (::rename(final_dir.c_str(), old.c_str()) != 0) {
        return absl::InternalError(
            absl::StrCat("cannot move existing ", final_dir, " aside: ", ErrnoText()));
      }
      RETURN_IF_ERROR(fs::RenameDurable(tmp_dir_, final_dir));
      auto rm = fs::RemoveAll(old);
      if (!rm.ok()) {
        LLMT_LOG(Warning) << "removing replaced checkpoint: " << rm.message();
      }
    } else {
      return absl::InternalError(
          absl::StrCat("cannot replace ", final_dir, " with ", tmp_dir_, ": ", ErrnoText()));
    }
  }
  committed_ = true;
  UnregisterActive(tmp_dir_);
  return final_dir;
}

// ---------------------------------------------------------------------------
// Reading

absl::StatusOr<Manifest> ReadManifest(const std::string& dir) {
  const std::string path = fs::JoinPath(dir, kManifestName);
  auto text = fs::ReadFile(path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return DataLoss(path, "missing (incomplete or damaged checkpoint)");
    }
    return text.status();
  }
  return ParseManifest(*text, path);
}

absl::StatusOr<CheckpointInfo> VerifyCheckpoint(const std::string& dir) {
  if (!fs::IsDir(dir)) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(dir));
  const std::string manifest_path = fs::JoinPath(dir, kManifestName);
  // A step-N directory must hold step N's manifest: guards against a copied or
  // renamed directory being resumed as the wrong step.
  int64_t dir_step = ParseCheckpointDirName(fs::Basename(dir));
  if (dir_step >= 0 && dir_step != m.step) {
    return DataLoss(manifest_path, absl::StrCat("records step ", m.step, " but the directory is ",
                                                fs::Basename(dir)));
  }
  if (m.files.empty()) return DataLoss(manifest_path, "lists no files");
  CheckpointInfo info;
  info.dir = dir;
  info.step = m.step;
  for (const auto& f : m.files) {
    const std::string path = fs::JoinPath(dir, f.name);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) return DataLoss(path, "listed in manifest.json but missing");
      return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ErrnoText()));
    }
    if (!S_ISREG(st.st_mode)) return DataLoss(path, "not a regular file");
    if (st.st_size != f.size) {
      return DataLoss(path, absl::StrCat("size ", st.st_size, " bytes but manifest.json says ",
                                         f.size, " (truncated or overwritten)"));
    }
    ASSIGN_OR_RETURN(std::string sha, fs::Sha256File(path));
    if (sha != f.sha256) {
      return DataLoss(path, absl::StrCat("SHA-256 mismatch: file has ", sha.substr(0, 16),
                                         "..., manifest.json says ", f.sha256.substr(0, 16),
                                         "... (contents corrupted)"));
    }
    info.bytes += f.size;
  }
  ASSIGN_OR_RETURN(std::string manifest_text, fs::ReadFile(manifest_path));
  info.bytes += static_cast<int64_t>(manifest_text.size());
  info.manifest_sha256 = fs::Sha256Hex(manifest_text);
  return info;
}

absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& root) {
  std::vector<CheckpointInfo> out;
  if (!fs::Exists(root)) return out;
  if (!fs::IsDir(root)) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint root ", root, " is not a directory"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(root));
  for (const auto& name : names) {
    int64_t step = ParseCheckpointDirName(name);
    if (step < 0) continue;
    const std::string dir = fs::JoinPath(root, name);
    if (!fs::IsDir(dir)) continue;
    CheckpointInfo info;
    info.dir = dir;
    info.step = step;
    info.bytes = DirBytes(dir);
    if (auto text = fs::ReadFile(fs::JoinPath(dir, kManifestName)); text.ok()) {
      info.manifest_sha256 = fs::Sha256Hex(*text);
    }
    out.push_back(std::move(info));
  }
  std::stable_sort(out.begin(), out.end(), [](const CheckpointInfo& a, const CheckpointInfo& b) {
    return a.step < b.step;
  });
  return out;
}

absl::StatusOr<CheckpointInfo> LatestValidCheckpoint(const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<CheckpointInfo> all, ListCheckpoints(root));
  int skipped = 0;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    auto info = VerifyCheckpoint(it->dir);
    if (info.ok()) return info;
    ++skipped;
    LLMT_LOG(Warning) << "skipping checkpoint " << it->dir << ": " << info.status().message();
  }
  return absl::NotFoundError(skipped == 0 ? absl::StrCat("no checkpoint under ", root)
                                          : absl::StrCat("no valid checkpoint under ", root, " (",
                                                         skipped, " corrupt one(s) skipped)"));
}

absl::Status ApplyRetention(const std::string& root, int keep_last) {
  if (!fs::Exists(root)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(root));
  absl::Status first_error;
  auto note = [&](const absl::Status& st) {
    if (!st.ok() && first_error.ok()) first_error = st;
  };

  const int64_t self = ::getpid();
  for (const auto& name : names) {
    int64_t pid = TempDirPid(name);
    if (pid < 0) continue;
    // Our own pid but no live writer: a previous process that had the same
    // pid (common in containers) crashed mid-write.
    bool stale = pid == self ? !IsActive(name) : !ProcessAlive(pid);
    if (!stale) continue;
    LLMT_LOG(Info) << "removing stale checkpoint temp dir " << fs::JoinPath(root, name);
    note(fs::RemoveAll(fs::JoinPath(root, name)));
  }

  if (keep_last > 0) {
    ASSIGN_OR_RETURN(std::vector<CheckpointInfo> all, ListCheckpoints(root));
    const size_t n_remove = all.size() > static_cast<size_t>(keep_last)
                                ? all.size() - static_cast<size_t>(keep_last)
                                : 0;
    for (size_t i = 0; i < n_remove; ++i) {
      LLMT_LOG(Info) << "retention (keep_last " << keep_last << "): removing " << all[i].dir;
      note(RemoveCheckpointDir(all[i].dir));
    }
    if (n_remove > 0) note(fs::FsyncDir(root));
  }
  return first_error;
}

}  // namespace llmt::storage
