// A closed qcow2 file as the offline operations see it (internal snapshots,
// commit's emptying of the top image, amend, rebase's header rewrite): the
// header, the snapshot table and the active L1 table read straight from the
// file, plus the passes over L2 tables and refcounts those operations share.
// No engine and no journal: the caller has the file to itself.
#ifndef QCOW2J_QCOW2_OFFLINE_IMAGE_H_
#define QCOW2J_QCOW2_OFFLINE_IMAGE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "alloc/refcount_manager.h"
#include "journal/journal_format.h"
#include "journal/journal_record.h"
#include "metadata/header.h"
#include "metadata/snapshot_table.h"
#include "qcow2/snapshot_ops.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

// Header byte offsets of the fields the offline operations switch.
inline constexpr uint64_t kHdrSize = 24;           // u64 size
inline constexpr uint64_t kHdrL1 = 36;             // u32 l1_size, u64 l1_table_offset
inline constexpr uint64_t kHdrRefcountTable = 48;  // u64 offset, u32 clusters
inline constexpr uint64_t kHdrSnapshots = 60;      // u32 nb_snapshots, u64 snapshots_offset
inline constexpr uint64_t kL2ReadChunk = 8ull << 20;  // bytes of L2 tables read at once

// The image file, as the operations see it.

struct OfflineImage {
  std::string path;
  std::unique_ptr<File> file;
  uint64_t file_size = 0;
  Header h;
  uint32_t cb = 16;
  uint64_t cs = 65536;
  uint64_t l2_entry_bytes = 8;
  std::vector<SnapshotEntry> snapshots;
  uint64_t table_bytes = 0;    // on-disk bytes of the snapshot table (QEMU's snapshots_size)
  std::vector<uint64_t> l1;    // the active L1 table, raw entries

  uint64_t Clusters(uint64_t bytes) const { return (bytes + cs - 1) >> cb; }
};

// Reads an L1 table of `size` entries at `offset`; `what` names it in errors.
Status ReadL1(OfflineImage& im, uint64_t offset, uint32_t size, const std::string& what,
              std::vector<uint64_t>* out);

// Reads and validates the header, snapshot table and active L1 table.
// Writable: refuses an image with un-checkpointed journal transactions or
// the dirty bit (Busy) or the corrupt bit (Corruption), which need recovery
// by the engine or check -r all first. NotSupported when not qcow2.
Result<OfflineImage> OpenOffline(const std::string& path, Env* env, bool writable);

// Writes `bytes` at header offset `at` and syncs.
Status WriteHeaderField(OfflineImage& im, uint64_t at, const std::vector<uint8_t>& bytes);

// Replaces the whole header (with its extensions and backing name) by `h`,
// written as one cluster from offset 0 and synced, as QEMU's
// qcow2_update_header does; im.h becomes `h`. NoSpace when it does not fit
// in the first cluster.
Status RewriteHeader(OfflineImage& im, const Header& h);

// A RefcountManager for allocations (appended at the end of the file). It
// may grow the refcount table; the header follows through the callback.
std::unique_ptr<RefcountManager> NewAllocator(OfflineImage& im);
// Allocates runs of clusters for each byte count in `sizes` (0: none, offset
// 0), makes their refcounts durable and returns their offsets.
Result<std::vector<uint64_t>> AllocateRuns(OfflineImage& im, const std::vector<uint64_t>& sizes);
// Gives back what AllocateRuns took, after a later step failed (best effort).
void UndoAllocation(OfflineImage& im, const std::vector<uint64_t>& offsets,
                    const std::vector<uint64_t>& sizes);

// The refcounts of the file, held in memory (RefcountModel).
Result<RefcountModel> NewModel(OfflineImage& im);

// Visits the L2 tables at `offsets` (sorted, unique), reading runs of
// adjacent tables in chunks of up to kL2ReadChunk bytes. `fn(offset, table)`
// returns whether it changed the table; changed runs are written back when
// `write_back` is set.
template <class Fn>
Status VisitL2Tables(OfflineImage& im, const std::vector<uint64_t>& offsets, bool write_back,
                     Fn&& fn) {
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < offsets.size();) {
    size_t j = i + 1;
    while (j < offsets.size() && offsets[j] == offsets[j - 1] + im.cs &&
           (j - i + 1) * im.cs <= kL2ReadChunk)
      j++;
    uint64_t bytes = (j - i) * im.cs;
    buf.resize(bytes);
    QCOW2J_RETURN_IF_ERROR(im.file->Read(offsets[i], buf.data(), bytes));
    bool changed = false;
    for (size_t k = i; k < j; k++) {
      QCOW2J_ASSIGN_OR_RETURN(bool c, fn(offsets[k], buf.data() + (k - i) * im.cs));
      changed |= c;
    }
    if (changed && write_back) QCOW2J_RETURN_IF_ERROR(im.file->Write(offsets[i], buf.data(), bytes));
    i = j;
  }
  return Status::OK();
}

// The L2 tables an L1 table points at, validated, sorted, with how many L1
// entries point at each.
Result<std::vector<std::pair<uint64_t, uint32_t>>> L2Tables(const OfflineImage& im,
                                                            const std::vector<uint64_t>& l1,
                                                            const std::string& what);
std::vector<uint64_t> Offsets(const std::vector<std::pair<uint64_t, uint32_t>>& tables);

// Adds `delta` to the refcount of every cluster the tree under `l1`
// references (L2 tables, data and zero-allocated clusters, every host cluster
// of a compressed cluster). Collects the L2 tables holding an entry with
// COPIED set in *copied_tables (may be null).
Status AddTree(OfflineImage& im, RefcountModel& rc, const std::vector<uint64_t>& l1,
               int64_t delta, const std::string& what, std::vector<uint64_t>* copied_tables);
// Clears COPIED in every entry of the L2 tables at `offsets` (sorted).
Status ClearCopied(OfflineImage& im, const std::vector<uint64_t>& offsets);
// Sets COPIED exactly where the refcount is 1 in the active tree; writes
// what changed, the L1 table last.
Status FixCopied(OfflineImage& im, RefcountModel& rc);
// Punches the clusters whose refcount ended at 0 out of the file.
void PunchFreed(OfflineImage& im, RefcountModel& rc);
std::vector<uint8_t> EncodeL1(const std::vector<uint64_t>& l1);

// ---- One journal transaction for an offline operation (snapshot create,
// delete, apply on an image that uses the journal; docs/crash-safety.md,
// "Internal snapshots"). The operation computes everything in memory, writes
// the clusters only the transaction will reference (and that are free until
// it commits), then:
//   BeginOfflineJournal: formats a new area (the sync also makes those
//     clusters durable);
//   CommitOfflineJournal: the header gets the area, incompatible bit 16 and
//     autoclear bit 16; the frame is appended; ONE sync commits both (either
//     may land alone: a header with an empty ring closes to nothing, a frame
//     under a header without the bit is never read);
//   the operation writes the same changes in place and syncs;
//   EndOfflineJournal: the header without the bits or the area (sync), and
//     the area's space is given back.
// A crash after the commit leaves incompatible bit 16 set: the next
// read-write open replays the whole transaction (idempotent), before that it
// replays none of it.

// The image's journal extension, when the operation can use one: the image
// has the journal and is not in dirty-refcount mode (whose refcounts are
// rebuilt from the tables after a replay). nullopt: use the ordered path.
std::optional<JournalExtension> OfflineJournalExtension(const OfflineImage& im);

// The extension of an area of `ext`'s (or the default) size at
// `area_offset`, with the sector size the file needs.
JournalExtension OfflineJournalArea(const OfflineImage& im, JournalExtension ext,
                                    uint64_t area_offset);

struct OfflineJournal {
  JournalExtension ext;
  JournalSuperblock sb;
  uint64_t idle_area_size = 0;  // the extension's area_size to restore at the end
};
// Formats the area (a new generation) and syncs. `idle_area_size`: the
// area_size the extension had (the size the engine's sessions allocate).
Result<OfflineJournal> BeginOfflineJournal(OfflineImage& im, const JournalExtension& ext,
                                           uint64_t idle_area_size);
// Whether a transaction of these records fits the area's ring (and the frame limit).
bool OfflineJournalFits(const JournalExtension& ext, const std::vector<JournalRecord>& recs);
// The header switch to the session and the frame, one sync.
Status CommitOfflineJournal(OfflineImage& im, const OfflineJournal& j,
                            const std::vector<JournalRecord>& recs);
// After the changes are written in place (and synced): the header without
// the session (sync), then the area truncated away or punched.
Status EndOfflineJournal(OfflineImage& im, const OfflineJournal& j);

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_OFFLINE_IMAGE_H_
