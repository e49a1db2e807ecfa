// CUDA backend runtime: device selection, checked allocations, memory report.
// Host-compiled (uses Abseil); kernels use common.cuh only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/cuda/common.cuh"

namespace llmt::kernels::cuda {

// OK for cudaSuccess; otherwise an error naming `what` and the CUDA error
// (ResourceExhausted for allocation failures, FailedPrecondition when there is
// no usable device/driver, Internal otherwise). Clears the error so that it is
// not picked up again by the next launch check.
absl::Status CudaStatus(cudaError_t err, absl::string_view what);

// Number of visible CUDA devices; 0 when there is no GPU or no driver (never
// fails, so tests and `device: auto` logic can branch on it).
int DeviceCount();
inline bool HaveGpu() { return DeviceCount() > 0; }

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  int64_t total_bytes = 0;
  std::string ToString() const;  // "0: NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"
};

// Validates `index` against the visible devices (the error lists them) and
// makes it current for the calling thread.
absl::Status SetDevice(int index);
absl::StatusOr<DeviceInfo> GetDeviceInfo(int index);
// Index of the calling thread's current device.
absl::StatusOr<int> CurrentDevice();

struct MemInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
// Free/total memory of the current device (cudaMemGetInfo).
absl::StatusOr<MemInfo> GetMemInfo();

// "1.50 GiB", "12.0 MiB", "512 B".
std::string FormatBytes(int64_t bytes);
// The out-of-memory message for buffer `name`; `mem` (if known) adds what the
// device had free. Pure function so the wording is tested without a GPU.
std::string OutOfMemoryMessage(absl::string_view name, int64_t bytes,
                               const std::optional<MemInfo>& mem);

// Owns one cudaMalloc allocation. Move-only; frees on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Allocates `bytes` (0 is allowed and yields an empty buffer). On
  // out-of-memory returns ResourceExhausted with OutOfMemoryMessage().
  static absl::StatusOr<DeviceBuffer> Allocate(std::string name, int64_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }
  const std::string& name() const { return name_; }

  // Synchronous copies of [offset, offset + n) bytes; errors name the buffer.
  absl::Status CopyFromHost(const void* src, int64_t n, int64_t offset = 0);
  absl::Status CopyToHost(void* dst, int64_t n, int64_t offset = 0) const;
  // Asynchronous memset to zero on `stream`.
  absl::Status ZeroAsync(cudaStream_t stream);

 private:
  void Release();
  std::string name_;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// Owns a non-blocking cudaStream_t.
class Stream {
 public:
  static absl::StatusOr<Stream> Create();
  // With a scheduling priority: the block scheduler hands free SMs to the
  // pending blocks of higher-priority streams first. kHighestPriority is
  // the device's highest (CUDA: the lowest number), 0 the default.
  static constexpr int kHighestPriority = -1000;
  static absl::StatusOr<Stream> CreateWithPriority(int priority);
  Stream() = default;
  ~Stream();
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  absl::Status Synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

// Device memory by category (parameters, gradients, optimizer, activations,
// workspace, ...), printed once at start-up. Pure bookkeeping: it records what
// the caller allocated, so the report also works for planned sizes before
// anything is allocated.
class MemoryReport {
 public:
  void Add(std::string category, std::string name, int64_t bytes);
  int64_t Total() const;
  int64_t CategoryTotal(absl::string_view category) const;
  // One line per category in first-seen order ("  activations   1.20 GiB  (3 buffers)"),
  // each buffer of a category with more than one indented below it by name,
  // then the total and, if given, what the device has free/total.
  std::string Format(const std::optional<MemInfo>& mem = std::nullopt) const;

 private:
  struct Entry {
    std::string category, name;
    int64_t bytes;
  };
  std::vector<Entry> entries_;
};

}  // namespace llmt::kernels::cuda

// In a function returning absl::Status: returns CudaStatus(err, "<call text>")
// if the call fails.
#define LLMT_CUDA_RETURN_IF_ERROR(call)                                \
  do {                                                                 \
    const cudaError_t _llmt_cuda_err = (call);                         \
    if (_llmt_cuda_err != cudaSuccess) {                               \
      return ::llmt::kernels::cuda::CudaStatus(_llmt_cuda_err, #call); \
    }                                                                  \
  } while (0)
