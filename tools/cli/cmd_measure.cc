// qcow2j measure: qemu-img measure. The sizes a new image would need, for
// a given virtual size or to hold the data of an existing image, computed
// with qemu's formulas (qcow2_measure, qcow2_calc_prealloc_size,
// qcow2_refcount_metadata_size, raw_measure) so the numbers are the same.
#include <getopt.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "qcow2/image_ops.h"
#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/create_options.h"
#include "tools/cli/json_writer.h"

namespace qcow2j::cli {

namespace {

constexpr uint64_t kMaxL1Bytes = 32ull << 20;  // QCOW_MAX_L1_SIZE

uint64_t DivRoundUp(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
uint64_t RoundUp(uint64_t a, uint64_t b) { return DivRoundUp(a, b) * b; }

// Refcount blocks and table clusters needed to count `clusters` clusters
// and themselves: the fixed point qemu iterates to.
uint64_t RefcountMetadataSize(uint64_t clusters, uint64_t cs, uint32_t refcount_bits) {
  const uint64_t blocks_per_table_cluster = cs / 8;
  const uint64_t refcounts_per_block = cs * 8 / refcount_bits;
  uint64_t table = 0, blocks = 0, n = 0, last;
  do {
    last = n;
    blocks = DivRoundUp(clusters + table + blocks, refcounts_per_block);
    table = DivRoundUp(blocks, blocks_per_table_cluster);
    n = clusters + blocks + table;
  } while (n != last);
  return (blocks + table) * cs;
}

// A qcow2 file with every cluster of `total` allocated: header, L2 and L1
// tables, refcount metadata and data.
uint64_t FullyAllocatedSize(uint64_t total, uint64_t cs, uint32_t refcount_bits, bool extended_l2) {
  const uint64_t aligned = RoundUp(total, cs);
  const uint64_t l2e = extended_l2 ? 16 : 8;
  uint64_t meta = cs;  // header
  uint64_t nl2e = RoundUp(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  uint64_t nl1e = RoundUp(nl2e * l2e / cs, cs / 8);
  meta += nl1e * 8;
  meta += RefcountMetadataSize((meta + aligned) / cs, cs, refcount_bits);
  return meta + aligned;
}

// Clusters the persistent bitmaps of `src` would take in a qcow2 target
// (qcow2_get_persistent_dirty_bitmap_size): every bitmap fully allocated,
// its table, and the directory.
uint64_t BitmapsSize(const std::vector<BitmapInfo>& bitmaps, uint64_t image_size, uint64_t cs) {
  uint64_t total = 0, dir = 0;
  for (const BitmapInfo& b : bitmaps) {
    uint64_t gran = b.granularity ? b.granularity : 65536;
    uint64_t bytes = DivRoundUp(DivRoundUp(image_size, gran), 8);
    uint64_t clusters = DivRoundUp(bytes, cs);
    total += clusters * cs + RoundUp(clusters * 8, cs);
    dir += RoundUp(24 + b.name.size(), 8);
  }
  return total + RoundUp(dir, cs);
}

struct Measure {
  uint64_t required = 0;
  uint64_t fully_allocated = 0;
  std::optional<uint64_t> bitmaps;
};

// Bytes of data clusters the source needs in a qcow2 target without a
// backing file: data extents rounded out to whole clusters, zeros skipped.
// The sum repeats qemu's loop exactly, quirks included (an extent that
// starts inside a cluster counts from the cluster's start).
Result<uint64_t> DataClusterBytes(Image* src, uint64_t cs) {
  const uint64_t size = src->size();
  uint64_t required = 0;
  for (uint64_t off = 0; off < size;) {
    QCOW2J_ASSIGN_OR_RETURN(BlockStatus bs, src->GetBlockStatus(off, size - off));
    uint64_t n = bs.length;
    if (n == 0) return Status::Corruption("Unable to get block status");
    if (!bs.zero && bs.data) {
      n = RoundUp(off + n, cs) - off;
      required += off % cs + n;
    }
    off += n;
  }
  return required;
}

// The raw source's own data/hole runs: qemu asks the file system
// (SEEK_DATA/SEEK_HOLE) where our raw Image reports everything as data.
Result<uint64_t> RawDataClusterBytes(const std::string& path, uint64_t size, uint64_t cs) {
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<File> f, Env::Default()->Open(path, kOpenReadOnly));
  uint64_t required = 0;
  for (uint64_t off = 0; off < size;) {
    QCOW2J_ASSIGN_OR_RETURN(File::Run run, f->ProbeRun(off, size - off));
    uint64_t n = run.length;
    if (n == 0) return Status::Corruption("Unable to get block status");
    if (run.data) {
      n = RoundUp(off + n, cs) - off;
      required += off % cs + n;
    }
    off += n;
  }
  return required;
}

// `active_size`: the virtual size of the source's active image (the one
// its bitmaps cover) when `src` is opened at an internal snapshot.
Result<Measure> MeasureQcow2(const CreateOptions& o, Image* src, const std::string& src_path,
                             uint64_t active_size) {
  const uint64_t cs = o.cluster_size;
  if (o.refcount_bits == 0 || o.refcount_bits > 64 || (o.refcount_bits & (o.refcount_bits - 1)))
    return Status::InvalidArgument("Refcount width must be a power of two and may not exceed 64 bits");
  if (o.version < 3 && o.refcount_bits != 16)
    return Status::InvalidArgument("Different refcount widths than 16 bits require compatibility "
                                   "level 1.1 or above (use compat=1.1 or greater)");
  if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
    return Status::InvalidArgument("Cluster size must be a power of two between 512 and 2048k");
  if (o.extended_l2 && cs < 16384)
    return Status::InvalidArgument("Extended L2 entries are only supported with cluster sizes of "
                                   "at least 16384 bytes");
  uint64_t virtual_size = RoundUp(o.size, cs);
  const uint64_t l2e = o.extended_l2 ? 16 : 8;
  if (DivRoundUp(virtual_size / cs, cs / l2e) * 8 > kMaxL1Bytes)
    return Status::InvalidArgument("The image size is too large (try using a larger cluster size)");

  uint64_t required = 0;
  std::optional<uint64_t> bitmaps;
  if (src) {
    const ImageInfo info = src->Info();
    virtual_size = RoundUp(src->size(), cs);
    if (!o.backing_file.empty()) {
      // The new image's backing file may share nothing with the source.
      required = virtual_size;
    } else if (info.format == "raw") {
      QCOW2J_ASSIGN_OR_RETURN(required, RawDataClusterBytes(src_path, src->size(), cs));
    } else {
      QCOW2J_ASSIGN_OR_RETURN(required, DataClusterBytes(src, cs));
    }
    // Only a qcow2 v3 source can have persistent bitmaps, and only a v3
    // target can store them.
    if (o.version >= 3 && info.format == "qcow2" && info.version >= 3) {
      // Bitmaps cover the active image, also when measuring a snapshot.
      QCOW2J_ASSIGN_OR_RETURN(std::vector<BitmapInfo> list, ListBitmaps(src_path));
      bitmaps = BitmapsSize(list, active_size, cs);
    }
  }
  if (o.preallocation == Preallocation::kFull || o.preallocation == Preallocation::kFalloc)
    required = virtual_size;
  Measure m;
  m.fully_allocated = FullyAllocatedSize(virtual_size, cs, o.refcount_bits, o.extended_l2);
  // The metadata of the fully allocated file stays counted: an overestimate,
  // as in qemu.
  m.required = m.fully_allocated - virtual_size + required;
  m.bitmaps = bitmaps;
  return m;
}

}  // namespace

int CmdMeasure(int argc, char** argv) {
  std::string fmt, out_fmt = "raw", output = "human", snapshot, options;
  std::optional<uint64_t> size;
  bool force_share = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"object", required_argument, nullptr, 'J'},
                                 {"image-opts", no_argument, nullptr, 'I'},
                                 {"output", required_argument, nullptr, 'P'},
                                 {"size", required_argument, nullptr, 's'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hf:O:o:l:s:U", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'O': out_fmt = optarg; break;
      case 'o':
        options = options.empty() ? std::string(optarg) : options + "," + optarg;
        break;
      case 'l': snapshot = optarg; break;
      case 's': {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v > static_cast<uint64_t>(INT64_MAX)) {
          PrintError("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
          PrintError("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
          return 1;
        }
        size = *v;
        break;
      }
      case 'P': output = optarg; break;
      case 'U': force_share = true; break;
      case 'J': PrintError("--object is not supported"); return 1;
      case 'I': PrintError("--image-opts is not supported"); return 1;
      case 'h':
        std::printf("usage: qcow2j measure [--output=human|json] [-O output_fmt] [-o options] "
                    "[--size N | [-f fmt] [-l snapshot_param] filename]\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (output != "human" && output != "json") {
    PrintError("--output must be used with human or json as argument.");
    return 1;
  }
  if (argc - optind > 1) {
    PrintError("At most one filename argument is allowed.");
    return 1;
  }
  std::string file = optind < argc ? argv[optind] : "";
  if (!file.empty() && size) {
    PrintError("--size N cannot be used together with a filename.");
    return 1;
  }
  if (file.empty() && !size) {
    PrintError("Either --size N or one filename must be specified.");
    return 1;
  }

  std::unique_ptr<Image> src;
  if (!file.empty()) {
    OpenOptions o;
    o.format = fmt;
    o.force_share = force_share;
    auto r = OpenImageAtSnapshot(file, o, snapshot);
    if (!r.ok()) {
      if (!snapshot.empty() && r.status().code() == Code::kNotFound) {
        PrintError("Failed to load snapshot: Can't find snapshot");
      } else {
        PrintErrorF("Could not open '%s': %s", file.c_str(), r.status().message().c_str());
      }
      return 1;
    }
    src = std::move(r).value();
  }

  if (out_fmt != "qcow2" && out_fmt != "raw") {
    PrintErrorF("Unknown file format '%s'", out_fmt.c_str());
    return 1;
  }
  CreateSpec spec;
  spec.opts.format = out_fmt;
  if (!options.empty()) {
    auto list = ParseOptionString(options);
    Status s = list.ok() ? ApplyCreateOptions(*list, &spec) : list.status();
    if (!s.ok()) {
      PrintError(s.message());
      PrintErrorF("Invalid options for file format '%s'", out_fmt.c_str());
      return 1;
    }
  }
  if (size) spec.opts.size = *size;

  Measure m;
  if (out_fmt == "raw") {
    m.required = src ? src->size() : RoundUp(spec.opts.size, 512);
    m.fully_allocated = m.required;  // unallocated sectors count in a raw file
  } else {
    uint64_t active_size = src ? src->size() : 0;
    if (src && !snapshot.empty()) {
      OpenOptions o;
      o.format = fmt;
      o.no_backing = true;
      o.force_share = force_share;
      auto active = Image::Open(file, o);
      if (active.ok()) active_size = (*active)->size();
    }
    auto r = MeasureQcow2(spec.opts, src.get(), file, active_size);
    if (!r.ok()) {
      PrintError(r.status().message());
      return 1;
    }
    m = *r;
  }
  if (src) (void)src->Close();
  if (output == "json") {
    JsonValue j = JsonValue::MakeObject();
    if (m.bitmaps) j.Set("bitmaps", *m.bitmaps);
    j.Set("required", m.required);
    j.Set("fully-allocated", m.fully_allocated);
    std::printf("%s\n", j.Pretty().c_str());
  } else {
    std::printf("required size: %llu\nfully allocated size: %llu\n",
                static_cast<unsigned long long>(m.required),
                static_cast<unsigned long long>(m.fully_allocated));
    if (m.bitmaps) std::printf("bitmaps size: %llu\n", static_cast<unsigned long long>(m.bitmaps.value()));
  }
  return 0;
}

}  // namespace qcow2j::cli
