// Runtime overlap protection, after QEMU's qcow2_check_metadata_overlap():
// a writable image keeps a map of its metadata (metadata/metadata_map.h),
// and every in-place metadata write and every cluster handed out for data
// or a new table is checked against it (the sites carry an
// "overlap-guard" comment). An overlap means the metadata contradicts
// itself, typically a refcount too low that let the allocator hand out a
// cluster in use; writing would destroy metadata. Instead the image is
// marked corrupt (incompatible bit 1), which makes QEMU and qcow2j refuse a
// read-write open until `check -r all` repairs it, and every later request
// fails with the overlap error. Read-only opens still work.
//
// Like QEMU's default ("cached") mode, inactive L2 tables (those only
// snapshots reference) are not in the map: reading every snapshot's L2
// tables at open would cost too much. Snapshot L1 tables are.
#include <algorithm>

#include "metadata/bitmap_directory.h"
#include "metadata/endian.h"
#include "qcow2/qcow2_image.h"

namespace qcow2j {

namespace {

uint64_t RoundUp(uint64_t v, uint64_t cs) { return (v + cs - 1) & ~(cs - 1); }

}  // namespace

Status Qcow2Image::BuildMetadataMap() {
  MetadataMap& m = *metadata_map_;
  const uint64_t cs = cluster_size_;
  // Registration errors are ignored: an image that already overlaps opens
  // as before (check finds it); only a write into the overlap is refused.
  (void)m.Add(0, cs, MetadataKind::kHeader);
  (void)m.Add(header_.l1_table_offset, RoundUp(uint64_t{header_.l1_size} * 8, cs),
              MetadataKind::kL1);
  for (uint64_t raw : l1_) {
    const uint64_t l2 = raw & kL1OffsetMask;
    if (l2 && !(l2 & (cs - 1))) (void)m.Add(l2, cs, MetadataKind::kL2);
  }
  if (!snapshots_.empty()) {
    const uint64_t bytes = SerializeSnapshotTable(snapshots_).size();
    (void)m.Add(header_.snapshots_offset, RoundUp(bytes, cs), MetadataKind::kSnapshotTable);
    for (const SnapshotEntry& e : snapshots_) {
      (void)m.Add(e.l1_table_offset, RoundUp(uint64_t{e.l1_size} * 8, cs),
                  MetadataKind::kSnapshotL1);
    }
  }
  if (header_.bitmaps && header_.bitmaps->bitmap_directory_size <= kMaxBitmapDirectoryBytes) {
    const BitmapsExtension& b = *header_.bitmaps;
    (void)m.Add(b.bitmap_directory_offset, RoundUp(b.bitmap_directory_size, cs),
                MetadataKind::kBitmapDirectory);
    std::vector<uint8_t> dir(b.bitmap_directory_size);
    if (file_->Read(b.bitmap_directory_offset, dir.data(), dir.size()).ok()) {
      auto entries = ParseBitmapDirectory(dir, b.nb_bitmaps, cluster_bits_, file_size_);
      if (entries.ok()) {
        for (const BitmapDirectoryEntry& e : *entries) {
          (void)m.Add(e.bitmap_table_offset, RoundUp(uint64_t{e.bitmap_table_size} * 8, cs),
                      MetadataKind::kBitmapTable);
        }
      }
    }
  }
  if (header_.journal && header_.journal->size() >= 16) {
    const auto* p = reinterpret_cast<const uint8_t*>(header_.journal->data());
    // Live only while the journal bit is set (an idle journal has no area).
    if (LoadBE64(p) && LoadBE64(p + 8) && (header_.incompatible_features & kIncompatJournal))
      (void)m.Add(LoadBE64(p), RoundUp(LoadBE64(p + 8), cs), MetadataKind::kJournal);
  }
  m.set_on_overlap([this](const Status& why) { MarkCorrupt(why); });
  return Status::OK();
}

void Qcow2Image::MarkCorrupt(const Status& why) {
  // Called under meta_mu_ from the write that found the overlap. The header
  // word is written directly (not through the guarded WriteHeaderField),
  // and best effort: the error reaches the caller either way.
  if (header_.version >= 3 && !(header_.incompatible_features & kIncompatCorrupt)) {
    header_.incompatible_features |= kIncompatCorrupt;
    uint8_t b[8];
    StoreBE64(b, header_.incompatible_features);
    if (file_->Write(72, b, sizeof(b)).ok()) (void)file_->Sync();
  }
  if (failed_.ok()) {
    failed_ = why.Annotate("image '" + path_ + "' is marked corrupt and fails every further write");
  }
}

}  // namespace qcow2j
