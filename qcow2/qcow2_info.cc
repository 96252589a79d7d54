// What `info` reports about a qcow2 image.
#include "qcow2/qcow2_image.h"

namespace qcow2j {

ImageInfo Qcow2Image::Info() {
  ImageInfo info;
  info.format = "qcow2";
  info.filename = path_;
  info.virtual_size = virtual_size_;
  if (file_) {
    auto a = file_->AllocatedBytes();
    info.actual_size = a.ok() ? *a : 0;
  }
  info.cluster_size = static_cast<uint32_t>(cluster_size_);
  info.version = static_cast<int>(header_.version);
  info.refcount_bits = header_.refcount_bits();
  info.compression_type = header_.compression_type == kCompressionZstd ? "zstd" : "zlib";
  info.lazy_refcounts = header_.compatible_features & kCompatLazyRefcounts;
  info.corrupt = header_.incompatible_features & kIncompatCorrupt;
  info.dirty = header_.incompatible_features & kIncompatDirty;
  info.extended_l2 = header_.extended_l2();
  info.journal = header_.journal.has_value();
  info.journal_dirty_refcounts = jdirty_refcounts_;
  info.journal_pending = jpending_ || (header_.incompatible_features & kIncompatJournal);
  info.journal_commits = jcommits_;
  info.journal_checkpoints = jcheckpoints_;
  info.journal_background_checkpoints = jbackground_checkpoints_;
  info.backing_file = header_.backing_file;
  if (!header_.backing_file.empty())
    info.full_backing_file = ResolveBackingPath(dir_, header_.backing_file);
  info.backing_format = header_.backing_format.value_or("");
  info.data_file = header_.data_file.value_or("");
  info.data_file_raw = header_.autoclear_features & kAutoclearDataFileRaw;
  for (const SnapshotEntry& e : snapshots_) {
    SnapshotInfo si;
    si.id = e.id;
    si.name = e.name;
    si.vm_state_size = e.vm_state_size;
    si.disk_size = e.disk_size ? e.disk_size : header_.size;
    si.date_sec = e.date_sec;
    si.date_nsec = e.date_nsec;
    si.vm_clock_nsec = e.vm_clock_nsec;
    si.icount = e.icount.value_or(UINT64_MAX);
    info.snapshots.push_back(std::move(si));
  }
  info.incompatible_features = header_.incompatible_features;
  info.compatible_features = header_.compatible_features;
  info.autoclear_features = header_.autoclear_features;
  info.recovery_report = recovery_report_;
  return info;
}

}  // namespace qcow2j
