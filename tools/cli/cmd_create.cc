// qcow2j create: qemu-img create.
#include <getopt.h>

#include <cstdio>
#include <string>

#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/create_options.h"

namespace qcow2j::cli {

namespace {

// The backing file name as the new image will resolve it: relative names are
// relative to the new image's folder.
std::string ResolveBacking(const std::string& image, const std::string& backing) {
  if (backing.empty() || backing[0] == '/') return backing;
  size_t slash = image.rfind('/');
  return slash == std::string::npos ? backing : image.substr(0, slash + 1) + backing;
}

}  // namespace

int CmdCreate(int argc, char** argv) {
  bool quiet = false, unsafe = false;
  std::string fmt = "raw", backing, backing_fmt;
  std::vector<std::string> option_strings;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"object", required_argument, nullptr, 'j'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", kLong, nullptr)) != -1) {
    switch (c) {
      case 'F': backing_fmt = optarg; break;
      case 'b': backing = optarg; break;
      case 'f': fmt = optarg; break;
      case 'o': option_strings.push_back(optarg); break;
      case 'q': quiet = true; break;
      case 'u': unsafe = true; break;
      case 'h':
        std::printf("usage: qcow2j create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] "
                    "[-o options] filename [size]\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (fmt != "qcow2" && fmt != "raw") {
    PrintErrorF("Unknown file format '%s'", fmt.c_str());
    return 1;
  }
  if (optind >= argc) {
    PrintError("Expecting image file name");
    return 1;
  }
  const std::string file = argv[optind++];

  CreateSpec spec;
  spec.opts.format = fmt;
  for (const std::string& s : option_strings) {
    if (s == "help" || s == "?") {
      std::fputs(CreateOptionsHelp(fmt).c_str(), stdout);
      return 0;
    }
    auto list = ParseOptionString(s);
    Status st = list.ok() ? ApplyCreateOptions(*list, &spec) : list.status();
    if (!st.ok()) {
      PrintErrorF("%s: %s", file.c_str(), st.message().c_str());
      return 1;
    }
  }
  if (!backing.empty()) {
    if (fmt == "raw") {
      PrintErrorF("%s: Invalid parameter 'backing_file'", file.c_str());
      return 1;
    }
    spec.opts.backing_file = backing;
    spec.given["backing_file"] = backing;
  }
  if (!backing_fmt.empty()) {
    spec.opts.backing_format = backing_fmt;
    spec.given["backing_fmt"] = backing_fmt;
  }
  if (optind < argc) {
    auto size = ParseSize(argv[optind]);
    if (!size.ok() && size.status().message() != "size out of range") {
      PrintError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
      PrintError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
      return 1;
    }
    if (!size.ok() || *size > static_cast<uint64_t>(INT64_MAX)) {
      PrintError("Invalid image size specified. Must be between 0 and 9223372036854775807.");
      return 1;
    }
    spec.opts.size = *size;
    spec.size_given = true;
    optind++;
  }
  if (optind != argc) {
    PrintErrorF("Unexpected argument: %s", argv[optind]);
    return 1;
  }

  // Without a size the backing file gives it; qemu-img opens the backing
  // file to learn it (and to check it exists unless -u).
  if (!spec.opts.backing_file.empty()) {
    if (spec.opts.backing_format.empty()) {
      PrintErrorF("%s: Backing file specified without backing format", file.c_str());
      return 1;
    }
    if (!unsafe || !spec.size_given) {
      OpenOptions bo;
      bo.format = spec.opts.backing_format;
      bo.no_backing = true;
      bo.force_share = true;
      auto b = Image::Open(ResolveBacking(file, spec.opts.backing_file), bo);
      if (!b.ok()) {
        PrintErrorF("%s: %s\nCould not open backing image.", file.c_str(),
                    b.status().message().c_str());
        return 1;
      }
      if (!spec.size_given) spec.opts.size = (*b)->size();
      spec.size_given = true;
      (void)(*b)->Close();
    }
  }
  if (!spec.size_given) {
    PrintErrorF("%s: Image creation needs a size parameter", file.c_str());
    return 1;
  }
  if (!quiet) std::printf("Formatting '%s', %s\n", file.c_str(), FormatCreateLine(spec).c_str());
  std::fflush(stdout);
  Status st = Image::Create(file, spec.opts);
  if (!st.ok()) {
    PrintErrorF("%s: %s", file.c_str(), st.message().c_str());
    return 1;
  }
  return 0;
}

}  // namespace qcow2j::cli
