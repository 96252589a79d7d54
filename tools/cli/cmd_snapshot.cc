// qcow2j snapshot -l: qemu-img snapshot's list (creation, apply and delete
// wait for the engine's snapshot writer).
#include <getopt.h>

#include <cstdio>
#include <string>

#include "tools/cli/cli.h"
#include "tools/cli/info_format.h"

namespace qcow2j::cli {

int CmdSnapshot(int argc, char** argv) {
  std::string fmt;
  bool list = false, force_share = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":la:c:d:hf:qU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'l': list = true; break;
      case 'f': fmt = optarg; break;
      case 'q': break;
      case 'U': force_share = true; break;
      case 'a': case 'c': case 'd':
        PrintErrorF("snapshot -%c is not supported yet; only -l (list) is", c);
        return 1;
      case 'h': std::printf("usage: qcow2j snapshot [-U] -l filename\n"); return 0;
      case ':': PrintErrorF("option '%s' requires an argument", argv[optind - 1]); return 1;
      default: PrintErrorF("unrecognized option '%s'", argv[optind - 1]); return 1;
    }
  }
  if (argc - optind != 1) {
    PrintError("Expecting one image file name");
    return 1;
  }
  if (!list) {
    PrintError("Expecting one of -l, -a, -c, -d");
    return 1;
  }
  OpenOptions opts;
  opts.format = fmt;
  opts.no_backing = true;
  opts.force_share = force_share;
  auto img = OpenImage(argv[optind], opts);
  if (!img.ok()) {
    PrintError(img.status().message());
    return 1;
  }
  ImageInfo info = (*img)->Info();
  (void)(*img)->Close();
  // qemu-img prints nothing at all for an image without snapshots.
  if (!info.snapshots.empty()) std::fputs(SnapshotTable(info.snapshots).c_str(), stdout);
  return 0;
}

}  // namespace qcow2j::cli
