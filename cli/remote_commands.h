// Commands that talk to an llmt coordinator over gRPC: submit, get, list,
// watch, cancel, checkpoints, logs, queue, workers.
//
// Connection: --coordinator HOST:PORT (else $LLMT_COORDINATOR, else
// 127.0.0.1:7070); bearer token from --token-file FILE (else $LLMT_TOKEN, else
// the file named by $LLMT_TOKEN_FILE); --tls, --tls-ca, --tls-cert, --tls-key,
// --tls-server-name; --timeout SECONDS per call (default 10).
//
// Exit codes (errors print one line "llmt: error: ..." on stderr):
//   0  success (watch: the job SUCCEEDED)
//   1  any other failure
//   2  bad usage, or the spec was rejected (the coordinator's field-level message)
//   3  the coordinator is unreachable (or did not answer in time)
//   4  authentication or permission failure (missing or wrong token)
//   5  the job (or checkpoint) does not exist
//   6  the coordinator refused the request (no worker could ever hold the job,
//      request id reused with another spec, job already finished)
//   10 watch: the job FAILED
//   11 watch: the job was CANCELLED
#pragma once

namespace llmt::cli {

// True if `cmd` is one of the remote commands.
bool IsRemoteCommand(const char* cmd);
// Runs argv[1] (a remote command) and returns the exit code.
int RunRemote(int argc, char** argv);

}  // namespace llmt::cli
