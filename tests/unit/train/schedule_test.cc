#include "worker/train/schedule.h"

#include <cmath>

#include "gtest/gtest.h"
#include "worker/train/metrics_log.h"
#include "common/fs.h"

namespace llmt::train {
namespace {

Schedule Make(Schedule::Kind k) {
  Schedule s;
  s.kind = k;
  s.lr = 1.0;
  s.warmup_steps = 10;
  s.max_steps = 110;
  s.min_lr_ratio = 0.1;
  s.decay_fraction = 0.2;
  return s;
}

TEST(Schedule, WarmupIsLinearForEveryKind) {
  for (auto k : {Schedule::Kind::kCosine, Schedule::Kind::kLinear, Schedule::Kind::kConstant,
                 Schedule::Kind::kWsd}) {
    Schedule s = Make(k);
    EXPECT_DOUBLE_EQ(s.LrAt(0), 0.1);
    EXPECT_DOUBLE_EQ(s.LrAt(4), 0.5);
    EXPECT_DOUBLE_EQ(s.LrAt(9), 1.0);
    EXPECT_DOUBLE_EQ(s.LrAt(10), 1.0);
  }
}

TEST(Schedule, CosineHalfwayAndEnd) {
  Schedule s = Make(Schedule::Kind::kCosine);
  EXPECT_NEAR(s.LrAt(60), 0.1 + 0.9 * 0.5, 1e-12);  // progress 0.5 -> midpoint
  EXPECT_NEAR(s.LrAt(110), 0.1, 1e-12);
  EXPECT_NEAR(s.LrAt(1000), 0.1, 1e-12);  // clamps past the end
  EXPECT_GT(s.LrAt(30), s.LrAt(31));
}

TEST(Schedule, LinearDecay) {
  Schedule s = Make(Schedule::Kind::kLinear);
  EXPECT_NEAR(s.LrAt(35), 0.1 + 0.9 * 0.75, 1e-12);
  EXPECT_NEAR(s.LrAt(110), 0.1, 1e-12);
}

TEST(Schedule, ConstantStaysFlat) {
  Schedule s = Make(Schedule::Kind::kConstant);
  EXPECT_DOUBLE_EQ(s.LrAt(50), 1.0);
  EXPECT_DOUBLE_EQ(s.LrAt(109), 1.0);
}

TEST(Schedule, WsdIsStableThenDecaysOverLastFraction) {
  Schedule s = Make(Schedule::Kind::kWsd);  // decay over last 22 steps (0.2*110)
  EXPECT_DOUBLE_EQ(s.LrAt(87), 1.0);
  EXPECT_DOUBLE_EQ(s.LrAt(88), 1.0);  // decay starts at 88: p = 0
  EXPECT_NEAR(s.LrAt(99), 0.1 + 0.9 * (1 - 11.0 / 22.0), 1e-12);
  EXPECT_NEAR(s.LrAt(110), 0.1, 1e-12);
}

TEST(Schedule, ParseKindRejectsUnknown) {
  EXPECT_TRUE(Schedule::ParseKind("wsd").ok());
  auto bad = Schedule::ParseKind("exponential");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("schedule.kind"), std::string::npos);
}

TEST(MetricsLog, ResumeDropsLinesPastTheCheckpoint) {
  std::string dir = ::testing::TempDir() + "/metrics-log-test";
  ASSERT_TRUE(fs::MakeDirs(dir).ok());
  std::string path = dir + "/metrics.jsonl";
  {
    auto log = MetricsLog::Open(path, 0);
    ASSERT_TRUE(log.ok());
    for (int i = 1; i <= 5; ++i) {
      StepMetrics m;
      m.step = i;
      m.loss = 1.0 / i;
      m.has_val = i == 5;
      m.val_loss = std::nan("");
      ASSERT_TRUE((*log)->Append(m).ok());
    }
  }
  auto text = fs::ReadFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find("\"val_loss\":null"), std::string::npos);  // NaN stays valid JSON
  {
    auto log = MetricsLog::Open(path, 3);
    ASSERT_TRUE(log.ok());
    StepMetrics m;
    m.step = 4;
    ASSERT_TRUE((*log)->Append(m).ok());
  }
  text = fs::ReadFile(path);
  ASSERT_TRUE(text.ok());
  int lines = 0;
  for (char c : *text) lines += c == '\n';
  EXPECT_EQ(lines, 4);
  EXPECT_EQ(text->find("{\"step\":5"), std::string::npos);
  EXPECT_EQ(text->rfind("{\"step\":4"), text->find("{\"step\":4"));
  fs::RemoveAll(dir).IgnoreError();
}

}  // namespace
}  // namespace llmt::train
