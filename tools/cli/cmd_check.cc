// qcow2j check: qemu-img check's output, JSON and exit codes (0 clean,
// 1 check not completed, 2 corruptions, 3 leaks only), plus one line per
// problem and, in JSON, a "problems" array. `--salvage OUTPUT` copies what
// can be read into a new image instead (exit 0: nothing lost, 2: ranges
// lost, 1: failed).
#include <fcntl.h>
#include <getopt.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "qcow2j/check.h"
#include "qcow2j/image.h"
#include "tools/cli/cli.h"
#include "tools/cli/json_writer.h"
#include "tools/cli/progress.h"

namespace qcow2j::cli {

namespace {

// Whether the file starts with the qcow2 magic ("QFI\xfb").
bool LooksLikeQcow2(const std::string& path, bool* readable) {
  *readable = false;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  *readable = true;
  unsigned char m[4] = {};
  const bool ok = ::pread(fd, m, 4, 0) == 4 && m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' &&
                  m[3] == 0xfb;
  ::close(fd);
  return ok;
}

void PrintHuman(const CheckReport& r) {
  if (!(r.corruptions || r.leaks || r.check_errors)) {
    std::printf("No errors were found on the image.\n");
  } else {
    if (r.corruptions) {
      std::printf("\n%llu errors were found on the image.\n"
                  "Data may be corrupted, or further writes to the image may corrupt it.\n",
                  static_cast<unsigned long long>(r.corruptions));
    }
    if (r.leaks) {
      std::printf("\n%llu leaked clusters were found on the image.\n"
                  "This means waste of disk space, but no harm to data.\n",
                  static_cast<unsigned long long>(r.leaks));
    }
    if (r.check_errors) {
      std::printf("\n%llu internal errors have occurred during the check.\n",
                  static_cast<unsigned long long>(r.check_errors));
    }
  }
  if (r.total_clusters != 0 && r.allocated_clusters != 0) {
    std::printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                static_cast<unsigned long long>(r.allocated_clusters),
                static_cast<unsigned long long>(r.total_clusters),
                r.allocated_clusters * 100.0 / r.total_clusters,
                r.fragmented_clusters * 100.0 / r.allocated_clusters,
                r.compressed_clusters * 100.0 / r.allocated_clusters);
  }
  if (r.image_end_offset) {
    std::printf("Image end offset: %llu\n", static_cast<unsigned long long>(r.image_end_offset));
  }
}

// Repair names the image each range belongs to; salvage (active image only)
// says why each range was lost.
JsonValue LostToJson(const std::vector<LostRange>& ranges, bool salvage) {
  JsonValue lost = JsonValue::MakeArray();
  for (const LostRange& l : ranges) {
    JsonValue o = JsonValue::MakeObject();
    if (!salvage) o.Set("snapshot", l.snapshot);
    o.Set("guest-offset", l.guest_offset);
    o.Set("length", l.length);
    if (salvage) o.Set("reason", l.reason);
    lost.Append(std::move(o));
  }
  return lost;
}

JsonValue ToJson(const CheckReport& r) {
  JsonValue j = JsonValue::MakeObject();
  j.Set("filename", r.filename);
  j.Set("format", r.format);
  j.Set("check-errors", r.check_errors);
  // qemu-img omits each of these when it is zero.
  auto opt = [&](const char* key, uint64_t v) {
    if (v) j.Set(key, v);
  };
  opt("image-end-offset", r.image_end_offset);
  opt("corruptions", r.corruptions);
  opt("leaks", r.leaks);
  opt("corruptions-fixed", r.corruptions_fixed);
  opt("leaks-fixed", r.leaks_fixed);
  opt("total-clusters", r.total_clusters);
  opt("allocated-clusters", r.allocated_clusters);
  opt("fragmented-clusters", r.fragmented_clusters);
  opt("compressed-clusters", r.compressed_clusters);
  // Ours: each problem of the reported pass (QEMU has no such field).
  JsonValue problems = JsonValue::MakeArray();
  for (const CheckProblem& p : r.problems) {
    if (!p.counted) continue;
    JsonValue o = JsonValue::MakeObject();
    o.Set("kind", p.kind);
    o.Set("offset", p.offset);
    o.Set("message", p.message);
    problems.Append(std::move(o));
  }
  if (!problems.array().empty()) j.Set("problems", std::move(problems));
  if (!r.lost.empty()) j.Set("lost-ranges", LostToJson(r.lost, false));
  return j;
}

void PrintSalvageHuman(const SalvageReport& r) {
  using ull = unsigned long long;
  std::printf("Salvaged '%s' into '%s': %llu data clusters and %llu zero clusters copied, %llu "
              "clusters lost.\n",
              r.filename.c_str(), r.output.c_str(), static_cast<ull>(r.data_clusters),
              static_cast<ull>(r.zero_clusters), static_cast<ull>(r.lost_clusters));
  if (r.lost.empty()) {
    std::printf("No guest data was lost.\n");
  } else {
    std::printf("Lost guest ranges (they read as zeros in the new image):\n");
    for (const LostRange& l : r.lost) {
      std::printf("    offset 0x%llx length 0x%llx: %s\n", static_cast<ull>(l.guest_offset),
                  static_cast<ull>(l.length), l.reason.c_str());
    }
  }
  for (const std::string& n : r.notes) std::printf("Note: %s\n", n.c_str());
}

JsonValue SalvageToJson(const SalvageReport& r) {
  JsonValue j = JsonValue::MakeObject();
  j.Set("filename", r.filename);
  j.Set("output", r.output);
  j.Set("virtual-size", r.virtual_size);
  j.Set("cluster-size", r.cluster_size);
  j.Set("data-clusters", r.data_clusters);
  j.Set("zero-clusters", r.zero_clusters);
  j.Set("lost-clusters", r.lost_clusters);
  j.Set("lost-ranges", LostToJson(r.lost, true));
  JsonValue notes = JsonValue::MakeArray();
  for (const std::string& n : r.notes) notes.Append(n);
  j.Set("notes", std::move(notes));
  return j;
}

int Salvage(const std::string& path, const std::string& output, const std::string& format,
            bool quiet) {
  SalvageOptions so;
  auto result = SalvageImage(path, output, so);
  if (!result.ok()) {
    PrintErrorF("Salvage failed: %s", result.status().message().c_str());
    return 1;
  }
  if (!quiet) {
    if (format == "json") {
      std::printf("%s\n", SalvageToJson(*result).Pretty().c_str());
    } else {
      PrintSalvageHuman(*result);
    }
  }
  return result->lost.empty() ? 0 : 2;
}

}  // namespace

// Whether incompatible bit 16 (qcow2j journal) is set in the header.
static bool JournalPending(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  unsigned char b[80] = {};
  bool ok = std::fread(b, 1, sizeof b, f) == sizeof b;
  std::fclose(f);
  return ok && (b[77] & 0x01);  // bit 16 of the big-endian field at 72
}

int CmdCheck(int argc, char** argv) {
  std::string fmt, output = "human", salvage;
  bool quiet = false, progress = false;
  CheckOptions opts;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"format", required_argument, nullptr, 'f'},
                                 {"repair", required_argument, nullptr, 'r'},
                                 {"output", required_argument, nullptr, 'O'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {"salvage", required_argument, nullptr, 'S'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hf:r:T:pqU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'r':
        if (std::strcmp(optarg, "leaks") == 0) {
          opts.repair = RepairMode::kLeaks;
        } else if (std::strcmp(optarg, "all") == 0) {
          opts.repair = RepairMode::kAll;
        } else {
          PrintErrorF("Unknown option value for -r (expecting 'leaks' or 'all'): %s", optarg);
          return 1;
        }
        break;
      case 'O': output = optarg; break;
      case 'q': quiet = true; break;
      case 'p': progress = true; break;  // ours: qemu-img check has no -p
      case 'T': break;  // cache mode: the checker does its own I/O
      case 'U': break;  // the checker takes no lock
      case 'S': salvage = optarg; break;
      case 'h':
        std::printf(
            "usage: qcow2j check [-r leaks|all] [--output=human|json] [-p] [-q] [-f fmt] [-U] filename\n"
            "       qcow2j check --salvage=OUTPUT [--output=human|json] [-q] filename\n"
            "\n"
            "Checks a qcow2 image as qemu-img check does; -r leaks|all repairs it in place.\n"
            "Exit codes: 0 clean, 1 check not completed, 2 corruptions, 3 leaks only.\n"
            "\n"
            "--salvage=OUTPUT  when the metadata is too broken to repair in place: creates the\n"
            "                  new qcow2 image OUTPUT (it must not exist) with the same virtual\n"
            "                  size, cluster size and backing file, and copies into it every\n"
            "                  guest cluster of the active image whose L1/L2 entry, compressed\n"
            "                  descriptor and data are valid and readable. The damaged image is\n"
            "                  only read. Clusters whose entry is unreadable or invalid (reserved\n"
            "                  bits, unaligned, past the end of the file, pointing at metadata)\n"
            "                  or whose compressed data does not decompress are lost: they read\n"
            "                  as zeros in OUTPUT and are listed as lost guest ranges (JSON:\n"
            "                  \"lost-ranges\"). Snapshots and bitmaps are not copied.\n"
            "                  Exit codes: 0 nothing lost, 2 some ranges lost, 1 failed.\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (output != "human" && output != "json") {
    PrintError("--output must be used with human or json as argument.");
    return 1;
  }
  if (!ExpectOneImage(argc)) return 1;
  const std::string path = argv[optind];
  if (!salvage.empty()) {
    if (opts.repair != RepairMode::kNone) {
      PrintError("--salvage cannot be combined with -r: it never writes the damaged image");
      return 1;
    }
    if (!fmt.empty() && fmt != "qcow2") {
      PrintError("--salvage reads qcow2 images only");
      return 1;
    }
    return Salvage(path, salvage, output, quiet);
  }
  bool readable = false;
  const bool qcow2 = LooksLikeQcow2(path, &readable);
  if (!readable) {
    PrintErrorF("Could not open '%s': Could not open '%s': %s", path.c_str(), path.c_str(),
                std::strerror(errno));
    return 1;
  }
  if (!fmt.empty() && fmt != "qcow2" && fmt != "raw") {
    PrintErrorF("Unknown driver '%s'", fmt.c_str());
    return 1;
  }
  if (fmt == "raw" || (fmt.empty() && !qcow2)) {
    PrintError("This image format does not support checks");
    return 63;
  }
  opts.on_message = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  if (opts.repair != RepairMode::kNone && JournalPending(path)) {
    // Committed journal transactions first: the tables on disk are stale
    // until they are replayed (a read-write open does it, then closes the
    // journal). Only then is there anything to check.
    OpenOptions oo;
    oo.read_only = false;
    oo.format = "qcow2";
    auto img = Image::Open(path, oo);
    if (!img.ok()) {
      PrintErrorF("Could not replay the journal of '%s': %s", path.c_str(),
                  img.status().message().c_str());
      return 1;
    }
    const std::string report = (*img)->Info().recovery_report;
    Status cs = (*img)->Close();
    if (!cs.ok()) {
      PrintErrorF("Could not replay the journal of '%s': %s", path.c_str(), cs.message().c_str());
      return 1;
    }
    if (!quiet && !report.empty()) std::fprintf(stderr, "Recovery: %s\n", report.c_str());
  }
  // The bar and the JSON document would share stdout: -p is for humans.
  Progress bar(progress && !quiet && output == "human", 1.0);
  bar.Start();
  opts.on_progress = [&bar](double p) { bar.Set(p); };
  auto result = CheckImage(path, opts);
  bar.Set(100);
  bar.End();
  if (!result.ok()) {
    const Status& s = result.status();
    if (s.code() == Code::kIOError || s.code() == Code::kAborted) {
      PrintErrorF("Check failed: %s", s.message().c_str());
    } else {
      PrintErrorF("Could not open '%s': %s", path.c_str(), s.message().c_str());
    }
    return 1;
  }
  const CheckReport& r = *result;
  std::fflush(stderr);
  if (!quiet) {
    if (output == "json") {
      std::printf("%s\n", ToJson(r).Pretty().c_str());
    } else {
      if (r.corruptions_fixed || r.leaks_fixed) {
        std::printf("The following inconsistencies were found and repaired:\n\n"
                    "    %llu leaked clusters\n    %llu corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    static_cast<unsigned long long>(r.leaks_fixed),
                    static_cast<unsigned long long>(r.corruptions_fixed));
      }
      PrintHuman(r);
    }
  }
  if (r.check_errors) {
    PrintError("Check failed");
    return 1;
  }
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

}  // namespace qcow2j::cli
