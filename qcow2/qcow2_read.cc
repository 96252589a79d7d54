// The read path: guest offset -> L1 -> L2 slice (cached) -> extent kind ->
// data from the image, the data file, the backing chain, zeros or a
// decompressed cluster. Metadata decisions happen under meta_mu_; data
// transfers happen after it is released.
#include <algorithm>
#include "metadata/hex.h"
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "metadata/endian.h"
#include "metadata/refcount_block.h"
#include "qcow2/compression.h"
#include "qcow2/qcow2_image.h"

namespace qcow2j {
namespace {

}  // namespace

Status Qcow2Image::LookupL2Locked(uint64_t cluster, uint64_t* raw, uint64_t* bitmap) {
  *raw = 0;
  *bitmap = 0;
  QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, ReadL2SliceLocked(cluster));
  if (!t) return Status::OK();
  const uint64_t index = cluster & ((1ull << l2_bits_) - 1);
  const uint8_t* p = t->data() + (index & ((1ull << slice_entries_bits_) - 1)) * l2_entry_bytes_;
  *raw = LoadBE64(p);
  if (l2_entry_bytes_ == 16) *bitmap = LoadBE64(p + 8);
  l2_cache_->Release(t);
  return Status::OK();
}

Result<TableCache::Table*> Qcow2Image::ReadL2SliceLocked(uint64_t cluster) {
  uint64_t l1_index = cluster >> l2_bits_;
  if (l1_index >= l1_.size()) return nullptr;
  L1Entry l1 = L1Entry::Decode(l1_[l1_index]);
  if (l1.l2_offset == 0) return nullptr;
  if (l1.reserved_bits)
    return Status::Corruption("L1 entry " + std::to_string(l1_index) + " (" + Hex(l1_[l1_index]) +
                              ") has reserved bits set");
  if (l1.l2_offset & (cluster_size_ - 1))
    return Status::Corruption("L1 entry " + std::to_string(l1_index) + ": L2 table offset " +
                              Hex(l1.l2_offset) + " is not aligned to the cluster size");
  const uint64_t limit = HostLimit();
  if (l1.l2_offset >= limit || cluster_size_ > limit - l1.l2_offset)
    return Status::Corruption("L1 entry " + std::to_string(l1_index) + ": L2 table offset " +
                              Hex(l1.l2_offset) + " is past the end of the image file (" +
                              std::to_string(limit) + " bytes)");
  if (l1.l2_offset < cluster_size_)
    return Status::Corruption("L1 entry " + std::to_string(l1_index) +
                              ": L2 table overlaps the image header");
  const uint64_t index = cluster & ((1ull << l2_bits_) - 1);
  const uint64_t slice_offset = l1.l2_offset + (index >> slice_entries_bits_) * slice_bytes_;
  return l2_cache_->GetOrRead(slice_offset, file_.get());
}

Result<bool> Qcow2Image::PrefetchL2Locked(std::unique_lock<std::mutex>& lk, uint64_t cluster) {
  uint64_t l1_index = cluster >> l2_bits_;
  if (l1_index >= l1_.size()) return false;
  L1Entry l1 = L1Entry::Decode(l1_[l1_index]);
  const uint64_t limit = HostLimit();
  // Invalid entries are reported by LookupL2Locked.
  if (l1.l2_offset == 0 || l1.reserved_bits || (l1.l2_offset & (cluster_size_ - 1)) ||
      l1.l2_offset < cluster_size_ || l1.l2_offset >= limit || cluster_size_ > limit - l1.l2_offset)
    return false;
  uint64_t index = cluster & ((1ull << l2_bits_) - 1);
  uint64_t slice_offset = l1.l2_offset + (index >> slice_entries_bits_) * slice_bytes_;
  if (TableCache::Table* t = l2_cache_->Get(slice_offset)) {
    l2_cache_->Release(t);
    return false;
  }
  if (l2_loading_.count(slice_offset)) {  // someone else is reading it: wait for them
    inflight_cv_.wait(lk);
    return true;
  }
  l2_loading_.insert(slice_offset);
  const uint64_t epoch = l2_epoch_, writebacks = l2_writebacks_;
  const uint64_t chunk = std::min<uint64_t>(cluster_size_, kMaxL2ReadBytes);
  const bool whole = l2_whole_reads_ && l2_cache_->compact() && slice_bytes_ < chunk;
  const uint64_t read_offset = whole ? slice_offset & ~(chunk - 1) : slice_offset;
  const uint64_t read_bytes = whole ? chunk : slice_bytes_;
  L2ReadBuffer buf;
  if (!l2_read_bufs_.empty()) {
    buf = std::move(l2_read_bufs_.back());
    l2_read_bufs_.pop_back();
  } else {
    void* p = nullptr;
    if (::posix_memalign(&p, 4096, std::max<size_t>(chunk, slice_bytes_)) != 0) {
      l2_loading_.erase(slice_offset);
      inflight_cv_.notify_all();
      return Status::FromErrno(ENOMEM, "allocate an L2 read buffer");
    }
    buf.reset(static_cast<uint8_t*>(p));
  }
  lk.unlock();
  Status s = file_->Read(read_offset, buf.get(), read_bytes);
  lk.lock();
  l2_loading_.erase(slice_offset);
  // Cache what was read unless the slice got cached meanwhile (possibly
  // modified) or a table was freed (the offset may now hold something else).
  if (s.ok() && epoch == l2_epoch_) {
    const uint8_t* mine = buf.get() + (slice_offset - read_offset);
    if (whole) {
      // The other slices as descriptions, unless one was written in place
      // meanwhile (what was read may be older than the file; a slice cached
      // now is newer and Offer leaves it alone).
      size_t slices = 0, described = 0;
      for (uint64_t off = 0; off < read_bytes; off += slice_bytes_) {
        if (read_offset + off == slice_offset) continue;
        slices++;
        if (writebacks == l2_writebacks_ && !l2_loading_.count(read_offset + off))
          described += l2_cache_->Offer(read_offset + off, buf.get() + off);
        else
          described += l2_cache_->Compactable(buf.get() + off);
      }
      l2_whole_reads_ = described * 2 >= slices;
    } else if (l2_cache_->compact() && !l2_whole_reads_) {
      l2_whole_reads_ = l2_cache_->Compactable(mine);
    }
    TableCache::Table* t = l2_cache_->Get(slice_offset);
    if (!t) {
      auto put = l2_cache_->Put(slice_offset);
      if (put.ok()) {
        t = *put;
        std::memcpy(t->data(), mine, slice_bytes_);
      }
    }
    if (t) l2_cache_->Release(t);
  }
  l2_read_bufs_.push_back(std::move(buf));
  inflight_cv_.notify_all();
  QCOW2J_RETURN_IF_ERROR(s);
  return true;
}

Status Qcow2Image::CheckHostRange(const char* what, uint64_t guest_offset, uint64_t host,
                                  uint64_t len, bool in_data_file) {
  if (in_data_file && data_file_ != file_.get()) return Status::OK();  // data files may be short
  uint64_t limit = HostLimit();
  if (host >= limit || len > limit - host)
    return Status::Corruption(std::string(what) + " for guest offset " + Hex(guest_offset) +
                              " points at host offset " + Hex(host) +
                              ", past the end of the image file (" + std::to_string(limit) +
                              " bytes)");
  if (host < cluster_size_)
    return Status::Corruption(std::string(what) + " for guest offset " + Hex(guest_offset) +
                              " points into the image header (host offset " + Hex(host) + ")");
  return Status::OK();
}

Result<GuestExtent> Qcow2Image::MapExtent(uint64_t offset, uint64_t max_length) {
  GuestExtent ext;
  max_length = std::min(max_length, virtual_size_ > offset ? virtual_size_ - offset : 0);
  if (max_length == 0) return ext;
  const bool extended = header_.extended_l2();
  const uint64_t sc_size = extended ? cluster_size_ / kSubclustersPerCluster : cluster_size_;
  std::unique_lock<std::mutex> lock(meta_mu_);
  uint64_t pos = offset;
  bool first = true;
  while (pos < offset + max_length) {
    uint64_t cluster = pos >> cluster_bits_;
    // A cluster whose allocating write is still in flight is waited for; one
    // with pending COW gets its old contents copied in before it is read.
    if (inflight_.count(cluster)) {
      if (!first) return ext;
      inflight_cv_.wait(lock);
      continue;
    }
    if (cow_.count(cluster)) QCOW2J_RETURN_IF_ERROR(ResolveCowLocked(cluster));
    // No L2 table (an L1 entry of 0): the rest of its range is one
    // unallocated extent, taken whole instead of cluster by cluster (a map
    // of a sparse 1 TiB image would otherwise walk 16 million clusters).
    const uint64_t l1_index = cluster >> l2_bits_;
    if (l1_index < l1_.size() && l1_[l1_index] == 0) {
      const uint64_t l2_range_end = (l1_index + 1) << (l2_bits_ + cluster_bits_);
      const uint64_t run_end = std::min(l2_range_end, offset + max_length);
      if (NothingPendingLocked(cluster, ((run_end - 1) >> cluster_bits_) + 1)) {
        if (first) {
          ext.kind = GuestExtent::Kind::kUnallocated;
          ext.host_offset = 0;
          first = false;
        } else if (ext.kind != GuestExtent::Kind::kUnallocated || ext.host_offset != 0) {
          return ext;
        }
        ext.length += run_end - pos;
        pos = run_end;
        continue;
      }
    }
    QCOW2J_ASSIGN_OR_RETURN(bool dropped, PrefetchL2Locked(lock, cluster));
    if (dropped) {
      if (!first) return ext;
      continue;  // the lock was dropped: look at this cluster again
    }
    uint64_t raw, bitmap;
    QCOW2J_RETURN_IF_ERROR(LookupL2Locked(cluster, &raw, &bitmap));
    L2Entry e = DecodeL2(raw, bitmap);
    uint64_t in_cluster = pos & (cluster_size_ - 1);
    // Within one cluster, walk subclusters (a standard entry is one "subcluster").
    uint64_t cluster_end = (cluster + 1) << cluster_bits_;
    if (!extended || e.compressed()) {
      if (e.reserved_bits())
        return Status::Corruption("L2 entry for guest offset " + Hex(pos) + " (" + Hex(raw) +
                                  ") has reserved bits set");
    }
    if (extended && e.invalid_bitmap_bits())
      return Status::Corruption("extended L2 entry for guest offset " + Hex(pos) +
                                " has an invalid subcluster bitmap " + Hex(bitmap));
    while (pos < cluster_end && pos < offset + max_length) {
      GuestExtent::Kind kind;
      uint64_t host = 0;
      unsigned sc = extended ? static_cast<unsigned>(in_cluster / sc_size) : 0;
      uint64_t piece_end = extended && !e.compressed() ? (pos & ~(sc_size - 1)) + sc_size : cluster_end;
      switch (e.type()) {
        case ClusterType::kCompressed: kind = GuestExtent::Kind::kCompressed; break;
        case ClusterType::kZeroPlain: kind = GuestExtent::Kind::kZero; break;
        case ClusterType::kZeroAllocated:
          kind = GuestExtent::Kind::kZero;
          host = e.host_offset() + in_cluster;
          break;
        case ClusterType::kUnallocated:
        case ClusterType::kNormal:
        default: {
          SubclusterType st = e.subcluster_type(sc);
          if (st == SubclusterType::kNormal) {
            kind = GuestExtent::Kind::kData;
            host = e.host_offset() + in_cluster;
            if (e.host_offset() & (cluster_size_ - 1))
              return Status::Corruption("L2 entry for guest offset " + Hex(pos) +
                                        ": data offset " + Hex(e.host_offset()) +
                                        " is not aligned to the cluster size");
            // Only the start must lie inside the file: QEMU leaves the last
            // cluster short when it writes only some subclusters; the rest
            // reads as zeros.
            QCOW2J_RETURN_IF_ERROR(CheckHostRange("L2 entry", pos, e.host_offset(), 1, true));
          } else if (st == SubclusterType::kZero) {
            kind = GuestExtent::Kind::kZero;
            if (e.host_offset()) host = e.host_offset() + in_cluster;
          } else if (st == SubclusterType::kUnallocated) {
            kind = GuestExtent::Kind::kUnallocated;
            // QEMU reports where an unallocated subcluster of an allocated
            // cluster would live.
            if (e.host_offset()) host = e.host_offset() + in_cluster;
          } else {
            return Status::Corruption("extended L2 entry for guest offset " + Hex(pos) +
                                      " has an invalid subcluster " + std::to_string(sc));
          }
        }
      }
      if (kind == GuestExtent::Kind::kCompressed) {
        if (!first) return ext;  // a compressed cluster is always an extent of its own
        ext.kind = kind;
        ext.l2_raw = raw;
        ext.length = std::min(cluster_end, offset + max_length) - pos;
        return ext;
      }
      uint64_t n = std::min(piece_end, offset + max_length) - pos;
      if (first) {
        ext.kind = kind;
        ext.host_offset = host;
        first = false;
      } else if (kind != ext.kind || (host != 0) != (ext.host_offset != 0) ||
                 (host && host != ext.host_offset + ext.length)) {
        return ext;  // a different kind, or not host-contiguous
      }
      ext.length += n;
      pos += n;
      in_cluster = pos & (cluster_size_ - 1);
    }
  }
  return ext;
}

Status Qcow2Image::ReadCompressed(uint64_t guest_offset, uint64_t l2_raw, uint64_t in_cluster,
                                  uint8_t* dst, size_t len) {
  if (data_file_ != file_.get())
    return Status::Corruption("compressed L2 entry for guest offset " + Hex(guest_offset) +
                              " in an image with an external data file");
  CompressedDescriptor d = CompressedDescriptor::Decode(l2_raw, cluster_bits_);
  uint64_t csize = d.compressed_size();
  if (d.host_offset < cluster_size_ || d.host_offset >= HostLimit())
    return Status::Corruption("compressed cluster descriptor for guest offset " + Hex(guest_offset) +
                              " points at host offset " + Hex(d.host_offset) +
                              " outside the image file (" + std::to_string(HostLimit()) + " bytes)");
  // The descriptor may name sectors past EOF for the last cluster; those read as zeros.
  csize = std::min<uint64_t>(csize, 2 * cluster_size_ + 512);
  std::vector<uint8_t> cbuf(csize);
  QCOW2J_RETURN_IF_ERROR(ReadHostCompressed(d.host_offset, cbuf.data(), cbuf.size()));
  std::vector<uint8_t> cluster(cluster_size_);
  auto type = static_cast<CompressionType>(header_.compression_type);
  Status s = DecompressCluster(type, cbuf, cluster);
  if (!s.ok())
    return s.Annotate("compressed cluster for guest offset " + Hex(guest_offset) + " at host offset " +
                      Hex(d.host_offset));
  std::memcpy(dst, cluster.data() + in_cluster, len);
  return Status::OK();
}

Status Qcow2Image::ReadBacking(uint64_t offset, uint8_t* dst, size_t len) {
  uint64_t bsize = backing_ ? backing_->size() : 0;
  size_t from_backing = offset < bsize ? static_cast<size_t>(std::min<uint64_t>(len, bsize - offset)) : 0;
  if (from_backing) QCOW2J_RETURN_IF_ERROR(backing_->Read(offset, dst, from_backing));
  if (from_backing < len) std::memset(dst + from_backing, 0, len - from_backing);
  return Status::OK();
}

Status Qcow2Image::Read(uint64_t offset, void* buf, size_t len) {
  if (closed_) return Status::Aborted("image '" + path_ + "' is closed");
  if (offset > virtual_size_ || len > virtual_size_ - offset)
    return Status::InvalidArgument("read of " + std::to_string(len) + " bytes at offset " +
                                   std::to_string(offset) + " is past the end of the image (" +
                                   std::to_string(virtual_size_) + " bytes)");
  auto* dst = static_cast<uint8_t*>(buf);
  while (len > 0) {
    QCOW2J_ASSIGN_OR_RETURN(GuestExtent ext, MapExtent(offset, len));
    size_t n = static_cast<size_t>(ext.length);
    switch (ext.kind) {
      case GuestExtent::Kind::kUnallocated:
        QCOW2J_RETURN_IF_ERROR(ReadBacking(offset, dst, n));
        break;
      case GuestExtent::Kind::kZero:
        std::memset(dst, 0, n);
        break;
      case GuestExtent::Kind::kData:
        QCOW2J_RETURN_IF_ERROR(data_file_->Read(ext.host_offset, dst, n));
        break;
      case GuestExtent::Kind::kCompressed:
        QCOW2J_RETURN_IF_ERROR(
            ReadCompressed(offset, ext.l2_raw, offset & (cluster_size_ - 1), dst, n));
        break;
    }
    dst += n;
    offset += n;
    len -= n;
  }
  return Status::OK();
}

Result<bool> Qcow2Image::MetadataPreallocated() {
  std::lock_guard<std::mutex> lock(prealloc_mu_);
  if (prealloc_known_) return prealloc_;
  // QEMU's heuristic: the last cluster with a nonzero refcount lies well
  // beyond the clusters the file really occupies on disk.
  QCOW2J_ASSIGN_OR_RETURN(uint64_t allocated, file_->AllocatedBytes());
  uint64_t real = allocated >> cluster_bits_;
  uint64_t threshold = std::max(real * 10 / 9, real + 2);
  uint64_t entries = (uint64_t{header_.refcount_table_clusters} << cluster_bits_) / 8;
  std::vector<uint8_t> table(entries * 8);
  QCOW2J_RETURN_IF_ERROR(file_->Read(header_.refcount_table_offset, table.data(), table.size()));
  uint64_t last = 0;
  const uint64_t block_entries = (cluster_size_ * 8) >> header_.refcount_order;
  std::vector<uint8_t> block(cluster_size_);
  for (uint64_t i = entries; i-- > 0 && last == 0;) {
    uint64_t off = LoadBE64(table.data() + i * 8) & kRefcountTableOffsetMask;
    if (!off || off & (cluster_size_ - 1) || off >= file_size_) continue;
    QCOW2J_RETURN_IF_ERROR(file_->Read(off, block.data(), block.size()));
    for (uint64_t j = block_entries; j-- > 0;) {
      if (GetRefcount(block, header_.refcount_order, j)) {
        last = i * block_entries + j;
        break;
      }
    }
  }
  prealloc_ = last >= threshold;
  prealloc_known_ = true;
  return prealloc_;
}

Result<BlockStatus> Qcow2Image::GetBlockStatus(uint64_t offset, uint64_t max_length) {
  BlockStatus bs;
  bs.offset = offset;
  QCOW2J_ASSIGN_OR_RETURN(GuestExtent ext, MapExtent(offset, max_length));
  bs.length = ext.length;
  bs.filename = path_;
  switch (ext.kind) {
    case GuestExtent::Kind::kData: {
      bs.present = bs.data = true;
      bs.host_offset = ext.host_offset;
      if (data_file_ != file_.get()) bs.filename = ResolveBackingPath(dir_, *header_.data_file);
      // On a metadata-preallocated image a data cluster may be a hole in the
      // host file; QEMU then reports it as data + zero, and so do we.
      QCOW2J_ASSIGN_OR_RETURN(bool prealloc, MetadataPreallocated());
      if (prealloc) {
        QCOW2J_ASSIGN_OR_RETURN(File::Run run, data_file_->ProbeRun(ext.host_offset, ext.length));
        bs.length = run.length;
        bs.zero = !run.data;
      }
      break;
    }
    case GuestExtent::Kind::kCompressed:
      bs.present = bs.data = bs.compressed = true;
      break;
    case GuestExtent::Kind::kZero:
      bs.present = bs.zero = true;
      if (ext.host_offset) bs.host_offset = ext.host_offset;
      break;
    case GuestExtent::Kind::kUnallocated: {
      if (ext.host_offset && !backing_) bs.host_offset = ext.host_offset;
      uint64_t bsize = backing_ ? backing_->size() : 0;
      if (offset < bsize) {
        QCOW2J_ASSIGN_OR_RETURN(BlockStatus b,
                                backing_->GetBlockStatus(offset, std::min(ext.length, bsize - offset)));
        b.depth += 1;
        return b;
      }
      bs.zero = true;  // past the backing file (or none): zeros, reported at depth 0 like QEMU
      break;
    }
  }
  return bs;
}

}  // namespace qcow2j
