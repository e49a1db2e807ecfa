#include "worker/comm/group.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string Seconds(Clock::duration d) {
  return absl::StrFormat("%.2f s", std::chrono::duration<double>(d).count());
}

}  // namespace

absl::StatusOr<std::vector<std::string>> JoinGroup(Store* store, int rank, int world,
                                                   milliseconds timeout) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  RETURN_IF_ERROR(Annotate(
      store->Set(absl::StrCat("present/", rank), absl::StrCat("pid ", getpid(), " on ", host)),
      absl::StrCat("rendezvous of rank ", rank, " via ", store->Describe())));
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(absl::StrCat("present/", r));
  absl::Status s = store->Wait(keys, timeout);
  if (!s.ok()) {
    if (!absl::IsDeadlineExceeded(s)) {
      return Annotate(s, absl::StrCat("rendezvous of rank ", rank, " via ", store->Describe()));
    }
    std::vector<int> missing;
    for (int r = 0; r < world; ++r) {
      if (!store->Get(keys[r], milliseconds(0)).ok()) missing.push_back(r);
    }
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous: rank(s) ", absl::StrJoin(missing, ", "), " of ", world,
                     " did not join within ", Seconds(timeout), " via ", store->Describe(),
                     " (were they started, with the same WORLD_SIZE and store address?)"));
  }
  std::vector<std::string> info(world);
  for (int r = 0; r < world; ++r) {
    absl::StatusOr<std::string> v = store->Get(keys[r], timeout);
    info[r] = v.ok() ? *v : "unknown process";
  }
  return info;
}

milliseconds DiagnosisGrace(milliseconds timeout) {
  milliseconds g = std::clamp<milliseconds>(timeout / 10, milliseconds(100), milliseconds(2000));
  return std::min(g, timeout / 2);
}

std::string DiagnosePeers(Store* store, int rank, int world, uint64_t seq, const std::string& op,
                          const std::string& error, milliseconds grace,
                          const std::vector<std::string>& peer_info) {
  const auto deadline = Clock::now() + grace;
  absl::Status s =
      store->Set(absl::StrCat("fail/", rank), absl::StrCat(seq, "\n", op, "\n", error));
  if (!s.ok()) {
    return absl::StrCat("The rendezvous store is unreachable too (", s.message(),
                        "), so the failed peer is unknown; when rank 0 hosts the store, rank 0 "
                        "has probably died.");
  }
  auto name = [&](int r) {
    return r < static_cast<int>(peer_info.size())
               ? absl::StrCat("rank ", r, " (", peer_info[r], ")")
               : absl::StrCat("rank ", r);
  };
  std::vector<std::string> silent, desync;
  std::vector<int> same;
  for (int r = 0; r < world; ++r) {
    if (r == rank) continue;
    auto left = std::max(milliseconds(0),
                         std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
    absl::StatusOr<std::string> v = store->Get(absl::StrCat("fail/", r), left);
    if (absl::IsDeadlineExceeded(v.status())) {
      silent.push_back(name(r));
      continue;
    }
    if (!v.ok()) {
      return absl::StrCat("Could not ask the other ranks through the rendezvous store (",
                          v.status().message(),
                          "); when rank 0 hosts the store, rank 0 has probably died.");
    }
    std::vector<std::string> parts = absl::StrSplit(*v, absl::MaxSplits('\n', 2));
    uint64_t their_seq = 0;
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[0], &their_seq) && their_seq != seq) {
      desync.push_back(
          absl::StrCat("rank ", r, " failed in collective #", their_seq, " (", parts[1], ")"));
    } else {
      same.push_back(r);
    }
  }
  std::vector<std::string> sentences;
  if (!silent.empty()) {
    sentences.push_back(absl::StrCat(silent.size() == 1 ? "Peer " : "Peers ",
                                     absl::StrJoin(silent, ", "), " did not report within ",
                                     Seconds(grace), ": died, hung, or busy outside collectives."));
  }
  if (!same.empty()) {
    sentences.push_back(absl::StrCat(same.size() == 1 ? "Rank " : "Ranks ",
                                     absl::StrJoin(same, ", "), " failed in the same collective."));
  }
  if (!desync.empty()) {
    sentences.push_back(absl::StrCat(absl::StrJoin(desync, "; "),
                                     ": the ranks issued different collective sequences."));
  }
  return absl::StrJoin(sentences, " ");
}

}  // namespace llmt::comm
