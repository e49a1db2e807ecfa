#include "coordinator/auth.h"

#include <unistd.h>

#include "common/fs.h"
#include "gtest/gtest.h"

namespace llmt::coord {
namespace {

TEST(AuthTest, TokenFileAndBearerCheck) {
  std::string path = ::testing::TempDir() + "/tokens_" + std::to_string(getpid());
  ASSERT_TRUE(fs::WriteFileAtomic(path, "# users\nalpha-123\n\n  beta-456  \n").ok());
  auto t = TokenSet::LoadFile(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->enabled());
  EXPECT_EQ(t->size(), 2u);
  EXPECT_TRUE(t->Check("Bearer alpha-123"));
  EXPECT_TRUE(t->Check("Bearer beta-456"));
  EXPECT_FALSE(t->Check("Bearer alpha-12"));
  EXPECT_FALSE(t->Check("Bearer alpha-1234"));
  EXPECT_FALSE(t->Check("alpha-123"));  // scheme required
  EXPECT_FALSE(t->Check(""));
  EXPECT_FALSE(t->Check("Bearer "));
  EXPECT_TRUE(TokenSet::Disabled().Check(""));  // no auth configured

  ASSERT_TRUE(fs::WriteFileAtomic(path, "# nothing\n").ok());
  EXPECT_FALSE(TokenSet::LoadFile(path).ok());
  ASSERT_TRUE(fs::WriteFileAtomic(path, "two tokens\n").ok());
  EXPECT_FALSE(TokenSet::LoadFile(path).ok());
  auto missing = TokenSet::LoadFile(path + ".missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(".missing"), std::string::npos);
}

}  // namespace
}  // namespace llmt::coord
