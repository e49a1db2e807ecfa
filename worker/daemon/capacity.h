// What this machine offers to the scheduler: GPUs (found through the CUDA
// driver API, loaded at run time so the same binary runs on machines without
// a driver), CPU cores (the daemon's affinity mask) and memory; plus the peak
// FLOP rate used for llmt_mfu_ratio and per-process GPU memory (NVML).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmt/v1/job.pb.h"

namespace llmt::daemon {

// GPUs visible through libcuda (honours CUDA_VISIBLE_DEVICES). An empty list
// when there is no driver or no device; the reason is logged.
std::vector<v1::GpuInfo> DetectGpus();

// The CPU ids this process may run on (sched_getaffinity), ascending.
std::vector<int> AllowedCpus();

// Physical memory in bytes.
int64_t PhysicalMemoryBytes();

// Builds the capacity to register. `gpus_flag`: "auto" (detect), "none", or a
// comma-separated list of device indices to offer (each must be detected).
// `cpus`: cores offered to CPU ranks (0 = every allowed core).
absl::StatusOr<v1::WorkerCapacity> BuildCapacity(const std::string& gpus_flag, int cpus);

// Peak dense FLOP/s of one GPU model for `precision` ("bf16" or "fp32"), from
// vendor specifications; 0 if the model is not in the table.
double GpuPeakFlops(const std::string& model, const std::string& precision);

// Peak fp32 FLOP/s of `cores` CPU cores: cores x clock x FLOPs/cycle (two FMA
// units of 8 lanes with AVX2, of 16 lanes with AVX-512), from /proc/cpuinfo.
double CpuPeakFlops(int cores);

// GPU memory used by process `pid` on the GPU with `uuid` ("GPU-..." as in
// GpuInfo.uuid; NVML's indices differ from CUDA's, UUIDs do not); -1 when
// NVML is unavailable or the process holds no memory there.
int64_t GpuMemoryUsedByProcess(const std::string& uuid, int pid);

}  // namespace llmt::daemon
