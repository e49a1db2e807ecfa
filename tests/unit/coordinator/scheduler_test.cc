#include "coordinator/scheduler.h"

#include "gtest/gtest.h"

namespace llmt::coord {
namespace {

WorkerFree W(const std::string& id, int gpus, int cpus = 0, int first_gpu = 0) {
  WorkerFree w;
  w.worker_id = id;
  for (int i = 0; i < gpus; ++i) w.free_gpus.push_back(first_gpu + i);
  w.free_cpus = cpus;
  return w;
}

// Placement as "worker:gpus" per rank, e.g. {"a:0,1", "b:0,1"}; CPU ranks "a:c2".
std::vector<std::string> Show(const std::optional<std::vector<RankSlot>>& p) {
  std::vector<std::string> out;
  if (!p) return {"none"};
  for (const auto& s : *p) {
    std::string t = s.worker_id + ":";
    if (s.gpus.empty()) {
      t += "c" + std::to_string(s.cpus);
    } else {
      for (size_t i = 0; i < s.gpus.size(); ++i) t += (i ? "," : "") + std::to_string(s.gpus[i]);
    }
    out.push_back(t);
  }
  return out;
}

struct PlaceCase {
  const char* name;
  GangRequest req;
  std::vector<WorkerFree> workers;
  std::vector<std::string> want;
};

TEST(SchedulerTest, PlaceGangTable) {
  const std::vector<PlaceCase> cases = {
      {"single rank fits", {1, 1, 1}, {W("a", 2)}, {"a:0"}},
      {"gang on one worker", {2, 2, 1}, {W("a", 4)}, {"a:0,1", "a:2,3"}},
      {"best fit picks the tightest worker",
       {1, 2, 1},
       {W("big", 8), W("small", 2)},
       {"small:0,1"}},
      {"best fit tie breaks by id", {1, 2, 1}, {W("b", 4), W("a", 4)}, {"a:0,1"}},
      {"gang spans workers, largest first",
       {3, 2, 1},
       {W("a", 2), W("b", 4)},
       {"b:0,1", "b:2,3", "a:0,1"}},
      {"all or nothing: not enough in total", {3, 2, 1}, {W("a", 2), W("b", 2)}, {"none"}},
      {"fragmented GPUs do not make a rank", {2, 2, 1}, {W("a", 1), W("b", 1), W("c", 3)},
       {"none"}},
      {"uses the free indices", {1, 2, 1}, {W("a", 2, 0, 6)}, {"a:6,7"}},
      {"cpu ranks use cores", {2, 0, 4}, {W("a", 0, 8)}, {"a:c4", "a:c4"}},
      {"cpu ranks spread when needed", {3, 0, 4}, {W("a", 0, 8), W("b", 0, 6)},
       {"a:c4", "a:c4", "b:c4"}},
      {"gpu job ignores cores", {1, 1, 1}, {W("a", 0, 64)}, {"none"}},
      {"cpu job can use a GPU worker's cores", {1, 0, 2}, {W("g", 8, 16)}, {"g:c2"}},
      {"no workers", {1, 0, 1}, {}, {"none"}},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(Show(PlaceGang(c.req, c.workers)), c.want) << c.name;
  }
}

TEST(SchedulerTest, DescribeNamesTheShape) {
  EXPECT_EQ(Describe({2, 4, 1}), "2 ranks x 4 GPUs");
  EXPECT_EQ(Describe({1, 1, 1}), "1 rank x 1 GPU");
  EXPECT_EQ(Describe({3, 0, 2}), "3 ranks x 2 CPU cores");
}

RunningGang G(uint64_t attempt, int prio, int64_t t, std::vector<RankSlot> slots) {
  RunningGang g;
  g.attempt_id = attempt;
  g.job_id = attempt;
  g.priority = prio;
  g.create_time_us = t;
  g.slots = std::move(slots);
  return g;
}

RankSlot S(const std::string& w, std::vector<int32_t> gpus) {
  RankSlot s;
  s.worker_id = w;
  s.gpus = std::move(gpus);
  return s;
}

struct PreemptCase {
  const char* name;
  GangRequest req;
  int priority;
  std::vector<WorkerFree> free;
  std::vector<RunningGang> running;
  std::optional<std::vector<uint64_t>> want;
};

TEST(SchedulerTest, PreemptionVictimsTable) {
  // One worker "a" with 4 GPUs, all busy unless stated.
  const std::vector<PreemptCase> cases = {
      {"fits already: nothing to preempt", {1, 2, 1}, 5, {W("a", 2)}, {}, std::vector<uint64_t>{}},
      {"lowest priority goes first",
       {1, 2, 1},
       5,
       {W("a", 0)},
       {G(1, 1, 100, {S("a", {0, 1})}), G(2, 0, 100, {S("a", {2, 3})})},
       std::vector<uint64_t>{2}},
      {"same priority: newest goes first",
       {1, 2, 1},
       5,
       {W("a", 0)},
       {G(1, 0, 100, {S("a", {0, 1})}), G(2, 0, 200, {S("a", {2, 3})})},
       std::vector<uint64_t>{2}},
      {"never preempts equal or higher priority",
       {1, 2, 1},
       5,
       {W("a", 0)},
       {G(1, 5, 100, {S("a", {0, 1})}), G(2, 7, 100, {S("a", {2, 3})})},
       std::nullopt},
      {"several victims when one is not enough",
       {1, 4, 1},
       5,
       {W("a", 0)},
       {G(1, 0, 100, {S("a", {0, 1})}), G(2, 0, 200, {S("a", {2, 3})})},
       std::vector<uint64_t>{2, 1}},
      {"unneeded victims are spared",
       // Stopping the newest (3, on worker b) does not help a gang that needs
       // 4 GPUs on one worker; stopping 1 and 2 (worker a) does, so 3 stays.
       {1, 4, 1},
       5,
       {W("a", 0), W("b", 0)},
       {G(1, 0, 100, {S("a", {0, 1})}), G(2, 0, 200, {S("a", {2, 3})}),
        G(3, 0, 300, {S("b", {0, 1})})},
       std::vector<uint64_t>{2, 1}},
      {"not enough even with every victim",
       {2, 4, 1},
       5,
       {W("a", 0)},
       {G(1, 0, 100, {S("a", {0, 1, 2, 3})})},
       std::nullopt},
  };
  for (const auto& c : cases) {
    auto got = ChoosePreemptionVictims(c.req, c.priority, c.free, c.running);
    ASSERT_EQ(got.has_value(), c.want.has_value()) << c.name;
    if (got) {
      auto g = *got, w = *c.want;
      std::sort(g.begin(), g.end());
      std::sort(w.begin(), w.end());
      EXPECT_EQ(g, w) << c.name;
    }
  }
}

}  // namespace
}  // namespace llmt::coord
