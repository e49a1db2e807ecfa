#include "worker/data/prepare.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include "absl/strings/str_format.h"
#include "common/json.h"
#include "data_test_util.h"
#include "worker/data/loader.h"
#include "worker/data/manifest.h"

namespace llmt::data {
namespace {

using testing::FreshDir;
using testing::LeftoverTempDirs;
using testing::ReadText;
using testing::SplitDocs;
using testing::SplitTokens;
using testing::WriteText;

std::multiset<std::string> AllDocs(const std::string& dir) {
  std::multiset<std::string> out;
  for (auto& d : SplitDocs(dir, "train")) out.insert(d);
  for (auto& d : SplitDocs(dir, "val")) out.insert(d);
  return out;
}

// A small mixed corpus: two text files (one nested), a hidden file that must
// be ignored, and a JSONL file. Cleaned documents are spelled out by hand.
struct SmallCorpus {
  std::string dir;
  std::vector<std::string> expected;  // cleaned, deduplicated documents
  int64_t bytes = 0;                  // of the files that should be read
};

SmallCorpus MakeSmallCorpus(const std::string& root) {
  SmallCorpus c;
  c.dir = fs::JoinPath(root, "corpus");
  const std::string a =
      "  Hello   world,\tthis is\r\na test document number one.  \r\n\r\n\r\n"
      "Second paragraph\xC2\xA0here, with caf\xC3\xA9 and an emoji \xF0\x9F\x98\x80.\n\n"
      "Tiny.\n\n"
      "Hello world, this is\n   a test document number one.\n";
  const std::string b = "Chapter 1\n\nThe third document is in a nested directory.\n\n";
  const std::string jl =
      "{\"text\": \"Fourth document from JSONL,\\nwith a newline and \\\"quotes\\\".\"}\n"
      "\n"
      "{\"text\": \"Fifth: surrogate pair \\ud83d\\ude00 and \\u00e9t\\u00e9.\", \"id\": 5}\n"
      "{\"text\": \"\"}\n"
      "{\"text\": \"Second paragraph\\u00a0here, with caf\\u00e9 and an emoji \\ud83d\\ude00.\"}\n"
      "{\"meta\": {\"x\": [1, 2]}, \"text\": \"Sixth document keeps\\n\\n\\n\\nonly one blank "
      "line.\"}\r\n";
  WriteText(fs::JoinPath(c.dir, "a.txt"), a);
  WriteText(fs::JoinPath(c.dir, "sub/b.txt"), b);
  WriteText(fs::JoinPath(c.dir, ".hidden.txt"), "This hidden file must never be read at all.\n");
  WriteText(fs::JoinPath(c.dir, "data.jsonl"), jl);
  c.bytes = a.size() + b.size() + jl.size();
  c.expected = {
      "Hello world, this is\na test document number one.",
      "Second paragraph here, with caf\xC3\xA9 and an emoji \xF0\x9F\x98\x80.",
      "Chapter 1\nThe third document is in a nested directory.",
      "Fourth document from JSONL,\nwith a newline and \"quotes\".",
      "Fifth: surrogate pair \xF0\x9F\x98\x80 and \xC3\xA9t\xC3\xA9.",
      "Sixth document keeps\n\nonly one blank line.",
  };
  return c;
}

// `n` distinct generated documents.
std::vector<std::string> GeneratedDocs(int n) {
  static const char* kWords[] = {"river",  "stone",  "light",  "garden", "north",  "silver",
                                 "window", "market", "letter", "shadow", "engine", "field"};
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i) {
    std::string d = absl::StrFormat("Document %d begins here.", i);
    for (int k = 0; k < 8 + i % 7; ++k) {
      d += " ";
      d += kWords[(i * 7 + k * 3) % 12];
    }
    d += absl::StrFormat(" It ends with number %d.", i * 31 % 1000);
    docs.push_back(d);
  }
  return docs;
}

std::string JoinParagraphs(const std::vector<std::string>& docs, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += docs[i] + "\n\n";
  return out;
}

PrepareOptions Opts(std::vector<std::string> inputs, std::string out) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = std::move(out);
  o.vocab_size = 600;
  o.val_fraction = 0.3;
  o.seed = 7;
  o.threads = 2;
  return o;
}

TEST(DataPrepareTest, RoundTripCountsAndManifest) {
  const std::string root = FreshDir("rt");
  SmallCorpus c = MakeSmallCorpus(root);
  const std::string out = fs::JoinPath(root, "out");
  auto rep = Prepare(Opts({c.dir}, out));
  ASSERT_TRUE(rep.ok()) << rep.status();

  // Counts: 4 paragraphs from a.txt, 1 from b.txt (heading attached), 5
  // non-blank JSONL lines; "Tiny." and "" are dropped; two duplicates.
  EXPECT_EQ(rep->docs_in, 10);
  EXPECT_EQ(rep->docs_empty_or_short, 2);
  EXPECT_EQ(rep->docs_duplicate, 2);
  EXPECT_EQ(rep->docs_out, 6);
  EXPECT_EQ(rep->bytes_in, c.bytes);
  int64_t kept_bytes = 0;
  for (auto& d : c.expected) kept_bytes += d.size();
  EXPECT_EQ(rep->bytes_out, kept_bytes);

  // decode(tokens) reproduces exactly the cleaned documents.
  EXPECT_EQ(AllDocs(out), std::multiset<std::string>(c.expected.begin(), c.expected.end()));
  const auto train_docs = SplitDocs(out, "train");
  const auto val_docs = SplitDocs(out, "val");
  EXPECT_GE(val_docs.size(), 1u);
  EXPECT_GE(train_docs.size(), 1u);

  // The manifest agrees with the report and with the files.
  auto m = ReadManifest(out);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->vocab_size, rep->vocab_size);
  EXPECT_EQ(m->tokenizer_hash, rep->tokenizer_hash);
  EXPECT_EQ(*fs::Sha256File(fs::JoinPath(out, "tokenizer.model")), rep->tokenizer_hash);
  std::string err;
  auto tok = Tokenizer::Load(fs::JoinPath(out, "tokenizer.model"), &err);
  ASSERT_TRUE(tok) << err;
  EXPECT_EQ(tok->vocab_size(), rep->vocab_size);
  EXPECT_EQ(m->eos_id, tok->eos_id());
  EXPECT_EQ(m->bos_id, tok->bos_id());
  EXPECT_EQ(m->token_bytes, 2u);
  const json::Value& counts = *m->raw.Find("counts");
  EXPECT_EQ(*counts.Find("documents_in")->AsInt64(), rep->docs_in);
  EXPECT_EQ(*counts.Find("documents_out")->AsInt64(), rep->docs_out);
  EXPECT_EQ(*counts.Find("documents_duplicate")->AsInt64(), rep->docs_duplicate);
  EXPECT_EQ(*counts.Find("documents_empty_or_short")->AsInt64(), rep->docs_empty_or_short);
  EXPECT_EQ(*counts.Find("bytes_in")->AsInt64(), rep->bytes_in);
  EXPECT_EQ(*counts.Find("train_tokens")->AsInt64(), rep->train_tokens);
  EXPECT_EQ(*counts.Find("val_tokens")->AsInt64(), rep->val_tokens);
  EXPECT_EQ(static_cast<int64_t>(SplitTokens(out, "train").size()), rep->train_tokens);
  EXPECT_EQ(static_cast<int64_t>(SplitTokens(out, "val").size()), rep->val_tokens);
  EXPECT_EQ(rep->train_shards, static_cast<int>(m->train.size()));
  EXPECT_EQ(rep->val_shards, static_cast<int>(m->val.size()));
  const json::Value& splits = *m->raw.Find("splits");
  EXPECT_EQ(*splits.Find("train")->Find("documents")->AsInt64(),
            static_cast<int64_t>(train_docs.size()));
  EXPECT_EQ(*splits.Find("val")->Find("documents")->AsInt64(),
            static_cast<int64_t>(val_docs.size()));
  for (const auto* list : {&m->train, &m->val}) {
    for (const ManifestShard& s : *list) {
      const std::string path = fs::JoinPath(out, s.file);
      EXPECT_EQ(*fs::Sha256File(path), s.sha256) << path;
      EXPECT_EQ(static_cast<uint64_t>(*fs::FileSize(path)), s.bytes);
      EXPECT_EQ(s.bytes, kShardHeaderBytes + 2 * s.tokens);
    }
  }
  // Sources: the three visible files, sorted; the hidden one never read.
  const json::Value& sources = *m->raw.Find("sources");
  ASSERT_EQ(sources.array().size(), 3u);
  EXPECT_EQ(sources.array()[0].Find("path")->str(), fs::JoinPath(c.dir, "a.txt"));
  EXPECT_EQ(*sources.array()[0].Find("documents_in")->AsInt64(), 4);
  EXPECT_EQ(*sources.array()[0].Find("documents_out")->AsInt64(), 2);
  EXPECT_EQ(sources.array()[1].Find("path")->str(), fs::JoinPath(c.dir, "data.jsonl"));
  EXPECT_EQ(sources.array()[2].Find("path")->str(), fs::JoinPath(c.dir, "sub/b.txt"));
  EXPECT_EQ(m->raw.Find("options")->Find("seed")->str(), "7");

  // Nothing else is left in the output: no training text, no temp dirs.
  std::set<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(out)) names.insert(e.path().filename());
  std::set<std::string> want = {"manifest.json", "tokenizer.model", "tokenizer.vocab"};
  for (auto& s : m->train) want.insert(s.file);
  for (auto& s : m->val) want.insert(s.file);
  EXPECT_EQ(names, want);
  EXPECT_TRUE(LeftoverTempDirs(root, "out").empty());

  // The loader opens the result and serves in-vocabulary windows.
  LoaderOptions lo;
  lo.data_dir = out;
  lo.batch_size = 2;
  lo.seq_len = 8;
  lo.verify = true;
  auto loader = DataLoader::Open(lo);
  ASSERT_TRUE(loader.ok()) << loader.status();
  EXPECT_EQ((*loader)->vocab_size(), rep->vocab_size);
  EXPECT_EQ((*loader)->tokenizer_hash(), rep->tokenizer_hash);
  EXPECT_EQ(static_cast<int64_t>((*loader)->num_tokens()), rep->train_tokens);
  std::vector<int32_t> in(16), tg(16);
  (*loader)->Next(in.data(), tg.data());
  for (int i = 0; i < 16; ++i) {
    EXPECT_GE(in[i], 0);
    EXPECT_LT(in[i], rep->vocab_size);
  }
  EXPECT_NE(rep->ToString().find("6 kept"), std::string::npos) << rep->ToString();
}

TEST(DataPrepareTest, SplitIsDeterministicAndStableUnderAdditions) {
  const std::string root = FreshDir("split");
  const auto docs = GeneratedDocs(300);
  WriteText(fs::JoinPath(root, "all.txt"), JoinParagraphs(docs, 300));
  WriteText(fs::JoinPath(root, "part.txt"), JoinParagraphs(docs, 200));

  auto run = [&](const std::string& name, const std::string& input, uint64_t seed, int threads) {
    PrepareOptions o = Opts({fs::JoinPath(root, input)}, fs::JoinPath(root, name));
    o.val_fraction = 0.2;
    o.seed = seed;
    o.threads = threads;
    auto rep = Prepare(o);
    EXPECT_TRUE(rep.ok()) << rep.status();
    return fs::JoinPath(root, name);
  };
  const std::string a = run("a", "all.txt", 11, 2);
  const std::string b = run("b", "all.txt", 11, 1);
  const std::string c = run("c", "all.txt", 12, 2);
  const std::string p = run("p", "part.txt", 11, 2);

  // Same corpus and seed: byte-identical output, whatever the thread count.
  auto ma = ReadManifest(a), mb = ReadManifest(b);
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_EQ(ma->tokenizer_hash, mb->tokenizer_hash);
  ASSERT_EQ(ma->train.size(), mb->train.size());
  for (size_t i = 0; i < ma->train.size(); ++i) EXPECT_EQ(ma->train[i].sha256, mb->train[i].sha256);
  ASSERT_EQ(ma->val.size(), mb->val.size());
  for (size_t i = 0; i < ma->val.size(); ++i) EXPECT_EQ(ma->val[i].sha256, mb->val[i].sha256);

  const auto val_a = SplitDocs(a, "val");
  const std::set<std::string> val_set(val_a.begin(), val_a.end());
  // About 20% of 300 documents; a binomial 60 +- 7, so 30..90 is generous.
  EXPECT_GT(val_set.size(), 30u);
  EXPECT_LT(val_set.size(), 90u);
  const auto val_c = SplitDocs(c, "val");
  EXPECT_NE(val_set, std::set<std::string>(val_c.begin(), val_c.end())) << "seed ignored";

  // Adding documents 200..299 moves none of documents 0..199.
  const auto val_p = SplitDocs(p, "val");
  const std::set<std::string> val_p_set(val_p.begin(), val_p.end());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(val_set.count(docs[i]), val_p_set.count(docs[i])) << docs[i];
  }
}

TEST(DataPrepareTest, ReusedTokenizerAndShardRotation) {
  const std::string root = FreshDir("rot");
  WriteText(fs::JoinPath(root, "c.txt"), JoinParagraphs(GeneratedDocs(80), 80));
  PrepareOptions o = Opts({fs::JoinPath(root, "c.txt")}, fs::JoinPath(root, "one"));
  auto one = Prepare(o);
  ASSERT_TRUE(one.ok()) << one.status();

  o.out_dir = fs::JoinPath(root, "many");
  o.tokenizer_model = fs::JoinPath(root, "one/tokenizer.model");
  o.vocab_size = 0;  // ignored when a tokenizer is given
  o.shard_tokens = 100;
  auto many = Prepare(o);
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ(many->tokenizer_hash, one->tokenizer_hash);
  EXPECT_EQ(many->train_tokens, one->train_tokens);
  EXPECT_EQ(many->train_shards, (one->train_tokens + 99) / 100);
  auto m = ReadManifest(o.out_dir);
  ASSERT_TRUE(m.ok());
  for (size_t i = 0; i < m->train.size(); ++i) {
    EXPECT_EQ(m->train[i].file, absl::StrFormat("train_%06d.bin", i));
    if (i + 1 < m->train.size()) {
      EXPECT_EQ(m->train[i].tokens, 100u);
    }
  }
  // Same tokenizer, same documents: the concatenated streams are identical.
  EXPECT_EQ(SplitTokens(o.out_dir, "train"), SplitTokens(fs::JoinPath(root, "one"), "train"));
  EXPECT_EQ(SplitTokens(o.out_dir, "val"), SplitTokens(fs::JoinPath(root, "one"), "val"));
  EXPECT_EQ(m->raw.Find("tokenizer")->Find("trained")->bool_value(), false);
}

TEST(DataPrepareTest, DashReadsStandardInput) {
  const std::string root = FreshDir("stdin");
  const auto docs = GeneratedDocs(40);
  const std::string file = fs::JoinPath(root, "piped.txt");
  WriteText(file, JoinParagraphs(docs, 40));
  ASSERT_NE(std::freopen(file.c_str(), "r", stdin), nullptr);
  const std::string out = fs::JoinPath(root, "out");
  auto rep = Prepare(Opts({"-"}, out));
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(rep->docs_out, 40);
  EXPECT_EQ(AllDocs(out), std::multiset<std::string>(docs.begin(), docs.end()));
  auto m = ReadManifest(out);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->raw.Find("sources")->array()[0].Find("path")->str(), "-");
}

// ---- Bad inputs: one clear error, and nothing left behind. -----------------

void ExpectCleanFailure(const PrepareOptions& o, const std::vector<std::string>& want) {
  auto rep = Prepare(o);
  ASSERT_FALSE(rep.ok());
  const std::string msg(rep.status().message());
  for (const auto& w : want)
    EXPECT_NE(msg.find(w), std::string::npos) << "'" << w << "' not in: " << msg;
  EXPECT_FALSE(fs::Exists(o.out_dir)) << o.out_dir;
  EXPECT_TRUE(LeftoverTempDirs(fs::Dirname(o.out_dir), fs::Basename(o.out_dir)).empty());
}

TEST(DataPrepareErrorsTest, MissingInput) {
  const std::string root = FreshDir("miss");
  const std::string missing = fs::JoinPath(root, "nope.txt");
  ExpectCleanFailure(Opts({missing}, fs::JoinPath(root, "out")), {missing, "does not exist"});
}

TEST(DataPrepareErrorsTest, EmptyCorpusAfterCleaning) {
  const std::string root = FreshDir("empty");
  const std::string in = fs::JoinPath(root, "tiny.txt");
  WriteText(in, "Tiny.\n\n\x01\x02  \n\nSmall one.\n\nTiny.\n");
  ExpectCleanFailure(Opts({in}, fs::JoinPath(root, "out")), {"empty corpus after cleaning", in});
  // An empty directory is an empty corpus too.
  std::filesystem::create_directories(fs::JoinPath(root, "emptydir"));
  ExpectCleanFailure(Opts({fs::JoinPath(root, "emptydir")}, fs::JoinPath(root, "out")),
                     {"empty corpus after cleaning", "emptydir"});
}

TEST(DataPrepareErrorsTest, BadJsonlLines) {
  const std::string root = FreshDir("jsonl");
  const std::string bad = fs::JoinPath(root, "bad.jsonl");
  WriteText(bad, "{\"text\": \"A perfectly fine first document.\"}\n{\"text\": \"oops}\n");
  ExpectCleanFailure(Opts({bad}, fs::JoinPath(root, "out")),
                     {bad + ":2: invalid JSON at column", "unterminated string"});
  const std::string nt = fs::JoinPath(root, "notext.jsonl");
  WriteText(nt, "{\"text\": \"A perfectly fine first document.\"}\n\n{\"body\": \"x\"}\n");
  ExpectCleanFailure(Opts({nt}, fs::JoinPath(root, "out")), {nt + ":3: missing \"text\" field"});
  const std::string ns = fs::JoinPath(root, "nonstring.jsonl");
  WriteText(ns, "{\"text\": [\"a\"]}\n");
  ExpectCleanFailure(Opts({ns}, fs::JoinPath(root, "out")),
                     {ns + ":1: \"text\" field is not a string"});
}

TEST(DataPrepareErrorsTest, NonEmptyOutDirAndOverwrite) {
  const std::string root = FreshDir("nonempty");
  const std::string in = fs::JoinPath(root, "c.txt");
  WriteText(in, JoinParagraphs(GeneratedDocs(20), 20));
  const std::string out = fs::JoinPath(root, "out");
  WriteText(fs::JoinPath(out, "keep.txt"), "precious");
  auto rep = Prepare(Opts({in}, out));
  ASSERT_FALSE(rep.ok());
  EXPECT_NE(rep.status().message().find(out), std::string::npos) << rep.status();
  EXPECT_NE(rep.status().message().find("not empty"), std::string::npos) << rep.status();
  EXPECT_EQ(ReadText(fs::JoinPath(out, "keep.txt")), "precious");
  EXPECT_TRUE(LeftoverTempDirs(root, "out").empty());

  // An existing empty directory is fine, also spelled with a trailing slash.
  const std::string empty_out = fs::JoinPath(root, "empty_out");
  std::filesystem::create_directories(empty_out);
  ASSERT_TRUE(Prepare(Opts({in}, empty_out + "/")).ok());
  EXPECT_TRUE(fs::Exists(fs::JoinPath(empty_out, "manifest.json")));
  EXPECT_TRUE(LeftoverTempDirs(root, "empty_out").empty());

  PrepareOptions o = Opts({in}, out);
  o.overwrite = true;
  rep = Prepare(o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_FALSE(fs::Exists(fs::JoinPath(out, "keep.txt")));
  EXPECT_TRUE(fs::Exists(fs::JoinPath(out, "manifest.json")));
  EXPECT_TRUE(LeftoverTempDirs(root, "out").empty());

  // A file where the output directory should be.
  WriteText(fs::JoinPath(root, "file_out"), "x");
  auto st = Prepare(Opts({in}, fs::JoinPath(root, "file_out")));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("not a directory"), std::string::npos);
}

TEST(DataPrepareErrorsTest, BadTokenizerModelLeavesNothing) {
  const std::string root = FreshDir("badtok");
  const std::string in = fs::JoinPath(root, "c.txt");
  WriteText(in, JoinParagraphs(GeneratedDocs(20), 20));
  PrepareOptions o = Opts({in}, fs::JoinPath(root, "out"));
  o.tokenizer_model = fs::JoinPath(root, "missing.model");
  ExpectCleanFailure(o, {o.tokenizer_model});
  // Fails after the staging dir exists: it must be removed.
  WriteText(fs::JoinPath(root, "garbage.model"), "this is not a protobuf");
  o.tokenizer_model = fs::JoinPath(root, "garbage.model");
  ExpectCleanFailure(o, {o.tokenizer_model, "not a SentencePiece model"});
}

TEST(DataPrepareErrorsTest, TokenizerTrainingFailureLeavesNothing) {
  // 400 distinct CJK characters need more than 300 pieces (256 bytes + 3
  // specials + characters): SentencePiece refuses, after staging began.
  const std::string root = FreshDir("sp");
  const std::string in = fs::JoinPath(root, "cjk.txt");
  std::string text;
  for (int i = 0; i < 400; ++i) {
    const uint32_t cp = 0x4E00 + i;
    std::string ch = {static_cast<char>(0xE0 | (cp >> 12)),
                      static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                      static_cast<char>(0x80 | (cp & 0x3F))};
    for (int k = 0; k < 20; ++k) text += ch;
    text += "\n\n";
  }
  WriteText(in, text);
  PrepareOptions o = Opts({in}, fs::JoinPath(root, "out"));
  o.vocab_size = 300;
  ExpectCleanFailure(o, {"cannot train a 300-piece tokenizer on " + in, "vocab"});
}

TEST(DataPrepareErrorsTest, BinaryFiles) {
  const std::string root = FreshDir("bin");
  const std::string dir = fs::JoinPath(root, "in");
  WriteText(fs::JoinPath(dir, "doc.txt"), JoinParagraphs(GeneratedDocs(10), 10));
  WriteText(fs::JoinPath(dir, "blob.bin"), std::string("\x7f"
                                                       "ELF\0\0\x01",
                                                       7));
  // Named directly: an error naming it.
  ExpectCleanFailure(Opts({fs::JoinPath(dir, "blob.bin")}, fs::JoinPath(root, "out")),
                     {fs::JoinPath(dir, "blob.bin"), "binary"});
  // Inside a directory: skipped, and the manifest says so.
  const std::string out = fs::JoinPath(root, "out2");
  auto rep = Prepare(Opts({dir}, out));
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(rep->docs_out, 10);
  auto m = ReadManifest(out);
  ASSERT_TRUE(m.ok());
  const auto& srcs = m->raw.Find("sources")->array();
  ASSERT_EQ(srcs.size(), 2u);
  ASSERT_NE(srcs[0].Find("skipped"), nullptr);
  EXPECT_NE(srcs[0].Find("skipped")->str().find("binary"), std::string::npos);
}

TEST(DataPrepareErrorsTest, OutDirInsideInputIsNotIngested) {
  const std::string root = FreshDir("nested");
  WriteText(fs::JoinPath(root, "c.txt"), JoinParagraphs(GeneratedDocs(30), 30));
  PrepareOptions o = Opts({root}, fs::JoinPath(root, "prepared"));
  auto first = Prepare(o);
  ASSERT_TRUE(first.ok()) << first.status();
  o.overwrite = true;
  auto second = Prepare(o);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->docs_in, first->docs_in);  // tokenizer.vocab etc. not read
  EXPECT_EQ(second->tokenizer_hash, first->tokenizer_hash);
}

TEST(DataPrepareErrorsTest, InvalidOptions) {
  const std::string root = FreshDir("opts");
  const std::string in = fs::JoinPath(root, "c.txt");
  WriteText(in, JoinParagraphs(GeneratedDocs(5), 5));
  PrepareOptions o = Opts({in}, fs::JoinPath(root, "out"));
  o.val_fraction = 1.0;
  ExpectCleanFailure(o, {"--val-fraction"});
  o = Opts({in}, fs::JoinPath(root, "out"));
  o.vocab_size = 100;
  ExpectCleanFailure(o, {"--vocab-size"});
  o = Opts({}, fs::JoinPath(root, "out"));
  ExpectCleanFailure(o, {"no --input"});
}

}  // namespace
}  // namespace llmt::data
