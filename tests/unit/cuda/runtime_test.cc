// CUDA runtime helpers. The message/report tests are pure host logic and run
// everywhere; the allocation and device tests skip without a GPU.
#include "kernels/cuda/runtime.cuh"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/optimizer.cuh"
#include "tests/unit/cuda/cuda_test_util.h"

namespace llmt::kernels::cuda {
namespace {

using ::testing::HasSubstr;

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

TEST(CudaRuntimeTest, AllocateCopyRoundTrip) {
  LLMT_REQUIRE_GPU();
  ASSERT_TRUE(SetDevice(0).ok());
  auto info = GetDeviceInfo(0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->sm_count, 0);
  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  auto buf = DeviceBuffer::Allocate("roundtrip", host.size() * sizeof(float));
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_TRUE(buf->CopyFromHost(host.data(), host.size() * sizeof(float)).ok());
  std::vector<float> back(host.size(), -1.f);
  ASSERT_TRUE(buf->CopyToHost(back.data(), back.size() * sizeof(float)).ok());
  EXPECT_EQ(back, host);
  ASSERT_TRUE(buf->ZeroAsync(nullptr).ok());
  ASSERT_TRUE(buf->CopyToHost(back.data(), back.size() * sizeof(float)).ok());
  for (float v : back) ASSERT_EQ(v, 0.f);
  // Out-of-range copies are rejected with the buffer's name.
  const absl::Status s = buf->CopyToHost(back.data(), 8, buf->bytes() - 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'roundtrip'"));
  // Moving transfers ownership.
  DeviceBuffer moved = std::move(*buf);
  EXPECT_EQ(buf->data(), nullptr);
  EXPECT_NE(moved.data(), nullptr);
}

TEST(CudaRuntimeTest, OutOfMemoryIsAStatusNamingTheBuffer) {
  LLMT_REQUIRE_GPU();
  ASSERT_TRUE(SetDevice(0).ok());
  auto mem = GetMemInfo();
  ASSERT_TRUE(mem.ok()) << mem.status();
  // Far more than the device has.
  const int64_t huge = mem->total_bytes * 4;
  auto buf = DeviceBuffer::Allocate("too_big_activations", huge);
  ASSERT_FALSE(buf.ok());
  EXPECT_EQ(buf.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(buf.status().message()), HasSubstr("'too_big_activations'"));
  EXPECT_THAT(std::string(buf.status().message()), HasSubstr(std::to_string(huge) + " bytes"));
  // The failure did not poison later work.
  auto ok = DeviceBuffer::Allocate("small", 256);
  EXPECT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
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
