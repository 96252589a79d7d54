// Internals of the offline snapshot operations (include/qcow2j/snapshot.h),
// exposed for tests.
#ifndef QCOW2J_QCOW2_SNAPSHOT_OPS_H_
#define QCOW2J_QCOW2_SNAPSHOT_OPS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "journal/journal_record.h"
#include "metadata/snapshot_table.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

// QEMU's rule: one more than the largest id read as a number (strtoul, so
// "7b" counts as 7 and "x" as 0).
std::string NextSnapshotId(const std::vector<SnapshotEntry>& entries);

// Index of the snapshot whose id is `name_or_id`, else of the first whose
// name is; -1 when none.
int FindSnapshot(const std::vector<SnapshotEntry>& entries, const std::string& name_or_id);

// Every refcount block a pass touches, held in memory: increments and
// decrements are applied here (checked against overflow and underflow) and
// written back once per block, in offset order, instead of one cached
// get/put per refcount as QEMU does. Blocks that are missing from the
// refcount table read as 0 and cannot be incremented (the clusters a pass
// touches are all allocated already).
class RefcountModel {
 public:
  // `table` holds the refcount table entries (block offsets and reserved bits).
  RefcountModel(File* file, uint32_t cluster_bits, uint32_t refcount_order,
                std::vector<uint64_t> table);
  ~RefcountModel();
  RefcountModel(RefcountModel&&) noexcept;
  RefcountModel& operator=(RefcountModel&&) noexcept;

  // Adds `delta` to the refcount of host cluster `ci`. Errors name the
  // cluster's host offset: Corruption when it would drop below 0 or has no
  // refcount block, InvalidArgument when it would exceed refcount_bits.
  Status Add(uint64_t ci, int64_t delta);
  Result<uint64_t> Get(uint64_t ci);
  // Takes a free cluster (refcount 0 -> 1): false, and nothing changed, when
  // its refcount is not 0 or it has no refcount block.
  Result<bool> Claim(uint64_t ci);
  // Sets the refcount of a cluster that has a refcount block.
  Status Set(uint64_t ci, uint64_t value);
  // Refcount-run records (absolute values) for every refcount set (by Add,
  // Claim or Set) since its block was loaded, changed or not.
  void JournalRuns(std::vector<JournalRecord>* out) const;

  // A copy of every block changed since the last Take, with its offset; the
  // blocks count as clean afterwards.
  struct BlockImage {
    uint64_t offset;
    std::vector<uint8_t> data;
  };
  std::vector<BlockImage> TakeDirty();
  // Writes blocks (sorted by offset, adjacent ones in one write).
  static Status WriteBlocks(File* file, std::vector<BlockImage> blocks);
  // Writes every changed block in place, from the model's own buffers (no
  // copy, unlike TakeDirty), the same way; they count as clean afterwards.
  Status WriteDirty(File* file);

  // Clusters whose refcount reached 0 at some point (check Get before use).
  const std::vector<uint64_t>& zeroed() const { return zeroed_; }

 private:
  struct Block;
  Result<Block*> Load(uint64_t bi);

  File* file_;
  uint32_t cluster_bits_;
  uint32_t order_;
  uint32_t block_bits_;  // log2(entries per block)
  uint64_t max_;
  std::vector<uint64_t> table_;
  std::vector<std::unique_ptr<Block>> blocks_;  // by refcount table index
  std::vector<uint64_t> zeroed_;
};

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_SNAPSHOT_OPS_H_
