#include "worker/daemon/capacity.h"

#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace llmt::daemon {
namespace {

// The few CUDA driver API entry points used here (cuda.h's signatures; CUdevice
// is an int, CUresult an enum whose success value is 0).
struct CudaDriver {
  int (*cuInit)(unsigned) = nullptr;
  int (*cuDeviceGetCount)(int*) = nullptr;
  int (*cuDeviceGet)(int*, int) = nullptr;
  int (*cuDeviceGetName)(char*, int, int) = nullptr;
  int (*cuDeviceTotalMem)(size_t*, int) = nullptr;
  int (*cuDeviceGetUuid)(unsigned char*, int) = nullptr;  // CUuuid: 16 bytes
  int (*cuGetErrorString)(int, const char**) = nullptr;
};

std::string CudaError(const CudaDriver& d, int rc) {
  const char* s = nullptr;
  if (d.cuGetErrorString && d.cuGetErrorString(rc, &s) == 0 && s) return s;
  return absl::StrCat("CUresult ", rc);
}

std::string FormatUuid(const unsigned char* b) {
  // NVML's and CUDA_VISIBLE_DEVICES' form: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
  std::string hex;
  for (int i = 0; i < 16; ++i) absl::StrAppendFormat(&hex, "%02x", b[i]);
  return absl::StrCat("GPU-", hex.substr(0, 8), "-", hex.substr(8, 4), "-", hex.substr(12, 4), "-",
                      hex.substr(16, 4), "-", hex.substr(20));
}

// NVML (libnvidia-ml), loaded once on first use.
struct Nvml {
  bool ok = false;
  int (*init)() = nullptr;
  int (*by_uuid)(const char*, void**) = nullptr;
  // nvmlProcessInfo_t of the _v2/_v3 calls.
  struct ProcessInfo {
    unsigned int pid;
    unsigned long long used_gpu_memory;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
  };
  int (*running)(void*, unsigned int*, ProcessInfo*) = nullptr;
};

Nvml& GetNvml() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return;
    n.init = reinterpret_cast<int (*)()>(dlsym(h, "nvmlInit_v2"));
    n.by_uuid =
        reinterpret_cast<int (*)(const char*, void**)>(dlsym(h, "nvmlDeviceGetHandleByUUID"));
    void* r = dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (r == nullptr) r = dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v2");
    n.running = reinterpret_cast<int (*)(void*, unsigned int*, Nvml::ProcessInfo*)>(r);
    n.ok = n.init && n.by_uuid && n.running && n.init() == 0;
  });
  return n;
}

}  // namespace

std::vector<v1::GpuInfo> DetectGpus() {
  std::vector<v1::GpuInfo> out;
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    LLMT_LOG(Info) << "worker: no CUDA driver (libcuda.so.1: " << dlerror() << "); CPU only";
    return out;
  }
  CudaDriver d;
  d.cuInit = reinterpret_cast<int (*)(unsigned)>(dlsym(h, "cuInit"));
  d.cuDeviceGetCount = reinterpret_cast<int (*)(int*)>(dlsym(h, "cuDeviceGetCount"));
  d.cuDeviceGet = reinterpret_cast<int (*)(int*, int)>(dlsym(h, "cuDeviceGet"));
  d.cuDeviceGetName = reinterpret_cast<int (*)(char*, int, int)>(dlsym(h, "cuDeviceGetName"));
  d.cuDeviceTotalMem = reinterpret_cast<int (*)(size_t*, int)>(dlsym(h, "cuDeviceTotalMem_v2"));
  d.cuDeviceGetUuid = reinterpret_cast<int (*)(unsigned char*, int)>(dlsym(h, "cuDeviceGetUuid"));
  d.cuGetErrorString = reinterpret_cast<int (*)(int, const char**)>(dlsym(h, "cuGetErrorString"));
  if (!d.cuInit || !d.cuDeviceGetCount || !d.cuDeviceGet || !d.cuDeviceGetName ||
      !d.cuDeviceTotalMem) {
    LLMT_LOG(Warning) << "worker: libcuda.so.1 lacks the device query API; CPU only";
    return out;
  }
  // The driver library stays loaded: unloading it after cuInit is not supported.
  int rc = d.cuInit(0);
  if (rc != 0) {
    LLMT_LOG(Info) << "worker: cuInit failed (" << CudaError(d, rc) << "); CPU only";
    return out;
  }
  int n = 0;
  if ((rc = d.cuDeviceGetCount(&n)) != 0) {
    LLMT_LOG(Warning) << "worker: cuDeviceGetCount: " << CudaError(d, rc);
    return out;
  }
  for (int i = 0; i < n; ++i) {
    int dev = 0;
    if (d.cuDeviceGet(&dev, i) != 0) continue;
    char name[256] = {0};
    size_t mem = 0;
    d.cuDeviceGetName(name, sizeof(name) - 1, dev);
    d.cuDeviceTotalMem(&mem, dev);
    v1::GpuInfo g;
    g.set_index(i);
    g.set_model(name);
    g.set_memory_bytes(static_cast<int64_t>(mem));
    unsigned char uuid[16];
    if (d.cuDeviceGetUuid && d.cuDeviceGetUuid(uuid, dev) == 0) g.set_uuid(FormatUuid(uuid));
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<int> AllowedCpus() {
  std::vector<int> out;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) out.push_back(c);
    }
  }
  if (out.empty()) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (int c = 0; c < std::max(1L, n); ++c) out.push_back(c);
  }
  return out;
}

int64_t PhysicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? static_cast<int64_t>(pages) * size : 0;
}

absl::StatusOr<v1::WorkerCapacity> BuildCapacity(const std::string& gpus_flag, int cpus) {
  v1::WorkerCapacity cap;
  if (gpus_flag != "none" && gpus_flag != "0" && !gpus_flag.empty()) {
    std::vector<v1::GpuInfo> found = DetectGpus();
    if (gpus_flag == "auto") {
      for (auto& g : found) *cap.add_gpus() = g;
    } else {
      std::set<int> want;
      for (absl::string_view part : absl::StrSplit(gpus_flag, ',', absl::SkipEmpty())) {
        int i;
        if (!absl::SimpleAtoi(part, &i) || i < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "--gpus='", gpus_flag, "': expected auto, none, or device indices like 0,1"));
        }
        want.insert(i);
      }
      for (int i : want) {
        auto it = std::find_if(found.begin(), found.end(),
                               [&](const v1::GpuInfo& g) { return g.index() == i; });
        if (it == found.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat("--gpus: GPU ", i, " not found (", found.size(), " detected)"));
        }
        *cap.add_gpus() = *it;
      }
    }
  }
  const int allowed = static_cast<int>(AllowedCpus().size());
  if (cpus < 0) return absl::InvalidArgumentError("--cpus: must be >= 0");
  cap.set_cpu_cores(cpus == 0 ? allowed : cpus);
  cap.set_memory_bytes(PhysicalMemoryBytes());
  return cap;
}

double GpuPeakFlops(const std::string& model, const std::string& precision) {
  // Dense (no sparsity) tensor-core bf16 and plain fp32 peaks, SXM parts.
  struct Row {
    const char* match;
    double bf16, fp32;
  };
  static const Row kTable[] = {
      {"H200", 989.4e12, 66.9e12}, {"H100", 989.4e12, 66.9e12}, {"A100", 312e12, 19.5e12},
      {"L40S", 362e12, 91.6e12},   {"A10", 125e12, 31.2e12},    {"L4", 121e12, 30.3e12},
  };
  for (const Row& r : kTable) {
    if (absl::StrContains(model, r.match)) return precision == "bf16" ? r.bf16 : r.fp32;
  }
  return 0;
}

double CpuPeakFlops(int cores) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  double mhz = 0;
  bool avx512 = false, avx2 = false, fma = false;
  while (std::getline(in, line)) {
    if (mhz == 0 && absl::StartsWith(line, "cpu MHz")) {
      auto colon = line.find(':');
      if (colon != std::string::npos) {
        (void)absl::SimpleAtod(absl::StripAsciiWhitespace(line.substr(colon + 1)), &mhz);
      }
    }
    if (absl::StartsWith(line, "flags")) {
      avx512 = avx512 || absl::StrContains(line, " avx512f");
      avx2 = avx2 || absl::StrContains(line, " avx2");
      fma = fma || absl::StrContains(line, " fma");
    }
  }
  if (mhz <= 0) mhz = 2000;
  // fp32 FLOPs per cycle per core: 2 FMA pipes x lanes x 2 (multiply + add).
  double per_cycle = avx512 ? 64 : (avx2 && fma ? 32 : 16);
  return std::max(1, cores) * mhz * 1e6 * per_cycle;
}

int64_t GpuMemoryUsedByProcess(const std::string& uuid, int pid) {
  Nvml& n = GetNvml();
  if (!n.ok || uuid.empty()) return -1;
  void* dev = nullptr;
  if (n.by_uuid(uuid.c_str(), &dev) != 0) return -1;
  Nvml::ProcessInfo infos[64];
  unsigned int count = 64;
  if (n.running(dev, &count, infos) != 0) return -1;
  for (unsigned int i = 0; i < count && i < 64; ++i) {
    if (static_cast<int>(infos[i].pid) == pid) {
      return static_cast<int64_t>(infos[i].used_gpu_memory);
    }
  }
  return -1;
}

}  // namespace llmt::daemon
