// qcow2j compare: qemu-img compare. Exit 0 identical, 1 different, 2 error.
#include <getopt.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "tools/cli/cli.h"
#include "tools/cli/zero_detect.h"

namespace qcow2j::cli {

namespace {

constexpr uint64_t kChunk = 2u << 20;
constexpr int kError = 2;

// qemu-img reports mismatches at 512-byte sector granularity.
uint64_t SectorOf(uint64_t off) { return off & ~uint64_t{511}; }

// Returns 0 when the tail [from, size) of `img` reads as zeros, 1 after
// printing the first mismatch, kError on failure.
int CheckZeroTail(Image* img, uint64_t from, uint64_t size, bool quiet) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kChunk]);
  for (uint64_t off = from; off < size;) {
    auto bs = img->GetBlockStatus(off, size - off);
    if (!bs.ok() || bs->length == 0) {
      PrintErrorF("Sector allocation test failed for %s", img->Info().filename.c_str());
      return kError;
    }
    uint64_t len = std::min(bs->length, size - off);
    if (!bs->zero) {
      for (uint64_t p = off; p < off + len;) {
        uint64_t n = std::min(kChunk, off + len - p);
        if (Status st = img->Read(p, buf.get(), n); !st.ok()) {
          PrintErrorF("Error while reading offset %llu: %s", static_cast<unsigned long long>(p),
                      st.message().c_str());
          return kError;
        }
        for (uint64_t k = 0; k < n; k++) {
          if (buf[k]) {
            if (!quiet) std::printf("Content mismatch at offset %llu!\n",
                                    static_cast<unsigned long long>(SectorOf(p + k)));
            return 1;
          }
        }
        p += n;
      }
    }
    off += len;
  }
  return 0;
}

}  // namespace

int CmdCompare(int argc, char** argv) {
  std::string fmt1, fmt2;
  bool strict = false, quiet = false, force_share = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt1 = optarg; break;
      case 'F': fmt2 = optarg; break;
      case 's': strict = true; break;
      case 'q': quiet = true; break;
      case 'U': force_share = true; break;
      case 'T': case 'p': break;
      case 'h': std::printf("usage: qcow2j compare [-f fmt] [-F fmt] [-s] [-q] [-U] file1 file2\n"); return 0;
      default: PrintOptionError(c, argv); return kError;
    }
  }
  if (argc - optind != 2) {
    PrintError("Expecting two image file names");
    return kError;
  }
  OpenOptions o1, o2;
  o1.format = fmt1;
  o2.format = fmt2;
  o1.force_share = o2.force_share = force_share;
  auto a = OpenImage(argv[optind], o1);
  if (!a.ok()) {
    PrintError(a.status().message());
    return kError;
  }
  auto b = OpenImage(argv[optind + 1], o2);
  if (!b.ok()) {
    PrintError(b.status().message());
    return kError;
  }
  Image* img1 = a->get();
  Image* img2 = b->get();
  const uint64_t size1 = img1->size(), size2 = img2->size();
  if (size1 != size2) {
    if (strict) {
      if (!quiet) std::printf("Strict mode: Image size mismatch!\n");
      return 1;
    }
    if (!quiet) std::printf("Warning: Image size mismatch!\n");
  }
  const uint64_t common = std::min(size1, size2);
  std::unique_ptr<uint8_t[]> buf1(new uint8_t[kChunk]), buf2(new uint8_t[kChunk]);
  for (uint64_t off = 0; off < common;) {
    auto s1 = img1->GetBlockStatus(off, common - off);
    auto s2 = img2->GetBlockStatus(off, common - off);
    if (!s1.ok() || !s2.ok() || s1->length == 0 || s2->length == 0) {
      PrintErrorF("Sector allocation test failed for %s",
                  (!s1.ok() || s1->length == 0) ? argv[optind] : argv[optind + 1]);
      return kError;
    }
    uint64_t len = std::min({s1->length, s2->length, common - off, kChunk});
    if (strict && (s1->present != s2->present || s1->zero != s2->zero || s1->data != s2->data)) {
      if (!quiet) std::printf("Strict mode: Offset %llu block status mismatch!\n",
                              static_cast<unsigned long long>(off));
      return 1;
    }
    if (!(s1->zero && s2->zero)) {
      if (Status st = img1->Read(off, buf1.get(), len); !st.ok()) {
        PrintErrorF("Error while reading offset %llu of %s: %s",
                    static_cast<unsigned long long>(off), argv[optind], st.message().c_str());
        return kError;
      }
      if (Status st = img2->Read(off, buf2.get(), len); !st.ok()) {
        PrintErrorF("Error while reading offset %llu of %s: %s",
                    static_cast<unsigned long long>(off), argv[optind + 1], st.message().c_str());
        return kError;
      }
      auto [p1, p2] = std::mismatch(buf1.get(), buf1.get() + len, buf2.get());
      if (p1 != buf1.get() + len) {
        if (!quiet) std::printf("Content mismatch at offset %llu!\n",
                                static_cast<unsigned long long>(SectorOf(off + (p1 - buf1.get()))));
        return 1;
      }
    }
    off += len;
  }
  if (size1 != size2) {
    int rc = size1 > size2 ? CheckZeroTail(img1, common, size1, quiet)
                           : CheckZeroTail(img2, common, size2, quiet);
    if (rc) return rc;
  }
  if (!quiet) std::printf("Images are identical.\n");
  return 0;
}

}  // namespace qcow2j::cli
