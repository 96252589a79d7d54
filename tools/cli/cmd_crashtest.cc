// qcow2j crashtest: runs the crash-consistency properties (RunCrashTest) and
// ends with "N crash states, M violations"; exit 1 when M > 0, 2 on usage.
#include <getopt.h>

#include <cstdio>
#include <string>

#include "qcow2j/crashtest.h"
#include "tools/cli/args.h"
#include "tools/cli/cli.h"

namespace qcow2j::cli {

int CmdCrashtest(int argc, char** argv) {
  CrashTestOptions o;
  bool verbose = false;
  enum { kStates = 256, kSeed, kModel, kReplay, kOps, kPerRun, kQemuEvery, kReuseEvery, kMaxViol, kDump, kCluster, kJobs };
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"states", required_argument, nullptr, kStates},
                                 {"seed", required_argument, nullptr, kSeed},
                                 {"model", required_argument, nullptr, kModel},
                                 {"replay", required_argument, nullptr, kReplay},
                                 {"ops", required_argument, nullptr, kOps},
                                 {"states-per-run", required_argument, nullptr, kPerRun},
                                 {"qemu-check-every", required_argument, nullptr, kQemuEvery},
                                 {"reuse-every", required_argument, nullptr, kReuseEvery},
                                 {"max-violations", required_argument, nullptr, kMaxViol},
                                 {"dump", required_argument, nullptr, kDump},
                                 {"cluster-size", required_argument, nullptr, kCluster},
                                 {"jobs", required_argument, nullptr, kJobs},
                                 {"verbose", no_argument, nullptr, 'v'},
                                 {nullptr, 0, nullptr, 0}};
  o.qemu_check_every = 100;
  ResetGetopt();
  int c;
  auto number = [](const char* name, uint64_t* out) {
    auto v = ParseUint(optarg);
    if (!v.ok()) {
      PrintErrorF("Invalid %s '%s'", name, optarg);
      return false;
    }
    *out = *v;
    return true;
  };
  uint64_t tmp = 0;
  while ((c = getopt_long(argc, argv, ":hv", kLong, nullptr)) != -1) {
    switch (c) {
      case kStates: if (!number("state count", &o.states)) return 2; break;
      case kSeed: if (!number("seed", &o.seed)) return 2; break;
      case kReplay: if (!number("run seed", &o.replay_run_seed)) return 2; break;
      case kOps:
        if (!number("request count", &tmp) || tmp > 100000) return 2;
        o.ops_per_run = static_cast<uint32_t>(tmp);
        break;
      case kPerRun:
        if (!number("states per run", &tmp) || tmp == 0 || tmp > 100000) return 2;
        o.states_per_run = static_cast<uint32_t>(tmp);
        break;
      case kQemuEvery: if (!number("qemu-img check interval", &o.qemu_check_every)) return 2; break;
      case kReuseEvery: if (!number("reuse interval", &o.reuse_every)) return 2; break;
      case kMaxViol: if (!number("violation limit", &o.max_violations)) return 2; break;
      case kJobs:
        if (!number("job count", &tmp) || tmp == 0 || tmp > 256) return 2;
        o.jobs = static_cast<uint32_t>(tmp);
        break;
      case kModel: {
        std::string m = optarg;
        if (m == "all") {
          o.models = {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn};
        } else {
          CrashModel cm;
          if (!ParseCrashModel(m, &cm)) {
            PrintError("Invalid model '" + m + "' (prefix, subset, torn or all)");
            return 2;
          }
          o.models = {cm};
        }
        break;
      }
      case kDump: o.dump_dir = optarg; break;
      case kCluster: {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v < 512 || *v > (2u << 20) || (*v & (*v - 1))) {
          PrintErrorF("Invalid cluster size '%s'", optarg);
          return 2;
        }
        o.cluster_sizes.push_back(static_cast<uint32_t>(*v));
        break;
      }
      case 'v': verbose = true; break;
      case 'h':
        std::printf("usage: qcow2j crashtest [--states N] [--seed S] [--model prefix|subset|torn|all]\n"
                    "         [--replay RUN_SEED] [--ops N] [--states-per-run N]\n"
                    "         [--qemu-check-every N] [--reuse-every N] [--max-violations N] [--dump DIR]\n"
                    "         [--cluster-size SIZE]... [--jobs N] [-v]\n");
        return 0;
      case ':': PrintErrorF("option '%s' needs an argument", argv[optind - 1]); return 2;
      default: PrintErrorF("unrecognized option '%s'", argv[optind - 1]); return 2;
    }
  }
  if (optind != argc) {
    PrintErrorF("unexpected argument '%s'", argv[optind]);
    return 2;
  }
  o.log = [verbose](const std::string& line) {
    // Violations always; progress only with -v.
    if (verbose || line.rfind("VIOLATION", 0) == 0 || line.rfind("crashtest: seed", 0) == 0) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  };
  CrashTestResult r = RunCrashTest(o);
  std::printf("seed %llu: %llu runs; states by model: prefix %llu, subset %llu, torn %llu; "
              "%llu with leaks; %llu qemu-img checks; %llu reused read-write; %llu recoveries crashed\n",
              static_cast<unsigned long long>(r.seed), static_cast<unsigned long long>(r.runs),
              static_cast<unsigned long long>(r.states_by_model[0]),
              static_cast<unsigned long long>(r.states_by_model[1]),
              static_cast<unsigned long long>(r.states_by_model[2]),
              static_cast<unsigned long long>(r.leaky_states),
              static_cast<unsigned long long>(r.qemu_checks),
              static_cast<unsigned long long>(r.reused),
              static_cast<unsigned long long>(r.recovery_crashes));
  if (r.violations) {
    std::printf("first violation: run seed %llu\n%s\n",
                static_cast<unsigned long long>(r.failing_run_seed), r.failure.c_str());
  }
  std::printf("%llu crash states, %llu violations\n", static_cast<unsigned long long>(r.states),
              static_cast<unsigned long long>(r.violations));
  return r.violations ? 1 : 0;
}

}  // namespace qcow2j::cli
