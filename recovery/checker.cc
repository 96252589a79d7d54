// The checker's pass, after QEMU's qcow2_check_refcounts() (block/qcow2-refcount.c):
// count every reference to every host cluster, compare with the refcounts on
// disk, check OFLAG_COPIED against them. Unlike QEMU it reads each kind of
// table sequentially in large batches (a 1 TiB image has 128 MiB of L2
// tables), remembers which structure owns each cluster to name overlaps, and
// never needs the engine to open the image.
#include "recovery/checker.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>
#include <unordered_map>

#include "metadata/bitmap_directory.h"
#include "metadata/endian.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "metadata/snapshot_table.h"

namespace qcow2j {

std::string HexStr(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

const char* ClusterUseName(ClusterUse use) {
  switch (use) {
    case ClusterUse::kFree: return "free space";
    case ClusterUse::kHeader: return "image header";
    case ClusterUse::kL1: return "L1 table";
    case ClusterUse::kRefcountTable: return "refcount table";
    case ClusterUse::kRefcountBlock: return "refcount block";
    case ClusterUse::kSnapshotTable: return "snapshot table";
    case ClusterUse::kBitmapDirectory: return "bitmap directory";
    case ClusterUse::kBitmapTable: return "bitmap table";
    case ClusterUse::kBitmapData: return "bitmap data";
    case ClusterUse::kJournal: return "journal area";
    case ClusterUse::kL2: return "L2 table";
    case ClusterUse::kData: return "data cluster";
    case ClusterUse::kCompressed: return "compressed cluster";
  }
  return "?";
}

namespace {

constexpr uint64_t kHugeFileSize = 1ull << 62;
// One sequential read (the kernel reads ahead). Not larger: the buffer's
// pages are zeroed by the kernel when first touched, and 32 MiB of them were
// a tenth of a 1 TiB check.
constexpr uint64_t kMaxBatchBytes = 4ull << 20;
constexpr uint64_t kMaxBatchGap = 1ull << 20;     // read over holes smaller than this
constexpr uint64_t kAllocMask = 0xffffffffull;

using ull = unsigned long long;

// Excluded from libFuzzer's coverage hooks: a loop with nothing to learn,
// run over every entry of every table the fuzzed image names.
#if defined(__clang__)
#define QCOW2J_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define QCOW2J_NO_COVERAGE
#endif

// The index of the first of table entries [from, n), each `stride` bytes (a
// multiple of 8), that is not all zeros; n when there is none. A word at a
// time: most entries of most tables are zero.
QCOW2J_NO_COVERAGE uint64_t NextNonZeroEntry(const uint8_t* table, uint64_t from, uint64_t n,
                                             uint64_t stride) {
  const uint64_t end = n * stride;
  uint64_t b = from * stride;
  while (b < end) {
    uint64_t w;
    std::memcpy(&w, table + b, sizeof(w));
    if (w != 0) return b / stride;
    b += sizeof(w);
  }
  return n;
}

// Two references to one cluster are fine only for data and L2 tables shared
// with snapshots, and for compressed clusters packed into one host cluster.
bool MayShare(ClusterUse a, ClusterUse b) {
  if (a != b) return false;
  return a == ClusterUse::kData || a == ClusterUse::kL2 || a == ClusterUse::kCompressed;
}

// One L2 table and the L1 entries that reference it.
struct L2Ref {
  uint64_t offset = 0;
  uint32_t total_refs = 0;   // L1 entries (active and snapshots) pointing here
  uint32_t active_refs = 0;  // of which in the active L1
  uint64_t guest_base = 0;   // guest offset of its first entry (first referrer)
  std::string snapshot;      // first referrer: "" = active
};

class Scanner {
 public:
  Scanner(File* file, const ScanOptions& opts, ScanResult* r)
      : file_(file), opts_(opts), r_(r), want_text_(opts.keep_messages || opts.on_message) {}

  Status Run() {
    QCOW2J_RETURN_IF_ERROR(ReadHeader());
    QCOW2J_RETURN_IF_ERROR(AllocateMaps());
    QCOW2J_RETURN_IF_ERROR(LoadRefcounts());
    Note();
    // Metadata first, then L2 tables, then data: see ClusterUse.
    AddRef(0, cs_, ClusterUse::kHeader, 1, "image header", 0);
    if (h_.l1_size > 0) {
      if (AddRef(h_.l1_table_offset, uint64_t{h_.l1_size} * 8, ClusterUse::kL1, 1,
                 "active L1 table", 40) == Outcome::kPastEof) {
        r_->min_file_size =
            std::max<uint64_t>(r_->min_file_size, h_.l1_table_offset + h_.l1_size * 8ull);
      }
    }
    QCOW2J_RETURN_IF_ERROR(ScanSnapshotTable());
    if (opts_.count_refcount_structures && r_->reftable_usable) {
      AddRef(h_.refcount_table_offset, uint64_t{h_.refcount_table_clusters} * cs_,
             ClusterUse::kRefcountTable, 1, "refcount table", 48);
      for (size_t i = 0; i < r_->refblocks.size(); ++i) {
        if (r_->refblocks[i] != 0) {
          AddRef(r_->refblocks[i], cs_, ClusterUse::kRefcountBlock, 1, "refcount table entry",
                 h_.refcount_table_offset + 8 * i);
        }
      }
    }
    QCOW2J_RETURN_IF_ERROR(CountBitmaps());
    CountJournal();

    std::vector<uint8_t> l1;
    QCOW2J_RETURN_IF_ERROR(ReadInFile(h_.l1_table_offset, uint64_t{h_.l1_size} * 8, &l1));
    WalkL1(l1, h_.l1_table_offset, true, "");
    for (const SnapshotRecord& s : r_->snapshots) {
      if (s.bad || s.l1_size == 0) continue;
      QCOW2J_RETURN_IF_ERROR(ReadInFile(s.l1_table_offset, uint64_t{s.l1_size} * 8, &l1));
      WalkL1(l1, s.l1_table_offset, false, s.id);
    }
    QCOW2J_RETURN_IF_ERROR(ScanL2Tables());
    CheckRefblockRefs();
    Compare();
    Summarize();
    r_->owners = std::move(owner_);
    return Status::OK();
  }

 private:
  enum class Outcome { kOk, kPastEof, kOverlap };

  template <class Vec>
  Status Read(uint64_t offset, uint64_t len, Vec* out) {
    try {
      out->resize(len);
    } catch (const std::bad_alloc&) {
      return Status::Aborted("cannot allocate " + std::to_string(len) + " bytes to read " +
                             HexStr(offset));
    }
    if (len == 0) return Status::OK();
    Status s = file_->Read(offset, out->data(), len);
    if (!s.ok()) return s.Annotate("reading " + std::to_string(len) + " bytes at " + HexStr(offset));
    return Status::OK();
  }

  // The part of [offset, +len) inside the file: a table's entries past the
  // end read as zeros, which reference nothing (an L1 of 4 Mi entries in a
  // 5 KiB file costs nothing to walk).
  Status ReadInFile(uint64_t offset, uint64_t len, std::vector<uint8_t>* out) {
    return Read(offset, offset >= file_size_ ? 0 : std::min(len, file_size_ - offset), out);
  }

  // The message text of a problem, or "" when nobody will read it (a scan
  // with keep_messages off and no on_message): the scans inside a repair
  // need only each problem's kind and offset, and an image with thousands
  // of problems spent most of those scans formatting lines (found by
  // profiling fuzz_check: a third of its time went to problem strings).
  std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    if (!want_text_) return std::string();
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
  }

  void Problem(const char* kind, uint64_t offset, std::string message, bool leak = false,
               bool counted = true) {
    if (opts_.on_message) opts_.on_message(message);
    CheckProblem p;
    p.kind = kind;
    p.offset = offset;
    p.message = std::move(message);
    p.leak = leak;
    p.counted = counted;
    r_->report.problems.push_back(std::move(p));
  }

  // ---- header ----
  Status ReadHeader() {
    QCOW2J_ASSIGN_OR_RETURN(r_->file_size, file_->Size());
    file_size_ = r_->file_size;
    QCOW2J_ASSIGN_OR_RETURN(h_, ReadHeaderAsStored(file_, file_size_));
    cb_ = h_.cluster_bits;
    cs_ = h_.cluster_size();
    extended_ = h_.extended_l2();
    external_ = h_.has_data_file();
    l2_entries_ = h_.l2_entries();
    esize_ = extended_ ? 16 : 8;
    refmax_ = MaxRefcount(h_.refcount_order);
    // QEMU refuses to open an image whose active L1 table is not aligned:
    // there is no telling where the table is.
    if (h_.l1_table_offset & (cs_ - 1)) {
      return Status::Corruption("header field l1_table_offset " + HexStr(h_.l1_table_offset) +
                                " is not aligned to cluster_size " + std::to_string(cs_) +
                                " (Invalid L1 table offset)");
    }
    r_->header = h_;
    r_->nb_clusters = (file_size_ + cs_ - 1) >> cb_;
    nb_clusters_ = r_->nb_clusters;
    r_->report.total_clusters = (h_.size + cs_ - 1) >> cb_;
    if (nb_clusters_ > INT32_MAX) {
      return Status::NotSupported("the image file has " + std::to_string(nb_clusters_) +
                                  " clusters, more than the checker handles (File too large)");
    }
    return Status::OK();
  }

  Status AllocateMaps() {
    const uint64_t n = nb_clusters_ + 1;
    QCOW2J_RETURN_IF_ERROR(r_->computed.Resize(n));
    QCOW2J_RETURN_IF_ERROR(r_->ondisk.Resize(n));
    try {
      owner_.Reset(n);
    } catch (const std::bad_alloc&) {
      return Status::Aborted("cannot allocate the cluster map");
    }
    return Status::OK();
  }

  void Note() {
    if (h_.incompatible_features & kIncompatCorrupt) {
      Problem("header", 72, "Note: the corrupt bit (incompatible bit 1) is set", false, false);
    }
    if (h_.incompatible_features & kIncompatDirty) {
      Problem("header", 72, "Note: the dirty bit (incompatible bit 0) is set", false, false);
    }
    if (h_.incompatible_features & kIncompatJournal) {
      Problem("header", 72,
              "Note: the journal bit (incompatible bit 16) is set: the qcow2j journal holds "
              "transactions not yet written in place; open the image read-write, or check -r, "
              "to replay them",
              false, false);
    }
  }

  // ---- refcounts on disk ----
  Status LoadRefcounts() {
    const uint64_t rt_off = h_.refcount_table_offset;
    const uint64_t rt_bytes = uint64_t{h_.refcount_table_clusters} * cs_;
    auto bad_table = [&](const std::string& why) {
      Problem("refcount-table", rt_off, "ERROR refcount table at " + HexStr(rt_off) + ": " + why);
      r_->rebuild_needed = true;
    };
    if (h_.refcount_table_clusters == 0) {
      bad_table("refcount_table_clusters is 0; no refcount can be read");
      return Status::OK();
    }
    if (rt_off & (cs_ - 1)) {
      bad_table("not aligned to cluster_size " + std::to_string(cs_));
      return Status::OK();
    }
    if (rt_bytes > kMaxRefcountTableBytes) {
      bad_table(std::to_string(h_.refcount_table_clusters) + " clusters exceed the maximum size " +
                std::to_string(kMaxRefcountTableBytes));
      return Status::OK();
    }
    if (rt_off == 0) {
      bad_table("overlaps the image header");
      return Status::OK();
    }
    if (rt_off + rt_bytes > file_size_ && rt_off + rt_bytes - file_size_ >= cs_) {
      bad_table("the table of " + std::to_string(rt_bytes) + " bytes ends past the end of the file");
      return Status::OK();
    }
    r_->reftable_usable = true;
    std::vector<uint8_t> rt;
    QCOW2J_RETURN_IF_ERROR(Read(rt_off, rt_bytes, &rt));
    const uint64_t n = rt_bytes / 8;
    r_->refblocks.assign(n, 0);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t raw = LoadBE64(rt.data() + 8 * i);
      const uint64_t off = raw & kRefcountTableOffsetMask;
      if (raw & kRefcountTableReservedMask) {
        Problem("reserved-bits", rt_off + 8 * i,
                Fmt("ERROR refcount table entry %llu has reserved bits set", (ull)i));
        r_->rebuild_needed = true;
        continue;
      }
      if (off & (cs_ - 1)) {
        Problem("unaligned", rt_off + 8 * i,
                Fmt("ERROR refcount block %llu is not cluster aligned; refcount table entry "
                    "corrupted",
                    (ull)i));
        r_->rebuild_needed = true;
        continue;
      }
      if (off == 0) continue;
      if ((off >> cb_) >= nb_clusters_) {
        Problem("past-eof", rt_off + 8 * i,
                Fmt("ERROR refcount block %llu is outside image", (ull)i));
        r_->rebuild_needed = true;
        continue;
      }
      r_->refblocks[i] = off;
    }
    // Read the blocks that describe clusters of the file, in offset order.
    const uint64_t per_block = RefcountBlockEntries(cb_, h_.refcount_order);
    std::vector<std::pair<uint64_t, uint64_t>> blocks;  // offset, index
    for (uint64_t i = 0; i < n; ++i) {
      if (r_->refblocks[i] != 0 && i * per_block < r_->ondisk.size()) {
        blocks.emplace_back(r_->refblocks[i], i);
      }
    }
    std::sort(blocks.begin(), blocks.end());
    return ReadBatched(blocks, [&](uint64_t index, const uint8_t* p) {
      const uint64_t first = index * per_block;
      const uint64_t count = std::min(per_block, r_->ondisk.size() - first);
      if (h_.refcount_order == 4) {
        r_->ondisk.SetFromBE16(first, p, count);
      } else {
        std::span<const uint8_t> blk(p, cs_);
        for (uint64_t j = 0; j < count; ++j) {
          r_->ondisk.Set(first + j, GetRefcount(blk, h_.refcount_order, j));
        }
      }
    });
  }

  // Reads clusters (offset, tag) sorted by offset in large sequential reads
  // and hands each to fn(tag, bytes). (Reader threads were tried: on the 2
  // cores we have, their wake-ups cost more CPU than the overlap saved.)
  template <class Fn>
  Status ReadBatched(const std::vector<std::pair<uint64_t, uint64_t>>& items, Fn fn) {
    auto& buf = batch_buf_;
    size_t i = 0;
    while (i < items.size()) {
      const uint64_t start = items[i].first;
      uint64_t end = start + cs_;
      size_t j = i + 1;
      while (j < items.size() && items[j].first >= end - cs_ &&
             items[j].first <= end + kMaxBatchGap && items[j].first + cs_ - start <= kMaxBatchBytes) {
        end = std::max(end, items[j].first + cs_);
        ++j;
      }
      try {
        buf.Reserve(end - start);
      } catch (const std::bad_alloc&) {
        return Status::Aborted("cannot allocate " + std::to_string(end - start) +
                               " bytes to read " + HexStr(start));
      }
      Status s = file_->Read(start, buf.data(), end - start);
      if (!s.ok()) return s.Annotate("reading " + std::to_string(end - start) + " bytes at " + HexStr(start));
      for (size_t k = i; k < j; ++k) fn(items[k].second, buf.data() + (items[k].first - start));
      i = j;
    }
    return Status::OK();
  }

  // ---- reference counting ----
  // Counts n references to each cluster of [offset, offset+size). `what` and
  // `where` (the host offset of the pointer) name the referrer in messages.
  Outcome AddRef(uint64_t offset, uint64_t size, ClusterUse use, uint64_t n, const char* what,
                 uint64_t where) {
    if (size == 0) return Outcome::kOk;
    // As QEMU: the last cluster may be partly past the end of the file.
    const uint64_t end = offset + size;
    if (end < offset || (end > file_size_ && end - file_size_ >= cs_)) {
      Problem("past-eof", offset,
              Fmt("ERROR: counting reference for region exceeding the end of the file by one "
                  "cluster or more: offset 0x%llx size 0x%llx (%s at 0x%llx)",
                  (ull)offset, (ull)size, what, (ull)where));
      return Outcome::kPastEof;
    }
    Outcome out = Outcome::kOk;
    const uint64_t last = (end - 1) >> cb_;
    for (uint64_t k = offset >> cb_; k <= last && k < owner_.size(); ++k) {
      if (k >= nb_clusters_) nb_clusters_ = k + 1;
      const ClusterUse cur = owner_[k];
      if (cur == ClusterUse::kFree) {
        owner_.Set(k, use);
      } else if (!MayShare(cur, use) && out == Outcome::kOk) {
        Problem("overlap", k << cb_,
                Fmt("ERROR %s at 0x%llx: %s at 0x%llx overlaps the %s in cluster %llu", what,
                    (ull)where, ClusterUseName(use), (ull)offset, ClusterUseName(cur), (ull)k));
        out = Outcome::kOverlap;
      }
      for (uint64_t j = 0; j < n; ++j) {
        if (!r_->computed.Increment(k, refmax_)) {
          Problem("refcount-overflow", k << cb_,
                  Fmt("ERROR: overflow cluster offset=0x%llx", (ull)(k << cb_)));
          break;
        }
      }
    }
    return out;
  }

  // The common case of AddRef for one aligned data cluster inside the file
  // that nothing but data uses: true when counted; false to take the slow
  // path, which reports whatever is wrong.
  bool AddDataRef(uint64_t off, uint64_t n) {
    const uint64_t k = off >> cb_;
    if (k >= nb_clusters_ || ((k + 1) << cb_) > file_size_) return false;
    const ClusterUse use = owner_[k];
    if (use != ClusterUse::kFree && use != ClusterUse::kData) return false;
    if (n != 1 || !r_->computed.Increment(k, refmax_)) {
      return false;
    }
    if (use == ClusterUse::kFree) owner_.Set(k, ClusterUse::kData);
    return true;
  }

  // ---- snapshots ----
  Status ScanSnapshotTable() {
    uint32_t nb = h_.nb_snapshots;
    const uint64_t off = h_.snapshots_offset;
    if (nb == 0) return Status::OK();
    if (external_) {
      Problem("snapshot", 60, Fmt("ERROR %u snapshots in image with data file", nb));
      r_->drop_all_snapshots = true;
      return Status::OK();
    }
    if (nb > kMaxSnapshots) {
      Problem("snapshot", 60, Fmt("ERROR Too many snapshots (%u > %u)", nb, kMaxSnapshots));
      nb = kMaxSnapshots;
      r_->snapshot_table_fix = true;
    }
    if ((off & (cs_ - 1)) || off == 0 || off >= file_size_) {
      Problem("snapshot", 64,
              "ERROR snapshot table offset " + HexStr(off) +
                  (off >= file_size_ && !(off & (cs_ - 1)) && off
                       ? " is past the end of the file"
                       : " is not a cluster aligned offset after the header") +
                  "; snapshot table corrupted");
      r_->drop_all_snapshots = true;
      return Status::OK();
    }
    std::vector<uint8_t> buf;
    auto ensure = [&](uint64_t n) -> Status {
      if (n <= buf.size()) return Status::OK();
      uint64_t want = std::max<uint64_t>({n, buf.size() * 2, 64 * 1024});
      want = std::min<uint64_t>(want, std::max<uint64_t>(n, file_size_ - off));
      return Read(off, want, &buf);
    };
    uint64_t pos = 0;
    r_->snapshots.reserve(std::min<uint64_t>(nb, (file_size_ - off) / kSnapshotEntryMinBytes + 1));
    for (uint32_t i = 0; i < nb; ++i) {
      if (off + pos + kSnapshotEntryMinBytes > file_size_) {
        Problem("snapshot", off + pos,
                Fmt("ERROR snapshot table entry %u at 0x%llx is past the end of the file; "
                    "snapshot table truncated",
                    i, (ull)(off + pos)));
        r_->snapshot_table_fix = true;
        break;
      }
      QCOW2J_RETURN_IF_ERROR(ensure(pos + kSnapshotEntryMinBytes));
      const uint8_t* p = buf.data() + pos;
      SnapshotRecord s;
      s.index = i;
      s.l1_table_offset = LoadBE64(p);
      s.l1_size = LoadBE32(p + 8);
      const uint16_t id_size = LoadBE16(p + 12);
      const uint16_t name_size = LoadBE16(p + 14);
      const uint32_t extra = LoadBE32(p + 36);
      const uint64_t used = kSnapshotEntryMinBytes + uint64_t{extra} + id_size + name_size;
      const uint64_t len = (used + 7) & ~7ull;
      // QEMU writes the last entry without its padding when the table ends the file.
      if (pos + len > kMaxSnapshotTableBytes || off + pos + used > file_size_) {
        Problem("snapshot", off + pos,
                Fmt("ERROR snapshot table entry %u at 0x%llx (extra data %u bytes) runs past "
                    "the end of the %s; snapshot table truncated",
                    i, (ull)(off + pos), extra,
                    off + pos + used > file_size_ ? "file" : "maximum table size"));
        r_->snapshot_table_fix = true;
        break;
      }
      QCOW2J_RETURN_IF_ERROR(ensure(pos + len));
      p = buf.data() + pos;
      s.raw.assign(p, p + len);
      s.id.assign(reinterpret_cast<const char*>(p) + kSnapshotEntryMinBytes + extra, id_size);
      s.name.assign(reinterpret_cast<const char*>(p) + kSnapshotEntryMinBytes + extra + id_size,
                    name_size);
      if (extra > kMaxSnapshotExtraData) {
        Problem("snapshot", off + pos,
                Fmt("ERROR Too much extra metadata in snapshot table entry %u (%u bytes, at "
                    "most %u)",
                    i, extra, kMaxSnapshotExtraData));
        s.drop_extra = true;
        r_->snapshot_table_fix = true;
      }
      if (!s.drop_extra && h_.version >= 3 && extra < 16) {
        // Version 3 requires vm_state_size_large and disk_size (as QEMU checks).
        Problem("snapshot", off + pos, Fmt("ERROR snapshot table entry %u is incomplete", i));
        s.fill_extra = true;
        r_->snapshot_table_fix = true;
      }
      // Built only for a problem's text.
      auto who = [&] { return want_text_ ? "snapshot " + s.id + " (" + s.name + ")" : std::string(); };
      if (id_size == 0) {
        // QEMU never writes one; zeros or garbage past the real entries look like this.
        Problem("snapshot", off + pos,
                Fmt("ERROR snapshot table entry %u has an empty ID; snapshot table entry "
                    "corrupted",
                    i));
        s.bad = true;
      } else if (s.l1_table_offset & (cs_ - 1)) {
        Problem("snapshot", off + pos,
                Fmt("ERROR %s l1_offset=%#llx: L1 table is not cluster aligned; snapshot table "
                    "entry corrupted",
                    who().c_str(), (ull)s.l1_table_offset));
        s.bad = true;
      } else if (uint64_t{s.l1_size} * 8 > kMaxL1Bytes) {
        Problem("snapshot", off + pos,
                Fmt("ERROR %s l1_size=%#x: L1 table is too large; snapshot table entry "
                    "corrupted",
                    who().c_str(), s.l1_size));
        s.bad = true;
      } else if (s.l1_size > 0 && s.l1_table_offset == 0) {
        Problem("snapshot", off + pos,
                Fmt("ERROR %s: L1 table at offset 0 overlaps the image header; snapshot table "
                    "entry corrupted",
                    who().c_str()));
        s.bad = true;
      }
      r_->snapshots.push_back(std::move(s));
      pos += len;
    }
    if (AddRef(off, pos, ClusterUse::kSnapshotTable, 1, "snapshot table", 64) != Outcome::kOk) {
      r_->drop_all_snapshots = true;
      return Status::OK();
    }
    for (SnapshotRecord& s : r_->snapshots) {
      if (s.bad || s.l1_size == 0) continue;
      if (AddRef(s.l1_table_offset, uint64_t{s.l1_size} * 8, ClusterUse::kL1, 1, "snapshot L1 table",
                 off) != Outcome::kOk) {
        s.bad = true;
      }
    }
    for (const SnapshotRecord& s : r_->snapshots) {
      if (s.bad) r_->snapshot_table_fix = true;
    }
    return Status::OK();
  }

  // ---- bitmaps and journal ----
  Status CountBitmaps() {
    if (!h_.bitmaps || !(h_.autoclear_features & kAutoclearBitmaps)) return Status::OK();
    const BitmapsExtension& b = *h_.bitmaps;
    auto bad = [&](uint64_t at, const std::string& why) {
      Problem("bitmap", at, "ERROR bitmaps: " + why);
      r_->drop_bitmaps = true;
    };
    if (AddRef(b.bitmap_directory_offset, b.bitmap_directory_size, ClusterUse::kBitmapDirectory, 1,
               "bitmaps extension", 0) != Outcome::kOk) {
      r_->drop_bitmaps = true;
      return Status::OK();
    }
    std::vector<uint8_t> dir;
    QCOW2J_RETURN_IF_ERROR(Read(b.bitmap_directory_offset, b.bitmap_directory_size, &dir));
    auto entries = ParseBitmapDirectory(dir, b.nb_bitmaps, cb_, file_size_);
    if (!entries.ok()) {
      bad(b.bitmap_directory_offset, "bitmap directory at " + HexStr(b.bitmap_directory_offset) +
                                         ": " + entries.status().message());
      return Status::OK();
    }
    std::vector<uint8_t> table;
    for (const BitmapDirectoryEntry& e : *entries) {
      const uint64_t bytes = uint64_t{e.bitmap_table_size} * 8;
      if (AddRef(e.bitmap_table_offset, bytes, ClusterUse::kBitmapTable, 1, "bitmap directory",
                 b.bitmap_directory_offset) != Outcome::kOk) {
        r_->drop_bitmaps = true;
        continue;
      }
      QCOW2J_RETURN_IF_ERROR(Read(e.bitmap_table_offset, bytes, &table));
      for (uint64_t i = 0; i < e.bitmap_table_size; ++i) {
        const uint64_t v = LoadBE64(table.data() + 8 * i);
        const uint64_t data = v & 0x00fffffffffffe00ull;
        if (v & 0xff000000000001feull) {
          bad(e.bitmap_table_offset + 8 * i,
              "bitmap '" + e.name + "' table entry " + std::to_string(i) + " " + HexStr(v) +
                  " has reserved bits set");
          continue;
        }
        if (data & (cs_ - 1)) {
          bad(e.bitmap_table_offset + 8 * i, "bitmap '" + e.name + "' table entry " +
                                                 std::to_string(i) + " is not cluster aligned");
          continue;
        }
        if (data != 0 && AddRef(data, cs_, ClusterUse::kBitmapData, 1, "bitmap table entry",
                                e.bitmap_table_offset + 8 * i) != Outcome::kOk) {
          r_->drop_bitmaps = true;
        }
      }
    }
    return Status::OK();
  }

  // The qcow2j journal area (kExtJournal: area offset and size, big-endian,
  // first in the payload; see docs/journal-format.md). Its clusters are
  // referenced like any metadata.
  void CountJournal() {
    if (!h_.journal) return;
    if (h_.journal->size() < 16) {
      Problem("journal", 0, "ERROR qcow2j journal extension is too short (" +
                                std::to_string(h_.journal->size()) + " bytes)");
      return;
    }
    const uint64_t off = LoadBE64(h_.journal->data());
    const uint64_t size = LoadBE64(h_.journal->data() + 8);
    // An idle journal has no area. An area is live (referenced) only while
    // the journal bit is set; a clean close frees it in the same header
    // write that clears the bit.
    if (off == 0) return;
    if (!(h_.incompatible_features & kIncompatJournal)) return;
    if ((off & (cs_ - 1)) || off == 0) {
      Problem("journal", off, "ERROR qcow2j journal area offset " + HexStr(off) +
                                  " is not a cluster aligned offset after the header");
      return;
    }
    AddRef(off, size, ClusterUse::kJournal, 1, "journal extension", 0);
  }

  // ---- L1 tables ----
  void WalkL1(const std::vector<uint8_t>& l1, uint64_t l1_off, bool active,
              const std::string& snapshot) {
    const uint64_t cover = l2_entries_ * cs_;
    const uint64_t n = l1.size() / 8;
    for (uint64_t i = NextNonZeroEntry(l1.data(), 0, n, 8); i < n;
         i = NextNonZeroEntry(l1.data(), i + 1, n, 8)) {
      const uint64_t raw = LoadBE64(l1.data() + 8 * i);
      const uint64_t where = l1_off + 8 * i;
      uint64_t fixed = raw;
      bool drop = false;
      if (raw & kL1ReservedMask) {
        Problem("reserved-bits", where,
                Fmt("ERROR found L1 entry with reserved bits set: %llx", (ull)raw));
        fixed &= ~kL1ReservedMask;
      }
      const uint64_t l2 = raw & kL1OffsetMask;
      if (l2 == 0) {
        if (fixed != raw) r_->entry_fixes.push_back({where, fixed, {}});
        continue;
      }
      if (l2 & (cs_ - 1)) {
        Problem("unaligned", where,
                Fmt("ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry corrupted",
                    (ull)l2));
        drop = true;
      } else if (AddRef(l2, cs_, ClusterUse::kL2, 1, active ? "active L1 entry" : "snapshot L1 entry",
                        where) != Outcome::kOk) {
        drop = true;
      }
      if (drop) {
        LostRange lost{i * cover, cover, snapshot, ""};
        r_->entry_fixes.push_back({where, 0, lost});
        continue;
      }
      if (fixed != raw) r_->entry_fixes.push_back({where, fixed, {}});
      if (active) {
        const uint64_t rc = r_->ondisk.Get(l2 >> cb_);
        const bool copied = raw & kOflagCopied;
        if ((rc == 1) != copied) {
          Problem("copied-flag", where,
                  Fmt("ERROR OFLAG_COPIED L2 cluster: l1_index=%llu l1_entry=%llx refcount=%llu",
                      (ull)i, (ull)raw, (ull)rc));
          r_->copied_fixes.push_back(
              {where, rc == 1 ? (fixed | kOflagCopied) : (fixed & ~kOflagCopied), {}});
        }
      }
      auto [it, inserted] = l2_index_.emplace(l2, l2_refs_.size());
      if (inserted) {
        L2Ref ref;
        ref.offset = l2;
        ref.guest_base = i * cover;
        ref.snapshot = snapshot;
        l2_refs_.push_back(ref);
      }
      L2Ref& ref = l2_refs_[it->second];
      ++ref.total_refs;
      if (active) ++ref.active_refs;
    }
  }

  // ---- L2 tables ----
  Status ScanL2Tables() {
    std::vector<std::pair<uint64_t, uint64_t>> items;
    items.reserve(l2_refs_.size());
    for (size_t i = 0; i < l2_refs_.size(); ++i) items.emplace_back(l2_refs_[i].offset, i);
    std::sort(items.begin(), items.end());
    size_t done = 0;
    return ReadBatched(items, [&](uint64_t index, const uint8_t* p) {
      ProcessL2(l2_refs_[index], p);
      // The L2 tables are the bulk of a pass: its progress is theirs.
      if (opts_.on_progress) opts_.on_progress(static_cast<double>(++done) / items.size());
    });
  }

  void ProcessL2(const L2Ref& ref, const uint8_t* table) {
    const bool active = ref.active_refs > 0;
    const uint64_t mult = ref.total_refs;
    uint64_t next_contiguous = 0;
    for (uint64_t i = NextNonZeroEntry(table, 0, l2_entries_, esize_); i < l2_entries_;
         i = NextNonZeroEntry(table, i + 1, l2_entries_, esize_)) {
      const uint8_t* p = table + i * esize_;
      const uint64_t raw = LoadBE64(p);
      const uint64_t bm = extended_ ? LoadBE64(p + 8) : 0;
      if (raw == 0 && bm == 0) continue;
      const uint64_t where = ref.offset + i * esize_;
      // The common entry, without decoding it: a standard data cluster (no
      // flag but COPIED, no reserved bit, aligned) that only data uses. The
      // same accounting as the kNormal case below; anything else, or a
      // cluster AddDataRef declines (it changes nothing then), goes there.
      if (!extended_ && !external_ && (raw & ~(kOflagCopied | kL2OffsetMask)) == 0) {
        const uint64_t off = raw & kL2OffsetMask;
        if (off != 0 && (off & (cs_ - 1)) == 0 && AddDataRef(off, mult)) {
          if (active) {
            r_->report.allocated_clusters += ref.active_refs;
            if (next_contiguous && off != next_contiguous) {
              r_->report.fragmented_clusters += ref.active_refs;
            }
            next_contiguous = off + cs_;
            const uint64_t rc = r_->ondisk.Get(off >> cb_);
            if ((rc == 1) != ((raw & kOflagCopied) != 0)) {
              Problem("copied-flag", where,
                      Fmt("ERROR OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
                          (ull)raw, (ull)rc));
              r_->copied_fixes.push_back(
                  {where, rc == 1 ? (raw | kOflagCopied) : (raw & ~kOflagCopied), {}});
            }
          }
          continue;
        }
      }
      const L2Entry e = L2Entry::Decode(raw, bm, extended_, external_);
      uint64_t fixed = raw, fixed_bm = bm;
      bool drop = false;
      if (!e.compressed()) {
        const uint64_t rb = e.reserved_bits();
        if (rb) {
          Problem("reserved-bits", where,
                  Fmt("ERROR found l2 entry with reserved bits set: %llx", (ull)raw));
          fixed &= ~rb;
        }
      }
      switch (e.type()) {
        case ClusterType::kCompressed: {
          const CompressedDescriptor d = CompressedDescriptor::Decode(raw, cb_);
          if (e.copied()) {
            Problem("copied-flag", where,
                    Fmt("ERROR: coffset=0x%llx: copied flag must never be set for compressed "
                        "clusters",
                        (ull)d.host_offset));
            fixed &= ~kOflagCopied;
          }
          if (external_) {
            Problem("compressed", where,
                    Fmt("ERROR compressed cluster %llu with data file, entry=0x%llx", (ull)i,
                        (ull)raw));
            drop = true;
            break;
          }
          if (bm) {
            Problem("subcluster-bitmap", where,
                    Fmt("ERROR compressed cluster %llu with non-zero subcluster allocation "
                        "bitmap, entry=0x%llx",
                        (ull)i, (ull)raw));
            fixed_bm = 0;
          }
          if (AddRef(d.host_offset, d.compressed_size(), ClusterUse::kCompressed, mult,
                     "compressed L2 entry", where) != Outcome::kOk) {
            drop = true;
          }
          if (active) {
            r_->report.allocated_clusters += ref.active_refs;
            r_->report.compressed_clusters += ref.active_refs;
            r_->report.fragmented_clusters += ref.active_refs;
          }
          break;
        }
        case ClusterType::kNormal:
        case ClusterType::kZeroAllocated: {
          const uint64_t off = raw & kL2OffsetMask;
          if (extended_) {
            const uint64_t both = bm & (bm >> 32) & kAllocMask;
            if (both) {
              Problem("subcluster-bitmap", where,
                      Fmt("ERROR offset=%llx: Allocated cluster has corrupted subcluster "
                          "allocation bitmap",
                          (ull)off));
              fixed_bm &= ~(both << 32);
            }
          }
          const bool has_data = extended_ ? (bm & kAllocMask) != 0 : !(raw & kOflagZero);
          if (off & (cs_ - 1)) {
            if (has_data) {
              Problem("unaligned", where,
                      Fmt("ERROR offset=%llx: Data cluster is not properly aligned; L2 entry "
                          "corrupted.",
                          (ull)off));
              drop = true;
            } else {
              Problem("unaligned", where,
                      Fmt("ERROR offset=%llx: Preallocated cluster is not properly aligned; L2 "
                          "entry corrupted.",
                          (ull)off));
              // As QEMU: it reads as zeros either way; make it a plain zero cluster.
              fixed = extended_ ? 0 : kOflagZero;
              fixed_bm = extended_ ? (kAllocMask << 32) : 0;
            }
          }
          if (active) {
            r_->report.allocated_clusters += ref.active_refs;
            if (next_contiguous && off != next_contiguous) {
              r_->report.fragmented_clusters += ref.active_refs;
            }
            next_contiguous = off + cs_;
          }
          if (off & (cs_ - 1)) break;
          if (!external_ && !AddDataRef(off, mult) &&
              AddRef(off, cs_, ClusterUse::kData, mult, "L2 entry", where) != Outcome::kOk) {
            drop = true;
            break;
          }
          if (active) {
            const uint64_t rc = external_ ? 1 : r_->ondisk.Get(off >> cb_);
            if ((rc == 1) != e.copied()) {
              Problem("copied-flag", where,
                      Fmt("ERROR OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
                          (ull)raw, (ull)rc));
              r_->copied_fixes.push_back(
                  {where, rc == 1 ? (fixed | kOflagCopied) : (fixed & ~kOflagCopied), {}});
            }
          }
          break;
        }
        case ClusterType::kZeroPlain:
          break;
        case ClusterType::kUnallocated:
          if (extended_ && (bm & kAllocMask)) {
            Problem("subcluster-bitmap", where,
                    "ERROR: Unallocated cluster has non-zero subcluster allocation map");
            fixed_bm &= ~kAllocMask;
          }
          break;
      }
      if (drop) {
        LostRange lost{ref.guest_base + i * cs_, cs_, ref.snapshot, ""};
        r_->entry_fixes.push_back({where, 0, lost});
        if (extended_ && bm) r_->entry_fixes.push_back({where + 8, 0, {}});
        continue;
      }
      if (fixed != raw) r_->entry_fixes.push_back({where, fixed, {}});
      if (fixed_bm != bm) r_->entry_fixes.push_back({where + 8, fixed_bm, {}});
    }
  }

  // ---- comparison ----
  void CheckRefblockRefs() {
    if (!opts_.count_refcount_structures) return;
    for (size_t i = 0; i < r_->refblocks.size(); ++i) {
      const uint64_t off = r_->refblocks[i];
      if (off == 0) continue;
      const uint64_t c = r_->computed.Get(off >> cb_);
      if (c != 1) {
        Problem("refcount-block", off,
                Fmt("ERROR refcount block %llu refcount=%llu", (ull)i, (ull)c));
        r_->rebuild_needed = true;
      }
    }
  }

  void Compare() {
    const uint64_t per_block = RefcountBlockEntries(cb_, h_.refcount_order);
    uint64_t highest = 0;
    bool any = false;
    // The image end: the last cluster counted on either side.
    for (uint64_t i = nb_clusters_; i-- > 0;) {
      if (r_->ondisk.Get(i) || r_->computed.Get(i)) {
        highest = i;
        any = true;
        break;
      }
    }
    // Runs that agree byte for byte (most of a consistent image) are skipped
    // with memcmp instead of two lookups per cluster.
    constexpr uint64_t kRun = 4096;
    for (uint64_t i = 0; i < nb_clusters_; ++i) {
      if (i % kRun == 0 && i + kRun <= nb_clusters_ &&
          RefcountMap::SameRun(r_->ondisk, r_->computed, i, kRun)) {
        i += kRun - 1;
        continue;
      }
      const uint64_t r1 = r_->ondisk.Get(i);
      const uint64_t r2 = r_->computed.Get(i);
      if (r1 == r2) continue;
      if (r1 == 0) {
        // A cluster in use that its refcount block says is free: patchable
        // in place only when that block exists.
        const uint64_t b = i / per_block;
        if (b >= r_->refblocks.size() || r_->refblocks[b] == 0) r_->rebuild_needed = true;
      }
      if (r1 < r2) {
        Problem("refcount-mismatch", i << cb_,
                Fmt("ERROR cluster %llu refcount=%llu reference=%llu", (ull)i, (ull)r1, (ull)r2));
      } else {
        Problem("leak", i << cb_,
                Fmt("Leaked cluster %llu refcount=%llu reference=%llu", (ull)i, (ull)r1, (ull)r2),
                true);
      }
    }
    r_->nb_clusters = nb_clusters_;
    r_->report.image_end_offset = any ? (highest + 1) << cb_ : 0;
  }

  void Summarize() {
    for (const CheckProblem& p : r_->report.problems) {
      if (!p.counted) continue;
      if (p.leak) {
        ++r_->report.leaks;
      } else {
        ++r_->report.corruptions;
      }
    }
  }

  File* file_;
  const ScanOptions& opts_;
  ScanResult* r_;
  const bool want_text_;  // problems get their message text
  Header h_;
  uint64_t file_size_ = 0;
  uint64_t nb_clusters_ = 0;
  uint32_t cb_ = 16;
  uint64_t cs_ = 65536;
  bool extended_ = false;
  bool external_ = false;
  uint64_t l2_entries_ = 8192;
  uint64_t esize_ = 8;
  uint64_t refmax_ = 0xffff;
  ClusterOwners owner_;
  // ReadBatched's buffer, kept across its calls (refcount blocks, L2
  // tables): up to kMaxBatchBytes, faulted in once, in huge pages.
  HugeBuffer batch_buf_;
  std::vector<L2Ref> l2_refs_;
  std::unordered_map<uint64_t, size_t> l2_index_;
};

}  // namespace

Result<Header> ReadHeaderAsStored(File* file, uint64_t file_size) {
  std::vector<uint8_t> buf(kHeaderProbeBytes);
  Status s = file->Read(0, buf.data(), buf.size());
  if (!s.ok()) return s.Annotate("reading the image header");
  if (file_size < kV2HeaderLength) {
    return Status::Corruption("Image is not in qcow2 format: the file is only " +
                              std::to_string(file_size) + " bytes");
  }
  const uint32_t bits = LoadBE32(buf.data() + 20);
  const bool bits_ok = bits >= kMinClusterBits && bits <= kMaxClusterBits;
  if (bits_ok) {
    buf.resize(1ull << bits);
    s = file->Read(0, buf.data(), buf.size());
    if (!s.ok()) return s.Annotate("reading the image header");
  }
  // The header codec checks every table pointer as the engine needs it.
  // Check and salvage judge those themselves, so the codec sees the table
  // pointers neutralised (in place: the buffer can be a 2 MiB cluster) and
  // the stored values are put back after.
  const uint64_t l1_table_offset = LoadBE64(buf.data() + 40);
  const uint64_t refcount_table_offset = LoadBE64(buf.data() + 48);
  const uint32_t refcount_table_clusters = LoadBE32(buf.data() + 56);
  const uint32_t nb_snapshots = LoadBE32(buf.data() + 60);
  const uint64_t snapshots_offset = LoadBE64(buf.data() + 64);
  if (bits_ok) {
    StoreBE64(buf.data() + 40, 1ull << bits);
    StoreBE64(buf.data() + 48, 1ull << bits);
    StoreBE32(buf.data() + 56, 1);
    StoreBE32(buf.data() + 60, 0);
    StoreBE64(buf.data() + 64, 0);
  }
  QCOW2J_ASSIGN_OR_RETURN(Header h, ParseHeader(buf, kHugeFileSize));
  h.l1_table_offset = l1_table_offset;
  h.refcount_table_offset = refcount_table_offset;
  h.refcount_table_clusters = refcount_table_clusters;
  h.nb_snapshots = nb_snapshots;
  h.snapshots_offset = snapshots_offset;
  return h;
}

Result<std::unique_ptr<ScanResult>> ScanImage(File* file, const ScanOptions& opts) {
  auto r = std::make_unique<ScanResult>();
  Scanner s(file, opts, r.get());
  QCOW2J_RETURN_IF_ERROR(s.Run());
  return r;
}

}  // namespace qcow2j
