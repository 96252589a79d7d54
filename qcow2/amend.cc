// qemu-img amend for qcow2 on a closed file: compat (both ways), lazy
// refcounts and the backing file name, in one header rewrite. Everything is
// checked before the first write; a downgrade's zero-cluster expansion is
// the only step that touches more than the header, and it is written before
// the header says v2, so a crash in between leaves a v3 image that reads
// the same.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/hex.h"
#include "metadata/l2_entry.h"
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
  if (req.refcount_bits && *req.refcount_bits != h.refcount_bits()) {
    if (new_version < 3)
      return Status::InvalidArgument("Refcount widths other than 16 bits require compatibility "
                                     "level 1.1 or above (use compat=1.1 or greater)");
    return Status::NotSupported("Changing refcount_bits from " + std::to_string(h.refcount_bits()) +
                                " to " + std::to_string(*req.refcount_bits) +
                                " is not supported by qcow2j");
  }
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
    if (h.refcount_order != 4) return Status::NotSupported("compat=0.10 requires refcount_bits=16");
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
  report(100);
  return Status::OK();
}

}  // namespace qcow2j
