// llmt: the command-line entry point. Local commands (prepare, train, eval,
// sample) run the engine in this process; remote commands talk to a
// coordinator over gRPC.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/local_commands.h"
#ifdef LLMT_WITH_SERVICES
#include "cli/remote_commands.h"
#endif

namespace {

void Usage(FILE* out) {
  std::fputs(
      "usage: llmt <command> [args]   (llmt <command> --help for details)\n\n"
      "local commands:\n"
      "  prepare   train a tokenizer, clean, deduplicate and shard a corpus\n"
      "  train     train a model from a spec (YAML) on this machine\n"
      "  eval      validation loss and perplexity of a checkpoint\n"
      "  sample    generate text from a checkpoint\n",
      out);
#ifdef LLMT_WITH_SERVICES
  std::fputs(
      "\nremote commands (a coordinator: --coordinator or LLMT_COORDINATOR):\n"
      "  submit       submit a training job from a spec; prints its name\n"
      "  get          show a job: state, progress, attempts, latest checkpoint\n"
      "  list         list jobs (--state)\n"
      "  watch        follow a job with a progress bar until it ends\n"
      "  cancel       cancel a job\n"
      "  checkpoints  list a job's checkpoints\n"
      "  logs         print a job's trainer output (-f to follow)\n"
      "  queue        pending jobs and why they wait\n"
      "  workers      registered workers\n",
      out);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  if (cmd == "prepare") return llmt::cli::RunPrepare(argc, argv);
  if (cmd == "train") return llmt::cli::RunTrain(argc, argv);
  if (cmd == "eval") return llmt::cli::RunEval(argc, argv);
  if (cmd == "sample") return llmt::cli::RunSample(argc, argv);
#ifdef LLMT_WITH_SERVICES
  if (llmt::cli::IsRemoteCommand(cmd.c_str())) return llmt::cli::RunRemote(argc, argv);
#endif
  std::fprintf(stderr, "llmt: unknown command '%s'\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
