// Refcounts and cluster allocation for one image file.
//
// Allocation appends: new clusters come from the end of the file. Clusters
// whose refcount drops to 0 are not reused at once: they wait in
// `pending_free_` until the metadata that freed them is durable (the engine
// calls ReleasePendingFrees after a flush), because until then a crash would
// bring back the old L2 entry pointing at them, and their old contents must
// still be there. Only then do they join the free extents that allocation
// prefers over appending.
//
// Not thread-safe: the engine calls it under its metadata lock.
#ifndef QCOW2J_ALLOC_REFCOUNT_MANAGER_H_
#define QCOW2J_ALLOC_REFCOUNT_MANAGER_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "journal/journal_record.h"
#include "metadata/metadata_map.h"
#include "metadata/table_cache.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

class RefcountManager {
 public:
  struct Config {
    File* file = nullptr;
    uint32_t cluster_bits = 16;
    uint32_t refcount_order = 4;
    uint64_t refcount_table_offset = 0;
    uint32_t refcount_table_clusters = 0;
    uint64_t file_size = 0;
    size_t cache_blocks = 0;  // 0: default
    // Persists a moved/grown refcount table in the image header.
    std::function<Status(uint64_t offset, uint32_t clusters)> update_header;
    // Overlap protection: the table and blocks are registered here and
    // checked before each in-place write (nullptr: none).
    MetadataMap* metadata_map = nullptr;
  };

  explicit RefcountManager(const Config& c);
  // Reads the refcount table.
  Status Load();

  Result<uint64_t> Get(uint64_t host_offset);
  // Adds delta (may be negative) to the refcount of the cluster at host_offset
  // and returns the new value. Corruption on overflow or underflow. A refcount
  // that reaches 0 is queued as a pending free.
  Result<uint64_t> Update(uint64_t host_offset, int64_t delta);
  // Allocates n contiguous clusters with refcount 1: a free extent if one is
  // large enough, else at the end of the file. *fresh tells whether they were
  // never written (appended), so they read as zeros.
  Result<uint64_t> Allocate(uint64_t n, bool* fresh = nullptr);
  // Clusters whose refcount reached 0 become reusable (call once the
  // metadata that freed them is durable).
  void ReleasePendingFrees();
  // Writes every dirty refcount block (and a grown table). `replayed`: every
  // change being written is a committed journal record that a crash would
  // replay (open-time recovery), so a table kept in place may be written
  // without first syncing the blocks it points at; a moved table still
  // waits for a sync before the header names it (an open reads the table
  // before any replay).
  Status WriteBack(bool replayed = false);
  bool dirty() const { return table_dirty_ || cache_->dirty_count() > 0; }

  // ---- the metadata journal ----
  // From now on remember every refcount change, new refcount block and table
  // move, for TakeJournalRecords. Dirty blocks are then never evicted (an
  // evicted block would reach the disk before the transaction committing it).
  void EnableJournal() {
    track_ = true;
    cache_->set_keep_dirty(true);
  }
  size_t change_count() const { return changed_.size() + new_blocks_.size() + (table_moved_ ? table_.size() : 0); }
  bool has_changes() const { return !changed_.empty() || !new_blocks_.empty() || table_moved_; }
  // Appends records that set everything changed since ForgetChanges to its
  // current value (table move and new blocks first, so replay finds the
  // blocks the refcounts go into).
  Status JournalRecords(std::vector<JournalRecord>* out);
  // The changes are committed, or written in place: nothing left to journal.
  void ForgetChanges();
  size_t dirty_blocks() const { return cache_->dirty_count(); }
  size_t cache_capacity() const { return cache_->capacity(); }
  // Replay of journal records (absolute values; idempotent).
  Status ReplaySet(uint64_t cluster_index, uint64_t n, uint64_t value);
  Status ReplayNewBlock(uint64_t block_offset);
  Status ReplayTableEntry(uint64_t index, uint64_t block_offset);
  Status ReplayTableMove(uint64_t table_offset, uint32_t clusters);

  // First cluster offset past every allocation. Readers outside the
  // engine's lock (range checks of lock-free reads) may call this; only
  // writers need the lock.
  uint64_t end_offset() const { return end_.load(std::memory_order_relaxed); }
  // Appends start at `offset` or later from now on: free clusters below it
  // (e.g. a freed journal area still being punched) are left alone until a
  // later open.
  void AppendPast(uint64_t offset) { end_ = std::max(end_.load(), offset); }
  // Whether any of the (offset, length) ranges meets the refcount table or
  // a block it names: bytes a write-back may rewrite.
  bool MeetsRefcountMetadata(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) const;
  uint64_t table_offset() const { return table_offset_; }
  uint32_t table_clusters() const { return table_clusters_; }
  uint64_t cluster_size() const { return cluster_size_; }
  uint64_t MaxRefcount() const;

 private:
  // Records that the refcount of `cluster_index` changed (journal tracking).
  void NoteChanged(uint64_t cluster_index);
  // Makes changed_ strictly ascending.
  void SortChanges();
  // The cached slice of the refcount block covering cluster index `ci`,
  // pinned, and the entry's index inside it; allocates the block (and grows
  // the table) when missing and `create` is set. nullptr when missing and
  // !create. Blocks are cached in slices of min(cluster, 4 KiB) so that a
  // flush writes back only the slices that changed.
  Result<TableCache::Table*> Slice(uint64_t ci, bool create, uint64_t* index);
  Result<TableCache::Table*> LoadSlice(uint64_t slice_offset);
  Status GrowTable(uint64_t min_entries);
  // Sets refcount of clusters [first, first+n) to value, all in existing or
  // created blocks (used for allocation bookkeeping).
  Status SetRange(uint64_t first_ci, uint64_t n, uint64_t value);
  // The position in [first_ci, first_ci + n) of the first cluster whose
  // refcount is not 0, or n when all are free.
  Result<uint64_t> FirstInUse(uint64_t first_ci, uint64_t n);
  void AddFree(uint64_t ci, uint64_t n);
  // overlap-guard: OK when [offset, offset+len) may be written as `kind`.
  Status Guard(uint64_t offset, uint64_t len, MetadataKind kind) {
    return cfg_.metadata_map ? cfg_.metadata_map->CheckMetadataWrite(offset, len, kind)
                             : Status::OK();
  }
  Status Claim(uint64_t offset, uint64_t len, MetadataKind kind) {
    return cfg_.metadata_map ? cfg_.metadata_map->Add(offset, len, kind) : Status::OK();
  }

  Config cfg_;
  File* file_;
  uint32_t cluster_bits_;
  uint64_t cluster_size_;
  uint32_t order_;
  uint64_t block_entries_;
  uint64_t slice_bytes_;
  uint64_t slice_entries_;
  uint64_t table_offset_;
  uint32_t table_clusters_;
  std::vector<uint64_t> table_;  // refcount table entries (block offsets)
  bool table_dirty_ = false;
  std::atomic<uint64_t> end_;    // append point
  std::unique_ptr<TableCache> cache_;
  std::map<uint64_t, uint64_t> free_;  // cluster index -> run length, reusable now
  std::vector<uint64_t> pending_free_; // cluster indexes freed since the last flush
  std::vector<uint64_t> held_;         // an old refcount table's clusters, free once the header moved
  // Journal tracking (EnableJournal).
  bool track_ = false;
  std::vector<uint64_t> changed_;     // cluster indexes whose refcount changed
  bool changed_ascending_ = true;     // changed_ is strictly ascending (sorted, no repeats)
  std::vector<uint64_t> new_blocks_;  // refcount-table indexes given a new block
  bool table_moved_ = false;
};

}  // namespace qcow2j

#endif  // QCOW2J_ALLOC_REFCOUNT_MANAGER_H_
