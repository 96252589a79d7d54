// Offline internal snapshots: create, apply (revert), delete and list on a
// closed qcow2 file, with QEMU's semantics (qcow2-snapshot.c) and a faster
// refcount pass.
//
// QEMU updates one refcount at a time through its refcount-block cache; a
// snapshot of a fully mapped 1 TiB image is 16 million get/put pairs. Here a
// pass reads the L2 tables in large sequential chunks, applies every +1/-1
// to in-memory copies of the refcount blocks (RefcountModel) and writes each
// changed block once, in offset order. Every change is checked in memory
// before the first byte is written, so a refcount overflow (refcount_bits=1)
// or a corrupt table fails cleanly instead of half way.
//
// On an image that uses the journal each operation is one journal
// transaction (CreateJournaled, DeleteJournaled, ApplyJournaled below): a
// crash leaves all of it or none of it. Otherwise, and when the transaction
// cannot be built, crash safety follows QEMU's ordering; each step only
// ever makes refcounts too high (leaks) or COPIED flags too conservative,
// never too low:
//   create: refcounts +1 (sync) -> COPIED cleared in the active tree (sync)
//           -> new snapshot table (sync) -> header switch (sync) -> old
//           table freed.
//   delete: new snapshot table (sync) -> header switch (sync) -> refcounts
//           -1 (sync) -> COPIED set where a refcount dropped to 1.
//   apply:  refcounts +1 for the snapshot's tree, COPIED cleared in it (sync)
//           -> active L1 overwritten (sync) -> refcounts -1 for the old
//           active tree (sync) -> COPIED fixed in the new active tree.
#include "qcow2/snapshot_ops.h"
#include "qcow2/offline_image.h"
#include "metadata/hex.h"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "alloc/refcount_manager.h"
#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "qcow2j/snapshot.h"

namespace qcow2j {

namespace {

constexpr size_t kMaxSnapshotNameBytes = UINT16_MAX;

}  // namespace

// ---------------------------------------------------------------------------
// RefcountModel

struct RefcountModel::Block {
  uint64_t offset = 0;
  std::vector<uint8_t> data;
  // One bit per refcount set since the block was loaded (JournalRuns). A
  // bit, not a copy of the block as read: a snapshot of a 1 TiB image
  // changes 512 blocks of 64 KiB, and the copies were 32 MiB.
  std::vector<uint64_t> touched;
  bool dirty = false;

  void Touch(uint64_t idx) { touched[idx >> 6] |= uint64_t{1} << (idx & 63); }
};

RefcountModel::RefcountModel(File* file, uint32_t cluster_bits, uint32_t refcount_order,
                             std::vector<uint64_t> table)
    : file_(file),
      cluster_bits_(cluster_bits),
      order_(refcount_order),
      block_bits_(cluster_bits + 3 - refcount_order),
      max_(MaxRefcount(refcount_order)),
      table_(std::move(table)),
      blocks_(table_.size()) {}

RefcountModel::~RefcountModel() = default;
RefcountModel::RefcountModel(RefcountModel&&) noexcept = default;
RefcountModel& RefcountModel::operator=(RefcountModel&&) noexcept = default;

Result<RefcountModel::Block*> RefcountModel::Load(uint64_t bi) {
  if (bi >= table_.size()) return static_cast<Block*>(nullptr);
  if (blocks_[bi]) return blocks_[bi].get();
  uint64_t off = table_[bi] & kRefcountTableOffsetMask;
  if (!off) return static_cast<Block*>(nullptr);
  uint64_t cs = 1ull << cluster_bits_;
  if (off & (cs - 1))
    return Status::Corruption("refcount table entry " + std::to_string(bi) + " (" + Hex(off) +
                              ") is not aligned to the cluster size");
  auto b = std::make_unique<Block>();
  b->offset = off;
  b->data.resize(cs);
  QCOW2J_RETURN_IF_ERROR(file_->Read(off, b->data.data(), cs));
  b->touched.assign(((uint64_t{1} << block_bits_) + 63) / 64, 0);
  blocks_[bi] = std::move(b);
  return blocks_[bi].get();
}

Status RefcountModel::Add(uint64_t ci, int64_t delta) {
  uint64_t bi = ci >> block_bits_;
  Block* b = bi < blocks_.size() ? blocks_[bi].get() : nullptr;
  if (!b) {
    QCOW2J_ASSIGN_OR_RETURN(b, Load(bi));
    if (!b)
      return Status::Corruption("cluster at " + Hex(ci << cluster_bits_) +
                                " is referenced but has no refcount block (refcount 0)");
  }
  uint64_t idx = ci & ((1ull << block_bits_) - 1);
  uint64_t old;
  uint8_t* p = nullptr;
  if (order_ == 4) {
    p = b->data.data() + idx * 2;
    old = (uint64_t{p[0]} << 8) | p[1];
  } else {
    old = GetRefcount(b->data, order_, idx);
  }
  if (old == 0)
    return Status::Corruption("cluster at " + Hex(ci << cluster_bits_) +
                              " is referenced but has refcount 0");
  uint64_t nv;
  if (delta < 0) {
    if (old < static_cast<uint64_t>(-delta))
      return Status::Corruption("refcount of cluster at " + Hex(ci << cluster_bits_) +
                                " would drop below 0");
    nv = old - static_cast<uint64_t>(-delta);
  } else {
    nv = old + static_cast<uint64_t>(delta);
    if (nv < old || nv > max_)
      return Status::InvalidArgument("refcount of cluster at " + Hex(ci << cluster_bits_) +
                                     " would exceed the maximum " + std::to_string(max_) +
                                     " of refcount_bits=" + std::to_string(1u << order_));
  }
  if (p) {
    p[0] = static_cast<uint8_t>(nv >> 8);
    p[1] = static_cast<uint8_t>(nv);
  } else {
    SetRefcount(b->data, order_, idx, nv);
  }
  b->Touch(idx);
  b->dirty = true;
  if (nv == 0) zeroed_.push_back(ci);
  return Status::OK();
}

Result<uint64_t> RefcountModel::Get(uint64_t ci) {
  // Called once per L2 entry by FixCopied: the loaded-block, 16-bit case
  // (QEMU's default) inline, as in Add.
  uint64_t bi = ci >> block_bits_;
  Block* b = bi < blocks_.size() ? blocks_[bi].get() : nullptr;
  if (!b) {
    QCOW2J_ASSIGN_OR_RETURN(b, Load(bi));
    if (!b) return uint64_t{0};
  }
  uint64_t idx = ci & ((1ull << block_bits_) - 1);
  if (order_ == 4) {
    const uint8_t* p = b->data.data() + idx * 2;
    return (uint64_t{p[0]} << 8) | p[1];
  }
  return GetRefcount(b->data, order_, idx);
}

Result<bool> RefcountModel::Claim(uint64_t ci) {
  QCOW2J_ASSIGN_OR_RETURN(Block * b, Load(ci >> block_bits_));
  if (!b) return false;
  uint64_t idx = ci & ((1ull << block_bits_) - 1);
  if (GetRefcount(b->data, order_, idx) != 0) return false;
  SetRefcount(b->data, order_, idx, 1);
  b->Touch(idx);
  b->dirty = true;
  return true;
}

Status RefcountModel::Set(uint64_t ci, uint64_t value) {
  QCOW2J_ASSIGN_OR_RETURN(Block * b, Load(ci >> block_bits_));
  if (!b)
    return Status::Corruption("cluster at " + Hex(ci << cluster_bits_) + " has no refcount block");
  const uint64_t idx = ci & ((1ull << block_bits_) - 1);
  SetRefcount(b->data, order_, idx, value);
  b->Touch(idx);
  b->dirty = true;
  return Status::OK();
}

void RefcountModel::JournalRuns(std::vector<JournalRecord>* out) const {
  const uint64_t n = 1ull << block_bits_;
  for (size_t bi = 0; bi < blocks_.size(); bi++) {
    const Block* b = blocks_[bi].get();
    if (!b || !b->dirty) continue;
    const uint64_t base = uint64_t{bi} << block_bits_;
    // 16-bit refcounts (QEMU's default) inline: a 1 TiB image is 16 Mi of them.
    auto get = [this](const std::vector<uint8_t>& d, uint64_t i) -> uint64_t {
      if (order_ == 4) return (uint64_t{d[2 * i]} << 8) | d[2 * i + 1];
      return GetRefcount(d, order_, i);
    };
    RefcountRun run;
    for (uint64_t i = 0; i < n; i++) {
      const uint64_t word = b->touched[i >> 6];
      if (word == 0 && (i & 63) == 0 && i + 64 <= n) {
        // 64 untouched refcounts: ends any run, adds none.
        if (run.count) out->push_back(run);
        run.count = 0;
        i += 63;
        continue;
      }
      const bool touched = (word >> (i & 63)) & 1;
      uint64_t v = touched ? get(b->data, i) : 0;
      if (run.count && (!touched || v != run.value || run.first_cluster + run.count != base + i)) {
        out->push_back(run);
        run.count = 0;
      }
      if (!touched) continue;
      if (!run.count) run = RefcountRun{base + i, 0, v};
      run.count++;
    }
    if (run.count) out->push_back(run);
  }
}

std::vector<RefcountModel::BlockImage> RefcountModel::TakeDirty() {
  std::vector<BlockImage> out;
  for (auto& b : blocks_) {
    if (!b || !b->dirty) continue;
    out.push_back({b->offset, b->data});
    b->dirty = false;
  }
  return out;
}

namespace {

struct BlockRef {
  uint64_t offset;
  const std::vector<uint8_t>* data;
};

// Writes blocks in offset order; adjacent blocks (as QEMU lays them out, or
// as a rebuild does) go out in one vectored write.
Status WriteBlockRefs(File* file, std::vector<BlockRef> blocks) {
  std::sort(blocks.begin(), blocks.end(),
            [](const BlockRef& a, const BlockRef& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < blocks.size();) {
    std::vector<iovec> iov;
    uint64_t start = blocks[i].offset, end = start;
    size_t j = i;
    for (; j < blocks.size() && blocks[j].offset == end && iov.size() < 512; j++) {
      iov.push_back({const_cast<uint8_t*>(blocks[j].data->data()), blocks[j].data->size()});
      end += blocks[j].data->size();
    }
    QCOW2J_RETURN_IF_ERROR(file->Writev(start, iov));
    i = j;
  }
  return Status::OK();
}

}  // namespace

Status RefcountModel::WriteBlocks(File* file, std::vector<BlockImage> blocks) {
  std::vector<BlockRef> refs;
  refs.reserve(blocks.size());
  for (const BlockImage& b : blocks) refs.push_back({b.offset, &b.data});
  return WriteBlockRefs(file, std::move(refs));
}

Status RefcountModel::WriteDirty(File* file) {
  std::vector<BlockRef> refs;
  for (const auto& b : blocks_)
    if (b && b->dirty) refs.push_back({b->offset, &b->data});
  QCOW2J_RETURN_IF_ERROR(WriteBlockRefs(file, std::move(refs)));
  for (auto& b : blocks_)
    if (b) b->dirty = false;
  return Status::OK();
}

// ---------------------------------------------------------------------------
// Snapshot lookup

std::string NextSnapshotId(const std::vector<SnapshotEntry>& entries) {
  unsigned long max_id = 0;
  for (const SnapshotEntry& e : entries) {
    unsigned long id = std::strtoul(e.id.c_str(), nullptr, 10);
    max_id = std::max(max_id, id);
  }
  return std::to_string(max_id + 1);
}

int FindSnapshot(const std::vector<SnapshotEntry>& entries, const std::string& name_or_id) {
  for (size_t i = 0; i < entries.size(); i++)
    if (entries[i].id == name_or_id) return static_cast<int>(i);
  for (size_t i = 0; i < entries.size(); i++)
    if (entries[i].name == name_or_id) return static_cast<int>(i);
  return -1;
}

namespace {

// The image, with the refusals that are about snapshots: only qcow2 has
// internal snapshots, and QEMU has none with an external data file either.
Result<OfflineImage> OpenForSnapshots(const std::string& path, Env* env, bool writable) {
  auto im = OpenOffline(path, env, writable);
  if (!im.ok() && im.status().message() == "'" + path + "' is not a qcow2 image")
    return Status::NotSupported("'" + path +
                                "' is not a qcow2 image; only qcow2 has internal snapshots");
  if (im.ok() && writable && im->h.has_data_file())
    return Status::NotSupported("image '" + path +
                                "' has an external data file; internal snapshots are not "
                                "supported with one (as in QEMU)");
  return im;
}

// Writes a snapshot table at `offset` and switches the header to it
// (nb_snapshots and snapshots_offset in one 12-byte write).
Status SwitchTable(OfflineImage& im, const std::vector<uint8_t>& table, uint64_t offset,
                   uint32_t nb) {
  if (!table.empty()) {
    QCOW2J_RETURN_IF_ERROR(im.file->Write(offset, table.data(), table.size()));
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  }
  std::vector<uint8_t> b(12);
  StoreBE32(b.data(), nb);
  StoreBE64(b.data() + 4, offset);
  QCOW2J_RETURN_IF_ERROR(WriteHeaderField(im, kHdrSnapshots, b));
  im.h.nb_snapshots = nb;
  im.h.snapshots_offset = offset;
  return Status::OK();
}

// -1 for the clusters of a table being freed.
Status FreeRun(OfflineImage& im, RefcountModel& rc, uint64_t offset, uint64_t bytes) {
  if (!offset || !bytes) return Status::OK();
  for (uint64_t c = 0; c < im.Clusters(bytes); c++)
    QCOW2J_RETURN_IF_ERROR(rc.Add((offset >> im.cb) + c, -1));
  return Status::OK();
}

Status CheckTableSize(const std::vector<uint8_t>& table) {
  if (table.size() > kMaxSnapshotTableBytes)
    return Status::NotSupported("the snapshot table would exceed " +
                                std::to_string(kMaxSnapshotTableBytes) + " bytes");
  return Status::OK();
}

// ---------------------------------------------------------------------------
// The journaled path: one transaction per operation (docs/crash-safety.md,
// "Internal snapshots"). Each Journaled* function computes the whole
// operation in memory first and returns false, having written nothing, when
// the operation cannot be one transaction (no journal, dirty-refcount mode,
// fresh clusters that would need new refcount structures, or a transaction
// too large for the ring): the ordered path then runs as before.

// Free clusters right after the end of the file, one run per size (0: none,
// offset 0), taken in the model from cluster *next on (the end of the file
// at first; *next moves past them). Only clusters past the end of the file:
// nothing there can be one this operation frees (still referenced on disk
// until the commit). nullopt when one of them is not free or has no
// refcount block (allocating it is the ordered path's job).
Result<std::optional<std::vector<uint64_t>>> ClaimFresh(OfflineImage& im, RefcountModel& rc,
                                                        const std::vector<uint64_t>& sizes,
                                                        uint64_t* next) {
  uint64_t& ci = *next;
  std::vector<uint64_t> at;
  for (uint64_t bytes : sizes) {
    if (!bytes) {
      at.push_back(0);
      continue;
    }
    at.push_back(ci << im.cb);
    for (uint64_t n = im.Clusters(bytes); n; n--, ci++) {
      QCOW2J_ASSIGN_OR_RETURN(bool ok, rc.Claim(ci));
      if (!ok) return std::optional<std::vector<uint64_t>>();
    }
  }
  return std::optional<std::vector<uint64_t>>(std::move(at));
}

// COPIED exactly where the refcount is 1 (FixCopied's rule) in the L2 tables
// under `l1`, and, when l1_offset is not 0, in the L1 entries of the table
// there. With `recs`: appends L2 COPIED runs and L1 updates for what changes
// (nothing is written); without: writes the changes in place (no sync).
Status PlanCopied(OfflineImage& im, RefcountModel& rc, std::vector<uint64_t>& l1,
                  uint64_t l1_offset, std::vector<JournalRecord>* recs) {
  QCOW2J_ASSIGN_OR_RETURN(auto tables, L2Tables(im, l1, "L1 table"));
  const uint64_t entries = im.cs / im.l2_entry_bytes;
  QCOW2J_RETURN_IF_ERROR(VisitL2Tables(im, Offsets(tables), recs == nullptr,
                                       [&](uint64_t off, uint8_t* table) -> Result<bool> {
    bool changed = false;
    // Open runs: a set run may span entries a set leaves alone (unmapped,
    // compressed, or COPIED already), a clear run entries without COPIED.
    int64_t set_first = -1, set_last = -1, clear_first = -1, clear_last = -1;
    auto close_set = [&] {
      if (set_first >= 0 && recs)
        recs->push_back(L2CopiedRun{off, static_cast<uint32_t>(set_first),
                                    static_cast<uint32_t>(set_last - set_first + 1), true});
      set_first = -1;
    };
    auto close_clear = [&] {
      if (clear_first >= 0 && recs)
        recs->push_back(L2CopiedRun{off, static_cast<uint32_t>(clear_first),
                                    static_cast<uint32_t>(clear_last - clear_first + 1), false});
      clear_first = -1;
    };
    for (uint64_t j = 0; j < entries; j++) {
      uint8_t* p = table + j * im.l2_entry_bytes;
      const uint64_t raw = LoadBE64(p);
      const bool maps = !(raw & kOflagCompressed) && (raw & kL2OffsetMask);
      uint64_t want = raw;
      if (maps) {
        QCOW2J_ASSIGN_OR_RETURN(uint64_t r, rc.Get((raw & kL2OffsetMask) >> im.cb));
        want = r == 1 ? (raw | kOflagCopied) : (raw & ~kOflagCopied);
      } else if (raw & kOflagCopied) {
        want = raw & ~kOflagCopied;  // never COPIED without a cluster of its own
      }
      const int64_t i = static_cast<int64_t>(j);
      if (want != raw && (want & kOflagCopied)) {  // needs set
        if (set_first < 0) set_first = i;
        set_last = i;
        close_clear();
      } else if (want != raw) {  // needs clear
        if (clear_first < 0) clear_first = i;
        clear_last = i;
        close_set();
      } else {
        // Unchanged: a set run may cover it unless it maps a cluster and
        // stays without COPIED; a clear run unless it keeps COPIED.
        if (maps && !(raw & kOflagCopied)) close_set();
        if (raw & kOflagCopied) close_clear();
      }
      if (want != raw && !recs) {
        StoreBE64(p, want);
        changed = true;
      }
    }
    close_set();
    close_clear();
    return changed;
  }));
  if (!l1_offset) return Status::OK();
  bool l1_changed = false;
  for (size_t i = 0; i < l1.size(); i++) {
    uint64_t& e = l1[i];
    uint64_t off = e & kL1OffsetMask;
    uint64_t want = e & ~kOflagCopied;
    if (off) {
      QCOW2J_ASSIGN_OR_RETURN(uint64_t r, rc.Get(off >> im.cb));
      if (r == 1) want |= kOflagCopied;
    }
    if (want == e) continue;
    if (recs) {
      recs->push_back(L1Update{l1_offset, static_cast<uint32_t>(i), want});
    } else {
      e = want;
      l1_changed = true;
    }
  }
  if (l1_changed) {
    std::vector<uint8_t> raw = EncodeL1(l1);
    QCOW2J_RETURN_IF_ERROR(im.file->Write(l1_offset, raw.data(), raw.size()));
  }
  return Status::OK();
}

// The journal area, claimed last (after the other fresh clusters, so that
// the end of the operation truncates it away), just large enough for the
// transaction: `recs` plus the refcount runs of the model, which are then
// appended to `recs` (the area's own refcounts included). A small area
// needs few refcounts, so it rarely lacks a refcount block. nullopt when it
// cannot be claimed or the frame would exceed the 64 MiB limit.
Result<std::optional<JournalExtension>> ClaimArea(OfflineImage& im, RefcountModel& rc,
                                                  const JournalExtension& idle, uint64_t next,
                                                  std::vector<JournalRecord>* recs) {
  std::vector<JournalRecord> runs;
  rc.JournalRuns(&runs);
  uint64_t bytes = kJournalFrameHeaderBytes;
  for (const JournalRecord& r : *recs) bytes += EncodedRecordBytes(r);
  for (const JournalRecord& r : runs) bytes += EncodedRecordBytes(r);
  JournalExtension area = OfflineJournalArea(im, idle, 0);
  // The area's refcounts add at most a run per refcount block it spans
  // (one per 256 clusters of 512 bytes with 16-bit refcounts): room for
  // one per 8 bytes of ring, and a sector of slack.
  const uint64_t unit = std::max<uint64_t>(im.cs, area.sector_size);
  uint64_t need = area.ring_start() + bytes + bytes / 8 + 2 * area.sector_size;
  need = std::max<uint64_t>(need, 4 * area.sector_size);
  area.area_size = (need + unit - 1) / unit * unit;
  if (area.area_size > (4ull << 30)) return std::optional<JournalExtension>();
  QCOW2J_ASSIGN_OR_RETURN(auto at, ClaimFresh(im, rc, {area.area_size}, &next));
  if (!at) return std::optional<JournalExtension>();
  area.area_offset = (*at)[0];
  rc.JournalRuns(recs);
  if (!OfflineJournalFits(area, *recs)) return std::optional<JournalExtension>();
  return std::optional<JournalExtension>(area);
}

HeaderUpdate SnapshotFields(uint32_t nb, uint64_t offset) {
  HeaderUpdate u;
  u.offset = kHdrSnapshots;
  u.bytes.resize(12);
  StoreBE32(u.bytes.data(), nb);
  StoreBE64(u.bytes.data() + 4, offset);
  return u;
}

// The end of every journaled operation: the refcounts and the header field
// written in place (the tables were written by the caller), one sync, then
// the session closed. The area's refcounts go back to 0 in this write: from
// the commit on, only a replay (which sets them to 1 again) reads them.
Status FinishJournaled(OfflineImage& im, RefcountModel& rc, const OfflineJournal& j,
                       const HeaderUpdate& field) {
  for (uint64_t c = 0; c < im.Clusters(j.ext.area_size); c++)
    QCOW2J_RETURN_IF_ERROR(rc.Set((j.ext.area_offset >> im.cb) + c, 0));
  QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
  QCOW2J_RETURN_IF_ERROR(im.file->Write(field.offset, field.bytes.data(), field.bytes.size()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  // The header EndOfflineJournal writes is im.h: it must hold the switch.
  const uint8_t* f = field.bytes.data();
  if (field.offset == kHdrSnapshots) {
    im.h.nb_snapshots = LoadBE32(f);
    im.h.snapshots_offset = LoadBE64(f + 4);
  } else {
    im.h.size = LoadBE64(f);
    im.h.l1_size = LoadBE32(f + 12);
    im.h.l1_table_offset = LoadBE64(f + 16);
  }
  QCOW2J_RETURN_IF_ERROR(EndOfflineJournal(im, j));
  PunchFreed(im, rc);
  return Status::OK();
}

// Create: the snapshot's L1 copy and the new snapshot table are written to
// free clusters first; the transaction holds +1 for the active tree, the
// new clusters' refcounts, the old table's release, COPIED cleared in the
// active tree, and the header switch.
Result<bool> CreateJournaled(OfflineImage& im, std::vector<SnapshotEntry> entries) {
  std::optional<JournalExtension> jext = OfflineJournalExtension(im);
  if (!jext) return false;
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  std::vector<uint64_t> copied_tables;
  QCOW2J_RETURN_IF_ERROR(AddTree(im, rc, im.l1, +1, "active L1 table", &copied_tables));
  std::vector<uint8_t> table = SerializeSnapshotTable(entries);  // its size, not its bytes
  uint64_t next = im.Clusters(im.file_size);
  QCOW2J_ASSIGN_OR_RETURN(auto at, ClaimFresh(im, rc, {uint64_t{im.h.l1_size} * 8, table.size()},
                                              &next));
  if (!at) return false;
  entries.back().l1_table_offset = (*at)[0];
  table = SerializeSnapshotTable(entries);
  QCOW2J_RETURN_IF_ERROR(FreeRun(im, rc, im.h.snapshots_offset, im.table_bytes));

  std::vector<JournalRecord> recs;
  std::sort(copied_tables.begin(), copied_tables.end());
  const uint32_t per_table = static_cast<uint32_t>(im.cs / im.l2_entry_bytes);
  for (uint64_t t : copied_tables) recs.push_back(L2CopiedRun{t, 0, per_table, false});
  std::vector<uint64_t> new_l1 = im.l1;
  for (size_t i = 0; i < new_l1.size(); i++) {
    if (!(new_l1[i] & kOflagCopied)) continue;
    new_l1[i] &= ~kOflagCopied;
    recs.push_back(L1Update{im.h.l1_table_offset, static_cast<uint32_t>(i), new_l1[i]});
  }
  const HeaderUpdate field = SnapshotFields(static_cast<uint32_t>(entries.size()), (*at)[1]);
  recs.push_back(field);
  QCOW2J_ASSIGN_OR_RETURN(auto area, ClaimArea(im, rc, *jext, next, &recs));
  if (!area) return false;

  // The snapshot's L1 table (a copy of the active one; COPIED means nothing
  // outside the active tree) and the table: durable with the area's format.
  if (!new_l1.empty()) {
    std::vector<uint8_t> raw = EncodeL1(new_l1);
    QCOW2J_RETURN_IF_ERROR(im.file->Write((*at)[0], raw.data(), raw.size()));
  }
  QCOW2J_RETURN_IF_ERROR(im.file->Write((*at)[1], table.data(), table.size()));
  QCOW2J_ASSIGN_OR_RETURN(OfflineJournal j, BeginOfflineJournal(im, *area, jext->area_size));
  QCOW2J_RETURN_IF_ERROR(CommitOfflineJournal(im, j, recs));
  // Committed: the same changes in place.
  QCOW2J_RETURN_IF_ERROR(ClearCopied(im, copied_tables));
  if (new_l1 != im.l1) {
    std::vector<uint8_t> raw = EncodeL1(new_l1);
    QCOW2J_RETURN_IF_ERROR(im.file->Write(im.h.l1_table_offset, raw.data(), raw.size()));
    im.l1 = std::move(new_l1);
  }
  QCOW2J_RETURN_IF_ERROR(FinishJournaled(im, rc, j, field));
  return true;
}

// Delete: the new snapshot table is written to free clusters first; the
// transaction holds -1 for the snapshot's tree, its L1 table and the old
// table, the new table's refcounts, COPIED set in the active tree where a
// refcount fell to 1, and the header switch.
Result<bool> DeleteJournaled(OfflineImage& im, const SnapshotEntry& sn,
                             const std::vector<uint64_t>& sn_l1,
                             const std::vector<SnapshotEntry>& entries) {
  std::optional<JournalExtension> jext = OfflineJournalExtension(im);
  if (!jext) return false;
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  QCOW2J_RETURN_IF_ERROR(AddTree(im, rc, sn_l1, -1, "snapshot " + sn.id + " L1 table", nullptr));
  QCOW2J_RETURN_IF_ERROR(FreeRun(im, rc, sn.l1_table_offset, uint64_t{sn.l1_size} * 8));
  QCOW2J_RETURN_IF_ERROR(FreeRun(im, rc, im.h.snapshots_offset, im.table_bytes));
  std::vector<uint8_t> table = SerializeSnapshotTable(entries);
  uint64_t next = im.Clusters(im.file_size);
  QCOW2J_ASSIGN_OR_RETURN(auto at, ClaimFresh(im, rc, {table.size()}, &next));
  if (!at) return false;

  std::vector<JournalRecord> recs;
  QCOW2J_RETURN_IF_ERROR(PlanCopied(im, rc, im.l1, im.h.l1_table_offset, &recs));
  const HeaderUpdate field = SnapshotFields(static_cast<uint32_t>(entries.size()), (*at)[0]);
  recs.push_back(field);
  QCOW2J_ASSIGN_OR_RETURN(auto area, ClaimArea(im, rc, *jext, next, &recs));
  if (!area) return false;

  if (!table.empty()) QCOW2J_RETURN_IF_ERROR(im.file->Write((*at)[0], table.data(), table.size()));
  QCOW2J_ASSIGN_OR_RETURN(OfflineJournal j, BeginOfflineJournal(im, *area, jext->area_size));
  QCOW2J_RETURN_IF_ERROR(CommitOfflineJournal(im, j, recs));
  QCOW2J_RETURN_IF_ERROR(PlanCopied(im, rc, im.l1, im.h.l1_table_offset, nullptr));
  QCOW2J_RETURN_IF_ERROR(FinishJournaled(im, rc, j, field));
  return true;
}

// Apply: the new active L1 table (the snapshot's, with its final COPIED
// flags) is written to free clusters first; the transaction holds the
// header switch to it (size, l1_size, l1_table_offset: replay reloads the
// L1 from it), +1 for the snapshot's tree, -1 for the old active tree and
// its L1 table, and COPIED fixed in the new active tree.
Result<bool> ApplyJournaled(OfflineImage& im, const SnapshotEntry& sn,
                            const std::vector<uint64_t>& sn_l1, uint64_t new_size,
                            uint32_t new_l1_size) {
  std::optional<JournalExtension> jext = OfflineJournalExtension(im);
  if (!jext || new_l1_size == 0) return false;
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  QCOW2J_RETURN_IF_ERROR(AddTree(im, rc, sn_l1, +1, "snapshot " + sn.id + " L1 table", nullptr));
  QCOW2J_RETURN_IF_ERROR(AddTree(im, rc, im.l1, -1, "active L1 table", nullptr));
  QCOW2J_RETURN_IF_ERROR(FreeRun(im, rc, im.h.l1_table_offset, uint64_t{im.h.l1_size} * 8));
  uint64_t next = im.Clusters(im.file_size);
  QCOW2J_ASSIGN_OR_RETURN(auto at, ClaimFresh(im, rc, {uint64_t{new_l1_size} * 8}, &next));
  if (!at) return false;

  std::vector<uint64_t> new_l1(new_l1_size, 0);
  for (size_t i = 0; i < sn_l1.size(); i++) new_l1[i] = sn_l1[i] & ~kOflagCopied;
  for (uint64_t& e : new_l1)
    if (uint64_t off = e & kL1OffsetMask) {
      QCOW2J_ASSIGN_OR_RETURN(uint64_t r, rc.Get(off >> im.cb));
      if (r == 1) e |= kOflagCopied;
    }
  std::vector<JournalRecord> recs;
  HeaderUpdate field;  // size, crypt_method, l1_size, l1_table_offset: bytes 24..47
  field.offset = kHdrSize;
  field.bytes.resize(24);
  StoreBE64(field.bytes.data(), new_size);
  StoreBE32(field.bytes.data() + 8, im.h.crypt_method);
  StoreBE32(field.bytes.data() + 12, new_l1_size);
  StoreBE64(field.bytes.data() + 16, (*at)[0]);
  recs.push_back(field);  // first: replay reloads the L1 table from the copy
  QCOW2J_RETURN_IF_ERROR(PlanCopied(im, rc, new_l1, 0, &recs));
  QCOW2J_ASSIGN_OR_RETURN(auto area, ClaimArea(im, rc, *jext, next, &recs));
  if (!area) return false;

  std::vector<uint8_t> raw = EncodeL1(new_l1);
  QCOW2J_RETURN_IF_ERROR(im.file->Write((*at)[0], raw.data(), raw.size()));
  QCOW2J_ASSIGN_OR_RETURN(OfflineJournal j, BeginOfflineJournal(im, *area, jext->area_size));
  QCOW2J_RETURN_IF_ERROR(CommitOfflineJournal(im, j, recs));
  QCOW2J_RETURN_IF_ERROR(PlanCopied(im, rc, new_l1, 0, nullptr));
  QCOW2J_RETURN_IF_ERROR(FinishJournaled(im, rc, j, field));
  im.l1 = std::move(new_l1);
  return true;
}

Status DoCreate(const std::string& path, const std::string& name, Env* env) {
  if (name.size() > kMaxSnapshotNameBytes)
    return Status::InvalidArgument("snapshot name of " + std::to_string(name.size()) +
                                   " bytes is longer than 65535");
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenForSnapshots(path, env, true));
  if (im.snapshots.size() >= kMaxSnapshots)
    return Status::NotSupported("image '" + path + "' already has the maximum of " +
                                std::to_string(kMaxSnapshots) + " snapshots");

  SnapshotEntry sn;
  sn.id = NextSnapshotId(im.snapshots);
  sn.name = name;
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  sn.date_sec = static_cast<uint32_t>(tv.tv_sec);
  sn.date_nsec = static_cast<uint32_t>(tv.tv_usec * 1000);  // qemu-img's precision
  sn.vm_clock_nsec = 0;
  sn.vm_state_size = 0;
  sn.disk_size = im.h.size;
  sn.icount = 0;  // what qemu-img 7.2 writes
  sn.l1_size = im.h.l1_size;
  std::vector<SnapshotEntry> entries = im.snapshots;
  entries.push_back(sn);
  std::vector<uint8_t> table = SerializeSnapshotTable(entries);
  QCOW2J_RETURN_IF_ERROR(CheckTableSize(table));

  QCOW2J_ASSIGN_OR_RETURN(bool journaled, CreateJournaled(im, entries));
  if (journaled) return Status::OK();

  // 1. Space for the snapshot's L1 table and the new snapshot table.
  std::vector<uint64_t> sizes = {uint64_t{im.h.l1_size} * 8, table.size()};
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint64_t> at, AllocateRuns(im, sizes));
  entries.back().l1_table_offset = at[0];
  table = SerializeSnapshotTable(entries);

  Status s = [&]() -> Status {
    // 2. Every refcount the active tree holds, +1 (in memory; nothing is
    // written until the whole pass succeeded).
    QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
    std::vector<uint64_t> copied_tables;
    Status add = AddTree(im, rc, im.l1, +1, "active L1 table", &copied_tables);
    if (!add.ok()) {
      UndoAllocation(im, at, sizes);
      return add;
    }
    // 3. The snapshot's L1 table (a copy of the active one; COPIED means
    // nothing outside the active tree). Then the refcounts, durable before
    // anything points at the snapshot.
    std::vector<uint64_t> sn_l1 = im.l1;
    for (uint64_t& e : sn_l1) e &= ~kOflagCopied;
    if (!sn_l1.empty()) {
      std::vector<uint8_t> raw = EncodeL1(sn_l1);
      QCOW2J_RETURN_IF_ERROR(im.file->Write(at[0], raw.data(), raw.size()));
    }
    QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
    // 4. Everything the active tree references is shared now: COPIED goes
    // from its L2 entries and L1 entries (refcounts are all >= 2, since a
    // referenced cluster with refcount 0 fails the pass above).
    std::sort(copied_tables.begin(), copied_tables.end());
    QCOW2J_RETURN_IF_ERROR(ClearCopied(im, copied_tables));
    bool l1_changed = false;
    for (uint64_t& e : im.l1) {
      l1_changed |= (e & kOflagCopied) != 0;
      e &= ~kOflagCopied;
    }
    if (l1_changed) {
      std::vector<uint8_t> raw = EncodeL1(im.l1);
      QCOW2J_RETURN_IF_ERROR(im.file->Write(im.h.l1_table_offset, raw.data(), raw.size()));
    }
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
    // 5. The snapshot exists once the header points at the new table.
    uint64_t old_table = im.h.snapshots_offset, old_bytes = im.table_bytes;
    QCOW2J_RETURN_IF_ERROR(SwitchTable(im, table, at[1], static_cast<uint32_t>(entries.size())));
    // 6. The old table is garbage now.
    QCOW2J_RETURN_IF_ERROR(FreeRun(im, rc, old_table, old_bytes));
    QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
    PunchFreed(im, rc);
    return Status::OK();
  }();
  return s;
}

// The image opened read-write for an operation on the snapshot
// `name_or_id`, which snapshot that is (its index and entry) and its L1 table.
struct SnapshotTarget {
  OfflineImage im;
  int index = -1;
  SnapshotEntry sn;
  std::vector<uint64_t> l1;
};

Result<SnapshotTarget> OpenSnapshotTarget(const std::string& path, const std::string& name_or_id, Env* env) {
  SnapshotTarget t;
  QCOW2J_ASSIGN_OR_RETURN(t.im, OpenForSnapshots(path, env, true));
  t.index = FindSnapshot(t.im.snapshots, name_or_id);
  if (t.index < 0) return Status::NotFound("snapshot '" + name_or_id + "' not found");
  t.sn = t.im.snapshots[t.index];
  QCOW2J_RETURN_IF_ERROR(
      ReadL1(t.im, t.sn.l1_table_offset, t.sn.l1_size, "snapshot " + t.sn.id + " L1 table", &t.l1));
  return t;
}

Status DoDelete(const std::string& path, const std::string& name_or_id, Env* env) {
  QCOW2J_ASSIGN_OR_RETURN(SnapshotTarget t, OpenSnapshotTarget(path, name_or_id, env));
  OfflineImage& im = t.im;
  const int idx = t.index;
  const SnapshotEntry& sn = t.sn;
  const std::vector<uint64_t>& sn_l1 = t.l1;
  // The active tree is walked after the point of no return (COPIED flags):
  // make sure it can be before starting.
  QCOW2J_RETURN_IF_ERROR(L2Tables(im, im.l1, "active L1 table").status());
  std::vector<SnapshotEntry> entries = im.snapshots;
  entries.erase(entries.begin() + idx);
  std::vector<uint8_t> table = SerializeSnapshotTable(entries);
  QCOW2J_ASSIGN_OR_RETURN(bool journaled, DeleteJournaled(im, sn, sn_l1, entries));
  if (journaled) return Status::OK();

  std::vector<uint64_t> sizes = {table.size()};
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint64_t> at, AllocateRuns(im, sizes));
  // Every decrement, checked in memory before the snapshot goes away.
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  Status s = AddTree(im, rc, sn_l1, -1, "snapshot " + sn.id + " L1 table", nullptr);
  if (s.ok()) s = FreeRun(im, rc, sn.l1_table_offset, uint64_t{sn.l1_size} * 8);
  if (s.ok()) s = FreeRun(im, rc, im.h.snapshots_offset, im.table_bytes);
  if (!s.ok()) {
    UndoAllocation(im, at, sizes);
    return s;
  }
  // The snapshot is gone once the header points at the new table; from then
  // on its clusters are leaks until the refcounts are written.
  QCOW2J_RETURN_IF_ERROR(SwitchTable(im, table, at[0], static_cast<uint32_t>(entries.size())));
  QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  // Clusters the active tree shared only with the snapshot are its own again.
  QCOW2J_RETURN_IF_ERROR(FixCopied(im, rc));
  PunchFreed(im, rc);
  return Status::OK();
}

Status DoApply(const std::string& path, const std::string& name_or_id, Env* env) {
  QCOW2J_ASSIGN_OR_RETURN(SnapshotTarget t, OpenSnapshotTarget(path, name_or_id, env));
  OfflineImage& im = t.im;
  const SnapshotEntry& sn = t.sn;
  std::vector<uint64_t>& sn_l1 = t.l1;
  uint64_t new_size = sn.disk_size ? sn.disk_size : im.h.size;
  if (new_size > kMaxVirtualSize)
    return Status::Corruption("snapshot " + sn.id + " disk size " + std::to_string(new_size) +
                              " is too large");
  // The active L1 keeps its size (QEMU only ever grows it): the snapshot's
  // table padded with zeros, or a larger table at a new place.
  uint32_t new_l1_size = std::max(im.h.l1_size, sn.l1_size);
  const uint64_t l1_span = im.cs * (im.cs / im.l2_entry_bytes);  // guest bytes per L1 entry
  if ((new_size + l1_span - 1) / l1_span > new_l1_size)
    return Status::Corruption("snapshot " + sn.id + " disk size " + std::to_string(new_size) +
                              " needs more L1 entries than its l1_size " +
                              std::to_string(sn.l1_size));
  QCOW2J_ASSIGN_OR_RETURN(bool journaled, ApplyJournaled(im, sn, sn_l1, new_size, new_l1_size));
  if (journaled) return Status::OK();
  bool relocate = new_l1_size > im.h.l1_size;
  std::vector<uint64_t> sizes = {relocate ? uint64_t{new_l1_size} * 8 : 0};
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint64_t> at, AllocateRuns(im, sizes));

  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  std::vector<uint64_t> copied_tables;
  // Stage 1 (+1 for the snapshot's tree) and stage 2 (-1 for the old active
  // tree) are both computed before anything is written.
  Status s = AddTree(im, rc, sn_l1, +1, "snapshot " + sn.id + " L1 table", &copied_tables);
  std::vector<RefcountModel::BlockImage> stage1;
  if (s.ok()) {
    stage1 = rc.TakeDirty();
    s = AddTree(im, rc, im.l1, -1, "active L1 table", nullptr);
  }
  uint64_t old_l1_offset = im.h.l1_table_offset, old_l1_bytes = uint64_t{im.h.l1_size} * 8;
  if (s.ok() && relocate) s = FreeRun(im, rc, old_l1_offset, old_l1_bytes);
  if (!s.ok()) {
    UndoAllocation(im, at, sizes);
    return s;
  }
  QCOW2J_RETURN_IF_ERROR(RefcountModel::WriteBlocks(im.file.get(), std::move(stage1)));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  // The snapshot's tree is shared with the new active tree from the moment
  // the L1 is written: no entry in it may claim COPIED before then.
  std::sort(copied_tables.begin(), copied_tables.end());
  QCOW2J_RETURN_IF_ERROR(ClearCopied(im, copied_tables));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());

  std::vector<uint64_t> new_l1(new_l1_size, 0);
  for (size_t i = 0; i < sn_l1.size(); i++) new_l1[i] = sn_l1[i] & ~kOflagCopied;
  std::vector<uint8_t> raw = EncodeL1(new_l1);
  uint64_t l1_offset = relocate ? at[0] : im.h.l1_table_offset;
  if (!raw.empty()) QCOW2J_RETURN_IF_ERROR(im.file->Write(l1_offset, raw.data(), raw.size()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  if (relocate || new_size != im.h.size) {
    // size, crypt_method, l1_size and l1_table_offset: bytes 24..47, one write.
    std::vector<uint8_t> b(24);
    StoreBE64(b.data(), new_size);
    StoreBE32(b.data() + 8, im.h.crypt_method);
    StoreBE32(b.data() + 12, new_l1_size);
    StoreBE64(b.data() + 16, l1_offset);
    static_assert(kHdrL1 - kHdrSize == 12);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(im, kHdrSize, b));
    im.h.size = new_size;
    im.h.l1_size = new_l1_size;
    im.h.l1_table_offset = l1_offset;
  }
  im.l1 = std::move(new_l1);
  // Stage 2: the old active tree lets go.
  QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  QCOW2J_RETURN_IF_ERROR(FixCopied(im, rc));
  PunchFreed(im, rc);
  return Status::OK();
}

}  // namespace

Status CreateSnapshot(const std::string& path, const std::string& name, Env* env) {
  return DoCreate(path, name, env);
}

Status ApplySnapshot(const std::string& path, const std::string& name_or_id, Env* env) {
  return DoApply(path, name_or_id, env);
}

Status DeleteSnapshot(const std::string& path, const std::string& name_or_id, Env* env) {
  return DoDelete(path, name_or_id, env);
}

Result<std::vector<SnapshotInfo>> ListSnapshots(const std::string& path, Env* env) {
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenForSnapshots(path, env, false));
  std::vector<SnapshotInfo> out;
  for (const SnapshotEntry& e : im.snapshots) {
    SnapshotInfo i;
    i.id = e.id;
    i.name = e.name;
    i.vm_state_size = e.vm_state_size;
    i.disk_size = e.disk_size;
    i.date_sec = e.date_sec;
    i.date_nsec = e.date_nsec;
    i.vm_clock_nsec = e.vm_clock_nsec;
    i.icount = e.icount.value_or(UINT64_MAX);
    out.push_back(std::move(i));
  }
  return out;
}

}  // namespace qcow2j
