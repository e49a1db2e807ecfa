// CUDA backend basics shared by every kernels/cuda file: element types and
// checked calls. Deliberately free of Abseil so that nvcc never has to parse
// it; Status-returning helpers live in runtime.cuh (compiled by the host
// compiler).
//
// Error policy. Resource set-up (device selection, allocation, library
// handles) returns absl::Status (runtime.cuh, matmul.cuh) because the caller
// can do something about it (pick another device, shrink the batch). A failed
// kernel launch or library call in the middle of a step leaves the CUDA
// context unusable (errors are sticky), so those are fatal: the process logs
// one line naming the kernel or library call, the CUDA error and the source
// location, then aborts. Launch errors are asynchronous by nature; set
// LLMT_CUDA_SYNC_CHECK=1 to synchronise after every launch so that an error
// raised while a kernel runs is attributed to that kernel (debug only: it
// serialises the GPU with the host).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace llmt::kernels::cuda {

// bf16 storage type (activations, parameter copies, optionally gradients).
// All arithmetic is done in fp32.
using bf16 = __nv_bfloat16;

enum class DType { kF32, kBF16 };

inline constexpr int64_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }
inline constexpr const char* DTypeName(DType t) { return t == DType::kF32 ? "f32" : "bf16"; }

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<bf16> {
  static constexpr DType value = DType::kBF16;
};

// Logs `msg` as an error and aborts the process.
[[noreturn]] void Fatal(const std::string& msg);

// "cudaErrorMemoryAllocation (out of memory)".
std::string CudaErrorString(cudaError_t err);
// "CUBLAS_STATUS_NOT_SUPPORTED".
const char* CublasStatusName(cublasStatus_t st);

// Fatal unless err == cudaSuccess. `call` is the source text of the call.
void CheckCuda(cudaError_t err, const char* call, const char* file, int line);
// Fatal unless st == CUBLAS_STATUS_SUCCESS.
void CheckCublas(cublasStatus_t st, const char* call, const char* file, int line);
// After a <<<...>>> launch: fatal if the launch failed (bad configuration, no
// kernel image for this GPU, a sticky earlier error); with
// LLMT_CUDA_SYNC_CHECK=1 also synchronises `stream` and reports execution
// errors under the kernel's name.
void CheckLaunch(const char* kernel, cudaStream_t stream, const char* file, int line);
// True when LLMT_CUDA_SYNC_CHECK is set to a non-zero value (read once).
bool SyncCheckEnabled();

namespace internal {
// True when `name` is one of the comma-separated names in LLMT_LEGACY_KERNELS
// (read at each call; callers cache it): that kernel runs its previous
// implementation, for A/B timing on a GPU. Names: "xent" (loss.cu), "norm_bwd"
// (norm.cu); unknown names are ignored.
bool LegacyKernelRequested(const char* name);
}  // namespace internal

// Fatal unless `have` >= `need` bytes of caller-provided scratch.
void CheckScratch(const char* kernel, const void* scratch, size_t have, size_t need);

}  // namespace llmt::kernels::cuda

#define LLMT_CUDA_CHECK(call) ::llmt::kernels::cuda::CheckCuda((call), #call, __FILE__, __LINE__)
#define LLMT_CUBLAS_CHECK(call) \
  ::llmt::kernels::cuda::CheckCublas((call), #call, __FILE__, __LINE__)
#define LLMT_CUDA_CHECK_LAUNCH(kernel, stream) \
  ::llmt::kernels::cuda::CheckLaunch((kernel), (stream), __FILE__, __LINE__)
