// llmt: the command-line entry point. Local commands (prepare, train, eval,
// sample) run the engine in this process; remote commands talk to a
// coordinator over gRPC.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/local_commands.h"

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
  std::fprintf(stderr, "llmt: unknown command '%s'\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
