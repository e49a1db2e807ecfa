// `llmt train --nproc N`: runs N local ranks of the same command as child
// processes (torchrun-style env: WORLD_SIZE, RANK, LOCAL_RANK, plus a
// FileStore rendezvous dir) and supervises them: SIGTERM/SIGINT are forwarded;
// if one rank dies, the others fail their next collective (Gloo notices the
// closed connection, or the per-call timeout expires) and exit; any rank still
// running after the collective timeout plus a grace period is killed, so the
// launcher never hangs.
#pragma once

#include <string>
#include <vector>

namespace llmt::cli {

// `child_argv` is the full command line for each rank (argv[0] is replaced by
// this executable). Returns the exit code: 0 if every rank succeeded.
int LaunchLocalRanks(int nproc, const std::vector<std::string>& child_argv);

}  // namespace llmt::cli
