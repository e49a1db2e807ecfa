// The emulator's wgmma model itself (cuda_emu.h): results appear only at the
// warpgroup's wait, a B tile rewritten before the wait changes the product,
// and misuse that the GPU would punish with garbage is a hard failure here:
// a wgmma without a preceding wgmma.fence, threads of a warpgroup issuing
// different operations, a thread exiting with a wgmma never waited for.
// Emulator-only (part of cuda_kernels_emu_test); the kernels use the same
// wrappers (kernels/cuda/mma_util.cuh) as the attention kernels.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"

namespace llmt::kernels::cuda::internal {
namespace {

// A = all ones (64 x 16), B (16 x 64) K-major blocked from smem holding the
// value `b` everywhere: every D element is 16 * b.
uint32_t OnesPair() { return 0x3F803F80u; }  // two bf16 1.0

enum Mode { kNormal, kReadBeforeWait, kRewriteBeforeWait, kNoFence, kMismatch, kNoWait };

__global__ void WgmmaProbe(float* before, float* after, int mode) {
  LLMT_DYNAMIC_SMEM(smem);
  bf16* Bs = reinterpret_cast<bf16*>(smem);  // 16 x 64, blocked
  for (int e = threadIdx.x; e < 16 * 64; e += blockDim.x) Bs[e] = __float2bfloat16(2.f);
  __syncthreads();
  const uint32_t a[4] = {OnesPair(), OnesPair(), OnesPair(), OnesPair()};
  float acc[8][4];
  for (auto& c : acc) c[0] = c[1] = c[2] = c[3] = 0.f;
  if (mode != kNoFence) WgmmaFence();
  // kMismatch: thread 5 describes another (equally valid) tile start.
  const bf16* tile = (mode == kMismatch && threadIdx.x == 5) ? Bs + 64 : Bs;
  Wgmma<64, 0>(acc, a, WgmmaDesc(tile, 128, 16 * 16), true);
  WgmmaCommit();
  if (mode == kNoWait) return;
  if (mode == kReadBeforeWait) before[threadIdx.x] = acc[0][0];
  __syncthreads();
  if (mode == kRewriteBeforeWait) {
    for (int e = threadIdx.x; e < 16 * 64; e += blockDim.x) Bs[e] = __float2bfloat16(3.f);
    __syncthreads();
  }
  WgmmaWait<0>();
  after[threadIdx.x] = acc[0][0];
}

std::vector<float> RunProbe(int mode, std::vector<float>* before = nullptr) {
  std::vector<float> b(128, -1.f), a(128, -1.f);
  Launch(WgmmaProbe, dim3(1), dim3(128), 16 * 64 * sizeof(bf16), nullptr, b.data(), a.data(),
         mode);
  if (before != nullptr) *before = b;
  return a;
}

TEST(EmuWgmma, ResultAppearsAtTheWait) {
  std::vector<float> before;
  const std::vector<float> after = RunProbe(kReadBeforeWait, &before);
  for (int t = 0; t < 128; ++t) {
    EXPECT_EQ(before[t], 0.f) << "thread " << t << " saw the product before its wait";
    EXPECT_EQ(after[t], 32.f) << "thread " << t;  // 16 x 1 x 2
  }
}

TEST(EmuWgmma, BTileIsReadAtTheWait) {
  const std::vector<float> after = RunProbe(kRewriteBeforeWait);
  for (int t = 0; t < 128; ++t) EXPECT_EQ(after[t], 48.f) << "thread " << t;  // 16 x 1 x 3
}

TEST(EmuWgmmaDeathTest, WgmmaWithoutFenceFails) {
  EXPECT_DEATH(RunProbe(kNoFence), "without a wgmma.fence");
}

TEST(EmuWgmmaDeathTest, ThreadsIssuingDifferentOperationsFail) {
  EXPECT_DEATH(RunProbe(kMismatch), "issued different operations");
}

TEST(EmuWgmmaDeathTest, ExitingWithAPendingWgmmaFails) {
  EXPECT_DEATH(RunProbe(kNoWait), "never waited for");
}

}  // namespace
}  // namespace llmt::kernels::cuda::internal
