// CUDA runtime helpers: pure host logic (messages, reports, validation) that
// runs everywhere, GPU or not (label unit). The tests that allocate device
// memory are in device_runtime_test.cc (label gpu).
#include "kernels/cuda/runtime.cuh"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optimizer.cuh"

namespace llmt::kernels::cuda {
namespace {

using ::testing::HasSubstr;

// LLMT_LEGACY_KERNELS: exact names from a comma-separated list, spaces
// around names ignored, no prefix matches.
TEST(CudaRuntimeTest, LegacyKernelListParsesNames) {
  ::unsetenv("LLMT_LEGACY_KERNELS");
  EXPECT_FALSE(internal::LegacyKernelRequested("xent"));
  ::setenv("LLMT_LEGACY_KERNELS", "xent, norm_bwd", 1);
  EXPECT_TRUE(internal::LegacyKernelRequested("xent"));
  EXPECT_TRUE(internal::LegacyKernelRequested("norm_bwd"));
  EXPECT_FALSE(internal::LegacyKernelRequested("norm"));
  ::setenv("LLMT_LEGACY_KERNELS", "xentx,,", 1);
  EXPECT_FALSE(internal::LegacyKernelRequested("xent"));
  ::unsetenv("LLMT_LEGACY_KERNELS");
}

TEST(CudaRuntimeTest, FormatBytes) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(3 * 1024), "3.0 KiB");
  EXPECT_EQ(FormatBytes(12 * 1024 * 1024 + 512 * 1024), "12.5 MiB");
  EXPECT_EQ(FormatBytes(int64_t{3} << 29), "1.50 GiB");
}

TEST(CudaRuntimeTest, OutOfMemoryMessageNamesBufferAndBytes) {
  const std::string msg = OutOfMemoryMessage("activations", int64_t{5} << 30,
                                             MemInfo{int64_t{1} << 30, int64_t{80} << 30});
  EXPECT_THAT(msg, HasSubstr("'activations'"));
  EXPECT_THAT(msg, HasSubstr("5368709120 bytes (5.00 GiB)"));
  EXPECT_THAT(msg, HasSubstr("1.00 GiB free of 80.00 GiB"));
  EXPECT_THAT(msg, HasSubstr("recompute"));
  const std::string no_mem = OutOfMemoryMessage("grads", 100, std::nullopt);
  EXPECT_THAT(no_mem, HasSubstr("'grads': 100 bytes"));
  EXPECT_THAT(no_mem, ::testing::Not(HasSubstr("free of")));
}

TEST(CudaRuntimeTest, MemoryReportGroupsByCategory) {
  MemoryReport r;
  r.Add("parameters", "params", 1000);
  r.Add("activations", "layer0", 2 << 20);
  r.Add("parameters", "params_bf16", 500);
  r.Add("activations", "layer1", 2 << 20);
  EXPECT_EQ(r.CategoryTotal("parameters"), 1500);
  EXPECT_EQ(r.CategoryTotal("activations"), 4 << 20);
  EXPECT_EQ(r.CategoryTotal("workspace"), 0);
  EXPECT_EQ(r.Total(), 1500 + (4 << 20));
  const std::string s = r.Format(MemInfo{int64_t{1} << 30, int64_t{2} << 30});
  // Categories appear in first-seen order with their buffer counts.
  const size_t p = s.find("parameters"), a = s.find("activations");
  ASSERT_NE(p, std::string::npos);
  ASSERT_NE(a, std::string::npos);
  EXPECT_LT(p, a);
  EXPECT_THAT(s, HasSubstr("1.5 KiB  (2 buffers)"));
  EXPECT_THAT(s, HasSubstr("4.0 MiB  (2 buffers)"));
  // A shared category names its buffers below its line, before the next one.
  const size_t bf = s.find("    params_bf16"), l1 = s.find("    layer1");
  ASSERT_NE(bf, std::string::npos) << s;
  ASSERT_NE(l1, std::string::npos) << s;
  EXPECT_LT(p, bf);
  EXPECT_LT(bf, a);
  EXPECT_LT(a, l1);
  EXPECT_THAT(s, HasSubstr("500 B\n"));
  EXPECT_THAT(s, HasSubstr("device: 1.00 GiB free of 2.00 GiB"));
}

TEST(CudaRuntimeTest, DeviceCountNeverFails) {
  // Without a driver this must be 0 rather than an error.
  EXPECT_GE(DeviceCount(), 0);
}

TEST(CudaRuntimeTest, SetDeviceRejectsBadIndex) {
  const absl::Status s = SetDevice(DeviceCount() + 3);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("CUDA device"));
}

// Host-side validation of the multi-tensor AdamW segment table.
TEST(CudaRuntimeTest, AdamWSegmentsMustTileTheBuffer) {
  EXPECT_TRUE(ValidateAdamWSegments({{0, 10, 0.1f}, {10, 0, 0.f}, {10, 5, 0.f}}, 15).ok());
  EXPECT_TRUE(ValidateAdamWSegments({}, 0).ok());
  const absl::Status gap = ValidateAdamWSegments({{0, 10, 0.1f}, {11, 4, 0.f}}, 15);
  EXPECT_FALSE(gap.ok());
  EXPECT_THAT(std::string(gap.message()), HasSubstr("segment 1"));
  const absl::Status overlap = ValidateAdamWSegments({{0, 10, 0.1f}, {9, 6, 0.f}}, 15);
  EXPECT_FALSE(overlap.ok());
  const absl::Status short_cover = ValidateAdamWSegments({{0, 10, 0.1f}}, 15);
  EXPECT_FALSE(short_cover.ok());
  EXPECT_THAT(std::string(short_cover.message()), HasSubstr("cover [0, 10)"));
  EXPECT_FALSE(ValidateAdamWSegments({{0, -1, 0.f}}, 0).ok());
}

}  // namespace
}  // namespace llmt::kernels::cuda
