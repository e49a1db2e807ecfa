// Durable filesystem helpers: atomic writes (temp + fsync + rename + fsync
// dir), temp directories, SHA-256. Every error names the path.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::fs {

absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes `data` to `path` atomically: path.tmp.<pid>, fsync, rename, fsync(dir).
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);
// Writes without rename (for files inside a temp dir that is renamed later); fsyncs.
absl::Status WriteFileSynced(const std::string& path, absl::string_view data);
absl::Status FsyncPath(const std::string& path);  // file or directory
absl::Status FsyncDir(const std::string& dir);
absl::Status MakeDirs(const std::string& dir);
// Creates a fresh sibling temp dir "<parent>/.<name>.tmp-<pid>-<n>".
absl::StatusOr<std::string> MakeTempDirBeside(const std::string& final_path);
// Renames `from` to `to` (replacing an empty or absent `to`) and fsyncs the parent.
absl::Status RenameDurable(const std::string& from, const std::string& to);
absl::Status RemoveAll(const std::string& path);  // ok if absent
bool Exists(const std::string& path);
bool IsDir(const std::string& path);
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir);  // names, sorted
absl::StatusOr<int64_t> FileSize(const std::string& path);

// SHA-256 as lowercase hex.
std::string Sha256Hex(absl::string_view data);
absl::StatusOr<std::string> Sha256File(const std::string& path);

std::string JoinPath(absl::string_view a, absl::string_view b);
std::string Dirname(const std::string& path);
std::string Basename(const std::string& path);

}  // namespace llmt::fs
