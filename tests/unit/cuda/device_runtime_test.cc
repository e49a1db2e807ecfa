// CUDA runtime on a device: allocation, copies, and the out-of-memory status
// (skipped without a GPU).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "kernels/cuda/runtime.cuh"
#include "tests/unit/cuda/cuda_test_util.h"

namespace llmt::kernels::cuda {
namespace {

using ::testing::HasSubstr;

TEST(CudaDeviceRuntimeTest, AllocateCopyRoundTrip) {
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

TEST(CudaDeviceRuntimeTest, OutOfMemoryIsAStatusNamingTheBuffer) {
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

// Streams with a priority get the nearest one the device has: the highest
// for kHighestPriority (what the CUDA model's main stream asks for beside
// its weight-gradient stream), the lowest for anything below the range.
TEST(CudaDeviceRuntimeTest, StreamPrioritiesAreClampedToTheDeviceRange) {
  LLMT_REQUIRE_GPU();
  ASSERT_TRUE(SetDevice(0).ok());
  int least = 0, greatest = 0;
  ASSERT_EQ(cudaDeviceGetStreamPriorityRange(&least, &greatest), cudaSuccess);
  for (const auto& [asked, want] : {std::pair{Stream::kHighestPriority, greatest},
                                    std::pair{1000, least}, std::pair{least, least}}) {
    auto s = Stream::CreateWithPriority(asked);
    ASSERT_TRUE(s.ok()) << s.status();
    int got = 12345;
    ASSERT_EQ(cudaStreamGetPriority(s->get(), &got), cudaSuccess);
    EXPECT_EQ(got, want) << "asked " << asked;
    EXPECT_TRUE(s->Synchronize().ok());
  }
}

}  // namespace
}  // namespace llmt::kernels::cuda
