#include "kernels/cuda/common.cuh"

#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/log.h"

namespace llmt::kernels::cuda {

void Fatal(const std::string& msg) {
  LLMT_LOG(Error) << msg;
  // LogLine writes whole lines to stderr; make sure they are out before abort.
  std::fflush(stderr);
  std::abort();
}

std::string CudaErrorString(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
}

const char* CublasStatusName(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "CUBLAS_STATUS_<unknown>";
  }
}

void CheckCuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  Fatal(std::string("CUDA call ") + call + " failed: " + CudaErrorString(err) + " at " + file +
        ":" + std::to_string(line));
}

void CheckCublas(cublasStatus_t st, const char* call, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  Fatal(std::string("cuBLAS call ") + call + " failed: " + CublasStatusName(st) + " (" +
        std::to_string(static_cast<int>(st)) + ") at " + file + ":" + std::to_string(line));
}

namespace internal {
bool LegacyKernelRequested(const char* name) {
  const char* env = std::getenv("LLMT_LEGACY_KERNELS");
  if (env == nullptr) return false;
  const std::string_view want(name);
  std::string_view s(env);
  while (true) {
    const size_t comma = s.find(',');
    std::string_view tok = s.substr(0, comma);
    while (!tok.empty() && tok.front() == ' ') tok.remove_prefix(1);
    while (!tok.empty() && tok.back() == ' ') tok.remove_suffix(1);
    if (tok == want) return true;
    if (comma == std::string_view::npos) return false;
    s.remove_prefix(comma + 1);
  }
}
}  // namespace internal

bool SyncCheckEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("LLMT_CUDA_SYNC_CHECK");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void CheckLaunch(const char* kernel, cudaStream_t stream, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    Fatal(std::string("CUDA kernel ") + kernel + " failed to launch: " + CudaErrorString(err) +
          " at " + file + ":" + std::to_string(line));
  }
  if (SyncCheckEnabled()) {
    err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) {
      Fatal(std::string("CUDA kernel ") + kernel + " failed while running: " +
            CudaErrorString(err) + " at " + file + ":" + std::to_string(line));
    }
  }
}

void CheckScratch(const char* kernel, const void* scratch, size_t have, size_t need) {
  if (need == 0) return;
  if (scratch == nullptr || have < need) {
    Fatal(std::string("CUDA kernel ") + kernel + ": scratch buffer too small (" +
          std::to_string(have) + " bytes given, " + std::to_string(need) + " needed)");
  }
}

}  // namespace llmt::kernels::cuda
