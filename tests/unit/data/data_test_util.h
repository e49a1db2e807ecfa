// Shared helpers for the worker/data tests: fresh temp dirs, writing files,
// reading prepared shards back as documents.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/fs.h"
#include "worker/data/manifest.h"
#include "worker/data/shard.h"
#include "worker/data/tokenizer.h"

namespace llmt::data::testing {

// Removes the test dirs at exit when every test passed (kept for debugging
// otherwise).
struct DirCleaner {
  std::vector<std::string> dirs;
  ~DirCleaner() {
    if (!::testing::UnitTest::GetInstance()->Passed()) return;
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};

// A fresh, empty directory per call (tests in one binary may share a process).
inline std::string FreshDir(const std::string& tag) {
  static DirCleaner cleaner;
  static std::atomic<int> n{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info ? info->name() : "x") + "_" + tag + "_" +
                     std::to_string(::getpid()) + "_" + std::to_string(n++);
  std::string dir = fs::JoinPath(::testing::TempDir(), "llmt_data_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  cleaner.dirs.push_back(dir);
  return dir;
}

inline void WriteText(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Names in `dir` that look like staging/aside dirs of `final_name`.
inline std::vector<std::string> LeftoverTempDirs(const std::string& dir,
                                                 const std::string& final_name) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.rfind("." + final_name + ".tmp", 0) == 0) out.push_back(n);
  }
  return out;
}

// All tokens of one split, shards concatenated in manifest order.
inline std::vector<int32_t> SplitTokens(const std::string& data_dir, const std::string& split) {
  std::vector<int32_t> out;
  auto m = ReadManifest(data_dir);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return out;
  for (const ManifestShard& s : *m->split(split)) {
    auto r = ShardReader::Open(fs::JoinPath(data_dir, s.file));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) continue;
    size_t at = out.size();
    out.resize(at + (*r)->size());
    (*r)->Copy(0, (*r)->size(), out.data() + at);
  }
  return out;
}

// Decodes a split back into documents (split at EOS).
inline std::vector<std::string> SplitDocs(const std::string& data_dir, const std::string& split) {
  std::string err;
  auto tok = Tokenizer::Load(fs::JoinPath(data_dir, "tokenizer.model"), &err);
  EXPECT_TRUE(tok) << err;
  std::vector<std::string> docs;
  if (!tok) return docs;
  std::vector<int32_t> cur;
  for (int32_t id : SplitTokens(data_dir, split)) {
    if (id == tok->eos_id()) {
      docs.push_back(tok->Decode(cur));
      cur.clear();
    } else {
      cur.push_back(id);
    }
  }
  EXPECT_TRUE(cur.empty()) << "split " << split << " does not end with EOS";
  return docs;
}

}  // namespace llmt::data::testing
