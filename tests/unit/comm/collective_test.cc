// Collectives with exact expected results: ShardLayout, LocalCollective, and
// Gloo groups of 2, 3 and 4 ranks (threads, each with its own Gloo context and
// store handle) over memory, file and TCP stores. Inputs are small integers,
// so every sum is exact in fp32 whatever the reduction order, and results are
// compared bit for bit (also across ranks).
#include "worker/comm/collective.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "comm_test_util.h"
#include "gtest/gtest.h"
#include "worker/comm/gloo_collective.h"

namespace llmt::comm {
namespace {

using std::chrono::milliseconds;
using testing::MakeGlooGroup;
using testing::RunRanks;
using testing::SecondsSince;
using testing::StoreKind;
using Clock = std::chrono::steady_clock;

// Rank r's input at index i: an integer below 2^12, so sums over a few
// ranks are exact in float.
float Val(int r, size_t i, int salt = 0) {
  return static_cast<float>(((r + 1) * 37 + static_cast<int>(i % 1009) * 3 + salt) % 4096);
}

float SumAt(int world, size_t i, int salt = 0) {
  float s = 0;
  for (int r = 0; r < world; ++r) s += Val(r, i, salt);
  return s;
}

TEST(ShardLayoutTest, EvenSplitsWithRemainderAndAlignment) {
  ShardLayout a = ShardLayout::Even(10, 4);
  EXPECT_EQ(a.lens(), (std::vector<size_t>{3, 3, 3, 1}));
  EXPECT_EQ(a.offset(0), 0u);
  EXPECT_EQ(a.offset(3), 9u);
  EXPECT_EQ(a.total(), 10u);
  EXPECT_FALSE(a.equal_lengths());

  ShardLayout b = ShardLayout::Even(10, 4, 4);
  EXPECT_EQ(b.lens(), (std::vector<size_t>{4, 4, 2, 0}));
  EXPECT_EQ(b.offset(3), 10u);

  ShardLayout c = ShardLayout::Even(8, 4);
  EXPECT_TRUE(c.equal_lengths());
  EXPECT_EQ(c.len(2), 2u);

  ShardLayout d = ShardLayout::Even(2, 4);  // fewer elements than ranks
  EXPECT_EQ(d.lens(), (std::vector<size_t>{1, 1, 0, 0}));

  ShardLayout e = ShardLayout::FromLengths({5, 0, 7});
  EXPECT_EQ(e.offset(2), 5u);
  EXPECT_EQ(e.total(), 12u);
  EXPECT_TRUE(e.CheckWorld(3).ok());
  absl::Status bad = e.CheckWorld(4);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("3 shards"), std::string::npos) << bad;
}

TEST(LocalCollectiveTest, IdentitiesAndCopies) {
  LocalCollective c;
  EXPECT_EQ(c.world_size(), 1);
  EXPECT_EQ(c.rank(), 0);
  std::vector<float> v = {1.5f, -2.f, 3.f};
  ASSERT_TRUE(c.AllReduceAvg(v.data(), v.size()).ok());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.f, 3.f}));
  double x = 2.5;
  ASSERT_TRUE(c.AllReduceScalar(&x, ReduceOp::kSum).ok());
  EXPECT_EQ(x, 2.5);

  ShardLayout l = ShardLayout::Even(3, 1);
  std::vector<float> out(3, 0.f);
  ASSERT_TRUE(c.ReduceScatter(v.data(), out.data(), l, ReduceOp::kSum).ok());
  EXPECT_EQ(out, v);
  ASSERT_TRUE(c.ReduceScatter(v.data(), v.data(), l, ReduceOp::kAvg).ok());  // in place
  ASSERT_TRUE(c.AllGather(v.data(), l).ok());
  ASSERT_TRUE(c.Broadcast(v.data(), v.size(), 0).ok());
  ASSERT_TRUE(c.Barrier().ok());

  // Argument errors name the call and the problem.
  absl::Status s = c.Broadcast(v.data(), v.size(), 1);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("root rank 1"), std::string::npos) << s;
  s = c.ReduceScatter(v.data(), out.data(), l, ReduceOp::kMax);
  EXPECT_NE(s.message().find("max"), std::string::npos) << s;
  s = c.AllGather(v.data(), ShardLayout::Even(3, 2));
  EXPECT_NE(s.message().find("world size is 1"), std::string::npos) << s;
}

struct GroupParam {
  int world;
  StoreKind store;
};

std::string ParamName(const ::testing::TestParamInfo<GroupParam>& p) {
  return absl::StrCat("w", p.param.world, "_", testing::StoreKindName(p.param.store));
}

class GlooGroupTest : public ::testing::TestWithParam<GroupParam> {
 protected:
  void SetUp() override { group_ = MakeGlooGroup(GetParam().world, GetParam().store); }
  void TearDown() override {
    // Everyone reaches the end before anyone closes its connections.
    RunRanks(world(), [&](int r) { EXPECT_TRUE(group_[r]->Barrier().ok()); });
  }
  int world() const { return GetParam().world; }
  std::vector<std::unique_ptr<GlooCollective>> group_;
};

TEST_P(GlooGroupTest, AllReduceSumAvgMaxMinExact) {
  const int W = world();
  for (size_t n : {size_t{1}, size_t{7}, size_t{1000}, size_t{4099}, size_t{262147}}) {
    std::vector<std::vector<float>> data(W);
    RunRanks(W, [&](int r) {
      auto& v = data[r];
      v.resize(n);
      for (size_t i = 0; i < n; ++i) v[i] = Val(r, i);
      ASSERT_TRUE(group_[r]->AllReduceSum(v.data(), n).ok());
    });
    for (int r = 0; r < W; ++r) {
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(data[r][i], SumAt(W, i)) << "rank " << r << " i " << i << " n " << n;
      }
    }
  }
  const size_t n = 1001;
  std::vector<std::vector<float>> avg(W), mx(W), mn(W);
  RunRanks(W, [&](int r) {
    avg[r].resize(n);
    mx[r].resize(n);
    mn[r].resize(n);
    for (size_t i = 0; i < n; ++i) avg[r][i] = mx[r][i] = mn[r][i] = Val(r, i, 5);
    ASSERT_TRUE(group_[r]->AllReduceAvg(avg[r].data(), n).ok());
    ASSERT_TRUE(group_[r]->AllReduce(mx[r].data(), n, ReduceOp::kMax).ok());
    ASSERT_TRUE(group_[r]->AllReduce(mn[r].data(), n, ReduceOp::kMin).ok());
  });
  for (int r = 0; r < W; ++r) {
    for (size_t i = 0; i < n; ++i) {
      float want_max = -1, want_min = 1e9;
      for (int q = 0; q < W; ++q) {
        want_max = std::max(want_max, Val(q, i, 5));
        want_min = std::min(want_min, Val(q, i, 5));
      }
      ASSERT_EQ(avg[r][i], SumAt(W, i, 5) / static_cast<float>(W)) << r << " " << i;
      ASSERT_EQ(mx[r][i], want_max);
      ASSERT_EQ(mn[r][i], want_min);
    }
  }
}

TEST_P(GlooGroupTest, AllReduceScalarInDouble) {
  const int W = world();
  std::vector<double> sum(W), mx(W), avg(W);
  RunRanks(W, [&](int r) {
    // 2^40 + r: needs double precision to survive the sum.
    sum[r] = std::ldexp(1.0, 40) + r;
    mx[r] = r == 1 ? std::numeric_limits<double>::infinity() : r;  // "rank 1 saw a NaN/Inf"
    avg[r] = 2.0 * r;
    ASSERT_TRUE(group_[r]->AllReduceScalar(&sum[r], ReduceOp::kSum).ok());
    ASSERT_TRUE(group_[r]->AllReduceScalar(&mx[r], ReduceOp::kMax).ok());
    ASSERT_TRUE(group_[r]->AllReduceScalar(&avg[r], ReduceOp::kAvg).ok());
  });
  const double want = W * std::ldexp(1.0, 40) + W * (W - 1) / 2.0;
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(sum[r], want);
    EXPECT_TRUE(std::isinf(mx[r]));
    EXPECT_EQ(avg[r], W - 1.0);
  }
}

// Every layout twice (sum out of place, then avg in place), so a cached plan
// is reused with new data.
void CheckReduceScatter(std::vector<std::unique_ptr<GlooCollective>>& group) {
  const int W = static_cast<int>(group.size());
  for (size_t total : {size_t{1}, size_t{5}, size_t{13}, size_t{1001}, size_t{65537}}) {
    for (size_t align : {size_t{1}, size_t{16}}) {
      const ShardLayout layout = ShardLayout::Even(total, W, align);
      for (int pass = 0; pass < 2; ++pass) {  // second pass reuses the cached plan
        const bool in_place = pass == 1;
        const ReduceOp op = pass == 0 ? ReduceOp::kSum : ReduceOp::kAvg;
        std::vector<std::vector<float>> in(W), out(W);
        RunRanks(W, [&](int r) {
          in[r].resize(total);
          for (size_t i = 0; i < total; ++i) in[r][i] = Val(r, i, pass);
          float* dst = in[r].data() + layout.offset(r);
          if (!in_place) {
            out[r].assign(layout.len(r), -1.f);
            dst = out[r].data();
          }
          absl::Status s = group[r]->ReduceScatter(in[r].data(), dst, layout, op);
          ASSERT_TRUE(s.ok()) << s;
          if (in_place) out[r].assign(dst, dst + layout.len(r));
        });
        for (int r = 0; r < W; ++r) {
          ASSERT_EQ(out[r].size(), layout.len(r));
          for (size_t j = 0; j < layout.len(r); ++j) {
            const size_t i = layout.offset(r) + j;
            float want = SumAt(W, i, pass);
            if (op == ReduceOp::kAvg) want /= static_cast<float>(W);
            ASSERT_EQ(out[r][j], want) << "total " << total << " align " << align << " rank " << r
                                       << " j " << j << " pass " << pass;
          }
          if (!in_place) {  // the input is left alone
            for (size_t i = 0; i < total; ++i) ASSERT_EQ(in[r][i], Val(r, i, pass));
          }
        }
      }
    }
  }
}

TEST_P(GlooGroupTest, ReduceScatterUnevenAndInPlace) { CheckReduceScatter(group_); }

// No plan memory: every layout takes the all-reduce + slice path. A small
// budget mixes both paths in one group.
TEST(GlooReduceScatterTest, FallbackAndMixedPathsAreExact) {
  for (size_t budget : {size_t{0}, size_t{64} << 10}) {
    auto group = MakeGlooGroup(3, StoreKind::kMemory, std::chrono::seconds(20), budget);
    CheckReduceScatter(group);
    RunRanks(3, [&](int r) { EXPECT_TRUE(group[r]->Barrier().ok()); });
  }
}

TEST_P(GlooGroupTest, AllGatherInPlaceUneven) {
  const int W = world();
  for (size_t total : {size_t{1}, size_t{6}, size_t{1001}, size_t{70001}}) {
    const ShardLayout layout = ShardLayout::Even(total, W, total > 100 ? 8 : 1);
    std::vector<std::vector<float>> buf(W);
    RunRanks(W, [&](int r) {
      buf[r].assign(total, std::nanf(""));
      for (size_t j = 0; j < layout.len(r); ++j) {
        buf[r][layout.offset(r) + j] = Val(r, layout.offset(r) + j);
      }
      ASSERT_TRUE(group_[r]->AllGather(buf[r].data(), layout).ok());
    });
    for (int r = 0; r < W; ++r) {
      for (int owner = 0; owner < W; ++owner) {
        for (size_t j = 0; j < layout.len(owner); ++j) {
          const size_t i = layout.offset(owner) + j;
          ASSERT_EQ(buf[r][i], Val(owner, i)) << "rank " << r << " i " << i;
        }
      }
    }
  }
}

// ZeRO-1 step shape: reduce-scatter gradients, update the own shard,
// all-gather parameters; equals an all-reduce followed by the same update.
TEST_P(GlooGroupTest, ReduceScatterThenAllGatherEqualsAllReduce) {
  const int W = world();
  const size_t total = 12345;
  const ShardLayout layout = ShardLayout::Even(total, W, 4);
  std::vector<std::vector<float>> zero(W), plain(W);
  RunRanks(W, [&](int r) {
    std::vector<float> g(total);
    for (size_t i = 0; i < total; ++i) g[i] = Val(r, i, 9);
    plain[r] = g;
    ASSERT_TRUE(group_[r]->AllReduceAvg(plain[r].data(), total).ok());
    zero[r].assign(total, 0.f);
    float* shard = g.data() + layout.offset(r);
    ASSERT_TRUE(group_[r]->ReduceScatter(g.data(), shard, layout, ReduceOp::kAvg).ok());
    std::memcpy(zero[r].data() + layout.offset(r), shard, layout.len(r) * sizeof(float));
    ASSERT_TRUE(group_[r]->AllGather(zero[r].data(), layout).ok());
  });
  for (int r = 0; r < W; ++r) {
    ASSERT_EQ(0, std::memcmp(zero[r].data(), plain[r].data(), total * sizeof(float)))
        << "rank " << r;
    ASSERT_EQ(0, std::memcmp(plain[r].data(), plain[0].data(), total * sizeof(float)));
  }
}

TEST_P(GlooGroupTest, BroadcastFromEveryRoot) {
  const int W = world();
  for (int root = 0; root < W; ++root) {
    std::vector<std::string> msg(W);
    std::vector<std::vector<float>> f(W);
    RunRanks(W, [&](int r) {
      msg[r] = r == root ? std::string("config from root ") + std::to_string(root) + '\0' + "!"
                         : std::string(19 + std::to_string(root).size(), 'x');
      f[r].assign(333, r == root ? 1.25f * (root + 1) : -7.f);
      ASSERT_TRUE(group_[r]->Broadcast(msg[r].data(), msg[r].size(), root).ok());
      ASSERT_TRUE(group_[r]->Broadcast(f[r].data(), f[r].size(), root).ok());
    });
    for (int r = 0; r < W; ++r) {
      EXPECT_EQ(msg[r], msg[root]);
      EXPECT_EQ(f[r], std::vector<float>(333, 1.25f * (root + 1)));
    }
  }
}

TEST_P(GlooGroupTest, BarrierWaitsForTheLastRank) {
  const int W = world();
  std::vector<double> waited(W);
  RunRanks(W, [&](int r) {
    if (r == W - 1) std::this_thread::sleep_for(milliseconds(300));
    auto t0 = Clock::now();
    ASSERT_TRUE(group_[r]->Barrier().ok());
    waited[r] = SecondsSince(t0);
  });
  for (int r = 0; r < W - 1; ++r) EXPECT_GE(waited[r], 0.2) << "rank " << r;
}

TEST_P(GlooGroupTest, ArgumentErrorsDoNotBreakTheGroup) {
  const int W = world();
  RunRanks(W, [&](int r) {
    std::vector<float> v(10, 1.f);
    absl::Status s = group_[r]->Broadcast(v.data(), v.size(), W);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    // `out` overlapping `in` but not at this rank's shard.
    const ShardLayout layout = ShardLayout::Even(10, W);
    float* wrong = v.data() + (layout.offset(r) == 0 ? 1 : 0);
    s = group_[r]->ReduceScatter(v.data(), wrong, layout, ReduceOp::kSum);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    s = group_[r]->AllGather(v.data(), ShardLayout::Even(10, W + 1));
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    // Every rank hit the same argument errors, so the group is still usable.
    EXPECT_TRUE(group_[r]->AllReduceSum(v.data(), v.size()).ok());
    EXPECT_EQ(v[0], static_cast<float>(W));
  });
}

INSTANTIATE_TEST_SUITE_P(Groups, GlooGroupTest,
                         ::testing::Values(GroupParam{2, StoreKind::kTcp},
                                           GroupParam{2, StoreKind::kFile},
                                           GroupParam{3, StoreKind::kMemory},
                                           GroupParam{4, StoreKind::kTcp},
                                           GroupParam{4, StoreKind::kFile}),
                         ParamName);

TEST(GlooRendezvousTest, MissingRankIsNamedWithinTheTimeout) {
  auto stores = testing::MakeStores(StoreKind::kTcp, 3);
  std::vector<absl::Status> st(2);
  std::vector<double> dt(2);
  RunRanks(2, [&](int r) {  // rank 2 never starts
    GlooOptions o;
    o.rendezvous_timeout = milliseconds(500);
    auto t0 = Clock::now();
    st[r] = GlooCollective::Create(stores[r], r, 3, o).status();
    dt[r] = SecondsSince(t0);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(st[r])) << st[r];
    EXPECT_NE(st[r].message().find("rank(s) 2 of 3"), std::string::npos) << st[r];
    EXPECT_LT(dt[r], 3.0);
  }
}

TEST(GlooRendezvousTest, BadArguments) {
  auto store = std::make_shared<MemoryStore>();
  EXPECT_TRUE(absl::IsInvalidArgument(GlooCollective::Create(store, 2, 2, {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(GlooCollective::Create(store, 0, 0, {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(GlooCollective::Create(nullptr, 0, 1, {}).status()));
  GlooOptions o;
  o.hostname = "no-such-host.invalid";
  auto c = GlooCollective::Create(store, 0, 1, o);
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("no-such-host.invalid"), std::string::npos) << c.status();
}

TEST(GlooRendezvousTest, WorldOfOneWorks) {
  auto store = std::make_shared<MemoryStore>();
  auto c = GlooCollective::Create(store, 0, 1, {});
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<float> v = {1, 2, 3};
  ASSERT_TRUE((*c)->AllReduceAvg(v.data(), 3).ok());
  EXPECT_EQ(v, (std::vector<float>{1, 2, 3}));
  std::vector<float> out(3);
  ASSERT_TRUE(
      (*c)->ReduceScatter(v.data(), out.data(), ShardLayout::Even(3, 1), ReduceOp::kSum).ok());
  EXPECT_EQ(out, v);
  EXPECT_TRUE((*c)->Barrier().ok());
}

}  // namespace
}  // namespace llmt::comm
