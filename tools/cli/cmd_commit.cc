// qcow2j commit: qemu-img commit. Copies what the top image (and any image
// between it and the base) holds into the base, then empties the top image
// unless -d (or -b, which implies -d as in qemu-img).
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "qcow2/image_ops.h"
#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/progress.h"

namespace qcow2j::cli {

namespace {

constexpr uint64_t kCopyChunk = 2ull << 20;

// One image of the chain above the base, opened without its backing file so
// that its block status says what this layer alone holds.
struct Layer {
  std::string path;
  std::string stored_name;  // the name its overlay stores ("" for the top)
  std::unique_ptr<Image> img;
};

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// qemu's bdrv_find_backing_image: `base` names a backing image as stored in
// its overlay or as a path to the same file.
bool SameImage(const std::string& base, const Layer& l) {
  return base == l.stored_name || base == l.path || RealPath(base) == RealPath(l.path);
}

// What the chain above the base holds at `off`, at most `len` bytes: the
// first layer (from the top) where the range is present decides it.
struct Action {
  enum Kind { kSkip, kZero, kCopy } kind = kSkip;
  uint64_t length = 0;
  Image* from = nullptr;
};

Result<Action> NextAction(std::vector<Layer>& layers, uint64_t off, uint64_t len) {
  Action a;
  a.length = len;
  for (Layer& l : layers) {
    // Past the end of an intermediate image its overlays read zeros there,
    // whatever the base holds (qemu's is_allocated_above says the same).
    if (off >= l.img->size()) {
      a.kind = Action::kZero;
      return a;
    }
    QCOW2J_ASSIGN_OR_RETURN(BlockStatus bs, l.img->GetBlockStatus(off, std::min(a.length, l.img->size() - off)));
    if (bs.length == 0)
      return Status::Corruption("block status of '" + l.path + "' at offset " + std::to_string(off) +
                                " is empty");
    a.length = std::min(a.length, bs.length);
    if (bs.present) {
      a.kind = bs.zero ? Action::kZero : Action::kCopy;
      a.from = l.img.get();
      return a;
    }
  }
  return a;
}

}  // namespace

int CmdCommit(int argc, char** argv) {
  std::string fmt, cache = "writeback", base;
  bool drop = false, progress = false, quiet = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"object", required_argument, nullptr, 'O'},
                                 {"image-opts", no_argument, nullptr, 'I'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 't': cache = optarg; break;
      case 'b': base = optarg; drop = true; break;  // -b implies -d, as in qemu-img
      case 'd': drop = true; break;
      case 'p': progress = true; break;
      case 'q': quiet = true; break;
      case 'r':
        // A rate limit: accepted for compatibility, not applied.
        if (!ParseSize(optarg).ok()) {
          PrintError("Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for");
          PrintError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
          return 1;
        }
        break;
      case 'O': PrintError("--object is not supported"); return 1;
      case 'I': PrintError("--image-opts is not supported"); return 1;
      case 'h':
        std::printf("usage: qcow2j commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] "
                    "[-p] filename\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (quiet) progress = false;
  if (!ExpectOneImage(argc)) return 1;
  const std::string file = argv[optind];
  OpenOptions base_opts;
  base_opts.read_only = false;
  if (Status s = ApplyCacheMode(cache, &base_opts); !s.ok()) {
    PrintError(s.message());
    return 1;
  }

  // The chain from the top down to the base, each image on its own.
  std::vector<Layer> layers;
  std::string base_path, base_fmt;
  {
    OpenOptions o;
    o.format = fmt;
    o.no_backing = true;
    auto top = OpenImage(file, o);
    if (!top.ok()) {
      PrintError(top.status().message());
      return 1;
    }
    layers.push_back({file, "", std::move(top).value()});
  }
  for (;;) {
    ImageInfo info = layers.back().img->Info();
    if (info.backing_file.empty()) {
      if (layers.size() == 1) {
        PrintError("Image does not have a backing file");
      } else {
        PrintErrorF("Did not find '%s' in the backing chain of '%s'", base.c_str(), file.c_str());
      }
      return 1;
    }
    Layer next{info.full_backing_file, info.backing_file, nullptr};
    if (base.empty() || SameImage(base, next)) {
      base_path = next.path;
      base_fmt = info.backing_format;
      break;
    }
    OpenOptions o;
    o.format = info.backing_format;
    o.no_backing = true;
    auto img = OpenImage(next.path, o);
    if (!img.ok()) {
      PrintError(img.status().message());
      return 1;
    }
    next.img = std::move(img).value();
    layers.push_back(std::move(next));
  }
  base_opts.format = base_fmt;
  auto base_img = OpenImage(base_path, base_opts);
  if (!base_img.ok()) {
    PrintError(base_img.status().message());
    return 1;
  }
  Image* dst = base_img->get();

  Progress bar(progress, 1.0);
  bar.Start();
  const uint64_t size = layers.front().img->size();
  Status st;
  // A base smaller than the top grows to its size (qemu's commit does too).
  if (dst->size() < size) st = dst->Resize(size, false);
  std::vector<uint8_t> buf;
  for (uint64_t off = 0; st.ok() && off < size;) {
    auto a = NextAction(layers, off, std::min(kCopyChunk, size - off));
    if (!a.ok()) {
      st = a.status();
      break;
    }
    if (a->kind == Action::kZero) {
      st = dst->WriteZeroes(off, a->length, true);
    } else if (a->kind == Action::kCopy) {
      buf.resize(a->length);
      st = a->from->Read(off, buf.data(), a->length);
      if (st.ok()) st = dst->Write(off, buf.data(), a->length);
    }
    off += a->length;
    bar.SetFraction(off, size);
  }
  if (st.ok()) st = dst->Flush();
  Status closed = dst->Close();
  if (st.ok()) st = closed;
  std::string top_fmt = layers.front().img->Info().format;
  for (Layer& l : layers) (void)l.img->Close();
  if (!st.ok()) {
    bar.End();
    PrintErrorF("Block job failed: %s", st.message().c_str());
    return 1;
  }
  if (!drop && top_fmt == "qcow2") {
    if (Status s = MakeEmpty(file); !s.ok()) {
      bar.End();
      PrintErrorF("Could not empty %s: %s", file.c_str(), s.message().c_str());
      return 1;
    }
  }
  bar.Set(100);
  bar.End();
  if (!quiet) std::printf("Image committed.\n");
  return 0;
}

}  // namespace qcow2j::cli
