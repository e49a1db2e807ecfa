// Gang placement, free of any service state so it can be tested table-driven.
// A job asks for N ranks, each needing G GPUs (GPU job) or C CPU cores (CPU
// job, G = 0); all ranks are placed or none. A rank lives on one worker;
// several ranks may share a worker.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llmt::coord {

struct GangRequest {
  int ranks = 1;
  int gpus_per_rank = 0;  // 0 = CPU ranks
  int cpus_per_rank = 1;
};

// What one worker has left (or, for feasibility checks, in total).
struct WorkerFree {
  std::string worker_id;
  std::vector<int32_t> free_gpus;  // GPU indices, ascending
  int32_t free_cpus = 0;
};

struct RankSlot {
  std::string worker_id;
  std::vector<int32_t> gpus;
  int32_t cpus = 0;
};

// "2 ranks x 4 GPUs" / "3 ranks x 2 CPU cores".
std::string Describe(const GangRequest& req);

// How many ranks of `req` fit on `w`.
int RanksThatFit(const GangRequest& req, const WorkerFree& w);

// All-or-nothing placement; nullopt when the gang does not fit. Policy: if one
// worker can hold the whole gang, the tightest such worker (best fit keeps
// big workers free for big gangs); otherwise the fewest workers, largest
// first, so ranks stay together. Ties break by worker id; rank r goes to
// slots in that order; GPUs are the lowest free indices.
std::optional<std::vector<RankSlot>> PlaceGang(const GangRequest& req,
                                               const std::vector<WorkerFree>& workers);

// A gang currently holding resources, as a preemption candidate.
struct RunningGang {
  uint64_t attempt_id = 0;
  uint64_t job_id = 0;
  int priority = 0;
  int64_t create_time_us = 0;
  std::vector<RankSlot> slots;
};

// Preemption for a job of `priority` that does not fit in `free`. Returns the
// attempts to stop (lowest priority first, then newest first) so that the
// gang fits once they release their resources, an empty vector when the gang
// already fits in `free` (nothing to preempt), or nullopt when even stopping
// every lower-priority gang would not make room.
std::optional<std::vector<uint64_t>> ChoosePreemptionVictims(
    const GangRequest& req, int priority, const std::vector<WorkerFree>& free,
    const std::vector<RunningGang>& running);

}  // namespace llmt::coord
