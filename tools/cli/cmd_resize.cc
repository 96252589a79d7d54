// qcow2j resize: qemu-img resize [+|-]SIZE.
#include <getopt.h>

#include <cstdio>
#include <string>

#include "tools/cli/args.h"
#include "tools/cli/cli.h"

namespace qcow2j::cli {

int CmdResize(int argc, char** argv) {
  std::string fmt;
  bool quiet = false, shrink = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"shrink", no_argument, nullptr, 'S'},
                                 {"preallocation", required_argument, nullptr, 'P'},
                                 {nullptr, 0, nullptr, 0}};
  // A size like "-1G" looks like an option; qemu-img looks for it before
  // getopt sees it, and so do we (the last argument is the size).
  std::string size_arg;
  if (argc >= 3 && argv[argc - 1][0] == '-' && argv[argc - 1][1] != '-' &&
      (argv[argc - 1][1] >= '0' && argv[argc - 1][1] <= '9')) {
    size_arg = argv[argc - 1];
    argc--;
  }
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":f:hqU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'q': quiet = true; break;
      case 'S': shrink = true; break;
      case 'U': break;
      case 'P':
        if (std::string(optarg) != "off") {
          PrintErrorF("Preallocation mode '%s' is not supported by resize", optarg);
          return 1;
        }
        break;
      case 'h': std::printf("usage: qcow2j resize [-f fmt] [--shrink] [-q] filename [+ | -]size\n"); return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (size_arg.empty()) {
    if (argc - optind != 2) {
      PrintError("Expecting image file name and size");
      return 1;
    }
    size_arg = argv[argc - 1];
  } else if (argc - optind != 1) {
    PrintError("Expecting image file name and size");
    return 1;
  }
  const std::string file = argv[optind];

  int sign = 0;
  std::string digits = size_arg;
  if (!digits.empty() && (digits[0] == '+' || digits[0] == '-')) {
    sign = digits[0] == '+' ? 1 : -1;
    digits.erase(0, 1);
  }
  auto delta = ParseSize(digits);
  if (!delta.ok() || *delta > static_cast<uint64_t>(INT64_MAX)) {
    PrintError("Invalid size specified.");
    return 1;
  }

  OpenOptions opts;
  opts.format = fmt;
  opts.read_only = false;
  auto img = OpenImage(file, opts);
  if (!img.ok()) {
    PrintError(img.status().message());
    return 1;
  }
  const uint64_t current = (*img)->size();
  uint64_t target;
  if (sign == 0) {
    target = *delta;
  } else if (sign > 0) {
    target = current + *delta;
    if (target < current || target > static_cast<uint64_t>(INT64_MAX)) {
      PrintError("Invalid size specified.");
      return 1;
    }
  } else {
    if (*delta > current) {
      PrintError("New image size must be positive");
      return 1;
    }
    target = current - *delta;
  }
  if (target < current && !shrink) {
    PrintError("Use the --shrink option to perform a shrink operation.");
    PrintError("warning: Shrinking an image will delete all data beyond the shrunken image's "
               "end. Before performing such an operation, make sure there is no important data "
               "there.");
    return 1;
  }
  Status st = (*img)->Resize(target, shrink);
  Status closed = (*img)->Close();
  if (st.ok()) st = closed;
  if (!st.ok()) {
    PrintErrorF("%s", st.message().c_str());
    return 1;
  }
  if (!quiet) std::printf("Image resized.\n");
  return 0;
}

}  // namespace qcow2j::cli
