#ifdef LLMT_CUDA_EMULATION
#include <algorithm>
#include <numeric>
#else
#include <cub/device/device_radix_sort.cuh>
#endif

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/embedding.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::CeilDiv;
using internal::FromF;
using internal::GridFor;
using internal::ToF;

constexpr int kThreads = 256;

template <typename T>
__global__ void EmbeddingForwardKernel(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                                       int64_t N, int T_, int C) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N * C;
       i += stride) {
    const int64_t r = i / C;
    const int c = static_cast<int>(i - r * C);
    float v = ToF(wte[static_cast<int64_t>(tokens[r]) * C + c]);
    if (wpe != nullptr) v += ToF(wpe[(r % T_) * C + c]);
    out[i] = FromF<T>(v);
  }
}

__global__ void IotaKernel(int32_t* x, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = static_cast<int32_t>(i);
  }
}

// Block (x, y) handles sorted position i = x (grid-stride) and channels
// [y * blockDim, (y + 1) * blockDim). Only the first position of each run of
// equal tokens does work: it sums the run's rows (ascending, thanks to the
// stable sort) and adds the sum to the token's gradient row, so each dwte
// element is written by exactly one thread. Splitting the channels over
// blockIdx.y keeps a frequent token's long run from serialising all C
// channels in one block.
constexpr int kTokThreads = 128;
template <typename T, typename G>
__global__ void EmbeddingTokenGradKernel(G* dwte, const T* dout, const int32_t* sorted_tok,
                                         const int32_t* sorted_row, int64_t N, int C) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t tok = sorted_tok[i];
    if (i > 0 && sorted_tok[i - 1] == tok) continue;  // uniform across the block
    if (c >= C) continue;
    float acc = 0.f;
#pragma unroll 4
    for (int64_t j = i; j < N && sorted_tok[j] == tok; ++j) {
      acc += ToF(dout[static_cast<int64_t>(sorted_row[j]) * C + c]);
    }
    G* dst = dwte + static_cast<int64_t>(tok) * C;
    dst[c] = FromF<G>(ToF(dst[c]) + acc);
  }
}

// Thread per (t, c): dwpe[t, c] += sum over b (in order) of dout[b, t, c].
template <typename T, typename G>
__global__ void EmbeddingPosGradKernel(G* dwpe, const T* dout, int B, int T_, int C) {
  const int64_t n = static_cast<int64_t>(T_) * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    float acc = 0.f;
    for (int b = 0; b < B; ++b) acc += ToF(dout[b * n + i]);
    dwpe[i] = FromF<G>(ToF(dwpe[i]) + acc);
  }
}

// Scratch layout: [keys_out N][vals_in N][vals_out N] int32 (each padded to
// 256 bytes), then CUB's temporary storage.
size_t Pad256(size_t b) { return (b + 255) / 256 * 256; }

// CUB's temporary storage for the sort (a size query: runs nothing, but needs
// a device to ask for its properties).
size_t CubTempBytes(int64_t N) {
#ifdef LLMT_CUDA_EMULATION
  (void)N;
  return 0;  // the emulator sorts on the host (its "device" memory is host memory)
#else
  size_t temp = 0;
  LLMT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(N)));
  return temp;
#endif
}

template <typename T>
void LaunchForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_, int C,
                   cudaStream_t stream) {
  const int64_t N = static_cast<int64_t>(B) * T_;
  if (N <= 0 || C <= 0) return;
  internal::Launch(EmbeddingForwardKernel<T>, GridFor(N * C, kThreads), kThreads, 0, stream, out,
                   tokens, wte, wpe, N, T_, C);
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingForwardKernel", stream);
}

template <typename T, typename G>
void LaunchBackward(G* dwte, G* dwpe, const T* dout, const int32_t* tokens, int B, int T_, int C,
                    void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const int64_t N = static_cast<int64_t>(B) * T_;
  if (N <= 0 || C <= 0) return;
  if (N > 0x7fffffff) Fatal("EmbeddingBackward: more than 2^31 tokens");
  CheckScratch("EmbeddingBackward", scratch, scratch_bytes, EmbeddingBackwardScratchBytes(B, T_));
  char* s = static_cast<char*>(scratch);
  const size_t plane = Pad256(static_cast<size_t>(N) * sizeof(int32_t));
  int32_t* keys_out = reinterpret_cast<int32_t*>(s);
  int32_t* vals_in = reinterpret_cast<int32_t*>(s + plane);
  int32_t* vals_out = reinterpret_cast<int32_t*>(s + 2 * plane);
  void* temp = s + 3 * plane;
  size_t temp_bytes = CubTempBytes(N);

  internal::Launch(IotaKernel, GridFor(N, kThreads), kThreads, 0, stream, vals_in, N);
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingBackward/IotaKernel", stream);
  // LSD radix sort: stable, so equal tokens keep ascending row order.
#ifdef LLMT_CUDA_EMULATION
  (void)temp;
  (void)temp_bytes;
  std::copy(vals_in, vals_in + N, vals_out);
  std::stable_sort(vals_out, vals_out + N,
                   [tokens](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
  for (int64_t i = 0; i < N; ++i) keys_out[i] = tokens[vals_out[i]];
#else
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(
      temp, temp_bytes, tokens, keys_out, vals_in, vals_out, static_cast<int>(N), 0,
      static_cast<int>(sizeof(int32_t) * 8), stream);
  if (err != cudaSuccess) {
    Fatal("EmbeddingBackward: cub::DeviceRadixSort::SortPairs failed: " + CudaErrorString(err));
  }
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingBackward/cub::DeviceRadixSort::SortPairs", stream);
#endif
  const dim3 tok_grid(GridFor(N, 1, 65535), static_cast<unsigned>(CeilDiv(C, kTokThreads)));
  internal::Launch(EmbeddingTokenGradKernel<T, G>, tok_grid, kTokThreads, 0, stream, dwte, dout,
                   keys_out, vals_out, N, C);
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingTokenGradKernel", stream);
  if (dwpe != nullptr) {
    internal::Launch(EmbeddingPosGradKernel<T, G>, GridFor(static_cast<int64_t>(T_) * C, kThreads),
                     kThreads, 0, stream, dwpe, dout, B, T_, C);
    LLMT_CUDA_CHECK_LAUNCH("EmbeddingPosGradKernel", stream);
  }
}

}  // namespace

size_t EmbeddingBackwardScratchBytes(int B, int T) {
  const int64_t N = static_cast<int64_t>(B) * T;
  if (N <= 0) return 0;
  return 3 * Pad256(static_cast<size_t>(N) * sizeof(int32_t)) + CubTempBytes(N);
}

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int T, int C, cudaStream_t stream) {
  LaunchForward(out, tokens, wte, wpe, B, T, C, stream);
}
void EmbeddingForward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                      int T, int C, cudaStream_t stream) {
  LaunchForward(out, tokens, wte, wpe, B, T, C, stream);
}
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBackward(dwte, dwpe, dout, tokens, B, T, C, scratch, scratch_bytes, stream);
}
void EmbeddingBackward(bf16* dwte, bf16* dwpe, const bf16* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBackward(dwte, dwpe, dout, tokens, B, T, C, scratch, scratch_bytes, stream);
}
void EmbeddingBackward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int B,
                       int T, int C, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBackward(dwte, dwpe, dout, tokens, B, T, C, scratch, scratch_bytes, stream);
}

}  // namespace llmt::kernels::cuda
