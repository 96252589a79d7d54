// qcow2j rebase: qemu-img rebase. Safe mode copies into the image every
// unallocated range where the old and the new backing chain read
// differently, so the image reads the same afterwards; -u only rewrites the
// backing file name and format in the header.
#include <getopt.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "qcow2/image_ops.h"
#include "tools/cli/cli.h"
#include "tools/cli/progress.h"

namespace qcow2j::cli {

namespace {

constexpr uint64_t kChunk = 2ull << 20;  // qemu-img's IO_BUF_SIZE
constexpr uint64_t kSector = 512;

// Where a relative backing name points: next to the image, as qemu resolves it.
std::string BesideImage(const std::string& image, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  auto slash = image.rfind('/');
  return slash == std::string::npos ? name : image.substr(0, slash + 1) + name;
}

// Reads [off, off+n) of a backing image; zeros past its end or without one.
Status ReadBacking(Image* img, uint64_t off, uint8_t* buf, uint64_t n) {
  uint64_t have = 0;
  if (img && off < img->size()) have = std::min(n, img->size() - off);
  if (have) QCOW2J_RETURN_IF_ERROR(img->Read(off, buf, have));
  std::memset(buf + have, 0, n - have);
  return Status::OK();
}

// Copies into `top` the sectors of [off, off+n) that differ between the old
// and the new backing chain, as qemu-img's compare_buffers loop does.
Status CopyDifferences(Image* top, Image* old_b, Image* new_b, uint64_t off, uint64_t n,
                       std::vector<uint8_t>& a, std::vector<uint8_t>& b) {
  a.resize(n);
  b.resize(n);
  QCOW2J_RETURN_IF_ERROR(ReadBacking(old_b, off, a.data(), n));
  QCOW2J_RETURN_IF_ERROR(ReadBacking(new_b, off, b.data(), n));
  const bool old_is_zero = !old_b || off >= old_b->size();
  for (uint64_t i = 0; i < n;) {
    uint64_t len = std::min(kSector, n - i);
    bool differ = std::memcmp(a.data() + i, b.data() + i, len) != 0;
    uint64_t j = i + len;
    while (j < n) {
      uint64_t l = std::min(kSector, n - j);
      if ((std::memcmp(a.data() + j, b.data() + j, l) != 0) != differ) break;
      j += l;
    }
    if (differ) {
      QCOW2J_RETURN_IF_ERROR(old_is_zero ? top->WriteZeroes(off + i, j - i, false)
                                         : top->Write(off + i, a.data() + i, j - i));
    }
    i = j;
  }
  return Status::OK();
}

}  // namespace

int CmdRebase(int argc, char** argv) {
  std::string fmt, backing_fmt, cache = "writeback", src_cache = "writeback";
  std::string backing;
  bool have_backing = false, unsafe = false, progress = false, quiet = false, force_share = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"object", required_argument, nullptr, 'O'},
                                 {"image-opts", no_argument, nullptr, 'I'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'F': backing_fmt = optarg; break;
      case 'b': backing = optarg; have_backing = true; break;
      case 'u': unsafe = true; break;
      case 'p': progress = true; break;
      case 't': cache = optarg; break;
      case 'T': src_cache = optarg; break;
      case 'q': quiet = true; break;
      case 'U': force_share = true; break;
      case 'O': PrintError("--object is not supported"); return 1;
      case 'I': PrintError("--image-opts is not supported"); return 1;
      case 'h':
        std::printf("usage: qcow2j rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
                    "-b backing_file [-F backing_fmt] filename\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (quiet) progress = false;
  if (!ExpectOneImage(argc)) return 1;
  if (!unsafe && !have_backing) {
    PrintError("Must specify backing file (-b) or use unsafe mode (-u)");
    return 1;
  }
  const std::string file = argv[optind];
  OpenOptions top_opts, src_opts;
  top_opts.read_only = false;
  top_opts.format = fmt;
  top_opts.no_backing = true;  // the old chain is opened on its own below
  top_opts.force_share = src_opts.force_share = force_share;
  if (Status s = ApplyCacheMode(cache, &top_opts); !s.ok()) {
    PrintError(s.message());
    return 1;
  }
  if (Status s = ApplyCacheMode(src_cache, &src_opts); !s.ok()) {
    PrintError(s.message());
    return 1;
  }

  Progress bar(progress, 2.0);
  bar.Start();
  auto top = OpenImage(file, top_opts);
  if (!top.ok()) {
    bar.End();
    PrintError(top.status().message());
    return 1;
  }
  // qemu-img finds out only when it writes the header, after the copy; we
  // refuse before anything is written.
  if (!backing.empty() && backing_fmt.empty()) {
    bar.End();
    PrintErrorF("Could not change the backing file to '%s': backing format must be specified",
                backing.c_str());
    return 1;
  }
  const ImageInfo info = (*top)->Info();
  if (info.format != "qcow2") {
    bar.End();
    PrintErrorF("Could not change the backing file to '%s': Operation not supported",
                backing.c_str());
    return 1;
  }

  if (!unsafe) {
    std::unique_ptr<Image> old_b, new_b;
    if (!info.backing_file.empty()) {
      OpenOptions o = src_opts;
      o.format = info.backing_format;
      auto r = Image::Open(info.full_backing_file, o);
      if (!r.ok()) {
        bar.End();
        PrintErrorF("Could not open old backing file '%s': %s", info.full_backing_file.c_str(),
                    r.status().message().c_str());
        return 1;
      }
      old_b = std::move(r).value();
    }
    if (!backing.empty()) {
      const std::string real = BesideImage(file, backing);
      OpenOptions o = src_opts;
      o.format = backing_fmt;
      auto r = Image::Open(real, o);
      if (!r.ok()) {
        bar.End();
        PrintErrorF("Could not open new backing file '%s': %s", real.c_str(),
                    r.status().message().c_str());
        return 1;
      }
      new_b = std::move(r).value();
    }
    Image* img = top->get();
    const uint64_t size = img->size();
    std::vector<uint8_t> a, b;
    Status st;
    for (uint64_t off = 0; st.ok() && off < size;) {
      auto bs = img->GetBlockStatus(off, std::min(kChunk, size - off));
      if (!bs.ok()) {
        st = bs.status();
        break;
      }
      uint64_t n = bs->length;
      if (n == 0) {
        st = Status::Corruption("block status of offset " + std::to_string(off) + " is empty");
        break;
      }
      // Allocated here: the backing file does not show through.
      if (!bs->present) st = CopyDifferences(img, old_b.get(), new_b.get(), off, n, a, b);
      off += n;
      bar.SetFraction(off, size);
    }
    if (st.ok()) st = img->Flush();
    if (!st.ok()) {
      bar.End();
      PrintErrorF("Error while rebasing: %s", st.message().c_str());
      return 1;
    }
  }
  if (Status s = (*top)->Close(); !s.ok()) {
    bar.End();
    PrintError(s.message());
    return 1;
  }
  Status s = ChangeBackingFile(file, backing, backing_fmt);
  if (!s.ok()) {
    bar.End();
    if (s.code() == Code::kNoSpace) {
      PrintErrorF("Could not change the backing file to '%s': No space left in the file header",
                  backing.c_str());
    } else {
      PrintErrorF("Could not change the backing file to '%s': %s", backing.c_str(),
                  s.message().c_str());
    }
    return 1;
  }
  bar.Set(100);
  bar.End();
  return 0;
}

}  // namespace qcow2j::cli
