// CPU backend runtime: thread count and large host allocations.
//
// Threading model: OpenMP is the ONLY thread pool. OpenBLAS (Debian ships the
// pthread build, which has its own pool) is pinned to one thread, and Gemm()
// splits large products into per-thread output blocks, each one
// single-threaded cblas_sgemm. Two pools on the same cores oversubscribe
// (OpenBLAS workers and OpenMP workers spin-wait on each other's cores); one
// pool measured as fast as OpenBLAS's own threading on the engine's GEMM
// shapes on a 2-core EPYC and keeps the elementwise loops from contending.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace llmt::kernels::cpu {

// Sets the number of threads for every CPU kernel (n <= 0: all cores) and pins
// OpenBLAS to one thread. Call once at start-up; kernels call it lazily with
// the OpenMP default if nobody did.
void SetNumThreads(int n);
int NumThreads();

// A zero-initialised, 2 MiB aligned float buffer (an anonymous mapping) that
// asks the kernel for transparent huge pages (MADV_HUGEPAGE): the streaming
// passes over parameters, gradients and optimizer state (AdamW, zeroing,
// norms) ran ~15% faster with huge pages on the 2-core EPYC VM, and GEMM
// packing sees fewer TLB misses. Use it for optimizer state too.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(int64_t n);  // n floats; data() == nullptr if allocation failed
  ~HostBuffer();
  HostBuffer(HostBuffer&& o) noexcept;
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  float* data() { return data_; }
  const float* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0;
  void* map_ = nullptr;  // the whole mapping (data_ is its first 2 MiB boundary)
  size_t map_bytes_ = 0;
};

// Opt-in wall-clock profile by section name (the model wraps each layer op in
// a ProfileScope; bench/cpu_train --profile prints the table). Disabled it
// costs one relaxed load per scope. Not thread-safe against concurrent
// Enable/Reset; sections are recorded from the calling (master) thread.
void SetProfiling(bool on);
bool ProfilingEnabled();
void ProfileReset();
void ProfileAdd(const char* name, double seconds);
// "name  total_ms  calls  share" lines, largest first.
std::string ProfileReport();

class ProfileScope {
 public:
  explicit ProfileScope(const char* name) : name_(ProfilingEnabled() ? name : nullptr) {
    if (name_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~ProfileScope() {
    if (name_ != nullptr) {
      ProfileAdd(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
                            .count());
    }
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace llmt::kernels::cpu
