// qcow2j: the command line, compatible with qemu-img (info, map, create,
// convert, compare, resize, snapshot, bench, check, commit, rebase, amend,
// measure) and qemu-io (io).
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/cli/cli.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* synopsis;
};

constexpr Command kCommands[] = {
    {"info", qcow2j::cli::CmdInfo,
     "info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename"},
    {"map", qcow2j::cli::CmdMap,
     "map [-f fmt] [--output=human|json] [--start-offset=N] [--max-length=N] filename"},
    {"create", qcow2j::cli::CmdCreate,
     "create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] filename [size]"},
    {"convert", qcow2j::cli::CmdConvert,
     "convert [-f fmt] [-O output_fmt] [-l snapshot] [-c] [-o options] [-t cache] [-T src_cache] "
     "[-p] [-q] [-n] [-S sparse_size] [-m num] [-W] src dst"},
    {"compare", qcow2j::cli::CmdCompare, "compare [-f fmt] [-F fmt] [-s] [-q] [-U] file1 file2"},
    {"resize", qcow2j::cli::CmdResize, "resize [-f fmt] [--shrink] filename [+ | -]size"},
    {"snapshot", qcow2j::cli::CmdSnapshot, "snapshot [-U] -l filename"},
    {"bench", qcow2j::cli::CmdBench,
     "bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [--no-drain] [-o offset] "
     "[--pattern=N] [-q] [-s size] [-S step] [-t cache] [-i aio] [-w] [-U] filename"},
    {"check", qcow2j::cli::CmdCheck,
     "check [-r leaks|all] [--output=human|json] [-p] [-q] [-f fmt] [-U] filename"},
    {"commit", qcow2j::cli::CmdCommit,
     "commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename"},
    {"rebase", qcow2j::cli::CmdRebase,
     "rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file "
     "[-F backing_fmt] filename"},
    {"amend", qcow2j::cli::CmdAmend, "amend [-p] [-q] [-f fmt] [-t cache] -o options filename"},
    {"measure", qcow2j::cli::CmdMeasure,
     "measure [--output=human|json] [-O output_fmt] [-o options] "
     "[--size N | [-f fmt] [-l snapshot_param] filename]"},
    {"crashtest", qcow2j::cli::CmdCrashtest, "crashtest [--states N] [--seed S] [--model prefix|subset|torn|all] [--replay RUN_SEED]"},
    {"io", qcow2j::cli::CmdIo,
     "io [-f fmt] [-c command]... [-r] [-n] [-t cache] [-U] filename  (qemu-io commands)"},
};

void Usage(FILE* out) {
  std::fprintf(out, "usage: qcow2j COMMAND [options]\n\nCommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %s\n", c.synopsis);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    qcow2j::cli::PrintError("Not enough arguments\nTry 'qcow2j --help' for more information");
    return 1;
  }
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("qcow2j version 0.1.0\n");
    return 0;
  }
  for (const Command& c : kCommands) {
    // Each command sees argv[0] = its own name, as getopt expects.
    if (cmd == c.name) return c.run(argc - 1, argv + 1);
  }
  qcow2j::cli::PrintError("Command not found: " + cmd);
  return 1;
}
