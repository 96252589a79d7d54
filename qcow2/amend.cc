// qemu-img amend for qcow2 on a closed file: compat (both ways), lazy
// refcounts, the refcount width and the backing file name, in one header
// rewrite. Everything is checked before the first write. Two steps touch
// more than the header, and both write only clusters no header field
// references yet, before the header switches to them, so a crash in between
// leaves the old image that reads the same: a downgrade's zero-cluster
// expansion, and a refcount-width change's new refcount table and blocks.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/hex.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "journal/journal_format.h"
#include "qcow2/image_ops.h"
#include "qcow2/offline_image.h"

namespace qcow2j {

namespace {

// A v3 zero cluster that v2 cannot express, and what it becomes.
struct ZeroFix {
  uint64_t table = 0;  // L2 table offset
  uint64_t index = 0;  // entry in it
  uint64_t host = 0;   // the zero-filled data cluster (0: allocate one)
};

// Scans every L2 table of the active tree and of the snapshots for what a
// downgrade to v2 must change. Fills *unmap with (table, index) of zero
// clusters that simply become unallocated (no backing file) and *fixes with
// those that need a zero-filled data cluster.
Status PlanDowngrade(OfflineImage& im, std::vector<std::pair<uint64_t, uint64_t>>* unmap,
                     std::vector<ZeroFix>* fixes) {
  std::vector<std::vector<uint64_t>> l1s = {im.l1};
  for (const SnapshotEntry& e : im.snapshots) {
    std::vector<uint64_t> l1;
    QCOW2J_RETURN_IF_ERROR(ReadL1(im, e.l1_table_offset, e.l1_size, "snapshot " + e.id + " L1 table", &l1));
    l1s.push_back(std::move(l1));
  }
  std::vector<uint64_t> offsets;
  for (size_t t = 0; t < l1s.size(); t++) {
    QCOW2J_ASSIGN_OR_RETURN(auto tables, L2Tables(im, l1s[t], t ? "snapshot L1 table" : "active L1 table"));
    for (auto& [off, n] : tables) offsets.push_back(off);
  }
  std::sort(offsets.begin(), offsets.end());
  offsets.erase(std::unique(offsets.begin(), offsets.end()), offsets.end());

  const bool has_backing = !im.h.backing_file.empty();
  const bool zstd = im.h.compression_type != kCompressionZlib;
  const uint64_t entries = im.cs / im.l2_entry_bytes;
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  return VisitL2Tables(im, offsets, false, [&](uint64_t off, uint8_t* table) -> Result<bool> {
    for (uint64_t j = 0; j < entries; j++) {
      uint64_t raw = LoadBE64(table + j * im.l2_entry_bytes);
      if (raw & kOflagCompressed) {
        if (zstd)
          return Status::NotSupported("Cannot downgrade an image with zstd compression type and "
                                      "existing compressed clusters");
        continue;
      }
      if (!(raw & kOflagZero)) continue;
      uint64_t host = raw & kL2OffsetMask;
      if (!host && !has_backing) {
        unmap->push_back({off, j});
        continue;
      }
      // A data cluster takes the zero cluster's place: only where no
      // snapshot can see the table or the cluster, or the change (or a new
      // cluster's single reference) would be wrong for it.
      QCOW2J_ASSIGN_OR_RETURN(uint64_t table_refs, rc.Get(off >> im.cb));
      uint64_t host_refs = 1;
      if (host) {
        QCOW2J_ASSIGN_OR_RETURN(host_refs, rc.Get(host >> im.cb));
      }
      if (!im.snapshots.empty() || table_refs != 1 || host_refs != 1)
        return Status::NotSupported("Cannot downgrade: the zero cluster in L2 table " + Hex(off) +
                                    " entry " + std::to_string(j) +
                                    " needs a data cluster and is shared with an internal "
                                    "snapshot (not supported by qcow2j)");
      fixes->push_back({off, j, host});
    }
    return false;
  });
}

// Writes the v2 form of the zero clusters PlanDowngrade found.
Status ExpandZeroClusters(OfflineImage& im, const std::vector<std::pair<uint64_t, uint64_t>>& unmap,
                          std::vector<ZeroFix> fixes) {
  uint64_t need = 0;
  for (const ZeroFix& f : fixes) need += f.host ? 0 : 1;
  if (need) {
    // Refcounts first (a crash leaks them), then zeros, then the entries.
    QCOW2J_ASSIGN_OR_RETURN(std::vector<uint64_t> at, AllocateRuns(im, {need * im.cs}));
    uint64_t next = at[0];
    for (ZeroFix& f : fixes) {
      if (f.host) continue;
      f.host = next;
      next += im.cs;
    }
  }
  for (const ZeroFix& f : fixes) QCOW2J_RETURN_IF_ERROR(im.file->ZeroRange(f.host, im.cs));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());

  // (table, index) -> new raw entry, applied table by table.
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, uint64_t>> changes;
  for (auto& u : unmap) changes.push_back({u, 0});
  for (const ZeroFix& f : fixes) changes.push_back({{f.table, f.index}, f.host | kOflagCopied});
  std::sort(changes.begin(), changes.end());
  std::vector<uint64_t> tables;
  for (auto& c : changes)
    if (tables.empty() || tables.back() != c.first.first) tables.push_back(c.first.first);
  size_t k = 0;
  QCOW2J_RETURN_IF_ERROR(VisitL2Tables(im, tables, true, [&](uint64_t off, uint8_t* table) -> Result<bool> {
    for (; k < changes.size() && changes[k].first.first == off; k++)
      StoreBE64(table + changes[k].first.second * im.l2_entry_bytes, changes[k].second);
    return true;
  }));
  return im.file->Sync();
}

// New refcount structures of another width, written at the end of the file
// but not referenced yet.
struct NewRefcounts {
  uint32_t order = 4;
  uint64_t table_offset = 0;
  uint32_t table_clusters = 0;
};

// Writes the refcounts of every cluster, in width 2^order, as a new refcount
// table and blocks appended after the end of the file, and syncs. They count
// every cluster the old refcounts count, themselves, but not the old table
// and blocks: once the header points at the new ones (one write), nothing
// references the old ones, so they are free at once. Until then the new
// clusters are referenced by nothing, beyond the old refcounts' concern.
// Fails before writing anything when a refcount does not fit the new width,
// with QEMU's message.
Result<NewRefcounts> WriteRefcountsInWidth(OfflineImage& im, uint32_t order) {
  const uint32_t new_bits = 1u << order;
  const uint64_t cs = im.cs;
  // The old refcounts, and the old table and blocks themselves.
  const uint64_t old_epb = RefcountBlockEntries(im.cb, im.h.refcount_order);
  std::vector<uint64_t> old_structures;
  for (uint64_t c = 0; c < im.h.refcount_table_clusters; c++)
    old_structures.push_back((im.h.refcount_table_offset >> im.cb) + c);
  std::vector<uint64_t> refs;  // cluster index -> refcount, up to the last non-zero one
  {
    std::vector<uint8_t> raw(uint64_t{im.h.refcount_table_clusters} << im.cb);
    QCOW2J_RETURN_IF_ERROR(im.file->Read(im.h.refcount_table_offset, raw.data(), raw.size()));
    std::vector<uint8_t> block(cs);
    for (uint64_t bi = 0; bi < raw.size() / 8; bi++) {
      const uint64_t off = LoadBE64(raw.data() + 8 * bi) & kRefcountTableOffsetMask;
      if (!off) continue;
      if ((off & (cs - 1)) || off > im.file_size - std::min(im.file_size, cs))
        return Status::Corruption("refcount table entry " + std::to_string(bi) + " (" + Hex(off) +
                                  ") is unaligned or outside the file");
      old_structures.push_back(off >> im.cb);
      QCOW2J_RETURN_IF_ERROR(im.file->Read(off, block.data(), cs));
      for (uint64_t i = 0; i < old_epb; i++) {
        const uint64_t r = GetRefcount(block, im.h.refcount_order, i);
        if (!r) continue;
        const uint64_t ci = bi * old_epb + i;
        if (ci >= refs.size()) refs.resize(ci + 1, 0);
        refs[ci] = r;
      }
    }
  }
  for (uint64_t ci : old_structures)
    if (ci < refs.size()) refs[ci] = 0;
  for (uint64_t ci = 0; ci < refs.size(); ci++) {
    if (refs[ci] > MaxRefcount(order))
      return Status::InvalidArgument("Cannot decrease refcount entry width to " +
                                     std::to_string(new_bits) + " bits: Cluster at offset " +
                                     Hex(ci << im.cb) + " has a refcount of " +
                                     std::to_string(refs[ci]));
  }

  // Layout: the blocks (only those covering a non-zero refcount), then the
  // table, from the first cluster after the end of the file. Both must
  // cover themselves: grow until the count stops changing.
  const uint64_t epb = RefcountBlockEntries(im.cb, order);
  const uint64_t first = im.Clusters(std::max(im.file_size, refs.size() << im.cb));
  std::vector<uint64_t> used;  // block indices with a non-zero refcount below `first`
  for (uint64_t ci = 0; ci < refs.size(); ci++) {
    if (refs[ci] && (used.empty() || used.back() != ci / epb)) used.push_back(ci / epb);
  }
  std::vector<uint64_t> blocks;
  uint64_t table_clusters = 1;
  for (;;) {
    const uint64_t end = first + blocks.size() + table_clusters;  // exclusive, in clusters
    std::vector<uint64_t> want = used;
    for (uint64_t bi = first / epb; bi <= (end - 1) / epb; bi++)
      if (want.empty() || want.back() < bi) want.push_back(bi);
    const uint64_t tc = std::max<uint64_t>(1, ((want.back() + 1) * 8 + cs - 1) / cs);
    if (want == blocks && tc == table_clusters) break;
    blocks = std::move(want);
    table_clusters = tc;
  }
  if (table_clusters * cs > kMaxRefcountTableBytes)
    return Status::NotSupported("a refcount table of " + std::to_string(table_clusters) +
                                " clusters for refcount_bits=" + std::to_string(new_bits) +
                                " exceeds the maximum of " + std::to_string(kMaxRefcountTableBytes) +
                                " bytes");
  const uint64_t end = first + blocks.size() + table_clusters;
  if (refs.size() < end) refs.resize(end, 0);
  for (uint64_t ci = first; ci < end; ci++) refs[ci] = 1;

  // One buffer: blocks in index order, then the table.
  std::vector<uint8_t> out((blocks.size() + table_clusters) * cs, 0);
  uint8_t* table = out.data() + blocks.size() * cs;
  for (size_t k = 0; k < blocks.size(); k++) {
    std::span<uint8_t> b(out.data() + k * cs, cs);
    const uint64_t base = blocks[k] * epb;
    for (uint64_t i = 0; i < epb && base + i < refs.size(); i++)
      if (refs[base + i]) SetRefcount(b, order, i, refs[base + i]);
    StoreBE64(table + 8 * blocks[k], (first + k) << im.cb);
  }
  QCOW2J_RETURN_IF_ERROR(im.file->Write(first << im.cb, out.data(), out.size()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  return NewRefcounts{order, (first + blocks.size()) << im.cb,
                      static_cast<uint32_t>(table_clusters)};
}

// The old table and blocks, free since the header switched away from them.
void DropOldRefcounts(OfflineImage& im, const Header& old) {
  std::vector<uint8_t> raw(uint64_t{old.refcount_table_clusters} << im.cb);
  if (!im.file->Read(old.refcount_table_offset, raw.data(), raw.size()).ok()) return;
  for (uint64_t bi = 0; bi < raw.size() / 8; bi++) {
    const uint64_t off = LoadBE64(raw.data() + 8 * bi) & kRefcountTableOffsetMask;
    if (off) (void)im.file->PunchHole(off, im.cs);
  }
  (void)im.file->PunchHole(old.refcount_table_offset, raw.size());
}

}  // namespace

Status AmendImage(const std::string& path, const AmendRequest& req,
                  const std::function<void(double)>& progress, Env* env) {
  auto report = [&](double p) {
    if (progress) progress(p);
  };
  report(0);
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenOffline(path, env, true));
  Header h = im.h;
  const int old_version = static_cast<int>(h.version);
  const int new_version = req.version.value_or(old_version);
  const bool old_lazy = h.compatible_features & kCompatLazyRefcounts;
  const bool new_lazy = req.lazy_refcounts.value_or(old_lazy);

  // ---- checks, in QEMU's order and with its messages ----
  if (new_lazy != old_lazy && new_lazy && new_version < 3)
    return Status::InvalidArgument("Lazy refcounts only supported with compatibility level 1.1 "
                                   "and above (use compat=1.1 or greater)");
  const uint32_t new_bits = req.refcount_bits.value_or(h.refcount_bits());
  if (new_bits != 16 && new_version < 3)
    return Status::InvalidArgument("Refcount widths other than 16 bits require compatibility "
                                   "level 1.1 or above (use compat=1.1 or greater)");
  const bool change_width = req.refcount_bits && *req.refcount_bits != h.refcount_bits();
  std::string backing = h.backing_file;
  std::optional<std::string> backing_format = h.backing_format;
  if (req.backing_file) {
    backing = *req.backing_file;
    if (!req.backing_format) backing_format.reset();
  }
  if (req.backing_format) backing_format = *req.backing_format;
  if (backing.empty()) backing_format.reset();
  if (backing.size() > kMaxBackingFileNameLength)
    return Status::InvalidArgument("backing file name is longer than 1023 bytes");

  std::vector<std::pair<uint64_t, uint64_t>> unmap;
  std::vector<ZeroFix> fixes;
  const bool downgrade = new_version < old_version;
  if (downgrade) {
    if (new_bits != 16) return Status::NotSupported("compat=0.10 requires refcount_bits=16");
    if (h.has_data_file()) return Status::NotSupported("Cannot downgrade an image with a data file");
    uint64_t inc = h.incompatible_features & ~kIncompatCompression;
    if (inc) {
      char buf[96];
      std::snprintf(buf, sizeof(buf), "Cannot downgrade an image with incompatible features 0x%llx set",
                    static_cast<unsigned long long>(inc));
      return Status::NotSupported(buf);
    }
    // QEMU downgrades these and leaves the bitmaps inconsistent and their
    // clusters leaked; we refuse instead.
    if (h.bitmaps && h.bitmaps->nb_bitmaps)
      return Status::NotSupported("Cannot downgrade an image with persistent bitmaps (remove them "
                                  "first)");
    QCOW2J_RETURN_IF_ERROR(PlanDowngrade(im, &unmap, &fixes));
  }
  report(10);

  // ---- journal=on|off: a closed image's journal is idle (no area; an
  // image with transactions to replay was refused above), so only the
  // extension changes. Dirty-refcount mode follows lazy_refcounts. ----
  // v2 has no feature bits to lock QEMU out: a downgrade drops the journal.
  const bool want_journal = req.journal.value_or(h.journal.has_value() && new_version >= 3);
  if (want_journal && new_version < 3)
    return Status::InvalidArgument("journal=on requires compat=1.1");

  // ---- changes ----
  if (downgrade && (!unmap.empty() || !fixes.empty()))
    QCOW2J_RETURN_IF_ERROR(ExpandZeroClusters(im, unmap, std::move(fixes)));
  report(40);
  const Header old_header = im.h;
  if (change_width) {
    uint32_t order = 0;
    while ((1u << order) < *req.refcount_bits) order++;
    QCOW2J_ASSIGN_OR_RETURN(NewRefcounts n, WriteRefcountsInWidth(im, order));
    h.refcount_order = n.order;
    h.refcount_table_offset = n.table_offset;
    h.refcount_table_clusters = n.table_clusters;
  }
  report(80);
  if (new_version > old_version) {
    h.version = static_cast<uint32_t>(new_version);
    h.header_length = kV3HeaderLength;
    if (h.feature_names.empty()) h.feature_names = DefaultFeatureNames();
  }
  if (new_lazy) {
    h.compatible_features |= kCompatLazyRefcounts;
  } else {
    h.compatible_features &= ~kCompatLazyRefcounts;
  }
  h.backing_file = backing;
  h.backing_format = backing_format;
  if (want_journal) {
    JournalExtension ext;
    if (h.journal) {
      auto cur = DecodeJournalExtension(*h.journal, h.cluster_bits);
      if (cur.ok()) ext = *cur;
    }
    ext.area_offset = 0;  // idle (a stale area, left by a journal-unaware writer, is dropped)
    if (ext.sector_size != 512 && ext.sector_size != 4096) ext.sector_size = 512;
    ext.flags = new_lazy ? kJournalFlagDirtyRefcounts : 0;
    h.journal = EncodeJournalExtension(ext);
    h.autoclear_features &= ~kAutoclearJournalValid;
  } else {
    h.journal.reset();
    h.autoclear_features &= ~kAutoclearJournalValid;
  }
  if (downgrade) {
    h.version = 2;
    h.header_length = kV2HeaderLength;
    h.incompatible_features = 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.compression_type = kCompressionZlib;
    h.unknown_header_tail.clear();
    h.feature_names.clear();
  }
  QCOW2J_RETURN_IF_ERROR(RewriteHeader(im, h));
  // Space only: a crash before this leaves the old structures as clusters
  // with refcount 0, which is what they are.
  if (change_width) DropOldRefcounts(im, old_header);
  report(100);
  return Status::OK();
}

}  // namespace qcow2j
