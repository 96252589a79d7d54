// qcow2j map: qemu-img map, extents from Image::GetBlockStatus merged the
// way qemu-img merges them.
#include <getopt.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/map_format.h"

namespace qcow2j::cli {

namespace {

// Prints one merged extent; returns false after printing an error.
bool Dump(bool json, bool first, const BlockStatus& e) {
  if (json) {
    std::printf("%s%s", first ? "" : ",\n", MapEntryJson(e).c_str());
    return true;
  }
  auto line = MapEntryHuman(e);
  if (!line.ok()) {
    PrintError(line.status().message());
    return false;
  }
  std::fputs(line->c_str(), stdout);
  return true;
}

}  // namespace

int CmdMap(int argc, char** argv) {
  std::string fmt, output = "human";
  bool force_share = false;
  uint64_t start = 0, max_length = UINT64_MAX;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"format", required_argument, nullptr, 'f'},
                                 {"output", required_argument, nullptr, 'O'},
                                 {"start-offset", required_argument, nullptr, 's'},
                                 {"max-length", required_argument, nullptr, 'l'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":f:hU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'O': output = optarg; break;
      case 'U': force_share = true; break;
      case 's':
      case 'l': {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v > static_cast<uint64_t>(INT64_MAX)) {
          PrintErrorF("Invalid %s specified", c == 's' ? "start offset" : "max length");
          return 1;
        }
        (c == 's' ? start : max_length) = *v;
        break;
      }
      case 'h': std::printf("usage: qcow2j map [-f fmt] [--output=human|json] [--start-offset=N] [--max-length=N] filename\n"); return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (output != "human" && output != "json") {
    PrintError("--output must be used with human or json as argument.");
    return 1;
  }
  if (!ExpectOneImage(argc)) return 1;
  const bool json = output == "json";
  OpenOptions opts;
  opts.format = fmt;
  opts.force_share = force_share;
  auto img = OpenImage(argv[optind], opts);
  if (!img.ok()) {
    PrintError(img.status().message());
    return 1;
  }
  const uint64_t size = (*img)->size();
  const uint64_t end = max_length >= size || start >= size - max_length ? size : start + max_length;

  if (json) {
    std::printf("[");
  } else {
    std::fputs(MapHumanHeader().c_str(), stdout);
  }
  int rc = 0;
  bool first = true, have = false;
  BlockStatus cur;
  for (uint64_t off = start; off < end;) {
    auto next = (*img)->GetBlockStatus(off, end - off);
    if (!next.ok()) {
      PrintErrorF("Could not read file metadata: %s", next.status().message().c_str());
      rc = 1;
      break;
    }
    if (next->length == 0) {
      PrintErrorF("Could not read file metadata: empty extent at offset %llu",
                  static_cast<unsigned long long>(off));
      rc = 1;
      break;
    }
    next->length = std::min<uint64_t>(next->length, end - off);
    off += next->length;
    if (have && CanMerge(cur, *next)) {
      cur.length += next->length;
      continue;
    }
    if (have) {
      if (!Dump(json, first, cur)) {
        rc = 1;
        break;
      }
      first = false;
    }
    cur = std::move(*next);
    have = true;
  }
  if (rc == 0 && have && !Dump(json, first, cur)) rc = 1;
  if (json) std::printf("]\n");
  (void)(*img)->Close();
  return rc;
}

}  // namespace qcow2j::cli
