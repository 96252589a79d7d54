#include "metadata/metadata_map.h"

#include <iterator>
#include <string>

#include "metadata/hex.h"

namespace qcow2j {

const char* MetadataKindName(MetadataKind kind) {
  switch (kind) {
    case MetadataKind::kHeader: return "image header";
    case MetadataKind::kL1: return "active L1 table";
    case MetadataKind::kL2: return "L2 table";
    case MetadataKind::kRefcountTable: return "refcount table";
    case MetadataKind::kRefcountBlock: return "refcount block";
    case MetadataKind::kSnapshotTable: return "snapshot table";
    case MetadataKind::kSnapshotL1: return "snapshot L1 table";
    case MetadataKind::kBitmapDirectory: return "bitmap directory";
    case MetadataKind::kBitmapTable: return "bitmap table";
    case MetadataKind::kJournal: return "journal area";
    case MetadataKind::kData: return "data cluster";
  }
  return "?";
}

MetadataMap::Map::const_iterator MetadataMap::FirstOverlap(uint64_t offset, uint64_t end) const {
  // Extents never overlap each other, so only the last one starting at or
  // before `offset` and the first one starting after it can reach the range.
  auto it = extents_.upper_bound(offset);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > offset) return prev;
  }
  if (it != extents_.end() && it->first < end) return it;
  return extents_.end();
}

Status MetadataMap::Overlap(uint64_t offset, uint64_t length, MetadataKind what,
                            Map::const_iterator it) {
  Status s = Status::Corruption(
      std::string("metadata overlap: writing the ") + MetadataKindName(what) + " at " +
      Hex(offset) + " (" + std::to_string(length) + " bytes) would overwrite the " +
      MetadataKindName(it->second.kind) + " at " + Hex(it->first) + " (" +
      std::to_string(it->second.end - it->first) + " bytes)");
  if (on_overlap_) on_overlap_(s);
  return s;
}

Status MetadataMap::Add(uint64_t offset, uint64_t length, MetadataKind kind) {
  if (length == 0 || kind == MetadataKind::kData) return Status::OK();
  const uint64_t end = offset + length < offset ? UINT64_MAX : offset + length;
  auto it = FirstOverlap(offset, end);
  if (it == extents_.end()) {
    extents_.emplace(offset, Extent{end, kind});
    return Status::OK();
  }
  return Overlap(offset, length, kind, it);
}

void MetadataMap::Remove(uint64_t offset, MetadataKind kind) {
  auto it = extents_.find(offset);
  if (it != extents_.end() && it->second.kind == kind) extents_.erase(it);
}

Status MetadataMap::CheckMetadataWrite(uint64_t host_offset, uint64_t length, MetadataKind what) {
  if (length == 0) return Status::OK();
  const uint64_t end = host_offset + length < host_offset ? UINT64_MAX : host_offset + length;
  for (auto it = FirstOverlap(host_offset, end); it != extents_.end() && it->first < end; ++it) {
    if (what == MetadataKind::kData || it->second.kind != what) {
      return Overlap(host_offset, length, what, it);
    }
  }
  return Status::OK();
}

MetadataKind MetadataMap::KindAt(uint64_t offset) const {
  auto it = FirstOverlap(offset, offset + 1);
  return it == extents_.end() ? MetadataKind::kData : it->second.kind;
}

}  // namespace qcow2j
