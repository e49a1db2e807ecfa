#include <algorithm>

#ifdef LLMT_CUDA_EMULATION
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
using internal::LoadVec;
using internal::StoreVec;
using internal::ToF;
using internal::Vec;

constexpr int kThreads = 256;

// 16-byte vectors of channels (8 bf16 / 4 fp32) when C and every pointer
// allow; else one channel per thread. Row r of out is wte[tokens[r]] (+
// wpe[r % T]), summed in fp32 and rounded once, as the scalar form does.
template <typename T, int V>
__global__ void EmbeddingForwardKernel(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                                       int64_t N, int T_, int C) {
  const int CV = C / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N * CV;
       i += stride) {
    const int64_t r = i / CV;
    const int c = static_cast<int>(i - r * CV) * V;
    const Vec<T, V> w = LoadVec<V>(wte + static_cast<int64_t>(tokens[r]) * C + c);
    Vec<T, V> o;
    if (wpe != nullptr) {
      const Vec<T, V> p = LoadVec<V>(wpe + (r % T_) * C + c);
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = FromF<T>(ToF(w.v[k]) + ToF(p.v[k]));
    } else {
      o = w;
    }
    StoreVec<V>(out + r * C + c, o);
  }
}

__global__ void IotaKernel(int32_t* x, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = static_cast<int32_t>(i);
  }
}

// ---- token gradient: sorted positions in fixed chunks ----------------------
// After the stable sort, position p holds (token sorted_tok[p], row
// sorted_row[p]), equal tokens contiguous with ascending rows. Positions are
// cut into chunks of kTokChunk; block (x, y) sums the runs of chunk x, one
// after the other, for its slice of channels (V per thread). A run inside
// one chunk is summed in row order and added to dwte by that block alone
// (the same sum the kernel made before chunks). A run crossing chunk
// boundaries (a frequent token: in text, "the" or "," take a few percent
// of all positions) is summed per chunk into fp32 slots -- the piece that
// starts the run into slot 1 of its chunk, every later piece into slot 0 of
// its chunk -- and EmbeddingTokenCombineKernel adds the pieces in chunk
// order. So no thread sums more than kTokChunk rows (the work of a long run
// is spread over its chunks' blocks), every dwte element is written by one
// thread, and the order depends only on the tokens: deterministic.
constexpr int kTokChunk = 32;
constexpr int kTokThreads = 128;

template <typename T, typename G, int V>
__global__ void __launch_bounds__(kTokThreads)
    EmbeddingTokenGradKernel(G* dwte, float* slots, const T* dout, const int32_t* sorted_tok,
                             const int32_t* sorted_row, int64_t N, int C) {
  __shared__ int32_t s_tok[kTokChunk + 2];  // [0]: position p0 - 1, [kTokChunk + 1]: p1
  __shared__ int32_t s_row[kTokChunk];
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTokChunk;
  const int n = static_cast<int>(min(static_cast<int64_t>(kTokChunk), N - p0));
  for (int i = threadIdx.x; i < n + 2; i += blockDim.x) {
    const int64_t p = p0 - 1 + i;  // i = 0: the previous chunk's last; n + 1: the next's first
    s_tok[i] = p >= 0 && p < N ? sorted_tok[p] : -1;
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) s_row[i] = sorted_row[p0 + i];
  __syncthreads();
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  const bool active = c < C;  // V > 1: C % V == 0, so the whole vector is inside
  for (int i = 0; i < n;) {  // uniform across the block: smem only
    const int32_t tok = s_tok[i + 1];
    int j = i + 1;
    while (j < n && s_tok[j + 1] == tok) ++j;
    if (active) {
      float acc[V];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = 0.f;
#pragma unroll 8
      for (int q = i; q < j; ++q) {
        const Vec<T, V> v = LoadVec<V>(dout + static_cast<int64_t>(s_row[q]) * C + c);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += ToF(v.v[k]);
      }
      const bool from_before = i == 0 && s_tok[0] == tok;
      const bool goes_on = j == n && s_tok[n + 1] == tok;
      if (!from_before && !goes_on) {
        G* dst = dwte + static_cast<int64_t>(tok) * C + c;
#pragma unroll
        for (int k = 0; k < V; ++k) dst[k] = FromF<G>(ToF(dst[k]) + acc[k]);
      } else {
        const int slot = from_before ? 0 : 1;
        float* dst = slots + (static_cast<int64_t>(blockIdx.x) * 2 + slot) * C + c;
#pragma unroll
        for (int k = 0; k < V; ++k) dst[k] = acc[k];
      }
    }
    i = j;
  }
}

// For every run that starts in chunk x and goes on past it: its pieces'
// sums (slot 1 of chunk x, then slot 0 of each following chunk the run
// reaches, in order) added to dwte once.
template <typename G, int V>
__global__ void __launch_bounds__(kTokThreads)
    EmbeddingTokenCombineKernel(G* dwte, const float* slots, const int32_t* sorted_tok, int64_t N,
                                int C) {
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTokChunk;
  const int64_t p1 = p0 + kTokChunk;  // first position of the next chunk
  if (p1 >= N) return;
  const int32_t tok = sorted_tok[p1 - 1];
  if (sorted_tok[p1] != tok) return;                // the chunk's last run ends in it
  if (p0 > 0 && sorted_tok[p0 - 1] == tok) return;  // ... or started before it
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  if (c >= C) return;
  const float* head = slots + (static_cast<int64_t>(blockIdx.x) * 2 + 1) * C + c;  // slot 1
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = head[k];
  for (int64_t x = blockIdx.x + 1;; ++x) {
    const float* piece = slots + x * 2 * C + c;  // slot 0 of chunk x
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] += piece[k];
    const int64_t next = (x + 1) * kTokChunk;
    if (next >= N || sorted_tok[next] != tok) break;
  }
  G* dst = dwte + static_cast<int64_t>(tok) * C + c;
#pragma unroll
  for (int k = 0; k < V; ++k) dst[k] = FromF<G>(ToF(dst[k]) + acc[k]);
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

// Scratch layout: [keys_out N][vals_in N][vals_out N] int32, the token
// gradient's fp32 slots [chunks][2][C] (each padded to 256 bytes), then
// CUB's temporary storage.
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

size_t SlotBytes(int64_t N, int C) {
  return Pad256(static_cast<size_t>(CeilDiv(N, kTokChunk)) * 2 * C * sizeof(float));
}

template <typename T>
void LaunchForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_, int C,
                   cudaStream_t stream) {
  const int64_t N = static_cast<int64_t>(B) * T_;
  if (N <= 0 || C <= 0) return;
  constexpr int V = 16 / sizeof(T);
  if (C % V == 0 && internal::Aligned(16, out, wte, wpe)) {
    internal::Launch(EmbeddingForwardKernel<T, V>, GridFor(N * C / V, kThreads), kThreads, 0,
                     stream, out, tokens, wte, wpe, N, T_, C);
  } else {
    internal::Launch(EmbeddingForwardKernel<T, 1>, GridFor(N * C, kThreads), kThreads, 0, stream,
                     out, tokens, wte, wpe, N, T_, C);
  }
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingForwardKernel", stream);
}

// The token gradient's two kernels with V channels per thread.
template <typename T, typename G, int V>
void LaunchTokenGrad(G* dwte, float* slots, const T* dout, const int32_t* keys,
                     const int32_t* rows, int64_t N, int C, cudaStream_t stream) {
  const int lanes = static_cast<int>(CeilDiv(C, V));
  const int threads = static_cast<int>(std::min<int64_t>(kTokThreads, CeilDiv(lanes, 32) * 32));
  const dim3 grid(static_cast<unsigned>(CeilDiv(N, kTokChunk)),
                  static_cast<unsigned>(CeilDiv(lanes, threads)));
  internal::Launch(EmbeddingTokenGradKernel<T, G, V>, grid, threads, 0, stream, dwte, slots, dout,
                   keys, rows, N, C);
  LLMT_CUDA_CHECK_LAUNCH("EmbeddingTokenGradKernel", stream);
  if (N > kTokChunk) {
    internal::Launch(EmbeddingTokenCombineKernel<G, V>, grid, threads, 0, stream, dwte,
                     static_cast<const float*>(slots), keys, N, C);
    LLMT_CUDA_CHECK_LAUNCH("EmbeddingTokenCombineKernel", stream);
  }
}

template <typename T, typename G>
void LaunchBackward(G* dwte, G* dwpe, const T* dout, const int32_t* tokens, int B, int T_, int C,
                    void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const int64_t N = static_cast<int64_t>(B) * T_;
  if (N <= 0 || C <= 0) return;
  if (N > 0x7fffffff) Fatal("EmbeddingBackward: more than 2^31 tokens");
  CheckScratch("EmbeddingBackward", scratch, scratch_bytes,
               EmbeddingBackwardScratchBytes(B, T_, C));
  char* s = static_cast<char*>(scratch);
  const size_t plane = Pad256(static_cast<size_t>(N) * sizeof(int32_t));
  int32_t* keys_out = reinterpret_cast<int32_t*>(s);
  int32_t* vals_in = reinterpret_cast<int32_t*>(s + plane);
  int32_t* vals_out = reinterpret_cast<int32_t*>(s + 2 * plane);
  float* slots = reinterpret_cast<float*>(s + 3 * plane);
  void* temp = s + 3 * plane + SlotBytes(N, C);
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
  constexpr int V = 16 / sizeof(T);
  if (C % V == 0 && internal::Aligned(16, dout)) {
    LaunchTokenGrad<T, G, V>(dwte, slots, dout, keys_out, vals_out, N, C, stream);
  } else {
    LaunchTokenGrad<T, G, 1>(dwte, slots, dout, keys_out, vals_out, N, C, stream);
  }
  if (dwpe != nullptr) {
    internal::Launch(EmbeddingPosGradKernel<T, G>, GridFor(static_cast<int64_t>(T_) * C, kThreads),
                     kThreads, 0, stream, dwpe, dout, B, T_, C);
    LLMT_CUDA_CHECK_LAUNCH("EmbeddingPosGradKernel", stream);
  }
}

}  // namespace

size_t EmbeddingBackwardScratchBytes(int B, int T, int C) {
  const int64_t N = static_cast<int64_t>(B) * T;
  if (N <= 0 || C <= 0) return 0;
  return 3 * Pad256(static_cast<size_t>(N) * sizeof(int32_t)) + SlotBytes(N, C) + CubTempBytes(N);
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
