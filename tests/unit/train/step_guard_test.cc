#include "worker/train/step_guard.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace llmt::train {
namespace {

TEST(StepGuard, NonFiniteValuesAreAlwaysBad) {
  StepGuard g(0, 0, 0, 0);  // spike detection off
  EXPECT_EQ(g.Check(0, std::nan(""), 1.0), "loss is not finite");
  EXPECT_EQ(g.Check(1, 2.0, std::numeric_limits<double>::infinity()), "gradient norm is not finite");
  EXPECT_EQ(g.Check(2, 2.0, 1.0), "");
  EXPECT_EQ(g.Check(3, 1e9, 1e9), "");  // no spike check when off
}

TEST(StepGuard, LossAndGradientSpikesAreBadAfterWarmup) {
  StepGuard g(2.0, 3, 0, 0);
  EXPECT_EQ(g.Check(0, 4.0, 1.0), "");
  EXPECT_EQ(g.Check(1, 100.0, 1.0), "");  // warmup: not armed
  StepGuard h(2.0, 0, 4.0, 1.0);
  std::string r = h.Check(5, 8.5, 1.0);
  EXPECT_NE(r.find("loss 8.5000 is over 2.0x its running mean 4.0000"), std::string::npos) << r;
  StepGuard k(2.0, 0, 4.0, 1.0);
  r = k.Check(5, 4.0, 2.5);
  EXPECT_NE(r.find("gradient norm 2.5 is over 2.0x"), std::string::npos) << r;
  StepGuard ok(2.0, 0, 4.0, 1.0);
  EXPECT_EQ(ok.Check(5, 7.9, 1.9), "");
}

TEST(StepGuard, RunningMeansFollowFiniteValuesSoADriftDoesNotStall) {
  StepGuard g(1.5, 0, 1.0, 1.0);
  // A steady rise of 10% per step: the first steps are flagged, but the
  // running mean catches up and later steps pass again.
  int bad = 0, good_after_bad = 0;
  double x = 1.0;
  for (int s = 0; s < 200; ++s) {
    x = std::min(x * 1.1, 8.0);
    bool is_bad = !g.Check(s, x, 1.0).empty();
    bad += is_bad;
    if (!is_bad && bad > 0) ++good_after_bad;
  }
  EXPECT_GT(bad, 0);
  EXPECT_GT(good_after_bad, 100);
  EXPECT_NEAR(g.loss_ema(), 8.0, 1e-3);
  // NaN never enters the means.
  double before = g.loss_ema();
  g.Check(200, std::nan(""), 1.0);
  EXPECT_EQ(g.loss_ema(), before);
}

}  // namespace
}  // namespace llmt::train
