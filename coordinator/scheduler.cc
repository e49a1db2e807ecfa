#include "coordinator/scheduler.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace llmt::coord {

std::string Describe(const GangRequest& req) {
  std::string r = absl::StrCat(req.ranks, req.ranks == 1 ? " rank" : " ranks", " x ");
  if (req.gpus_per_rank > 0) {
    return absl::StrCat(r, req.gpus_per_rank, req.gpus_per_rank == 1 ? " GPU" : " GPUs");
  }
  return absl::StrCat(r, req.cpus_per_rank, req.cpus_per_rank == 1 ? " CPU core" : " CPU cores");
}

int RanksThatFit(const GangRequest& req, const WorkerFree& w) {
  if (req.gpus_per_rank > 0) return static_cast<int>(w.free_gpus.size()) / req.gpus_per_rank;
  int c = std::max(1, req.cpus_per_rank);
  return w.free_cpus / c;
}

std::optional<std::vector<RankSlot>> PlaceGang(const GangRequest& req,
                                               const std::vector<WorkerFree>& workers) {
  if (req.ranks <= 0) return std::nullopt;
  struct Cand {
    const WorkerFree* w;
    int fit;
  };
  std::vector<Cand> cands;
  int total = 0;
  for (const auto& w : workers) {
    int fit = RanksThatFit(req, w);
    if (fit > 0) {
      cands.push_back({&w, fit});
      total += fit;
    }
  }
  if (total < req.ranks) return std::nullopt;

  std::vector<std::pair<const WorkerFree*, int>> plan;  // worker, ranks on it
  const Cand* best = nullptr;
  for (const auto& c : cands) {
    if (c.fit < req.ranks) continue;
    if (best == nullptr || c.fit < best->fit ||
        (c.fit == best->fit && c.w->worker_id < best->w->worker_id)) {
      best = &c;
    }
  }
  if (best != nullptr) {
    plan.emplace_back(best->w, req.ranks);
  } else {
    std::sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
      return a.fit != b.fit ? a.fit > b.fit : a.w->worker_id < b.w->worker_id;
    });
    int left = req.ranks;
    for (const auto& c : cands) {
      int take = std::min(left, c.fit);
      plan.emplace_back(c.w, take);
      left -= take;
      if (left == 0) break;
    }
  }

  std::vector<RankSlot> slots;
  for (const auto& [w, n] : plan) {
    size_t next_gpu = 0;
    for (int i = 0; i < n; ++i) {
      RankSlot s;
      s.worker_id = w->worker_id;
      if (req.gpus_per_rank > 0) {
        for (int g = 0; g < req.gpus_per_rank; ++g) s.gpus.push_back(w->free_gpus[next_gpu++]);
      } else {
        s.cpus = std::max(1, req.cpus_per_rank);
      }
      slots.push_back(std::move(s));
    }
  }
  return slots;
}

namespace {

// Adds the resources of `slots` back to `free` (by worker id).
void Release(const std::vector<RankSlot>& slots, std::map<std::string, WorkerFree>* free) {
  for (const auto& s : slots) {
    WorkerFree& w = (*free)[s.worker_id];
    w.worker_id = s.worker_id;
    w.free_gpus.insert(w.free_gpus.end(), s.gpus.begin(), s.gpus.end());
    std::sort(w.free_gpus.begin(), w.free_gpus.end());
    w.free_cpus += s.cpus;
  }
}

std::vector<WorkerFree> Values(const std::map<std::string, WorkerFree>& m) {
  std::vector<WorkerFree> v;
  for (const auto& [id, w] : m) v.push_back(w);
  return v;
}

}  // namespace

std::optional<std::vector<uint64_t>> ChoosePreemptionVictims(
    const GangRequest& req, int priority, const std::vector<WorkerFree>& free,
    const std::vector<RunningGang>& running) {
  if (PlaceGang(req, free)) return std::vector<uint64_t>{};
  std::vector<const RunningGang*> cands;
  for (const auto& g : running) {
    if (g.priority < priority) cands.push_back(&g);
  }
  std::sort(cands.begin(), cands.end(), [](const RunningGang* a, const RunningGang* b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    if (a->create_time_us != b->create_time_us) return a->create_time_us > b->create_time_us;
    return a->attempt_id > b->attempt_id;
  });
  auto fits_after_stopping = [&](const std::vector<const RunningGang*>& stopped) {
    std::map<std::string, WorkerFree> sim;
    for (const auto& w : free) sim[w.worker_id] = w;
    for (const RunningGang* g : stopped) Release(g->slots, &sim);
    return PlaceGang(req, Values(sim)).has_value();
  };
  std::vector<const RunningGang*> chosen;
  for (const RunningGang* g : cands) {
    chosen.push_back(g);
    if (!fits_after_stopping(chosen)) continue;
    // Drop victims that turned out unnecessary, trying the most valuable
    // (last chosen) first.
    for (int i = static_cast<int>(chosen.size()) - 1; i >= 0; --i) {
      std::vector<const RunningGang*> without = chosen;
      without.erase(without.begin() + i);
      if (fits_after_stopping(without)) chosen = std::move(without);
    }
    std::vector<uint64_t> ids;
    for (const RunningGang* v : chosen) ids.push_back(v->attempt_id);
    return ids;
  }
  return std::nullopt;
}

}  // namespace llmt::coord
