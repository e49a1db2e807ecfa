#include "kernels/cuda/runtime.cuh"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"

namespace llmt::kernels::cuda {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  // Clear the (non-sticky) error so that the next launch check does not
  // report it again under a kernel's name.
  cudaGetLastError();
  const std::string msg = absl::StrCat(what, " failed: ", CudaErrorString(err));
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorNoKernelImageForDevice:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

int DeviceCount() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return n;
}

std::string DeviceInfo::ToString() const {
  return absl::StrFormat("%d: %s (sm_%d%d, %d SMs, %s)", index, name, cc_major, cc_minor, sm_count,
                         FormatBytes(total_bytes));
}

absl::StatusOr<DeviceInfo> GetDeviceInfo(int index) {
  cudaDeviceProp prop;
  LLMT_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  DeviceInfo info;
  info.index = index;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.sm_count = prop.multiProcessorCount;
  info.total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  return info;
}

absl::Status SetDevice(int index) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", index, " requested but no CUDA device is usable: ", CudaErrorString(err)));
  }
  if (index < 0 || index >= n) {
    std::string devices;
    for (int i = 0; i < n; ++i) {
      auto info = GetDeviceInfo(i);
      absl::StrAppend(&devices, "\n  ", info.ok() ? info->ToString() : std::to_string(i));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "CUDA device index ", index, " out of range: ", n, " device(s) visible", devices));
  }
  LLMT_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  return absl::OkStatus();
}

absl::StatusOr<int> CurrentDevice() {
  int d = 0;
  LLMT_CUDA_RETURN_IF_ERROR(cudaGetDevice(&d));
  return d;
}

absl::StatusOr<MemInfo> GetMemInfo() {
  size_t free_b = 0, total_b = 0;
  LLMT_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_b, &total_b));
  return MemInfo{static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / (1 << 30));
  if (bytes >= (int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", b / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", b / (1 << 10));
  return absl::StrCat(bytes, " B");
}

std::string OutOfMemoryMessage(absl::string_view name, int64_t bytes,
                               const std::optional<MemInfo>& mem) {
  std::string msg = absl::StrCat("out of GPU memory allocating '", name, "': ", bytes, " bytes (",
                                 FormatBytes(bytes), ")");
  if (mem.has_value()) {
    absl::StrAppend(&msg, "; the device has ", FormatBytes(mem->free_bytes), " free of ",
                    FormatBytes(mem->total_bytes));
  }
  absl::StrAppend(&msg,
                  ". Reduce the micro-batch size or sequence length, or enable activation "
                  "recomputation (train.recompute)");
  return msg;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(std::string name, int64_t bytes) {
  if (bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("device buffer '", name, "': negative size ", bytes));
  }
  DeviceBuffer buf;
  buf.name_ = std::move(name);
  if (bytes == 0) return buf;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, static_cast<size_t>(bytes));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    std::optional<MemInfo> mem;
    if (auto m = GetMemInfo(); m.ok()) mem = *m;
    return absl::ResourceExhaustedError(OutOfMemoryMessage(buf.name_, bytes, mem));
  }
  if (err != cudaSuccess) {
    return CudaStatus(err, absl::StrCat("cudaMalloc of '", buf.name_, "' (", bytes, " bytes)"));
  }
  buf.data_ = p;
  buf.bytes_ = bytes;
  return buf;
}

void DeviceBuffer::Release() {
  if (data_ != nullptr) {
    const cudaError_t err = cudaFree(data_);
    if (err != cudaSuccess) {
      // Destructors cannot fail; a failed free means the context is already
      // broken and the next checked call will stop the process.
      LLMT_LOG(Error) << "cudaFree of '" << name_ << "' failed: " << CudaErrorString(err);
    }
  }
  data_ = nullptr;
  bytes_ = 0;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : name_(std::move(o.name_)),
      data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    name_ = std::move(o.name_);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

namespace {
absl::Status CheckRange(const std::string& name, int64_t size, int64_t offset, int64_t n) {
  if (offset < 0 || n < 0 || offset + n > size) {
    return absl::OutOfRangeError(absl::StrCat("device buffer '", name, "': bytes [", offset, ", ",
                                              offset + n, ") outside its ", size, " bytes"));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status DeviceBuffer::CopyFromHost(const void* src, int64_t n, int64_t offset) {
  if (absl::Status s = CheckRange(name_, bytes_, offset, n); !s.ok()) return s;
  if (n == 0) return absl::OkStatus();
  const cudaError_t err = cudaMemcpy(static_cast<char*>(data_) + offset, src,
                                     static_cast<size_t>(n), cudaMemcpyHostToDevice);
  return CudaStatus(err, absl::StrCat("copy to device buffer '", name_, "'"));
}

absl::Status DeviceBuffer::CopyToHost(void* dst, int64_t n, int64_t offset) const {
  if (absl::Status s = CheckRange(name_, bytes_, offset, n); !s.ok()) return s;
  if (n == 0) return absl::OkStatus();
  const cudaError_t err = cudaMemcpy(dst, static_cast<const char*>(data_) + offset,
                                     static_cast<size_t>(n), cudaMemcpyDeviceToHost);
  return CudaStatus(err, absl::StrCat("copy from device buffer '", name_, "'"));
}

absl::Status DeviceBuffer::ZeroAsync(cudaStream_t stream) {
  if (bytes_ == 0) return absl::OkStatus();
  return CudaStatus(cudaMemsetAsync(data_, 0, static_cast<size_t>(bytes_), stream),
                    absl::StrCat("zeroing device buffer '", name_, "'"));
}

absl::StatusOr<Stream> Stream::Create() {
  Stream s;
  LLMT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.s_, cudaStreamNonBlocking));
  return s;
}

absl::StatusOr<Stream> Stream::CreateWithPriority(int priority) {
  int least = 0, greatest = 0;
  LLMT_CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  Stream s;
  LLMT_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &s.s_, cudaStreamNonBlocking, std::clamp(priority, greatest, least)));
  return s;
}

Stream::~Stream() {
  if (s_ != nullptr) cudaStreamDestroy(s_);
}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (s_ != nullptr) cudaStreamDestroy(s_);
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}

absl::Status Stream::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(s_), "cudaStreamSynchronize");
}

void MemoryReport::Add(std::string category, std::string name, int64_t bytes) {
  entries_.push_back({std::move(category), std::move(name), bytes});
}

int64_t MemoryReport::Total() const {
  int64_t t = 0;
  for (const Entry& e : entries_) t += e.bytes;
  return t;
}

int64_t MemoryReport::CategoryTotal(absl::string_view category) const {
  int64_t t = 0;
  for (const Entry& e : entries_) {
    if (e.category == category) t += e.bytes;
  }
  return t;
}

std::string MemoryReport::Format(const std::optional<MemInfo>& mem) const {
  std::vector<std::string> order;
  for (const Entry& e : entries_) {
    bool seen = false;
    for (const std::string& c : order) seen = seen || c == e.category;
    if (!seen) order.push_back(e.category);
  }
  std::string out = "GPU memory:\n";
  for (const std::string& c : order) {
    int count = 0;
    for (const Entry& e : entries_) count += e.category == c ? 1 : 0;
    absl::StrAppendFormat(&out, "  %-14s %12s  (%d buffer%s)\n", c, FormatBytes(CategoryTotal(c)),
                          count, count == 1 ? "" : "s");
    // Name the buffers of a shared category, so that the start-up report says
    // which one is large (the cuDNN workspace, the kernel scratch, ...).
    if (count > 1) {
      for (const Entry& e : entries_) {
        if (e.category == c) {
          absl::StrAppendFormat(&out, "    %-24s %12s\n", e.name, FormatBytes(e.bytes));
        }
      }
    }
  }
  absl::StrAppendFormat(&out, "  %-14s %12s\n", "total", FormatBytes(Total()));
  if (mem.has_value()) {
    absl::StrAppendFormat(&out, "  device: %s free of %s\n", FormatBytes(mem->free_bytes),
                          FormatBytes(mem->total_bytes));
  }
  return out;
}

}  // namespace llmt::kernels::cuda
