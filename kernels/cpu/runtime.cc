#include "kernels/cpu/runtime.h"

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace llmt::kernels::cpu {
namespace {
std::atomic<int> g_threads{0};
std::once_flag g_init_once;
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

void SetNumThreads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  g_threads.store(n);
  omp_set_num_threads(n);
  openblas_set_num_threads(1);
}

int NumThreads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
  std::call_once(g_init_once, [] {
    if (g_threads.load() == 0) SetNumThreads(omp_get_max_threads());
  });
  return g_threads.load();
}

HostBuffer::HostBuffer(int64_t n) {
  if (n <= 0) return;
  size_t bytes = static_cast<size_t>(n) * sizeof(float);
  size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, rounded) != 0) return;
  // Advice only: fine to fail (e.g. THP disabled).
  madvise(p, rounded, MADV_HUGEPAGE);
  std::memset(p, 0, bytes);
  data_ = static_cast<float*>(p);
  size_ = n;
}

HostBuffer::~HostBuffer() { std::free(data_); }

HostBuffer::HostBuffer(HostBuffer&& o) noexcept : data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

}  // namespace llmt::kernels::cpu
