// Checkpoint directories: OUT/checkpoints/step-XXXXXXXX/ holding
// model.safetensors, optimizer.safetensors, trainer_state.json and
// manifest.json (every file with size and SHA-256). A checkpoint is built in a
// temp dir, each file fsynced, then renamed into place; so a directory named
// step-* is either complete or absent, and a manifest mismatch means
// corruption after the fact.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llmt::storage {

std::string CheckpointDirName(int64_t step);  // "step-00000123" (8 digits)
// Inverse of CheckpointDirName: the step of "step-<digits>", or -1 for any
// other name (temp dirs, stray files).
int64_t ParseCheckpointDirName(absl::string_view name);

// manifest.json format version written by this build; readers reject newer ones.
inline constexpr int kCheckpointFormatVersion = 1;

// Staging area for one checkpoint. Files are written into a temp dir; Commit()
// writes manifest.json and renames it to <root>/step-XXXXXXXX.
class CheckpointWriter {
 public:
  static absl::StatusOr<CheckpointWriter> Begin(const std::string& root, int64_t step);
  CheckpointWriter(CheckpointWriter&&) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) noexcept;
  ~CheckpointWriter();  // removes the temp dir if not committed

  // Path inside the temp dir for a file to be written by the caller (e.g. with
  // WriteSafetensors); it is fsynced and hashed at Commit.
  std::string PathFor(absl::string_view filename) const;
  // Writes and fsyncs a file. Names are plain ("model.safetensors"): no '/',
  // no leading '.', and not manifest.json (Commit writes that).
  absl::Status WriteFile(absl::string_view filename, absl::string_view contents);
  // Hashes every regular file in the temp dir, writes manifest.json last,
  // fsyncs, renames the dir to <root>/step-XXXXXXXX and fsyncs root. An
  // existing dir for the same step is replaced atomically (renameat2
  // RENAME_EXCHANGE). Returns the final directory. On error the temp dir is
  // removed by the destructor.
  absl::StatusOr<std::string> Commit();
  const std::string& temp_dir() const { return tmp_dir_; }

 private:
  CheckpointWriter() = default;
  std::string root_, tmp_dir_;
  int64_t step_ = 0;
  bool committed_ = false;
};

struct CheckpointInfo {
  std::string dir;
  int64_t step = 0;
  int64_t bytes = 0;
  std::string manifest_sha256;  // hash of manifest.json (identifies the checkpoint)
};

struct ManifestFile {
  std::string name;  // plain file name inside the checkpoint dir
  int64_t size = 0;
  std::string sha256;  // lowercase hex
};
struct Manifest {
  int format_version = 0;
  int64_t step = 0;
  std::vector<ManifestFile> files;
};
// Reads and schema-checks <dir>/manifest.json (does not look at the files).
absl::StatusOr<Manifest> ReadManifest(const std::string& dir);

// Checks manifest.json exists and every listed file has its size and SHA-256.
// The error names the file and what is wrong.
absl::StatusOr<CheckpointInfo> VerifyCheckpoint(const std::string& dir);
// step-* directories under root, ascending by step (not verified: bytes is the
// sum of the file sizes found, manifest_sha256 is empty when manifest.json is
// unreadable). An absent root yields an empty list.
absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& root);
// Newest checkpoint that verifies; logs a warning for each newer corrupt one.
// NotFound when there is none.
absl::StatusOr<CheckpointInfo> LatestValidCheckpoint(const std::string& root);
// Deletes all but the newest `keep_last` step-* dirs (keep_last <= 0: keep all)
// plus any stale temp dirs. Tolerates files already gone.
// A temp dir ".step-*.tmp-<pid>-*" is stale when it belongs to no live writer:
// this process's own uncommitted writers and other live processes on this
// host keep theirs (a writer on another host sharing the directory is not
// detectable by pid; run retention from the writing host).
absl::Status ApplyRetention(const std::string& root, int keep_last);

}  // namespace llmt::storage
