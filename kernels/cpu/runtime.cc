#include "kernels/cpu/runtime.h"

#include "kernels/cpu/vec_math.h"

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace llmt::kernels::cpu {

namespace internal {
// See vec_math.h: deliberately not visible as constants to the kernels.
extern const float kExpMin = -87.f;
extern const float kExpMax = 88.3f;
}  // namespace internal

namespace {
std::atomic<int> g_threads{0};
std::once_flag g_init_once;
constexpr size_t kHugePage = size_t{2} << 20;

std::atomic<bool> g_profiling{false};
struct ProfileEntry {
  double seconds = 0;
  int64_t calls = 0;
};
std::mutex g_profile_mu;
std::map<std::string, ProfileEntry>& Profile() {
  static auto* m = new std::map<std::string, ProfileEntry>();
  return *m;
}
}  // namespace

void SetProfiling(bool on) { g_profiling.store(on); }
bool ProfilingEnabled() { return g_profiling.load(std::memory_order_relaxed); }
void ProfileReset() {
  std::lock_guard<std::mutex> lock(g_profile_mu);
  Profile().clear();
}
void ProfileAdd(const char* name, double seconds) {
  std::lock_guard<std::mutex> lock(g_profile_mu);
  ProfileEntry& e = Profile()[name];
  e.seconds += seconds;
  e.calls += 1;
}
std::string ProfileReport() {
  std::lock_guard<std::mutex> lock(g_profile_mu);
  std::vector<std::pair<std::string, ProfileEntry>> rows(Profile().begin(), Profile().end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (const auto& r : rows) total += r.second.seconds;
  std::string out;
  char line[160];
  std::snprintf(line, sizeof(line), "%-24s %10s %8s %7s\n", "section", "total_ms", "calls",
                "share");
  out += line;
  for (const auto& [name, e] : rows) {
    std::snprintf(line, sizeof(line), "%-24s %10.1f %8lld %6.1f%%\n", name.c_str(),
                  e.seconds * 1e3, static_cast<long long>(e.calls),
                  total > 0 ? 100.0 * e.seconds / total : 0.0);
    out += line;
  }
  return out;
}

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
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  // Anonymous mappings are zero-filled and faulted in lazily (no second
  // zeroing pass, and untouched memory never counts towards RSS). Map 2 MiB
  // extra so the buffer can start on a huge-page boundary.
  const size_t mapped = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  // Advice only: fine to fail (e.g. THP disabled).
  madvise(reinterpret_cast<void*>(aligned), mapped - (aligned - base), MADV_HUGEPAGE);
  map_ = p;
  map_bytes_ = mapped;
  data_ = reinterpret_cast<float*>(aligned);
  size_ = n;
}

HostBuffer::~HostBuffer() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
}

HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : data_(o.data_), size_(o.size_), map_(o.map_), map_bytes_(o.map_bytes_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.map_ = nullptr;
  o.map_bytes_ = 0;
}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (map_ != nullptr) munmap(map_, map_bytes_);
    data_ = o.data_;
    size_ = o.size_;
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
  }
  return *this;
}

}  // namespace llmt::kernels::cpu
