#include "worker/data/loader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "absl/strings/str_format.h"
#include "common/json.h"
#include "data_test_util.h"
#include "worker/data/manifest.h"
#include "worker/data/shard.h"

namespace llmt::data {
namespace {

using testing::FreshDir;
using testing::WriteText;

// Synthetic shards whose token at position p of shard s is s*kStride + p, so
// every window tells where it came from. The large vocabulary makes them
// uint32 shards.
constexpr int32_t kStride = 1'000'000;
constexpr int kVocab = 16'000'000;
const std::string kHash(64, 'a');

std::string MakeDataset(const std::string& dir, const std::vector<uint64_t>& sizes,
                        const std::string& split = "train") {
  std::filesystem::create_directories(dir);
  json::Value shards = json::Value::Array();
  for (size_t s = 0; s < sizes.size(); ++s) {
    const std::string name = absl::StrFormat("%s_%06d.bin", split, s);
    auto w =
        ShardWriter::Create(fs::JoinPath(dir, name), TokenBytesForVocab(kVocab), kVocab, kHash);
    EXPECT_TRUE(w.ok()) << w.status();
    std::vector<int32_t> ids(sizes[s]);
    for (uint64_t p = 0; p < sizes[s]; ++p) ids[p] = static_cast<int32_t>(s * kStride + p);
    EXPECT_TRUE((*w)->Append(ids.data(), ids.size()).ok());
    auto info = (*w)->Finish();
    EXPECT_TRUE(info.ok()) << info.status();
    shards.Push(json::Value::Object()
                    .Set("file", json::Value::String(info->file))
                    .Set("tokens", json::Value::Uint(info->tokens))
                    .Set("bytes", json::Value::Uint(info->bytes))
                    .Set("sha256", json::Value::String(info->sha256)));
  }
  json::Value m = json::Value::Object()
                      .Set("format", json::Value::String(kManifestFormat))
                      .Set("version", json::Value::Int(kManifestVersion))
                      .Set("vocab_size", json::Value::Int(kVocab))
                      .Set("bos_id", json::Value::Int(1))
                      .Set("eos_id", json::Value::Int(2))
                      .Set("dtype", json::Value::String("uint32"))
                      .Set("tokenizer_hash", json::Value::String(kHash))
                      .Set("splits", json::Value::Object().Set(
                                         split, json::Value::Object().Set("shards", shards)));
  WriteText(fs::JoinPath(dir, "manifest.json"), m.Serialize(2));
  return dir;
}

LoaderOptions Opts(const std::string& dir, int B, int T, uint64_t seed = 1) {
  LoaderOptions o;
  o.data_dir = dir;
  o.batch_size = B;
  o.seq_len = T;
  o.seed = seed;
  return o;
}

std::unique_ptr<DataLoader> MustOpen(const LoaderOptions& o) {
  auto l = DataLoader::Open(o);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? std::move(l).value() : nullptr;
}

struct Batch {
  std::vector<int32_t> in, tg;
  bool operator==(const Batch& o) const { return in == o.in && tg == o.tg; }
};

Batch NextBatch(DataLoader& l, int B, int T) {
  Batch b{std::vector<int32_t>(B * T), std::vector<int32_t>(B * T)};
  l.Next(b.in.data(), b.tg.data());
  return b;
}

TEST(DataLoaderTest, WindowsAreContiguousShiftedAndInsideOneShard) {
  const std::string dir = MakeDataset(FreshDir("win"), {50, 7, 300, 33});
  const int B = 4, T = 16;
  auto l = MustOpen(Opts(dir, B, T));
  ASSERT_TRUE(l);
  EXPECT_EQ(l->num_tokens(), 390u);
  EXPECT_EQ(l->vocab_size(), kVocab);
  EXPECT_EQ(l->tokenizer_hash(), kHash);
  EXPECT_EQ(l->eos_id(), 2);
  std::map<int, int> per_shard;
  for (int step = 0; step < 500; ++step) {
    Batch b = NextBatch(*l, B, T);
    for (int r = 0; r < B; ++r) {
      const int32_t first = b.in[r * T];
      const int shard = first / kStride;
      ASSERT_NE(shard, 1) << "shard 1 has 7 tokens, fewer than T+1";
      for (int t = 0; t < T; ++t) {
        ASSERT_EQ(b.in[r * T + t], first + t);
        ASSERT_EQ(b.tg[r * T + t], first + t + 1);
      }
      const uint64_t size = shard == 0 ? 50 : shard == 2 ? 300 : 33;
      ASSERT_LE(static_cast<uint64_t>(first % kStride) + T + 1, size);
      ++per_shard[shard];
    }
  }
  // Shards are drawn in proportion to their window counts 34 : 284 : 17.
  const double n = 2000.0;
  EXPECT_NEAR(per_shard[0] / n, 34.0 / 335, 0.03);
  EXPECT_NEAR(per_shard[2] / n, 284.0 / 335, 0.03);
  EXPECT_NEAR(per_shard[3] / n, 17.0 / 335, 0.02);
}

TEST(DataLoaderTest, SameSeedSameBatchesOtherSeedOthers) {
  const std::string dir = MakeDataset(FreshDir("seed"), {1000, 2000});
  auto a = MustOpen(Opts(dir, 3, 10, 42));
  auto b = MustOpen(Opts(dir, 3, 10, 42));
  auto c = MustOpen(Opts(dir, 3, 10, 43));
  int differ = 0;
  for (int i = 0; i < 20; ++i) {
    Batch ba = NextBatch(*a, 3, 10), bb = NextBatch(*b, 3, 10), bc = NextBatch(*c, 3, 10);
    EXPECT_EQ(ba, bb) << "batch " << i;
    differ += !(ba == bc);
  }
  EXPECT_GE(differ, 19);
  // Reset replays from the start.
  auto d = MustOpen(Opts(dir, 3, 10, 42));
  Batch first = NextBatch(*d, 3, 10);
  NextBatch(*d, 3, 10);
  d->Reset();
  EXPECT_EQ(NextBatch(*d, 3, 10), first);
}

TEST(DataLoaderTest, StateRoundTripContinuesWithTheNextBatch) {
  const std::string dir = MakeDataset(FreshDir("state"), {500, 123, 900});
  for (bool sequential : {false, true}) {
    LoaderOptions o = Opts(dir, 2, 12, 99);
    o.sequential = sequential;
    auto run = MustOpen(o);
    for (int i = 0; i < 37; ++i) NextBatch(*run, 2, 12);
    const LoaderState saved = run->state();
    EXPECT_EQ(saved.batches, 37u);
    EXPECT_EQ(saved.seed, 99u);
    std::vector<Batch> expected;
    for (int i = 0; i < 10; ++i) expected.push_back(NextBatch(*run, 2, 12));

    // Through JSON, into a fresh loader, as a resumed run would.
    auto parsed = LoaderState::FromJson(saved.ToJson());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    auto resumed = MustOpen(o);
    ASSERT_TRUE(resumed->Restore(*parsed).ok());
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(NextBatch(*resumed, 2, 12), expected[i]) << "seq=" << sequential << " i=" << i;
    }
    EXPECT_EQ(resumed->state().batches, 47u);
    EXPECT_EQ(resumed->state().rng_state, run->state().rng_state);
  }
}

TEST(DataLoaderTest, StateJsonIsExactAndValidated) {
  LoaderState s;
  s.seed = 18446744073709551615ull;
  s.rng_state = 18446744073709551557ull;  // > 2^53: must not pass through a double
  s.shard = 4294967295u;
  s.offset = 123456789012345ull;
  s.batches = 77;
  const std::string j = s.ToJson();
  EXPECT_NE(j.find("\"rng_state\":\"18446744073709551557\""), std::string::npos) << j;
  auto back = LoaderState::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->seed, s.seed);
  EXPECT_EQ(back->rng_state, s.rng_state);
  EXPECT_EQ(back->shard, s.shard);
  EXPECT_EQ(back->offset, s.offset);
  EXPECT_EQ(back->batches, s.batches);
  // Plain numbers are accepted too (e.g. written by hand or by another tool).
  auto nums = LoaderState::FromJson(R"({"seed":1,"rng_state":2,"shard":3,"offset":4,"batches":5})");
  ASSERT_TRUE(nums.ok());
  EXPECT_EQ(nums->rng_state, 2u);
  EXPECT_EQ(nums->batches, 5u);
  auto missing = LoaderState::FromJson(R"({"seed":1})");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("rng_state"), std::string::npos);
  EXPECT_FALSE(LoaderState::FromJson("{\"seed\":1,").ok());
  EXPECT_FALSE(
      LoaderState::FromJson(R"({"seed":1,"rng_state":2,"shard":4294967296,"offset":4,"batches":5})")
          .ok());
}

TEST(DataLoaderTest, RestoreRejectsStateThatDoesNotFit) {
  const std::string dir = MakeDataset(FreshDir("fit"), {100, 100});
  auto l = MustOpen(Opts(dir, 1, 8));
  LoaderState s = l->state();
  s.shard = 2;
  auto st = l->Restore(s);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(dir), std::string::npos) << st;
  s.shard = 1;
  s.offset = 101;
  EXPECT_FALSE(l->Restore(s).ok());
}

TEST(DataLoaderTest, SequentialModeTilesShardsAndWraps) {
  // T = 10: shard 0 (35 tokens) has windows at 0, 10, 20 (20+11 <= 35);
  // shard 1 (10 tokens) has none; shard 2 (21 tokens) has 0 and 10.
  const std::string dir = MakeDataset(FreshDir("seq"), {35, 10, 21}, "val");
  LoaderOptions o = Opts(dir, 1, 10);
  o.split = "val";
  o.sequential = true;
  auto l = MustOpen(o);
  ASSERT_EQ(l->windows_per_pass(), 5u);
  const std::vector<int32_t> starts = {0, 10, 20, 2 * kStride, 2 * kStride + 10};
  for (int pass = 0; pass < 3; ++pass) {
    for (int32_t want : starts) {
      Batch b = NextBatch(*l, 1, 10);
      EXPECT_EQ(b.in[0], want) << "pass " << pass;
      EXPECT_EQ(b.tg[9], want + 10);
    }
  }
  // Reset goes back to the first window.
  l->Reset();
  EXPECT_EQ(NextBatch(*l, 1, 10).in[0], 0);
  // The val split is separate from train: opening train here fails clearly.
  auto train = DataLoader::Open(Opts(dir, 1, 10));
  ASSERT_FALSE(train.ok());
  EXPECT_NE(train.status().message().find("no 'train' shards"), std::string::npos);
}

TEST(DataLoaderTest, RankSlicesEqualOneRankWithWorldTimesBatch) {
  const std::string dir = MakeDataset(FreshDir("dp"), {400, 800, 50});
  const int B = 2, T = 8, W = 3;
  for (bool sequential : {false, true}) {
    LoaderOptions big = Opts(dir, B * W, T, 5);
    big.sequential = sequential;
    auto whole = MustOpen(big);
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int r = 0; r < W; ++r) {
      LoaderOptions o = Opts(dir, B, T, 5);
      o.sequential = sequential;
      o.rank = r;
      o.world_size = W;
      ranks.push_back(MustOpen(o));
    }
    for (int step = 0; step < 25; ++step) {
      Batch all = NextBatch(*whole, B * W, T);
      for (int r = 0; r < W; ++r) {
        Batch part = NextBatch(*ranks[r], B, T);
        std::vector<int32_t> want_in(all.in.begin() + r * B * T, all.in.begin() + (r + 1) * B * T);
        std::vector<int32_t> want_tg(all.tg.begin() + r * B * T, all.tg.begin() + (r + 1) * B * T);
        EXPECT_EQ(part.in, want_in) << "seq=" << sequential << " step " << step << " rank " << r;
        EXPECT_EQ(part.tg, want_tg);
      }
    }
    // All ranks share one RNG position, so rank 0's state resumes any rank.
    EXPECT_EQ(ranks[0]->state().rng_state, ranks[2]->state().rng_state);
  }
  LoaderOptions bad = Opts(dir, B, T);
  bad.rank = 3;
  bad.world_size = 3;
  EXPECT_FALSE(DataLoader::Open(bad).ok());
}

// ---- Damaged or mismatched data: errors name the file. --------------------

void Patch(const std::string& path, off_t off, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), off), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

void ExpectOpenError(const LoaderOptions& o, const std::vector<std::string>& want) {
  auto l = DataLoader::Open(o);
  ASSERT_FALSE(l.ok());
  const std::string msg(l.status().message());
  for (const auto& w : want)
    EXPECT_NE(msg.find(w), std::string::npos) << "'" << w << "' not in: " << msg;
}

TEST(DataLoaderErrorsTest, BadMagic) {
  const std::string dir = MakeDataset(FreshDir("magic"), {100, 100});
  const std::string shard = fs::JoinPath(dir, "train_000001.bin");
  Patch(shard, 0, "NOTASHRD");
  ExpectOpenError(Opts(dir, 1, 8), {shard, "bad magic"});
}

TEST(DataLoaderErrorsTest, BadVersion) {
  const std::string dir = MakeDataset(FreshDir("ver"), {100});
  const std::string shard = fs::JoinPath(dir, "train_000000.bin");
  uint32_t v = 9;
  Patch(shard, 8, std::string(reinterpret_cast<char*>(&v), 4));
  ExpectOpenError(Opts(dir, 1, 8), {shard, "unsupported format version 9"});
}

TEST(DataLoaderErrorsTest, TruncatedShard) {
  const std::string dir = MakeDataset(FreshDir("trunc"), {100});
  const std::string shard = fs::JoinPath(dir, "train_000000.bin");
  std::filesystem::resize_file(shard, kShardHeaderBytes + 4 * 100 - 3);
  ExpectOpenError(Opts(dir, 1, 8), {shard, "truncated", "100 tokens"});
  std::filesystem::resize_file(shard, 20);  // not even a header
  ExpectOpenError(Opts(dir, 1, 8), {shard, "truncated", "header"});
}

TEST(DataLoaderErrorsTest, TokenizerHashMismatch) {
  const std::string dir = MakeDataset(FreshDir("hash"), {100, 100});
  const std::string shard = fs::JoinPath(dir, "train_000001.bin");
  Patch(shard, 32, std::string(64, 'b'));
  ExpectOpenError(Opts(dir, 1, 8), {shard, "tokenizer", std::string(64, 'b'), kHash});
}

TEST(DataLoaderErrorsTest, TokenizerModelDoesNotMatchManifest) {
  const std::string dir = MakeDataset(FreshDir("model"), {100});
  WriteText(fs::JoinPath(dir, "tokenizer.model"), "some other tokenizer");
  ExpectOpenError(Opts(dir, 1, 8), {fs::JoinPath(dir, "tokenizer.model"), "tokenizer_hash"});
}

TEST(DataLoaderErrorsTest, VocabMismatch) {
  const std::string dir = MakeDataset(FreshDir("vocab"), {100});
  const std::string shard = fs::JoinPath(dir, "train_000000.bin");
  uint32_t v = kVocab - 1;
  Patch(shard, 20, std::string(reinterpret_cast<char*>(&v), 4));
  ExpectOpenError(Opts(dir, 1, 8), {shard, "vocab size 15999999", "16000000"});
}

TEST(DataLoaderErrorsTest, TokenCountDiffersFromManifest) {
  const std::string dir = MakeDataset(FreshDir("count"), {100});
  const std::string m = fs::JoinPath(dir, "manifest.json");
  std::string text = testing::ReadText(m);
  text.replace(text.find("\"tokens\": 100"), 13, "\"tokens\": 101");
  WriteText(m, text);
  ExpectOpenError(Opts(dir, 1, 8), {"train_000000.bin", "100 tokens", "lists 101"});
}

TEST(DataLoaderErrorsTest, MissingManifestShardAndSplit) {
  const std::string empty = FreshDir("nomanifest");
  ExpectOpenError(Opts(empty, 1, 8), {empty, "manifest.json", "llmt prepare"});
  const std::string dir = MakeDataset(FreshDir("noshard"), {100, 100});
  std::filesystem::remove(fs::JoinPath(dir, "train_000001.bin"));
  ExpectOpenError(Opts(dir, 1, 8), {fs::JoinPath(dir, "train_000001.bin"), "missing"});
  LoaderOptions val = Opts(dir, 1, 8);
  val.split = "val";
  ExpectOpenError(val, {"no 'val' shards"});
  WriteText(fs::JoinPath(empty, "manifest.json"), "{\"format\": \"llmt-shards\", ");
  ExpectOpenError(Opts(empty, 1, 8), {fs::JoinPath(empty, "manifest.json"), "invalid JSON"});
}

TEST(DataLoaderErrorsTest, SeqLenLongerThanEveryShard) {
  const std::string dir = MakeDataset(FreshDir("short"), {10, 20});
  ExpectOpenError(Opts(dir, 1, 20), {"seq_len+1 = 21", "largest has 20"});
  EXPECT_TRUE(DataLoader::Open(Opts(dir, 1, 19)).ok());
}

TEST(DataLoaderErrorsTest, VerifyCatchesCorruptTokensAndIdsOutOfRange) {
  const std::string dir = MakeDataset(FreshDir("verify"), {100});
  const std::string shard = fs::JoinPath(dir, "train_000000.bin");
  LoaderOptions o = Opts(dir, 1, 8);
  o.verify = true;
  ASSERT_TRUE(DataLoader::Open(o).ok());
  // A flipped token passes the header checks but not the checksum.
  int32_t x = 7;
  Patch(shard, kShardHeaderBytes + 40, std::string(reinterpret_cast<char*>(&x), 4));
  EXPECT_TRUE(DataLoader::Open(Opts(dir, 1, 8)).ok());
  ExpectOpenError(o, {shard, "sha256"});

  // An out-of-vocabulary id with a matching checksum is caught by the scan.
  int32_t big = kVocab + 5;
  Patch(shard, kShardHeaderBytes + 40, std::string(reinterpret_cast<char*>(&big), 4));
  const std::string m = fs::JoinPath(dir, "manifest.json");
  auto man = json::Parse(testing::ReadText(m));
  ASSERT_TRUE(man.ok());
  std::string text = testing::ReadText(m);
  const std::string old_sha =
      man->Find("splits")->Find("train")->Find("shards")->array()[0].Find("sha256")->str();
  text.replace(text.find(old_sha), old_sha.size(), *fs::Sha256File(shard));
  WriteText(m, text);
  ExpectOpenError(o, {shard, "token 10", ">= vocab size"});
}

}  // namespace
}  // namespace llmt::data
