#include "recovery/repair.h"

#include <algorithm>
#include <map>

#include "metadata/endian.h"
#include "metadata/refcount_block.h"
#include "metadata/snapshot_table.h"

namespace qcow2j {

namespace {

// The line is built only when someone listens: a repair of an image with
// thousands of bad entries or snapshots otherwise spends its time on
// strings nobody reads.
template <class MakeLine>
void Say(const RepairContext& ctx, MakeLine&& make) {
  if (ctx.on_message) ctx.on_message(make());
}
void Say(const RepairContext& ctx, const char* line) {
  if (ctx.on_message) ctx.on_message(line);
}

Status WriteWord(File* file, uint64_t offset, uint64_t value) {
  uint8_t b[8];
  StoreBE64(b, value);
  return file->Write(offset, b, sizeof(b));
}

// Sets refcounts on disk to the counted values: all of them (-r all) or only
// those that are too high (-r leaks). Blocks are read, patched and written
// back whole, in offset order.
Result<bool> PatchRefcounts(const RepairContext& ctx, const ScanResult& scan, bool leaks_only) {
  const Header& h = scan.header;
  const uint64_t cs = h.cluster_size();
  const uint64_t per_block = RefcountBlockEntries(h.cluster_bits, h.refcount_order);
  const uint64_t refmax = MaxRefcount(h.refcount_order);
  std::map<uint64_t, std::vector<uint8_t>> dirty;  // block index -> contents
  uint64_t fixed = 0;
  for (uint64_t i = 0; i < scan.nb_clusters; ++i) {
    const uint64_t r1 = scan.ondisk.Get(i), r2 = scan.computed.Get(i);
    if (r1 == r2 || (leaks_only && r1 < r2) || r2 > refmax) continue;
    const uint64_t b = i / per_block;
    if (b >= scan.refblocks.size() || scan.refblocks[b] == 0) continue;
    auto it = dirty.find(b);
    if (it == dirty.end()) {
      std::vector<uint8_t> blk(cs);
      QCOW2J_RETURN_IF_ERROR(ctx.file->Read(scan.refblocks[b], blk.data(), cs));
      it = dirty.emplace(b, std::move(blk)).first;
    }
    SetRefcount(it->second, h.refcount_order, i % per_block, r2);
    Say(ctx, [&] {
      return "Repairing cluster " + std::to_string(i) + " refcount=" + std::to_string(r1) +
             " reference=" + std::to_string(r2);
    });
    ++fixed;
  }
  for (const auto& [b, blk] : dirty) {
    QCOW2J_RETURN_IF_ERROR(ctx.file->Write(scan.refblocks[b], blk.data(), cs));
  }
  if (fixed) QCOW2J_RETURN_IF_ERROR(ctx.file->Sync());
  return fixed > 0;
}

// Entries back to a table without the bad ones; extra data that is too
// large is dropped (as QEMU's repair does) keeping the rest of the entry.
// Entries missing the version 3 extra data get vm_state_size_large and
// disk_size filled in from the entry and the header, as QEMU's repair does.
std::vector<uint8_t> RebuildSnapshotTable(const ScanResult& scan, uint32_t* count) {
  std::vector<uint8_t> out;
  *count = 0;
  for (const SnapshotRecord& s : scan.snapshots) {
    if (s.bad) continue;
    if (s.drop_extra || s.fill_extra) {
      std::vector<uint8_t> e(kSnapshotEntryMinBytes);
      std::copy(s.raw.begin(), s.raw.begin() + kSnapshotEntryMinBytes, e.begin());
      const uint32_t had = LoadBE32(e.data() + 36);
      if (s.drop_extra) {
        StoreBE32(e.data() + 36, 0);
      } else {
        uint8_t extra[16] = {};
        std::copy(s.raw.begin() + kSnapshotEntryMinBytes,
                  s.raw.begin() + kSnapshotEntryMinBytes + had, extra);
        if (had < 8) StoreBE64(extra, LoadBE32(e.data() + 32));
        StoreBE64(extra + 8, scan.header.size);
        StoreBE32(e.data() + 36, 16);
        e.insert(e.end(), extra, extra + 16);
      }
      e.insert(e.end(), s.id.begin(), s.id.end());
      e.insert(e.end(), s.name.begin(), s.name.end());
      e.resize((e.size() + 7) & ~size_t{7}, 0);
      out.insert(out.end(), e.begin(), e.end());
    } else {
      out.insert(out.end(), s.raw.begin(), s.raw.end());
    }
    ++*count;
  }
  return out;
}

// The snapshot table is rewritten after the end of the file and the header
// switched to it in one 12-byte write (nb_snapshots and snapshots_offset are
// adjacent), so a crash leaves either table in use, never a mix.
Status FixSnapshots(const RepairContext& ctx, const ScanResult& scan) {
  const uint64_t cs = scan.header.cluster_size();
  uint32_t count = 0;
  std::vector<uint8_t> table;
  if (!scan.drop_all_snapshots) table = RebuildSnapshotTable(scan, &count);
  for (const SnapshotRecord& s : scan.snapshots) {
    if (scan.drop_all_snapshots || s.bad) {
      Say(ctx, [&] { return "Repairing: discarding snapshot " + s.id + " (" + s.name + ")"; });
      if (ctx.lost) ctx.lost->push_back({0, 0, s.id, ""});
    }
  }
  uint64_t offset = 0;
  if (count > 0) {
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, ctx.file->Size());
    offset = (size + cs - 1) & ~(cs - 1);
    QCOW2J_RETURN_IF_ERROR(ctx.file->Write(offset, table.data(), table.size()));
    QCOW2J_RETURN_IF_ERROR(ctx.file->Sync());
  }
  uint8_t hdr[12];
  StoreBE32(hdr, count);
  StoreBE64(hdr + 4, offset);
  QCOW2J_RETURN_IF_ERROR(ctx.file->Write(60, hdr, sizeof(hdr)));
  Say(ctx, [&] {
    return "Repairing: snapshot table rewritten with " + std::to_string(count) + " entries";
  });
  return ctx.file->Sync();
}

Status ApplyWords(const RepairContext& ctx, std::vector<WordFix> fixes, const char* what) {
  std::sort(fixes.begin(), fixes.end(),
            [](const WordFix& a, const WordFix& b) { return a.offset < b.offset; });
  for (const WordFix& f : fixes) {
    QCOW2J_RETURN_IF_ERROR(WriteWord(ctx.file, f.offset, f.value));
    if (f.lost.length) {
      Say(ctx, [&] {
        return std::string("Repairing ") + what + " at " + HexStr(f.offset) +
               ": cleared; guest range " + HexStr(f.lost.guest_offset) + "+" +
               HexStr(f.lost.length) +
               (f.lost.snapshot.empty() ? " of the active image" : " of snapshot " + f.lost.snapshot) +
               " is lost";
      });
      if (ctx.lost) ctx.lost->push_back(f.lost);
    } else {
      Say(ctx, [&] {
        return std::string("Repairing ") + what + " at " + HexStr(f.offset) + ": now " +
               HexStr(f.value);
      });
    }
  }
  return ctx.file->Sync();
}

bool HasRefcountProblems(const ScanResult& scan) {
  for (const CheckProblem& p : scan.report.problems) {
    if (p.kind == "refcount-mismatch" || p.kind == "leak") return true;
  }
  return false;
}

}  // namespace

constexpr uint64_t kMaxRepairGrowth = 64ull << 20;

Result<bool> RepairRound(const RepairContext& ctx, const ScanResult& scan) {
  if (ctx.mode == RepairMode::kNone) return false;
  const bool all = ctx.mode == RepairMode::kAll;
  if (!all) {
    if (scan.report.leaks == 0) return false;
    return PatchRefcounts(ctx, scan, true);
  }
  // 1. Tables that end past the end of the file: the missing part reads as
  //    zeros; make it real so the refcounts can describe it.
  if (scan.min_file_size > scan.file_size) {
    // Only a file cut short is grown; a table offset far past the end (a
    // corrupt header field) would otherwise make a tiny file terabytes
    // large (found by fuzzing).
    const uint64_t slack = std::max<uint64_t>(scan.file_size, kMaxRepairGrowth);
    if (scan.min_file_size - scan.file_size > slack)
      return Status::Corruption("a table ends at offset " + std::to_string(scan.min_file_size) +
                                ", far past the end of the file (" +
                                std::to_string(scan.file_size) +
                                " bytes): refusing to grow the file to repair it");
    const uint64_t cs = scan.header.cluster_size();
    const uint64_t size = (scan.min_file_size + cs - 1) & ~(cs - 1);
    Say(ctx, [&] {
      return "Repairing: growing the file to " + std::to_string(size) +
             " bytes to hold a table that ends past it";
    });
    QCOW2J_RETURN_IF_ERROR(ctx.file->Truncate(size));
    return true;
  }
  // 2. Structure: snapshots, bitmaps, bad L1/L2 entries.
  bool changed = false;
  if (scan.snapshot_table_fix || scan.drop_all_snapshots) {
    QCOW2J_RETURN_IF_ERROR(FixSnapshots(ctx, scan));
    changed = true;
  }
  if (scan.drop_bitmaps && scan.header.version >= 3) {
    uint8_t b[8];
    StoreBE64(b, scan.header.autoclear_features & ~kAutoclearBitmaps);
    QCOW2J_RETURN_IF_ERROR(ctx.file->Write(88, b, sizeof(b)));
    QCOW2J_RETURN_IF_ERROR(ctx.file->Sync());
    Say(ctx, "Repairing: bitmaps are inconsistent; cleared the bitmaps autoclear bit");
    changed = true;
  }
  if (changed) return true;
  if (!scan.entry_fixes.empty()) {
    QCOW2J_RETURN_IF_ERROR(ApplyWords(ctx, scan.entry_fixes, "table entry"));
    return true;
  }
  // 3. Refcounts: patched in place when the structure is sound, else rebuilt.
  if (scan.rebuild_needed && !(ctx.rebuilt && *ctx.rebuilt)) {
    if (ctx.rebuilt) *ctx.rebuilt = true;
    Say(ctx, "Rebuilding refcount structure");
    ScanOptions o;
    o.count_refcount_structures = false;
    o.keep_messages = false;
    QCOW2J_ASSIGN_OR_RETURN(auto refs, ScanImage(ctx.file, o));
    QCOW2J_RETURN_IF_ERROR(RebuildRefcounts(ctx.file, *refs));
    return true;
  }
  if (HasRefcountProblems(scan)) {
    QCOW2J_ASSIGN_OR_RETURN(bool patched, PatchRefcounts(ctx, scan, false));
    if (patched) return true;
  }
  // 4. OFLAG_COPIED, against refcounts that are now right.
  if (!scan.copied_fixes.empty()) {
    QCOW2J_RETURN_IF_ERROR(ApplyWords(ctx, scan.copied_fixes, "OFLAG_COPIED of entry"));
    return true;
  }
  return false;
}

Status ClearDirtyAndCorrupt(File* file, const ScanResult& scan) {
  const uint64_t bits = kIncompatDirty | kIncompatCorrupt;
  if (scan.header.version < 3 || !(scan.header.incompatible_features & bits)) return Status::OK();
  uint8_t b[8];
  StoreBE64(b, scan.header.incompatible_features & ~bits);
  QCOW2J_RETURN_IF_ERROR(file->Write(72, b, sizeof(b)));
  return file->Sync();
}

}  // namespace qcow2j
