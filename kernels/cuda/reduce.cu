#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/reduce.cuh"

namespace llmt::kernels::cuda {
namespace {

using internal::BlockSum;
using internal::FromF;
using internal::GridFor;
using internal::ToF;

constexpr int kThreads = 256;
constexpr int kFinalThreads = 1024;
static_assert(kReduceBlocks <= kFinalThreads, "the final stage has one thread per partial");

enum class Op { kSum, kSumSquares };

// Stage 1: block b sums elements b*256 + t + k * (kReduceBlocks*256) (thread
// t), in double; a fixed block tree gives partial[b].
template <typename T, Op kOp>
__global__ void PartialKernel(const T* x, int64_t n, double* partial) {
  __shared__ double smem[32];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const double v = ToF(x[i]);
    acc += kOp == Op::kSumSquares ? v * v : v;
  }
  acc = BlockSum(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Stage 2: one block, one partial per thread; out = (or +=) the sum; sqrt
// for the norm.
__global__ void FinalKernel(const double* partial, int nparts, double* out, bool accumulate,
                            bool take_sqrt) {
  __shared__ double smem[32];
  double v = threadIdx.x < nparts ? partial[threadIdx.x] : 0.0;
  v = BlockSum(v, smem);
  if (threadIdx.x == 0) {
    if (accumulate) v += *out;
    *out = take_sqrt ? sqrt(v) : v;
  }
}

template <typename T, Op kOp>
void Reduce(const char* name, const T* x, int64_t n, double* out, bool accumulate, bool take_sqrt,
            void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  CheckScratch(name, scratch, scratch_bytes, ReduceScratchBytes());
  double* partial = static_cast<double*>(scratch);
  internal::Launch(PartialKernel<T, kOp>, kReduceBlocks, kThreads, 0, stream, x, n < 0 ? 0 : n,
                   partial);
  LLMT_CUDA_CHECK_LAUNCH(name, stream);
  internal::Launch(FinalKernel, 1, kFinalThreads, 0, stream, partial, kReduceBlocks, out,
                   accumulate, take_sqrt);
  LLMT_CUDA_CHECK_LAUNCH(name, stream);
}

template <typename T>
__global__ void ScaleKernel(T* x, int64_t n, float s) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = FromF<T>(ToF(x[i]) * s);
  }
}

// Any thread that sees a non-finite value stores 1; concurrent stores of the
// same value are benign and the outcome does not depend on their order.
template <typename T>
__global__ void NonFiniteKernel(const T* x, int64_t n, int* flag) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  bool bad = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    bad |= !isfinite(ToF(x[i]));
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

template <typename T>
void LaunchScale(T* x, int64_t n, float s, cudaStream_t stream) {
  if (n <= 0) return;
  internal::Launch(ScaleKernel<T>, GridFor(n, kThreads), kThreads, 0, stream, x, n, s);
  LLMT_CUDA_CHECK_LAUNCH("ScaleKernel", stream);
}

template <typename T>
void LaunchNonFinite(const T* x, int64_t n, int* flag, cudaStream_t stream) {
  if (n <= 0) return;
  internal::Launch(NonFiniteKernel<T>, GridFor(n, kThreads, 4096), kThreads, 0, stream, x, n, flag);
  LLMT_CUDA_CHECK_LAUNCH("NonFiniteKernel", stream);
}

}  // namespace

size_t ReduceScratchBytes() { return kReduceBlocks * sizeof(double); }

void SumSquares(const float* x, int64_t n, double* out, bool accumulate, void* scratch,
                size_t scratch_bytes, cudaStream_t stream) {
  Reduce<float, Op::kSumSquares>("SumSquares", x, n, out, accumulate, false, scratch, scratch_bytes,
                                 stream);
}
void SumSquares(const bf16* x, int64_t n, double* out, bool accumulate, void* scratch,
                size_t scratch_bytes, cudaStream_t stream) {
  Reduce<bf16, Op::kSumSquares>("SumSquares", x, n, out, accumulate, false, scratch, scratch_bytes,
                                stream);
}
void L2Norm(const float* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
            cudaStream_t stream) {
  Reduce<float, Op::kSumSquares>("L2Norm", x, n, out, false, true, scratch, scratch_bytes, stream);
}
void L2Norm(const bf16* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
            cudaStream_t stream) {
  Reduce<bf16, Op::kSumSquares>("L2Norm", x, n, out, false, true, scratch, scratch_bytes, stream);
}
void Sum(const float* x, int64_t n, double* out, void* scratch, size_t scratch_bytes,
         cudaStream_t stream) {
  Reduce<float, Op::kSum>("Sum", x, n, out, false, false, scratch, scratch_bytes, stream);
}

void Scale(float* x, int64_t n, float s, cudaStream_t stream) { LaunchScale(x, n, s, stream); }
void Scale(bf16* x, int64_t n, float s, cudaStream_t stream) { LaunchScale(x, n, s, stream); }
void AnyNonFinite(const float* x, int64_t n, int* flag, cudaStream_t stream) {
  LaunchNonFinite(x, n, flag, stream);
}
void AnyNonFinite(const bf16* x, int64_t n, int* flag, cudaStream_t stream) {
  LaunchNonFinite(x, n, flag, stream);
}
void Zero(float* x, int64_t n, cudaStream_t stream) {
  if (n > 0) LLMT_CUDA_CHECK(cudaMemsetAsync(x, 0, static_cast<size_t>(n) * sizeof(float), stream));
}
void Zero(bf16* x, int64_t n, cudaStream_t stream) {
  if (n > 0) LLMT_CUDA_CHECK(cudaMemsetAsync(x, 0, static_cast<size_t>(n) * sizeof(bf16), stream));
}

}  // namespace llmt::kernels::cuda
