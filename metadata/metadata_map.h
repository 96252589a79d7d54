// Where an open image's metadata lives, for runtime overlap protection
// (what QEMU's qcow2_check_metadata_overlap does). Before the engine writes
// a metadata table in place, or hands out a cluster for data or a new
// table, it asks this map whether the range belongs to some other
// structure. If it does, the image's metadata contradicts itself (usually a
// refcount that is too low let the allocator hand out a cluster in use) and
// the write would destroy metadata: the engine refuses it and marks the
// image corrupt instead.
//
// The map holds non-overlapping extents keyed by host offset in an ordered
// tree: insertion, removal and a query are O(log n). NOT thread-safe: the
// engine calls it under its metadata lock.
#ifndef QCOW2J_METADATA_METADATA_MAP_H_
#define QCOW2J_METADATA_METADATA_MAP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>

#include "qcow2j/status.h"

namespace qcow2j {

enum class MetadataKind : uint8_t {
  kHeader,
  kL1,  // the active L1 table
  kL2,  // an L2 table of the active L1 table
  kRefcountTable,
  kRefcountBlock,
  kSnapshotTable,
  kSnapshotL1,
  kBitmapDirectory,
  kBitmapTable,
  kJournal,
  kData,  // never stored: the kind of a guest-data write, which may overlap nothing
};
const char* MetadataKindName(MetadataKind kind);

class MetadataMap {
 public:
  // Called with the error of every overlap a check finds (the engine marks
  // the image corrupt and fails it).
  using OnOverlap = std::function<void(const Status& error)>;

  MetadataMap() = default;
  MetadataMap(const MetadataMap&) = delete;
  MetadataMap& operator=(const MetadataMap&) = delete;

  void set_on_overlap(OnOverlap fn) { on_overlap_ = std::move(fn); }

  // Registers [offset, offset+length) as holding a new structure of `kind`.
  // Overlapping any registered structure, even one of the same kind (a new
  // L2 table placed on a live one), is the Corruption of CheckMetadataWrite,
  // and the extent is not registered.
  Status Add(uint64_t offset, uint64_t length, MetadataKind kind);
  // Forgets the structure of `kind` that starts at `offset`, if any.
  void Remove(uint64_t offset, MetadataKind kind);
  // OK when [host_offset, host_offset+length) overlaps only structures of
  // kind `what` (for kData: none at all). Otherwise calls the overlap
  // callback and returns a Corruption naming both structures:
  // "metadata overlap: writing the data cluster at 0x50000 (65536 bytes)
  // would overwrite the L2 table at 0x40000 (65536 bytes)".
  Status CheckMetadataWrite(uint64_t host_offset, uint64_t length, MetadataKind what);

  size_t size() const { return extents_.size(); }
  // The kind of the structure covering `offset`, or kData when none does.
  MetadataKind KindAt(uint64_t offset) const;

 private:
  struct Extent {
    uint64_t end;
    MetadataKind kind;
  };
  using Map = std::map<uint64_t, Extent>;  // start -> extent
  // The first extent that overlaps [offset, end), or extents_.end().
  Map::const_iterator FirstOverlap(uint64_t offset, uint64_t end) const;
  Status Overlap(uint64_t offset, uint64_t length, MetadataKind what, Map::const_iterator it);

  Map extents_;
  OnOverlap on_overlap_;
};

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_METADATA_MAP_H_
