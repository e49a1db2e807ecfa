// Commands that run on this machine without daemons: prepare, train, eval, sample.
// Each returns the process exit code: 0 ok, 1 failure, 2 bad usage or bad spec.
#pragma once

namespace llmt::cli {

int RunPrepare(int argc, char** argv);
int RunTrain(int argc, char** argv);
int RunEval(int argc, char** argv);
int RunSample(int argc, char** argv);

// Resolves DIR to one checkpoint: DIR itself if it holds manifest.json, else the
// newest valid checkpoint under DIR/checkpoints or DIR.
}  // namespace llmt::cli
