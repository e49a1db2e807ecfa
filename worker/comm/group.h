// Store-based group membership and failure diagnosis shared by the Gloo and
// NCCL backends. Neither transport can say which peer rank is gone (Gloo's
// errors name socket addresses, NCCL's name nothing), so both ask the Store.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/comm/store.h"

namespace llmt::comm {

// Announces `rank` ("pid P on HOST") under "present/<rank>" and waits up to
// `timeout` for all `world` ranks. Returns each rank's announcement, or
// DEADLINE_EXCEEDED naming the ranks that never joined.
absl::StatusOr<std::vector<std::string>> JoinGroup(Store* store, int rank, int world,
                                                   std::chrono::milliseconds timeout);

// How long a failed rank waits for the others' failure reports: a tenth of the
// collective timeout, within [100 ms, 2 s] and at most half of it. Backends run
// their transport calls with `timeout - grace` so that a failure, diagnosis
// included, is reported within `timeout`.
std::chrono::milliseconds DiagnosisGrace(std::chrono::milliseconds timeout);

// After collective #seq (`op`) failed on `rank` with `error`: publishes
// "fail/<rank>", waits up to `grace` for every other rank's report and returns
// a sentence for the error message naming the ranks that did not report (dead
// or hung), those that failed in the same collective, and those that failed in
// a different one (the ranks' collective sequences diverged).
std::string DiagnosePeers(Store* store, int rank, int world, uint64_t seq, const std::string& op,
                          const std::string& error, std::chrono::milliseconds grace,
                          const std::vector<std::string>& peer_info);

}  // namespace llmt::comm
