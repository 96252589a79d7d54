// Creating a qcow2 image. The whole initial layout is computed up front and
// written sequentially, so preallocation=metadata of a 1 TiB image is a few
// large writes rather than millions of allocations:
//
//   cluster 0            header, extensions, backing file name
//   refcount table       rt_clusters
//   refcount blocks      rb_count, covering every cluster below
//   L1 table             l1_clusters
//   [L2 tables]          preallocation != off: one per L1 entry in use
//   [data clusters]      preallocation != off: every guest cluster, in order
#include <algorithm>
#include <cstring>
#include <vector>

#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "journal/journal_format.h"
#include "qcow2/qcow2_image.h"
#include "qcow2/raw_image.h"

namespace qcow2j {
namespace {

uint64_t DivRoundUp(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

struct Layout {
  uint64_t cluster_size = 0;
  uint64_t rt_offset = 0, rt_clusters = 0;
  uint64_t rb_offset = 0, rb_count = 0;
  uint64_t l1_offset = 0, l1_size = 0, l1_clusters = 0;
  uint64_t l2_offset = 0, l2_count = 0;
  uint64_t data_offset = 0, data_clusters = 0;
  uint64_t total_clusters = 0;  // clusters with refcount 1
};

Status ValidateCreate(const CreateOptions& o) {
  if (o.cluster_size < 512 || o.cluster_size > (2u << 20) || (o.cluster_size & (o.cluster_size - 1)))
    return Status::InvalidArgument("cluster_size " + std::to_string(o.cluster_size) +
                                   " must be a power of two between 512 and 2097152");
  if (o.refcount_bits == 0 || o.refcount_bits > 64 || (o.refcount_bits & (o.refcount_bits - 1)))
    return Status::InvalidArgument("refcount_bits " + std::to_string(o.refcount_bits) +
                                   " must be a power of two no larger than 64");
  if (o.version != 2 && o.version != 3)
    return Status::InvalidArgument("compat must be 0.10 or 1.1");
  if (o.version == 2 && o.refcount_bits != 16)
    return Status::InvalidArgument("Different refcount widths than 16 bits require compatibility "
                                   "level 1.1 or above (use compat=1.1 or greater)");
  if (o.version == 2 && (o.lazy_refcounts || o.extended_l2 || !o.data_file.empty() ||
                         o.compression_type != "zlib"))
    return Status::InvalidArgument("lazy_refcounts, extended_l2, data_file and compression_type "
                                   "require compat=1.1 or above");
  if (o.extended_l2 && o.cluster_size < 16384)
    return Status::InvalidArgument("Extended L2 entries are only supported with cluster sizes of "
                                   "at least 16384 bytes");
  if (o.compression_type != "zlib" && o.compression_type != "zstd")
    return Status::InvalidArgument("compression_type '" + o.compression_type +
                                   "' is not zlib or zstd");
  if (o.size > kMaxVirtualSize)
    return Status::InvalidArgument("size " + std::to_string(o.size) + " is too large");
  if (o.backing_file.size() > kMaxBackingFileNameLength)
    return Status::InvalidArgument("backing file name is longer than 1023 bytes");
  if (o.data_file_raw && o.data_file.empty())
    return Status::InvalidArgument("data_file_raw requires data_file");
  if (!o.data_file.empty() && !o.backing_file.empty() && o.data_file_raw)
    return Status::InvalidArgument("Backing file and data_file_raw cannot be used together");
  return Status::OK();
}

Layout ComputeLayout(const CreateOptions& o, uint64_t size) {
  Layout L;
  const uint64_t cs = o.cluster_size;
  const uint32_t cluster_bits = static_cast<uint32_t>(__builtin_ctz(o.cluster_size));
  const uint64_t l2_entries = cs / (o.extended_l2 ? 16 : 8);
  const uint64_t guest_clusters = DivRoundUp(size, cs);
  L.cluster_size = cs;
  L.l1_size = DivRoundUp(guest_clusters, l2_entries);
  L.l1_clusters = std::max<uint64_t>(1, DivRoundUp(L.l1_size * 8, cs));
  const bool prealloc = o.preallocation != Preallocation::kOff;
  // An external data file holds the data clusters; only L2 tables are ours.
  const bool external = !o.data_file.empty();
  if (prealloc) {
    L.l2_count = L.l1_size;
    L.data_clusters = external ? 0 : guest_clusters;
  }
  const uint32_t order = static_cast<uint32_t>(__builtin_ctz(o.refcount_bits));
  const uint64_t rb_entries = RefcountBlockEntries(cluster_bits, order);
  // Fixed point: refcount blocks and table must also count themselves.
  uint64_t fixed = 1 + L.l1_clusters + L.l2_count + L.data_clusters;
  uint64_t rb = 0, rt = 1;
  for (;;) {
    uint64_t total = fixed + rb + rt;
    uint64_t rb2 = DivRoundUp(total, rb_entries);
    uint64_t rt2 = std::max<uint64_t>(1, DivRoundUp(rb2 * 8, cs));
    if (rb2 == rb && rt2 == rt) break;
    rb = rb2;
    rt = rt2;
  }
  L.rt_clusters = rt;
  L.rb_count = rb;
  L.rt_offset = cs;
  L.rb_offset = L.rt_offset + rt * cs;
  L.l1_offset = L.rb_offset + rb * cs;
  L.l2_offset = L.l1_offset + L.l1_clusters * cs;
  L.data_offset = L.l2_offset + L.l2_count * cs;
  L.total_clusters = fixed + rb + rt;
  return L;
}

// Writes `count` clusters produced by `fill(index, buf)` starting at `offset`,
// batched into large sequential writes.
template <class Fill>
Status WriteClusters(File* f, uint64_t offset, uint64_t count, uint64_t cs, Fill fill) {
  const uint64_t batch = std::max<uint64_t>(1, (8ull << 20) / cs);
  std::vector<uint8_t> buf(std::min(count, batch) * cs);
  for (uint64_t i = 0; i < count; i += batch) {
    uint64_t n = std::min(batch, count - i);
    std::memset(buf.data(), 0, n * cs);
    for (uint64_t j = 0; j < n; j++) fill(i + j, buf.data() + j * cs);
    QCOW2J_RETURN_IF_ERROR(f->Write(offset + i * cs, buf.data(), n * cs));
  }
  return Status::OK();
}

}  // namespace

Status CreateQcow2(const std::string& path, const CreateOptions& opts_in) {
  CreateOptions o = opts_in;
  QCOW2J_RETURN_IF_ERROR(ValidateCreate(o));
  Env* env = o.env ? o.env : Env::Default();
  if (!o.backing_file.empty() && o.size == 0) {
    // Size defaults to the backing file's (resolved against the new image's folder).
    std::string dir = path.rfind('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
    OpenOptions bo;
    bo.env = env;
    bo.format = o.backing_format;
    auto b = Image::Open(ResolveBackingPath(dir, o.backing_file), bo);
    if (!b.ok()) return b.status().Annotate("Could not open backing image");
    o.size = (*b)->size();
    if (o.backing_format.empty()) o.backing_format = (*b)->Info().format;
  }
  Layout L = ComputeLayout(o, o.size);
  const uint64_t cs = L.cluster_size;
  const uint32_t cluster_bits = static_cast<uint32_t>(__builtin_ctz(o.cluster_size));
  const uint32_t order = static_cast<uint32_t>(__builtin_ctz(o.refcount_bits));

  Header h;
  h.version = static_cast<uint32_t>(o.version);
  h.cluster_bits = cluster_bits;
  h.size = o.size;
  h.l1_size = static_cast<uint32_t>(L.l1_size);
  h.l1_table_offset = L.l1_offset;
  h.refcount_table_offset = L.rt_offset;
  h.refcount_table_clusters = static_cast<uint32_t>(L.rt_clusters);
  h.refcount_order = order;
  h.header_length = o.version == 2 ? kV2HeaderLength : kV3HeaderLength;
  h.backing_file = o.backing_file;
  if (!o.backing_format.empty()) h.backing_format = o.backing_format;
  if (o.version == 3) {
    h.feature_names = DefaultFeatureNames();
    if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
    if (o.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
    if (o.compression_type == "zstd") {
      h.compression_type = kCompressionZstd;
      h.incompatible_features |= kIncompatCompression;
    }
    if (o.journal) {
      // Journal enabled, no area yet: the first commit of a read-write
      // session allocates one, a clean close frees it (docs/journal-format.md).
      JournalExtension ext;
      ext.area_offset = 0;
      // The size later sessions allocate: a whole number of clusters.
      ext.area_size = o.journal_size ? (o.journal_size + o.cluster_size - 1) / o.cluster_size * o.cluster_size : 0;
      ext.sector_size = 512;
      ext.flags = o.lazy_refcounts ? kJournalFlagDirtyRefcounts : 0;
      h.journal = EncodeJournalExtension(ext);
    }
    if (!o.data_file.empty()) {
      h.data_file = o.data_file;
      h.incompatible_features |= kIncompatDataFile;
      if (o.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
    }
  }
  auto serialized = SerializeHeader(h);
  if (!serialized.ok() && !h.feature_names.empty()) {
    // Like QEMU: with small clusters the feature-name table is left out
    // when it does not fit in the header cluster.
    h.feature_names.clear();
    serialized = SerializeHeader(h);
  }
  if (!serialized.ok()) return serialized.status();
  std::vector<uint8_t> hbytes = std::move(serialized).value();

  QCOW2J_ASSIGN_OR_RETURN(auto f, env->Open(path, kOpenCreate | kOpenTruncate));
  std::unique_ptr<File> df;
  if (!o.data_file.empty()) {
    std::string dir = path.rfind('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
    QCOW2J_ASSIGN_OR_RETURN(df, env->Open(ResolveBackingPath(dir, o.data_file),
                                          kOpenCreate | kOpenTruncate));
    QCOW2J_RETURN_IF_ERROR(df->Truncate(o.size));
  }
  // Refcount table: entry i -> refcount block i.
  QCOW2J_RETURN_IF_ERROR(WriteClusters(f.get(), L.rt_offset, L.rt_clusters, cs,
                                       [&](uint64_t c, uint8_t* p) {
    for (uint64_t e = 0; e < cs / 8; e++) {
      uint64_t idx = c * (cs / 8) + e;
      if (idx < L.rb_count) StoreBE64(p + e * 8, L.rb_offset + idx * cs);
    }
  }));
  // Refcount blocks: clusters [0, total_clusters) have refcount 1.
  const uint64_t rb_entries = RefcountBlockEntries(cluster_bits, order);
  QCOW2J_RETURN_IF_ERROR(WriteClusters(f.get(), L.rb_offset, L.rb_count, cs,
                                       [&](uint64_t b, uint8_t* p) {
    uint64_t first = b * rb_entries;
    uint64_t n = std::min(rb_entries, L.total_clusters - std::min(L.total_clusters, first));
    std::span<uint8_t> block(p, cs);
    if (order == 4) {  // the common width, without the per-entry dispatch
      for (uint64_t i = 0; i < n; i++) StoreBE16(p + 2 * i, 1);
    } else {
      for (uint64_t i = 0; i < n; i++) SetRefcount(block, order, i, 1);
    }
  }));
  // L1 table: with preallocation every entry points at its L2 table.
  QCOW2J_RETURN_IF_ERROR(WriteClusters(f.get(), L.l1_offset, L.l1_clusters, cs,
                                       [&](uint64_t c, uint8_t* p) {
    for (uint64_t e = 0; e < cs / 8; e++) {
      uint64_t idx = c * (cs / 8) + e;
      if (idx < L.l2_count) StoreBE64(p + e * 8, (L.l2_offset + idx * cs) | kOflagCopied);
    }
  }));
  if (L.l2_count) {
    const uint64_t l2_entries = cs / (o.extended_l2 ? 16 : 8);
    const uint64_t guest_clusters = DivRoundUp(o.size, cs);
    const bool external = !o.data_file.empty();
    QCOW2J_RETURN_IF_ERROR(WriteClusters(f.get(), L.l2_offset, L.l2_count, cs,
                                         [&](uint64_t t, uint8_t* p) {
      for (uint64_t e = 0; e < l2_entries; e++) {
        uint64_t gc = t * l2_entries + e;
        if (gc >= guest_clusters) break;
        uint64_t host = external ? gc * cs : L.data_offset + gc * cs;
        uint8_t* ent = p + e * (o.extended_l2 ? 16 : 8);
        StoreBE64(ent, host | kOflagCopied);
        // Extended L2: all subclusters allocated (their data reads as the file's zeros).
        if (o.extended_l2) StoreBE64(ent + 8, 0xffffffffull);
      }
    }));
  }
  // Header last: until it is written the file is not a valid image.
  QCOW2J_RETURN_IF_ERROR(f->Write(0, hbytes.data(), hbytes.size()));
  uint64_t end = L.data_offset + L.data_clusters * cs;
  QCOW2J_RETURN_IF_ERROR(f->Truncate(end));
  File* data = df ? df.get() : f.get();
  uint64_t data_start = df ? 0 : L.data_offset;
  uint64_t data_len = df ? o.size : L.data_clusters * cs;
  if (data_len && o.preallocation == Preallocation::kFalloc) {
    QCOW2J_RETURN_IF_ERROR(data->Allocate(data_start, data_len, false));
  } else if (data_len && o.preallocation == Preallocation::kFull) {
    QCOW2J_RETURN_IF_ERROR(data->Allocate(data_start, data_len, false));
    QCOW2J_RETURN_IF_ERROR(data->ZeroRange(data_start, data_len));
  }
  if (df) QCOW2J_RETURN_IF_ERROR(df->Sync());
  return f->Sync();
}

Status Image::Create(const std::string& path, const CreateOptions& opts) {
  if (opts.format == "raw") return RawImage::Create(path, opts);
  if (opts.format != "qcow2")
    return Status::NotSupported("unknown image format '" + opts.format + "' (qcow2 or raw)");
  return CreateQcow2(path, opts);
}

}  // namespace qcow2j
