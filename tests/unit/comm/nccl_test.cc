// NcclCollective on real GPUs (label gpu; skipped without NCCL or a GPU):
// one rank per visible GPU (threads), every call checked against exact
// expected values, plus a world-size-1 group compared with LocalCollective.
#include "gtest/gtest.h"

#ifdef LLMT_HAVE_NCCL
#include <cuda_runtime.h>

#include "comm_test_util.h"
#include "worker/comm/nccl_collective.h"

namespace llmt::comm {
namespace {

int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

float Val(int r, size_t i) { return static_cast<float>(((r + 1) * 37 + (i % 1009) * 3) % 4096); }

std::vector<float> Download(const float* d, size_t n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  return h;
}

float* Upload(const std::vector<float>& h) {
  float* d = nullptr;
  cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(float));
  cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  return d;
}

void CheckGroup(int world) {
  auto store = std::make_shared<MemoryStore>();
  testing::RunRanks(world, [&](int r) {
    NcclOptions o;
    o.device = r;
    o.timeout = std::chrono::seconds(60);
    auto c = NcclCollective::Create(store, r, world, o);
    ASSERT_TRUE(c.ok()) << c.status();
    auto& col = **c;
    for (size_t n : {size_t{1}, size_t{4099}, size_t{1 << 20}}) {
      std::vector<float> h(n);
      for (size_t i = 0; i < n; ++i) h[i] = Val(r, i);
      float* d = Upload(h);
      ASSERT_TRUE(col.AllReduceSum(d, n).ok());
      std::vector<float> got = Download(d, n);
      for (size_t i = 0; i < n; ++i) {
        float want = 0;
        for (int q = 0; q < world; ++q) want += Val(q, i);
        ASSERT_EQ(got[i], want) << "n " << n << " i " << i;
      }
      cudaFree(d);
    }
    double x = 1.0 + r;
    ASSERT_TRUE(col.AllReduceScalar(&x, ReduceOp::kSum).ok());
    EXPECT_EQ(x, world * (world + 1) / 2.0);

    for (size_t align : {size_t{1}, size_t{16}}) {  // uneven and (for 4096) even
      for (size_t total : {size_t{13}, size_t{4096}}) {
        ShardLayout layout = ShardLayout::Even(total, world, align);
        std::vector<float> h(total);
        for (size_t i = 0; i < total; ++i) h[i] = Val(r, i);
        float* in = Upload(h);
        ASSERT_TRUE(col.ReduceScatter(in, in + layout.offset(r), layout, ReduceOp::kSum).ok());
        std::vector<float> shard = Download(in + layout.offset(r), layout.len(r));
        for (size_t j = 0; j < shard.size(); ++j) {
          float want = 0;
          for (int q = 0; q < world; ++q) want += Val(q, layout.offset(r) + j);
          ASSERT_EQ(shard[j], want);
        }
        ASSERT_TRUE(col.AllGather(in, layout).ok());
        std::vector<float> all = Download(in, total);
        for (size_t i = 0; i < total; ++i) {
          float want = 0;
          for (int q = 0; q < world; ++q) want += Val(q, i);
          ASSERT_EQ(all[i], want);
        }
        cudaFree(in);
      }
    }
    std::vector<float> b(100, r == 0 ? 3.5f : 0.f);
    float* db = Upload(b);
    ASSERT_TRUE(col.Broadcast(db, 100, 0).ok());
    EXPECT_EQ(Download(db, 100), std::vector<float>(100, 3.5f));
    cudaFree(db);
    ASSERT_TRUE(col.Barrier().ok());
  });
}

TEST(NcclCollectiveTest, WorldOfOneMatchesLocal) {
  if (GpuCount() < 1) GTEST_SKIP() << "no CUDA device";
  CheckGroup(1);
}

TEST(NcclCollectiveTest, AllVisibleGpus) {
  const int n = GpuCount();
  if (n < 2) GTEST_SKIP() << "needs 2+ GPUs, found " << n;
  CheckGroup(n);
}

}  // namespace
}  // namespace llmt::comm

#else
TEST(NcclCollectiveTest, NotBuilt) { GTEST_SKIP() << "built without CUDA/NCCL"; }
#endif
