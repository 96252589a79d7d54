// qcow2j info: qemu-img info's text and JSON.
#include <getopt.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "tools/cli/cli.h"
#include "tools/cli/info_format.h"

namespace qcow2j::cli {

int CmdInfo(int argc, char** argv) {
  std::string fmt, output = "human";
  bool chain = false, force_share = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"format", required_argument, nullptr, 'f'},
                                 {"output", required_argument, nullptr, 'O'},
                                 {"backing-chain", no_argument, nullptr, 'B'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":f:hU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'O': output = optarg; break;
      case 'B': chain = true; break;
      case 'U': force_share = true; break;
      case 'h': std::printf("usage: qcow2j info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename\n"); return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (output != "human" && output != "json") {
    PrintErrorF("--output must be used with human or json as argument.");
    return 1;
  }
  if (!ExpectOneImage(argc)) return 1;

  std::vector<ImageInfo> infos;
  std::set<std::string> seen;
  std::string path = argv[optind];
  while (true) {
    if (!seen.insert(path).second) {
      PrintErrorF("Backing file '%s' creates an infinite loop.", path.c_str());
      return 1;
    }
    OpenOptions opts;
    opts.format = fmt;
    opts.no_backing = true;  // info never reads guest data
    opts.force_share = force_share;
    auto img = OpenImage(path, opts);
    if (!img.ok()) {
      PrintError(img.status().message());
      return 1;
    }
    ImageInfo info = (*img)->Info();
    info.filename = path;
    (void)(*img)->Close();
    infos.push_back(info);
    if (!chain || info.backing_file.empty()) break;
    path = info.full_backing_file.empty() ? info.backing_file : info.full_backing_file;
    fmt = info.backing_format;
  }

  if (output == "json") {
    if (chain) {
      JsonValue list = JsonValue::MakeArray();
      for (const ImageInfo& i : infos) list.Append(InfoToJson(i));
      std::printf("%s\n", list.Pretty().c_str());
    } else {
      std::printf("%s\n", InfoToJson(infos[0]).Pretty().c_str());
    }
    return 0;
  }
  for (size_t i = 0; i < infos.size(); i++) {
    if (i) std::printf("\n");
    std::fputs(InfoToHuman(infos[i]).c_str(), stdout);
  }
  return 0;
}

}  // namespace qcow2j::cli
