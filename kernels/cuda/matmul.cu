// Device kernels of the GEMM layer: bias/residual seeding (the fallback for
// fused epilogues) and the deterministic bias-gradient column sum.
#include <algorithm>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/matmul.cuh"
#include "kernels/cuda/matmul_internal.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::FromF;
using internal::GridFor;
using internal::ToF;

template <typename T>
__global__ void BiasResidualFillKernel(T* D, int64_t ldd, const T* C, int64_t ldc, float beta,
                                       const T* bias, int64_t M, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += stride) {
    const int64_t m = i / N, n = i - m * N;
    float v = bias != nullptr ? ToF(bias[n]) : 0.f;
    if (C != nullptr) v += beta * ToF(C[m * ldc + n]);
    D[m * ldd + n] = FromF<T>(v);
  }
}

// Bias gradient: dbias[n] += alpha * sum_m dout[m, n], a column sum with a
// fixed order (internal::ColumnSumKernel), never atomics.
//
// Single stage (BiasBackward, no scratch): one block of 32 x 32 threads per
// 32V-column tile runs over all M rows. Fine for small M, but for GPT-2's
// M = 65536 and N = 768 that is only three 256-column tiles, so
// MatmulBackward uses the two-stage form below with the cuBLASLt workspace
// as scratch (idle between GEMMs on the same stream): stage 1 sums chunks of
// kBiasChunkRows rows per column tile into fp32 partials (grid = tiles x
// chunks, e.g. 3 x 256 blocks for N = 768), stage 2 adds the chunks' partials
// per column in chunk order. Both orders depend only on (M, N) (and the
// workspace size, which only grows the chunk past kBiasChunkRows where M * N
// is huge), so the result is bit-identical run to run.
constexpr int kBiasSlots = 8;        // warps over rows in stage 1
constexpr int kBiasFinalSlots = 32;  // warps over rows in the single stage / stage 2
constexpr int64_t kBiasChunkRows = 256;

// 16-byte vectors (8 bf16 / 4 fp32 columns per lane) when every row (and
// the second column block) starts aligned; else one column per lane.
template <typename T>
constexpr int kBiasVec = 16 / sizeof(T);
template <typename T>
bool BiasVec(const T* dout, int64_t N, int64_t ld, int64_t off2) {
  constexpr int v = kBiasVec<T>;
  return N % v == 0 && ld % v == 0 && off2 % v == 0 && internal::Aligned(16, dout);
}

// Column sums of `blocks` (1 or 2) column blocks, [0, N) and [off2,
// off2 + N), of `in` (rows x ld): the planes of ColumnSumKernel.
template <typename G, typename T, int V, int TY, bool kFinal>
void LaunchColumnSum(G* out, G* out2, int blocks, const T* in, int64_t off2, int64_t rows,
                     int64_t N, int64_t ld, int64_t chunk_rows, float alpha,
                     cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(N, 32 * V)),
                  static_cast<unsigned>(internal::CeilDiv(rows, chunk_rows)),
                  static_cast<unsigned>(blocks));
  internal::Launch(internal::ColumnSumKernel<G, T, V, TY, kFinal>, grid, 32 * TY, 0, stream, out,
                   out2, in, off2, rows, N, ld, chunk_rows, alpha);
}

template <typename G, typename T>
void LaunchBiasBackward(G* dbias, G* dbias2, const T* dout, int64_t off2, int64_t M, int64_t N,
                        int64_t ld, float alpha, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const int blocks = dbias2 != nullptr ? 2 : 1;
  if (BiasVec(dout, N, ld, off2)) {
    LaunchColumnSum<G, T, kBiasVec<T>, kBiasFinalSlots, true>(dbias, dbias2, blocks, dout, off2, M,
                                                              N, ld, M, alpha, stream);
  } else {
    LaunchColumnSum<G, T, 1, kBiasFinalSlots, true>(dbias, dbias2, blocks, dout, off2, M, N, ld, M,
                                                    alpha, stream);
  }
  LLMT_CUDA_CHECK_LAUNCH("BiasBackwardKernel", stream);
}

template <typename G, typename T>
void LaunchBiasBackwardTwoStage(G* dbias, G* dbias2, const T* dout, int64_t off2, int64_t M,
                                int64_t N, int64_t ld, float alpha, void* scratch,
                                size_t scratch_bytes, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const int blocks = dbias2 != nullptr ? 2 : 1;
  // Chunks must fit the scratch (fp32 per block, chunk and column) and the
  // grid's y limit; at least two chunks, or the single stage is as good.
  int64_t chunk = kBiasChunkRows;
  const int64_t max_chunks = std::min<int64_t>(
      65535, static_cast<int64_t>(scratch_bytes / (sizeof(float) * N * blocks)));
  while (internal::CeilDiv(M, chunk) > max_chunks && chunk < M) chunk *= 2;
  const int64_t nchunks = internal::CeilDiv(M, chunk);
  if (scratch == nullptr || nchunks < 2 || nchunks > max_chunks) {
    LaunchBiasBackward(dbias, dbias2, dout, off2, M, N, ld, alpha, stream);
    return;
  }
  float* partial = static_cast<float*>(scratch);
  if (BiasVec(dout, N, ld, off2)) {
    LaunchColumnSum<float, T, kBiasVec<T>, kBiasSlots, false>(
        partial, static_cast<float*>(nullptr), blocks, dout, off2, M, N, ld, chunk, 1.f, stream);
  } else {
    LaunchColumnSum<float, T, 1, kBiasSlots, false>(partial, static_cast<float*>(nullptr), blocks,
                                                    dout, off2, M, N, ld, chunk, 1.f, stream);
  }
  LLMT_CUDA_CHECK_LAUNCH("BiasBackwardKernel/partials", stream);
  // The partials are few rows (nchunks) per block: one column per lane keeps
  // the tiles narrow (32 columns) so that N = 768 still gives 24 blocks.
  LaunchColumnSum<G, float, 1, kBiasFinalSlots, true>(dbias, dbias2, blocks, partial, nchunks * N,
                                                      nchunks, N, N, nchunks, alpha, stream);
  LLMT_CUDA_CHECK_LAUNCH("BiasBackwardKernel/combine", stream);
}

// y[i] += sum_j A[i, j] x[j] (A m x n row-major): a warp per row, lanes
// over j (coalesced), lane partials in j order, then the warp's butterfly.
template <typename T>
__global__ void MatVecRowsKernel(float* y, const T* A, const float* x, int64_t m, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (i >= m) return;  // uniform per warp
  float acc = 0.f;
  for (int64_t j = lane; j < n; j += 32) acc = fmaf(ToF(A[i * n + j]), x[j], acc);
  acc = internal::WarpSum(acc);
  if (lane == 0) y[i] += acc;
}

// y[j] += sum_i A[i, j] x[i]: a thread per column j walking the rows in
// order (coalesced across the threads of a row).
template <typename T>
__global__ void MatVecColsKernel(float* y, const T* A, const float* x, int64_t m, int64_t n) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float acc = 0.f;
  for (int64_t i = 0; i < m; ++i) acc = fmaf(ToF(A[i * n + j]), x[i], acc);
  y[j] += acc;
}

template <typename T>
void LaunchMatVecAdd(float* y, const T* A, const float* x, int64_t m, int64_t n, bool trans,
                     cudaStream_t stream) {
  if (m <= 0 || n <= 0) return;
  constexpr int kThreads = 256;
  if (!trans) {
    internal::Launch(MatVecRowsKernel<T>, static_cast<unsigned>(internal::CeilDiv(m, 8)),
                     kThreads, 0, stream, y, A, x, m, n);
  } else {
    internal::Launch(MatVecColsKernel<T>, static_cast<unsigned>(internal::CeilDiv(n, kThreads)),
                     kThreads, 0, stream, y, A, x, m, n);
  }
  LLMT_CUDA_CHECK_LAUNCH("MatVecAdd", stream);
}

}  // namespace

void BiasResidualFill(void* D, DType t, int64_t ldd, const void* C, int64_t ldc, float beta,
                      const void* bias, int64_t M, int64_t N, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  constexpr int kThreads = 256;
  if (t == DType::kF32) {
    internal::Launch(BiasResidualFillKernel<float>, GridFor(M * N, kThreads), kThreads, 0, stream,
                     static_cast<float*>(D), ldd, static_cast<const float*>(C), ldc, beta,
                     static_cast<const float*>(bias), M, N);
  } else {
    internal::Launch(BiasResidualFillKernel<bf16>, GridFor(M * N, kThreads), kThreads, 0, stream,
                     static_cast<bf16*>(D), ldd, static_cast<const bf16*>(C), ldc, beta,
                     static_cast<const bf16*>(bias), M, N);
  }
  LLMT_CUDA_CHECK_LAUNCH("BiasResidualFillKernel", stream);
}

void BiasBackward(float* dbias, const float* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, static_cast<float*>(nullptr), dout, 0, M, N, N, alpha, stream);
}
void BiasBackward(bf16* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, static_cast<bf16*>(nullptr), dout, 0, M, N, N, alpha, stream);
}
void BiasBackward(float* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                  cudaStream_t stream) {
  LaunchBiasBackward(dbias, static_cast<float*>(nullptr), dout, 0, M, N, N, alpha, stream);
}

void BiasBackwardColumns(float* dbias, float* dbias2, const float* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, dbias2, dout, off2, M, N, ld, alpha, scratch, scratch_bytes,
                             stream);
}
void BiasBackwardColumns(bf16* dbias, bf16* dbias2, const bf16* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, dbias2, dout, off2, M, N, ld, alpha, scratch, scratch_bytes,
                             stream);
}
void BiasBackwardColumns(float* dbias, float* dbias2, const bf16* dout, int64_t M, int64_t N,
                         int64_t ld, int64_t off2, float alpha, void* scratch,
                         size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, dbias2, dout, off2, M, N, ld, alpha, scratch, scratch_bytes,
                             stream);
}

void MatVecAdd(float* y, const float* A, const float* x, int64_t m, int64_t n, bool trans,
               cudaStream_t stream) {
  LaunchMatVecAdd(y, A, x, m, n, trans, stream);
}
void MatVecAdd(float* y, const bf16* A, const float* x, int64_t m, int64_t n, bool trans,
               cudaStream_t stream) {
  LaunchMatVecAdd(y, A, x, m, n, trans, stream);
}

namespace internal {
void BiasBackwardTwoStage(float* dbias, const float* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, static_cast<float*>(nullptr), dout, 0, M, N, N, alpha, scratch,
                             scratch_bytes, stream);
}
void BiasBackwardTwoStage(bf16* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, static_cast<bf16*>(nullptr), dout, 0, M, N, N, alpha, scratch,
                             scratch_bytes, stream);
}
void BiasBackwardTwoStage(float* dbias, const bf16* dout, int64_t M, int64_t N, float alpha,
                          void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  LaunchBiasBackwardTwoStage(dbias, static_cast<float*>(nullptr), dout, 0, M, N, N, alpha, scratch,
                             scratch_bytes, stream);
}

namespace {
constexpr int kFpThreads = 256;

// splitmix64's finaliser: every input bit affects every output bit.
__device__ __forceinline__ unsigned long long Mix64(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Block b: partial[2b] = sum of Mix64(index, bits), partial[2b + 1] = count
// of non-zero elements, over a grid-stride share of the elements.
__global__ void __launch_bounds__(kFpThreads)
    FingerprintKernel(unsigned long long* partial, const unsigned char* m, int64_t rows,
                      int64_t cols, int64_t ld_bytes, int es) {
  __shared__ unsigned long long sh[2][kFpThreads];
  unsigned long long h = 0, nz = 0;
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const unsigned char* e = m + (i / cols) * ld_bytes + (i % cols) * es;
    const uint32_t bits = es == 2 ? uint32_t{*reinterpret_cast<const uint16_t*>(e)}
                                  : *reinterpret_cast<const uint32_t*>(e);
    h += Mix64((static_cast<unsigned long long>(i) << 32) ^ bits ^ 0x9E3779B97F4A7C15ull);
    nz += (bits & (es == 2 ? 0x7fffu : 0x7fffffffu)) != 0 ? 1 : 0;
  }
  sh[0][threadIdx.x] = h;
  sh[1][threadIdx.x] = nz;
  __syncthreads();
  for (int s = kFpThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + s];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sh[0][0];
    partial[2 * blockIdx.x + 1] = sh[1][0];
  }
}

__global__ void FingerprintFinalKernel(unsigned long long* out, const unsigned long long* partial,
                                       int nblocks) {
  if (threadIdx.x != 0) return;  // one warp launched, one thread adds in block order
  unsigned long long h = 0, nz = 0;
  for (int b = 0; b < nblocks; ++b) {
    h += partial[2 * b];
    nz += partial[2 * b + 1];
  }
  out[0] = h;
  out[1] = nz;
}
}  // namespace

void Fingerprint(unsigned long long* words, unsigned long long out[2], const void* m, int64_t rows,
                 int64_t cols, int64_t ld, int elem_bytes, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) {
    out[0] = out[1] = 0;
    return;
  }
  const int64_t need = CeilDiv(rows * cols, kFpThreads);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(kFingerprintBlocks, need));
  Launch(FingerprintKernel, blocks, kFpThreads, 0, stream, words + 2,
         static_cast<const unsigned char*>(m), rows, cols, ld * elem_bytes, elem_bytes);
  LLMT_CUDA_CHECK_LAUNCH("FingerprintKernel", stream);
  Launch(FingerprintFinalKernel, 1u, 32u, 0, stream, words, words + 2, static_cast<int>(blocks));
  LLMT_CUDA_CHECK_LAUNCH("FingerprintFinalKernel", stream);
  LLMT_CUDA_CHECK(cudaStreamSynchronize(stream));
  LLMT_CUDA_CHECK(
      cudaMemcpy(out, words, 2 * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
}
}  // namespace internal

}  // namespace llmt::kernels::cuda
