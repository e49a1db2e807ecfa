#include "storage/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llmt::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Writes a checkpoint with three files of distinct content for `step`.
std::string WriteCkpt(const std::string& root, int64_t step) {
  auto w = CheckpointWriter::Begin(root, step);
  EXPECT_TRUE(w.ok()) << w.status();
  std::string model(4096 + step, '\0');
  for (size_t i = 0; i < model.size(); ++i) model[i] = static_cast<char>((i * 31 + step) & 0xff);
  EXPECT_TRUE(w->WriteFile("model.safetensors", model).ok());
  EXPECT_TRUE(w->WriteFile("optimizer.safetensors", std::string(1000, 'o')).ok());
  // Written by "other code" through PathFor, as the trainer does.
  EXPECT_TRUE(
      fs::WriteFileSynced(w->PathFor("trainer_state.json"), absl::StrCat("{\"step\": ", step, "}"))
          .ok());
  auto dir = w->Commit();
  EXPECT_TRUE(dir.ok()) << dir.status();
  return dir.ok() ? *dir : "";
}

std::vector<int64_t> Steps(const std::string& root) {
  auto all = ListCheckpoints(root);
  EXPECT_TRUE(all.ok()) << all.status();
  std::vector<int64_t> out;
  for (const auto& c : *all) out.push_back(c.step);
  return out;
}

// In-place single-byte write (no truncation: ext4 flushes a file truncated to
// zero on close, which makes loops of rewrites slow).
void PokeByte(const std::string& path, size_t offset, char c) {
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fseek(f, static_cast<long>(offset), SEEK_SET), 0);
  ASSERT_EQ(std::fputc(c, f), static_cast<unsigned char>(c));
  ASSERT_EQ(std::fclose(f), 0);
}

void FlipByte(const std::string& path, size_t offset) {
  auto data = fs::ReadFile(path);
  ASSERT_TRUE(data.ok());
  ASSERT_LT(offset, data->size());
  (*data)[offset] = static_cast<char>((*data)[offset] ^ 0x01);
  ASSERT_TRUE(fs::WriteFileSynced(path, *data).ok());
}

class CheckpointTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const auto& d : dirs_) EXPECT_TRUE(fs::RemoveAll(d).ok());
  }
  // A fresh directory per test so tests never see each other's files.
  std::string FreshDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string dir =
        fs::JoinPath(::testing::TempDir(),
                     absl::StrCat("ckpt_", info->name(), "_", ::getpid(), "_", dirs_.size()));
    EXPECT_TRUE(fs::RemoveAll(dir).ok());
    EXPECT_TRUE(fs::MakeDirs(dir).ok());
    dirs_.push_back(dir);
    return dir;
  }
  std::vector<std::string> dirs_;
};

TEST_F(CheckpointTest, DirNames) {
  EXPECT_EQ(CheckpointDirName(123), "step-00000123");
  EXPECT_EQ(CheckpointDirName(123456789), "step-123456789");
  EXPECT_EQ(ParseCheckpointDirName("step-00000123"), 123);
  EXPECT_EQ(ParseCheckpointDirName("step-123456789"), 123456789);
  EXPECT_EQ(ParseCheckpointDirName("step-"), -1);
  EXPECT_EQ(ParseCheckpointDirName("step-12a"), -1);
  EXPECT_EQ(ParseCheckpointDirName(".step-00000001.tmp-5-0"), -1);
  EXPECT_EQ(ParseCheckpointDirName("latest"), -1);
}

TEST_F(CheckpointTest, WriteVerifyList) {
  std::string root = FreshDir();
  std::string dir = WriteCkpt(root, 7);
  EXPECT_EQ(dir, fs::JoinPath(root, "step-00000007"));
  EXPECT_TRUE(fs::Exists(fs::JoinPath(dir, "manifest.json")));

  auto info = VerifyCheckpoint(dir);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->step, 7);
  EXPECT_EQ(info->dir, dir);
  auto manifest_text = fs::ReadFile(fs::JoinPath(dir, "manifest.json"));
  ASSERT_TRUE(manifest_text.ok());
  EXPECT_EQ(info->manifest_sha256, fs::Sha256Hex(*manifest_text));
  EXPECT_EQ(info->bytes, (4096 + 7) + 1000 + 11 + static_cast<int64_t>(manifest_text->size()));

  auto m = ReadManifest(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->format_version, kCheckpointFormatVersion);
  EXPECT_EQ(m->step, 7);
  ASSERT_EQ(m->files.size(), 3u);
  EXPECT_EQ(m->files[0].name, "model.safetensors");
  EXPECT_EQ(m->files[0].size, 4096 + 7);
  auto sha = fs::Sha256File(fs::JoinPath(dir, "model.safetensors"));
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(m->files[0].sha256, *sha);
  EXPECT_EQ(m->files[2].name, "trainer_state.json");

  WriteCkpt(root, 3);
  WriteCkpt(root, 12);
  EXPECT_THAT(Steps(root), ElementsAre(3, 7, 12));
  // No temp dirs left behind by successful commits.
  auto names = fs::ListDir(root);
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ElementsAre("step-00000003", "step-00000007", "step-00000012"));

  auto latest = LatestValidCheckpoint(root);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->step, 12);
}

TEST_F(CheckpointTest, ListOfMissingRootIsEmpty) {
  std::string root = fs::JoinPath(FreshDir(), "never_created");
  auto all = ListCheckpoints(root);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->empty());
  auto latest = LatestValidCheckpoint(root);
  EXPECT_TRUE(absl::IsNotFound(latest.status())) << latest.status();
  EXPECT_TRUE(ApplyRetention(root, 2).ok());
}

TEST_F(CheckpointTest, CorruptByteIsShaMismatchNamingFile) {
  std::string dir = WriteCkpt(FreshDir(), 1);
  FlipByte(fs::JoinPath(dir, "optimizer.safetensors"), 500);
  auto info = VerifyCheckpoint(dir);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(info.status().message(), HasSubstr("optimizer.safetensors"));
  EXPECT_THAT(info.status().message(), HasSubstr("SHA-256 mismatch"));
}

TEST_F(CheckpointTest, TruncatedFileIsSizeMismatch) {
  std::string dir = WriteCkpt(FreshDir(), 1);
  std::string path = fs::JoinPath(dir, "model.safetensors");
  ASSERT_EQ(::truncate(path.c_str(), 100), 0);
  auto info = VerifyCheckpoint(dir);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(info.status().message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(info.status().message(), HasSubstr("size 100 bytes"));
  EXPECT_THAT(info.status().message(), HasSubstr("truncated"));
}

TEST_F(CheckpointTest, MissingManifest) {
  std::string dir = WriteCkpt(FreshDir(), 1);
  ASSERT_EQ(::unlink(fs::JoinPath(dir, "manifest.json").c_str()), 0);
  auto info = VerifyCheckpoint(dir);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(info.status().message(), HasSubstr("manifest.json"));
  EXPECT_THAT(info.status().message(), HasSubstr("missing"));
}

TEST_F(CheckpointTest, ManifestNotJson) {
  std::string dir = WriteCkpt(FreshDir(), 1);
  ASSERT_TRUE(fs::WriteFileSynced(fs::JoinPath(dir, "manifest.json"), "{\"format\": ").ok());
  auto info = VerifyCheckpoint(dir);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(info.status().message(), HasSubstr("manifest.json: not valid JSON"));
}

TEST_F(CheckpointTest, ManifestSchemaErrors) {
  std::string dir = WriteCkpt(FreshDir(), 4);
  const std::string path = fs::JoinPath(dir, "manifest.json");
  auto original = fs::ReadFile(path);
  ASSERT_TRUE(original.ok());
  const std::string sha(64, 'a');
  struct Case {
    std::string json, expect;
  };
  std::vector<Case> cases = {
      {"[]", "not a JSON object"},
      {R"({"format": "other", "format_version": 1, "step": 4, "files": []})", "\"format\""},
      {R"({"format": "llmt-checkpoint", "format_version": 99, "step": 4, "files": []})",
       "format_version 99"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "step": 5, "files": [)"
       R"({"name": "a", "size": 1, "sha256": ")" +
           sha + R"("}]})",
       "records step 5"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "step": 4, "files": []})",
       "lists no files"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "step": 4, "files": [)"
       R"({"name": "../escape", "size": 1, "sha256": ")" +
           sha + R"("}]})",
       "bad file name"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "step": 4, "files": [)"
       R"({"name": "a", "size": -1, "sha256": ")" +
           sha + R"("}]})",
       "\"size\" must be a non-negative integer"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "step": 4, "files": [)"
       R"({"name": "a", "size": 1, "sha256": "xyz"}]})",
       "64 lowercase hex"},
      {R"({"format": "llmt-checkpoint", "format_version": 1, "format_version": 1})",
       "duplicate key"},
      {R"({"format": )" + std::string(70, '[') + std::string(70, ']') + "}",
       "nesting too deep"},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(fs::WriteFileSynced(path, c.json).ok());
    auto info = VerifyCheckpoint(dir);
    ASSERT_FALSE(info.ok()) << c.json;
    EXPECT_THAT(info.status().message(), HasSubstr(c.expect)) << c.json;
    EXPECT_THAT(info.status().message(), HasSubstr("manifest.json")) << c.json;
  }
  // A missing listed file.
  ASSERT_TRUE(fs::WriteFileSynced(path, *original).ok());
  ASSERT_TRUE(VerifyCheckpoint(dir).ok());
  ASSERT_EQ(::unlink(fs::JoinPath(dir, "trainer_state.json").c_str()), 0);
  auto info = VerifyCheckpoint(dir);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(info.status().message(), HasSubstr("trainer_state.json: listed in manifest.json"));
}

TEST_F(CheckpointTest, EveryTruncatedOrFlippedManifestIsRejected) {
  std::string dir = WriteCkpt(FreshDir(), 3);
  const std::string path = fs::JoinPath(dir, "manifest.json");
  auto original = fs::ReadFile(path);
  ASSERT_TRUE(original.ok());
  // Flipping a bit anywhere either breaks the syntax, or changes a name,
  // number or hash that no longer matches the files.
  for (size_t i = 0; i < original->size(); ++i) {
    PokeByte(path, i, static_cast<char>((*original)[i] ^ 0x04));
    EXPECT_FALSE(VerifyCheckpoint(dir).ok()) << "flip at byte " << i;
    PokeByte(path, i, (*original)[i]);
  }
  ASSERT_TRUE(VerifyCheckpoint(dir).ok());
  // Every prefix short of the closing brace is invalid JSON or an incomplete
  // manifest (shrinking the file step by step; the last byte is a newline).
  ASSERT_EQ(original->substr(original->size() - 2), "}\n");
  for (size_t n = original->size() - 2; n > 0; --n) {
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(n)), 0);
    auto info = VerifyCheckpoint(dir);
    ASSERT_FALSE(info.ok()) << "prefix of " << n << " bytes accepted";
    EXPECT_THAT(info.status().message(), HasSubstr("manifest.json")) << n;
  }
  ASSERT_TRUE(fs::WriteFileSynced(path, *original).ok());
  EXPECT_TRUE(VerifyCheckpoint(dir).ok());
}

TEST_F(CheckpointTest, ManifestWithEscapesAndWhitespaceParses) {
  // A hand-edited manifest (other key order, escapes, whitespace) still reads.
  std::string root = FreshDir();
  std::string dir = fs::JoinPath(root, "step-00000002");
  ASSERT_TRUE(fs::MakeDirs(dir).ok());
  ASSERT_TRUE(fs::WriteFileSynced(fs::JoinPath(dir, "w\xc3\xa9ights.bin"), "abc").ok());
  std::string json = absl::StrCat(
      "{\r\n\t\"files\" : [ { \"sha256\" : \"", fs::Sha256Hex("abc"),
      "\", \"size\" : 3, \"name\" : \"w\\u00e9ights.bin\", \"extra\": [1, 2.5e3, null, true] } ],"
      " \"step\": 2, \"format_version\": 1, \"format\": \"llmt-checkpoint\", \"note\": \"\\\"\\/\" "
      "}");
  ASSERT_TRUE(fs::WriteFileSynced(fs::JoinPath(dir, "manifest.json"), json).ok());
  auto info = VerifyCheckpoint(dir);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->step, 2);
}

TEST_F(CheckpointTest, LatestValidSkipsCorruptNewest) {
  std::string root = FreshDir();
  WriteCkpt(root, 10);
  WriteCkpt(root, 20);
  std::string newest = WriteCkpt(root, 30);
  FlipByte(fs::JoinPath(newest, "model.safetensors"), 17);

  ::testing::internal::CaptureStderr();
  auto latest = LatestValidCheckpoint(root);
  std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->step, 20);
  EXPECT_THAT(log, HasSubstr("skipping checkpoint"));
  EXPECT_THAT(log, HasSubstr("step-00000030"));
  EXPECT_THAT(log, HasSubstr("model.safetensors"));

  // All corrupt -> NotFound that says corrupt ones were skipped.
  FlipByte(fs::JoinPath(root, "step-00000020/model.safetensors"), 3);
  ASSERT_EQ(::unlink(fs::JoinPath(root, "step-00000010/manifest.json").c_str()), 0);
  ::testing::internal::CaptureStderr();
  latest = LatestValidCheckpoint(root);
  ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(absl::IsNotFound(latest.status()));
  EXPECT_THAT(latest.status().message(), HasSubstr("3 corrupt"));
}

TEST_F(CheckpointTest, RetentionKeepsNewestAndRemovesStaleTemps) {
  std::string root = FreshDir();
  for (int s : {5, 1, 4, 2, 3}) WriteCkpt(root, s);
  // Crash leftovers: a temp dir of a dead process, and one of a previous
  // process that had our pid (container restarts reuse pids).
  std::string dead = fs::JoinPath(root, ".step-00000006.tmp-999999999-0");
  std::string same_pid =
      fs::JoinPath(root, absl::StrCat(".step-00000007.tmp-", ::getpid(), "-77777"));
  ASSERT_TRUE(fs::MakeDirs(dead).ok());
  ASSERT_TRUE(fs::WriteFileSynced(fs::JoinPath(dead, "model.safetensors"), "partial").ok());
  ASSERT_TRUE(fs::MakeDirs(same_pid).ok());
  // A temp dir of a live process (pid 1 always exists) is someone's write in
  // progress and must stay; so must unrelated files.
  std::string live = fs::JoinPath(root, ".step-00000008.tmp-1-0");
  ASSERT_TRUE(fs::MakeDirs(live).ok());
  ASSERT_TRUE(fs::WriteFileSynced(fs::JoinPath(root, "notes.txt"), "keep me").ok());
  // And an in-flight writer of this process.
  auto inflight = CheckpointWriter::Begin(root, 9);
  ASSERT_TRUE(inflight.ok());
  ASSERT_TRUE(inflight->WriteFile("model.safetensors", "x").ok());

  ASSERT_TRUE(ApplyRetention(root, 2).ok());
  EXPECT_THAT(Steps(root), ElementsAre(4, 5));
  EXPECT_FALSE(fs::Exists(dead));
  EXPECT_FALSE(fs::Exists(same_pid));
  EXPECT_TRUE(fs::Exists(live));
  EXPECT_TRUE(fs::Exists(fs::JoinPath(root, "notes.txt")));
  EXPECT_TRUE(fs::Exists(inflight->temp_dir()));
  EXPECT_TRUE(VerifyCheckpoint(fs::JoinPath(root, "step-00000005")).ok());

  // The in-flight writer still commits after retention ran.
  auto dir = inflight->Commit();
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_THAT(Steps(root), ElementsAre(4, 5, 9));
  ASSERT_TRUE(ApplyRetention(root, 1).ok());
  EXPECT_THAT(Steps(root), ElementsAre(9));
  // keep_last 0 keeps everything.
  WriteCkpt(root, 10);
  ASSERT_TRUE(ApplyRetention(root, 0).ok());
  EXPECT_THAT(Steps(root), ElementsAre(9, 10));
  ASSERT_TRUE(fs::RemoveAll(live).ok());
  auto names = fs::ListDir(root);
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ElementsAre("notes.txt", "step-00000009", "step-00000010"));
}

TEST_F(CheckpointTest, WriterDestroyedWithoutCommitLeavesNothing) {
  std::string root = FreshDir();
  std::string tmp;
  {
    auto w = CheckpointWriter::Begin(root, 3);
    ASSERT_TRUE(w.ok());
    tmp = w->temp_dir();
    EXPECT_TRUE(fs::IsDir(tmp));
    ASSERT_TRUE(w->WriteFile("model.safetensors", "abc").ok());
    // Moving keeps exactly one owner of the temp dir.
    CheckpointWriter moved = std::move(*w);
    EXPECT_TRUE(fs::IsDir(tmp));
    // Assigning over an uncommitted writer abandons its temp dir.
    auto other = CheckpointWriter::Begin(root, 4);
    ASSERT_TRUE(other.ok());
    const std::string other_tmp = other->temp_dir();
    moved = std::move(*other);
    EXPECT_FALSE(fs::Exists(tmp));
    EXPECT_TRUE(fs::IsDir(other_tmp));
    tmp = other_tmp;
  }
  EXPECT_FALSE(fs::Exists(tmp));
  auto names = fs::ListDir(root);
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty()) << names->front();
}

TEST_F(CheckpointTest, WriterRejectsBadUse) {
  std::string root = FreshDir();
  auto w = CheckpointWriter::Begin(root, 1);
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE(w->WriteFile("manifest.json", "{}").ok());
  EXPECT_FALSE(w->WriteFile("sub/model.bin", "x").ok());
  EXPECT_FALSE(w->WriteFile("../x", "x").ok());
  EXPECT_FALSE(w->WriteFile(".hidden", "x").ok());
  // Nothing written -> Commit refuses to produce an empty checkpoint.
  auto empty = w->Commit();
  EXPECT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no files"));
  ASSERT_TRUE(w->WriteFile("a.bin", "x").ok());
  ASSERT_TRUE(w->Commit().ok());
  EXPECT_FALSE(w->Commit().ok());  // twice
  EXPECT_FALSE(w->WriteFile("b.bin", "x").ok());
  EXPECT_FALSE(CheckpointWriter::Begin(root, -1).ok());
}

TEST_F(CheckpointTest, RecommitSameStepReplacesAtomically) {
  std::string root = FreshDir();
  {
    auto w = CheckpointWriter::Begin(root, 5);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->WriteFile("model.safetensors", "old").ok());
    ASSERT_TRUE(w->WriteFile("only_in_old.bin", "old").ok());
    ASSERT_TRUE(w->Commit().ok());
  }
  auto w = CheckpointWriter::Begin(root, 5);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->WriteFile("model.safetensors", "new contents").ok());
  auto dir = w->Commit();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto data = fs::ReadFile(fs::JoinPath(*dir, "model.safetensors"));
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(*data, "new contents");
  EXPECT_FALSE(fs::Exists(fs::JoinPath(*dir, "only_in_old.bin")));
  EXPECT_TRUE(VerifyCheckpoint(*dir).ok());
  auto names = fs::ListDir(root);
  ASSERT_TRUE(names.ok());
  EXPECT_THAT(*names, ElementsAre("step-00000005"));
}

}  // namespace
}  // namespace llmt::storage
