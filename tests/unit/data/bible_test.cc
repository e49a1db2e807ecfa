// The default corpus end to end: `bible Gen1:1-Rev22:21` (Debian's bible-kjv,
// 4.3 MB) through Prepare with a 4096-piece vocabulary. Label: slow.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "data_test_util.h"
#include "worker/data/loader.h"
#include "worker/data/prepare.h"

namespace llmt::data {
namespace {

TEST(DataBibleTest, PreparesKjvWithPlausibleCounts) {
  if (!fs::Exists("/usr/bin/bible")) GTEST_SKIP() << "/usr/bin/bible (bible-kjv) not installed";
  const std::string root = testing::FreshDir("kjv");
  const std::string txt = fs::JoinPath(root, "kjv.txt");
  ASSERT_EQ(std::system(("/usr/bin/bible Gen1:1-Rev22:21 > '" + txt + "'").c_str()), 0);
  ASSERT_GT(*fs::FileSize(txt), 4'000'000);

  PrepareOptions o;
  o.inputs = {txt};
  o.out_dir = fs::JoinPath(root, "out");
  o.vocab_size = 4096;
  o.threads = 2;
  const auto t0 = std::chrono::steady_clock::now();
  auto rep = Prepare(o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(rep.ok()) << rep.status();
  std::cerr << rep->ToString() << "\nprepare took " << secs << " s\n";

  // One document per chapter (heading attached): the KJV has 1189 chapters.
  EXPECT_EQ(rep->docs_out, 1189);
  EXPECT_EQ(rep->docs_duplicate, 0);
  EXPECT_EQ(rep->vocab_size, 4096);
  const int64_t tokens = rep->train_tokens + rep->val_tokens;
  EXPECT_GT(tokens, 1'000'000);
  EXPECT_LT(tokens, 1'500'000);
  // 1% of chapters, by hash: a handful, and both splits populated.
  EXPECT_GT(rep->val_tokens, 2'000);
  EXPECT_LT(rep->val_tokens, 60'000);
  EXPECT_LT(secs, 60.0);

  // Genesis 1 decodes back to its text.
  const auto docs = testing::SplitDocs(o.out_dir, "train");
  bool found = false;
  for (const auto& d : docs) {
    if (d.rfind("Genesis 1\n1 In the beginning God created the heaven and the earth.\n", 0) == 0) {
      found = true;
    }
  }
  const auto val = testing::SplitDocs(o.out_dir, "val");
  for (const auto& d : val) {
    if (d.rfind("Genesis 1\n", 0) == 0) found = true;
  }
  EXPECT_TRUE(found);

  LoaderOptions lo;
  lo.data_dir = o.out_dir;
  lo.batch_size = 8;
  lo.seq_len = 256;
  lo.verify = true;
  auto l = DataLoader::Open(lo);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(static_cast<int64_t>((*l)->num_tokens()), rep->train_tokens);
}

}  // namespace
}  // namespace llmt::data
