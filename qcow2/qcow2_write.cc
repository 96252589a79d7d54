// The write path: in-place writes, allocating writes with delayed COW,
// write-zeroes, discard, and the ordered flush used without a journal.
//
// Concurrency: every metadata decision (lookup, allocation, L2 update) is
// made under meta_mu_, so one guest cluster can never get two host
// clusters: the first writer allocates and publishes the new L2 entry before
// it drops the lock; later writers find the cluster allocated and write in
// place. Data transfers run without the lock. Readers of a cluster whose
// data is still in flight (`inflight_`) wait; readers of a cluster with
// pending COW resolve it first.
//
// Ordering on disk without a journal (why each step is safe):
//   1. data, COW fills and refcount increments are written, then synced: a
//      crash now leaks at worst (refcount without a reference).
//   2. L2 slices and L1 entries are written, then synced: each new entry
//      points at data and a refcount that are already durable.
//   3. refcount decrements (dropped references) are applied only now: the
//      entries that referenced those clusters are gone on disk, so a
//      refcount can never be lower than its references. Freed clusters are
//      reused only from here on, for the same reason.
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include "metadata/hex.h"
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "metadata/endian.h"
#include "metadata/refcount_block.h"
#include "qcow2/compression.h"
#include "qcow2/qcow2_image.h"
#include "qcow2/request_pool.h"

namespace qcow2j {
namespace {

constexpr size_t kCowFillThreads = 16;
constexpr int kGroupCommitWaitUs = 2000;  // longest a flush leader waits for its group
constexpr uint64_t kAllAllocated = 0xffffffffull;
constexpr uint64_t kAllZero = 0xffffffffull << 32;
constexpr uint64_t kReserveAheadBytes = 8 << 20;  // reserved by one fallocate (or one cluster)

}  // namespace

Status Qcow2Image::ReserveAheadLocked(uint64_t host) {
  // The cluster at `host` was just appended. It is reserved (fallocated),
  // and so are the clusters after it up to kReserveAheadBytes, in one call:
  // whatever is allocated next at the end of the file lands inside the
  // file's size.
  //   - An O_DIRECT write past the end of the file holds ext4's inode lock
  //     exclusively until it completes, so appending writes at depth N
  //     would reach the disk one at a time (convert -t none: a quarter of
  //     its context switches were writers queued on that lock). Into
  //     reserved (unwritten) blocks, aligned writes share the lock.
  //   - Each fallocate waits for every write in flight (it takes the same
  //     lock exclusively), so one per cluster drained the queue once per
  //     allocation (W4x: 16384 fallocates, a tenth of the samples waiting
  //     in rwsem_down_write), and one per MiB still once per 1 MiB write
  //     of a convert: one call covers 8 MiB.
  // The clusters past this one are not allocated by the refcount manager:
  // the file is only longer, with blocks that read as zeros, which a fresh
  // cluster must hold anyway. reserved_end_ is a hint: if it is stale, a
  // cluster is written without reservation. A failure is the caller's
  // (the request that meets a fault reports it): with less than
  // kReserveAheadBytes left, allocating writes get ENOSPC that much
  // earlier. Close trims what was reserved past the last cluster.
  if (host + cluster_size_ <= reserved_end_) return Status::OK();
  if (!size_before_reserving_) {  // the first reservation: what was there before stays at close
    Result<uint64_t> size = data_file_->Size();
    if (!size.ok()) return size.status();
    size_before_reserving_ = *size;
  }
  const uint64_t ahead = std::max<uint64_t>(cluster_size_, kReserveAheadBytes);
  Status s = data_file_->Allocate(host, ahead, false);
  if (s.ok()) reserved_end_ = host + ahead;
  return s.ok() || s.code() == Code::kNotSupported ? Status::OK() : s;
}

Status Qcow2Image::InitWriter() {
  if (header_.crypt_method) return Status::NotSupported("encrypted images are not supported");
  metadata_map_ = std::make_unique<MetadataMap>();  // overlap-guard
  RefcountManager::Config c;
  c.file = file_.get();
  c.cluster_bits = cluster_bits_;
  c.refcount_order = header_.refcount_order;
  c.refcount_table_offset = header_.refcount_table_offset;
  c.refcount_table_clusters = header_.refcount_table_clusters;
  c.file_size = file_size_;
  c.cache_blocks = opts_.refcount_cache_size >> cluster_bits_;
  c.metadata_map = metadata_map_.get();  // overlap-guard
  c.update_header = [this](uint64_t off, uint32_t clusters) -> Status {
    uint8_t buf[12];
    StoreBE64(buf, off);
    StoreBE32(buf + 8, clusters);
    header_.refcount_table_offset = off;
    header_.refcount_table_clusters = clusters;
    return WriteHeaderField(48, buf, 12);
  };
  refcounts_ = std::make_unique<RefcountManager>(c);
  QCOW2J_RETURN_IF_ERROR(refcounts_->Load());
  if (jext_) refcounts_->EnableJournal();
  // (The metadata map is built by Load, after any journal replay.)  // overlap-guard
  // We do not keep persistent bitmaps up to date: clearing their autoclear
  // bit tells QEMU they are stale, as the spec intends for unaware writers.
  uint64_t keep = header_.autoclear_features & (kAutoclearDataFileRaw | kAutoclearJournalValid);
  if (header_.version >= 3 && keep != header_.autoclear_features) {
    header_.autoclear_features = keep;
    uint8_t buf[8];
    StoreBE64(buf, keep);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(88, buf, 8));
    QCOW2J_RETURN_IF_ERROR(file_->Sync());
  }
  return Status::OK();
}

Status Qcow2Image::WriteHeaderField(uint64_t offset, const void* data, size_t len) {
  QCOW2J_RETURN_IF_ERROR(GuardWrite(offset, len, MetadataKind::kHeader));  // overlap-guard
  return file_->Write(offset, data, len);
}

Status Qcow2Image::CheckWritable(const char* op, uint64_t offset, uint64_t len) {
  if (closed_) return Status::Aborted("image '" + path_ + "' is closed");
  if (read_only_) return Status::ReadOnly("image '" + path_ + "' is opened read-only");
  if (!failed_.ok()) return failed_;
  if (offset > virtual_size_ || len > virtual_size_ - offset)
    return Status::InvalidArgument(std::string(op) + " of " + std::to_string(len) +
                                   " bytes at offset " + std::to_string(offset) +
                                   " is past the end of the image (" +
                                   std::to_string(virtual_size_) + " bytes)");
  return Status::OK();
}

void Qcow2Image::WaitInflightLocked(std::unique_lock<std::mutex>& lk, uint64_t first,
                                    uint64_t last) {
  for (;;) {
    bool busy = false;
    if (last - first < inflight_.size()) {
      for (uint64_t c = first; c <= last && !busy; c++) busy = inflight_.count(c);
    } else {
      for (auto& [c, _] : inflight_) busy |= c >= first && c <= last;
    }
    if (!busy) return;
    inflight_cv_.wait(lk);
  }
}

Result<TableCache::Table*> Qcow2Image::WritableL2Locked(uint64_t cluster, uint8_t** entry) {
  uint64_t l1_index = cluster >> l2_bits_;
  if (l1_index >= l1_.size())
    return Status::InvalidArgument("guest cluster " + std::to_string(cluster) + " is beyond the L1 table");
  L1Entry l1 = L1Entry::Decode(l1_[l1_index]);
  if (l1.reserved_bits || (l1.l2_offset & (cluster_size_ - 1)))
    return Status::Corruption("L1 entry " + std::to_string(l1_index) + " (" + Hex(l1_[l1_index]) +
                              ") is invalid");
  if (l1.l2_offset == 0 || !l1.copied) {
    // A new table, or a private copy of one shared with a snapshot.
    bool fresh = false;
    QCOW2J_ASSIGN_OR_RETURN(uint64_t table, refcounts_->Allocate(1, &fresh));
    if (journal_on_ && OverlapsUnconfirmedLocked(table, cluster_size_))
      QCOW2J_RETURN_IF_ERROR(ConfirmLocked());
    QCOW2J_RETURN_IF_ERROR(metadata_map_->Add(table, cluster_size_, MetadataKind::kL2));  // overlap-guard
    if (l1.l2_offset) {
      std::vector<uint8_t> buf(cluster_size_);
      // Dirty cached slices of the old table are newer than its disk copy.
      QCOW2J_RETURN_IF_ERROR(file_->Read(l1.l2_offset, buf.data(), buf.size()));
      for (uint64_t s = 0; s < cluster_size_ / slice_bytes_; s++) {
        uint64_t off = l1.l2_offset + s * slice_bytes_;
        if (TableCache::Table* t = l2_cache_->Get(off)) {
          std::memcpy(buf.data() + s * slice_bytes_, t->data(), slice_bytes_);
          l2_cache_->Release(t);
        }
      }
      QCOW2J_RETURN_IF_ERROR(file_->Write(table, buf.data(), buf.size()));
      decrements_.push_back({l1.l2_offset, false});
      // The copy is data the transaction's L1 entry points at.
      if (JournalChecksums()) NoteChecksumLocked(table, buf.size(), XXH64(buf.data(), buf.size(), 0));
      metadata_map_->Remove(l1.l2_offset, MetadataKind::kL2);  // overlap-guard: now only snapshots use it
    } else {
      if (!fresh) QCOW2J_RETURN_IF_ERROR(file_->ZeroRange(table, cluster_size_));
      if (journal_on_) jnew_tables_.push_back(NewTable{JournalTableKind::kL2Table, table});
    }
    l1_[l1_index] = table | kOflagCopied;
    l1_dirty_.insert(l1_index);
    if (journal_on_) jl1_.insert(l1_index);
    l1 = L1Entry::Decode(l1_[l1_index]);
  }
  uint64_t index = cluster & ((1ull << l2_bits_) - 1);
  uint64_t slice_offset = l1.l2_offset + (index >> slice_entries_bits_) * slice_bytes_;
  QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, l2_cache_->GetOrRead(slice_offset, file_.get()));
  *entry = t->data() + (index & ((1ull << slice_entries_bits_) - 1)) * l2_entry_bytes_;
  return t;
}

void Qcow2Image::FreeOldLocked(uint64_t old_raw, bool punch) {
  if (data_file_ != file_.get()) return;  // data clusters live in the data file, not refcounted
  if (old_raw & kOflagCompressed) {
    CompressedDescriptor d = CompressedDescriptor::Decode(old_raw, cluster_bits_);
    uint64_t first = d.host_offset & ~(cluster_size_ - 1);
    uint64_t last = (d.host_offset + d.compressed_size() - 1) & ~(cluster_size_ - 1);
    for (uint64_t c = first; c <= last; c += cluster_size_) decrements_.push_back({c, false});
    return;
  }
  uint64_t host = old_raw & kL2OffsetMask;
  if (host) decrements_.push_back({host, punch});
}

bool Qcow2Image::SourceIsZero(uint64_t cluster, uint64_t old_raw, uint64_t old_bitmap, uint64_t a,
                              uint64_t b) {
  L2Entry e = DecodeL2(old_raw, old_bitmap);
  if (e.compressed()) return false;
  uint64_t guest = (cluster << cluster_bits_) + a;
  bool backing_zero = !backing_ || guest >= backing_->size();
  if (!header_.extended_l2()) {
    ClusterType t = e.type();
    if (t == ClusterType::kZeroPlain || t == ClusterType::kZeroAllocated) return true;
    return t == ClusterType::kUnallocated && backing_zero;
  }
  uint64_t sc_size = cluster_size_ / kSubclustersPerCluster;
  for (uint64_t sc = a / sc_size; sc <= (b - 1) / sc_size; sc++) {
    SubclusterType st = e.subcluster_type(static_cast<unsigned>(sc));
    if (st == SubclusterType::kNormal) return false;
    if (st == SubclusterType::kUnallocated && !backing_zero) return false;
  }
  return true;
}

void Qcow2Image::CoverLocked(uint64_t cluster, uint64_t in, uint64_t len) {
  auto it = cow_.find(cluster);
  if (it == cow_.end()) return;
  auto& u = it->second.uncovered;
  uint64_t a = in, b = in + len;
  // Split every uncovered range that overlaps [a, b).
  auto r = u.upper_bound(a);
  if (r != u.begin()) --r;
  while (r != u.end() && r->first < b) {
    uint64_t ra = r->first, rb = r->second;
    if (rb <= a) {
      ++r;
      continue;
    }
    r = u.erase(r);
    if (ra < a) u[ra] = a;
    if (rb > b) u[b] = rb;
  }
  if (u.empty()) cow_.erase(it);
}

Status Qcow2Image::ReadOldContent(uint64_t cluster, uint64_t old_raw, uint64_t old_bitmap,
                                  uint64_t in, uint8_t* dst, size_t len) {
  const bool ext = header_.extended_l2();
  L2Entry e = DecodeL2(old_raw, old_bitmap);
  uint64_t guest = (cluster << cluster_bits_) + in;
  if (e.compressed()) return ReadCompressed(guest, old_raw, in, dst, len);
  uint64_t sc_size = ext ? cluster_size_ / kSubclustersPerCluster : cluster_size_;
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, sc_size - (in % sc_size)));
    SubclusterType st = e.subcluster_type(static_cast<unsigned>(ext ? in / sc_size : 0));
    if (!ext && (e.type() == ClusterType::kZeroPlain || e.type() == ClusterType::kZeroAllocated))
      st = SubclusterType::kZero;
    if (st == SubclusterType::kNormal) {
      QCOW2J_RETURN_IF_ERROR(data_file_->Read(e.host_offset() + in, dst, n));
    } else if (st == SubclusterType::kZero) {
      std::memset(dst, 0, n);
    } else {
      QCOW2J_RETURN_IF_ERROR(ReadBacking(guest, dst, n));
    }
    dst += n;
    in += n;
    guest += n;
    len -= n;
  }
  return Status::OK();
}

Status Qcow2Image::ResolveCowLocked(uint64_t cluster) {
  auto it = cow_.find(cluster);
  if (it == cow_.end()) return Status::OK();
  PendingCow pc = std::move(it->second);
  cow_.erase(it);
  std::vector<SumRange> sums;
  Status s = FillCow(cluster, pc, &sums);
  if (!s.ok()) {
    NoteDataLossLocked();
    return s;
  }
  if (JournalChecksums())
    for (const SumRange& r : sums) NoteChecksumLocked(r.host, r.len, r.hash);
  return Status::OK();
}

Status Qcow2Image::FillCow(uint64_t cluster, const PendingCow& pc, std::vector<SumRange>* sums) {
  std::vector<uint8_t> buf;
  for (auto [a, b] : pc.uncovered) {
    buf.resize(b - a);
    QCOW2J_RETURN_IF_ERROR(ReadOldContent(cluster, pc.old_raw, pc.old_bitmap, a, buf.data(), b - a));
    QCOW2J_RETURN_IF_ERROR(data_file_->Write(pc.host + a, buf.data(), b - a));
    sums->push_back({pc.host + a, b - a, XXH64(buf.data(), buf.size(), 0)});
  }
  return Status::OK();
}

Status Qcow2Image::ResolveAllCowLocked(std::unique_lock<std::mutex>& lk) {
  // Called while draining_: no writer touches a cluster with pending COW, so
  // the fills can run without the lock, many at once (each is a read of the
  // old contents plus a write), in host order. A reader that meets one of
  // these clusters meanwhile fills it itself; both write the same old bytes.
  std::vector<std::pair<uint64_t, uint64_t>> order;
  order.reserve(cow_.size());
  for (auto& [c, pc] : cow_) order.emplace_back(pc.host, c);
  if (order.empty()) return Status::OK();
  std::sort(order.begin(), order.end());
  std::vector<std::pair<uint64_t, PendingCow>> work;
  work.reserve(order.size());
  std::vector<std::vector<SumRange>> sums(order.size());
  for (auto& [host, c] : order) work.emplace_back(c, cow_[c]);
  lk.unlock();
  std::atomic<size_t> next{0};
  std::mutex err_mu;
  Status err;
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < work.size();) {
      Status s = FillCow(work[i].first, work[i].second, &sums[i]);
      if (!s.ok()) {
        std::lock_guard<std::mutex> g(err_mu);
        if (err.ok()) err = s;
      }
    }
  };
  size_t threads = std::min<size_t>(kCowFillThreads, work.size());
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; t++) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  lk.lock();
  if (!err.ok()) {
    NoteDataLossLocked();
    return err;
  }
  for (auto& [c, pc] : work) cow_.erase(c);
  if (JournalChecksums())
    for (const auto& v : sums)
      for (const SumRange& r : v) NoteChecksumLocked(r.host, r.len, r.hash);
  return Status::OK();
}

// Plans the write of [pos, pos+n) inside one cluster: an in-place write, or
// an allocation whose new L2 entry is published right away. Called in ticket
// order under meta_mu_; the data moves later, without the lock.
Status Qcow2Image::PlanPieceLocked(std::unique_lock<std::mutex>& lk, uint64_t pos,
                                   const uint8_t* src, size_t n, WriteAction* act) {
  const uint64_t cluster = pos >> cluster_bits_;
  const uint64_t in = pos & (cluster_size_ - 1);
  const bool ext = header_.extended_l2();
  const uint64_t sc_size = cluster_size_ / kSubclustersPerCluster;
  act->cluster = cluster;
  act->pos = pos;
  act->src = src;
  act->n = n;
  L2Entry e;
  for (;;) {
    if (!failed_.ok()) return failed_;
    if (auto it = inflight_.find(cluster); it != inflight_.end() && it->second.exclusive) {
      inflight_cv_.wait(lk);
      continue;
    }
    QCOW2J_ASSIGN_OR_RETURN(bool dropped, PrefetchL2Locked(lk, cluster));
    if (dropped) continue;  // the lock was dropped: look again
    uint64_t raw, bitmap;
    QCOW2J_RETURN_IF_ERROR(LookupL2Locked(cluster, &raw, &bitmap));
    e = DecodeL2(raw, bitmap);
    break;
  }
  bool in_place = !e.compressed() && e.type() == ClusterType::kNormal && e.copied();
  if (in_place && ext) {
    for (uint64_t sc = in / sc_size; sc <= (in + n - 1) / sc_size; sc++)
      in_place &= e.subcluster_type(static_cast<unsigned>(sc)) == SubclusterType::kNormal;
  }
  if (in_place) {
    uint64_t host = e.host_offset();
    if (host & (cluster_size_ - 1))
      return Status::Corruption("L2 entry for guest offset " + Hex(pos) + ": data offset " +
                                Hex(host) + " is not aligned to the cluster size");
    if (data_file_ == file_.get())  // overlap-guard (an external data file holds no metadata)
      QCOW2J_RETURN_IF_ERROR(GuardWrite(host, cluster_size_, MetadataKind::kData));
    NoteWriteEndLocked(pos + n);
    act->host = host + in;
    // A cluster the open journal transaction maps: what lands in it is
    // checksummed, and a flush must wait for it.
    act->checksum = JournalChecksums() && jnew_hosts_.count(host);
    if (cow_.count(cluster) || inflight_.count(cluster) || act->checksum) {
      CoverLocked(cluster, in, n);
      inflight_[cluster].writers++;
      act->tracked = true;
    }
    // Bytes checksummed by the last commit stay as they are until a later
    // frame confirms it (docs/journal-format.md, "Writing", rule 2).
    if (journal_on_ && OverlapsUnconfirmedLocked(act->host, n)) {
      Status cs = ConfirmLocked();
      if (!cs.ok()) {
        if (act->tracked && --inflight_[cluster].writers == 0) inflight_.erase(cluster);
        act->tracked = false;
        return cs;
      }
    }
    return Status::OK();
  }

  // Allocating write: publish the new L2 entry now; readers of the cluster
  // wait (inflight_) until the data has landed.
  uint8_t* ent = nullptr;
  QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * slice, WritableL2Locked(cluster, &ent));
  const uint64_t old_raw = LoadBE64(ent);
  const uint64_t old_bitmap = ext ? LoadBE64(ent + 8) : 0;
  L2Entry old = DecodeL2(old_raw, old_bitmap);
  const bool external = data_file_ != file_.get();
  uint64_t host = 0;
  bool fresh = false, reuse = false;
  if (!old.compressed() && old.host_offset() && old.copied()) {
    host = old.host_offset();  // preallocated zero cluster, or subclusters left to allocate
    reuse = true;
  } else if (external) {
    host = cluster << cluster_bits_;  // external data files mirror the guest layout
  } else {
    auto a = refcounts_->Allocate(1, &fresh);
    if (!a.ok()) {
      l2_cache_->Release(slice);
      return a.status();
    }
    host = *a;
    // A new cluster that this write only partly covers must read as zeros
    // around the new data, and an O_DIRECT write of a whole one must not
    // extend the file: reserve it (ReserveAheadLocked). Done before the L2
    // entry is published, so a failure leaves nothing pointing at the
    // cluster.
    if (fresh && (n < cluster_size_ || data_file_->direct())) {
      Status s = ReserveAheadLocked(host);
      if (!s.ok()) {
        l2_cache_->Release(slice);
        decrements_.push_back({host, false});  // give the cluster back at the next flush
        return s;
      }
    }
  }
  // The new data, and any COW around it, land in [host, host + cluster):
  // bytes there that the last commit checksummed must be confirmed first.
  if (journal_on_ && OverlapsUnconfirmedLocked(host, cluster_size_)) {
    Status cs = ConfirmLocked();
    if (!cs.ok()) {
      l2_cache_->Release(slice);
      return cs;
    }
  }
  if (Status g = external ? Status::OK() : GuardWrite(host, cluster_size_, MetadataKind::kData);
      !g.ok()) {  // overlap-guard
    l2_cache_->Release(slice);
    return g;
  }
  uint64_t new_bitmap = 0;
  std::vector<std::pair<uint64_t, uint64_t>> cow;  // in-cluster ranges needing old contents
  const bool whole_copy = old.compressed() || (old.host_offset() && !old.copied());
  if (!ext || whole_copy) {
    if (in > 0) cow.emplace_back(0, in);
    if (in + n < cluster_size_) cow.emplace_back(in + n, cluster_size_);
    new_bitmap = kAllAllocated;
  } else {
    new_bitmap = old_bitmap;
    uint64_t first = in / sc_size, last = (in + n - 1) / sc_size;
    if (in % sc_size && old.subcluster_type(static_cast<unsigned>(first)) != SubclusterType::kNormal)
      cow.emplace_back(first * sc_size, in);
    if ((in + n) % sc_size &&
        old.subcluster_type(static_cast<unsigned>(last)) != SubclusterType::kNormal)
      cow.emplace_back(in + n, (last + 1) * sc_size);
    for (uint64_t sc = first; sc <= last; sc++) {
      new_bitmap |= 1ull << sc;
      new_bitmap &= ~(1ull << (sc + 32));
    }
  }
  StoreBE64(ent, host | kOflagCopied);
  if (ext) StoreBE64(ent + 8, new_bitmap);
  l2_cache_->MarkDirty(slice);
  NoteL2ChangeLocked(slice, ent);
  if (JournalChecksums()) {
    jnew_hosts_.insert(host);
    act->checksum = true;
  }
  l2_cache_->Release(slice);
  if (!reuse) FreeOldLocked(old_raw, false);
  // A reused cluster (extended L2: more subclusters of an allocated cluster)
  // may still have pending COW from its first allocation; this write's range
  // must leave it, or the fill at flush would overwrite the new data.
  if (reuse) CoverLocked(cluster, in, n);
  std::erase_if(cow, [&](const std::pair<uint64_t, uint64_t>& r) {
    return fresh && SourceIsZero(cluster, old_raw, old_bitmap, r.first, r.second);  // zeros already
  });
  const bool stream = ContinuesStreamLocked(cluster << cluster_bits_);
  NoteWriteEndLocked(pos + n);
  Inflight& inf = inflight_[cluster];
  inf.writers++;
  act->tracked = true;
  act->host = host + in;
  act->cluster_host = host;
  // Like QEMU, reserve the whole new cluster at once: the writes that follow
  // into it then overwrite allocated blocks instead of allocating file-system
  // extents one by one (slow with O_DIRECT).
  if (!cow.empty() && !stream) {
    // Immediate COW: the old head/tail go out with the data in one vectored
    // write. The cluster is exclusive meanwhile, so no in-place writer lands
    // in the head/tail only to be overwritten by old bytes.
    inf.exclusive = true;
    act->exclusive = true;
    act->old_raw = old_raw;
    act->old_bitmap = old_bitmap;
    act->cluster_host = host;
    act->cow_start = std::min(cow.front().first, in);
    act->cow_end = std::max(cow.back().second, in + n);
    return Status::OK();
  }
  for (auto [a, b] : cow) {
    PendingCow& pc = cow_[cluster];
    if (pc.uncovered.empty()) {
      pc.host = host;
      pc.old_raw = old_raw;
      pc.old_bitmap = old_bitmap;
    }
    pc.uncovered[a] = b;
  }
  return Status::OK();
}

Status Qcow2Image::ImmediateCow(const WriteAction& a, uint64_t* hash) {
  const uint64_t in = a.pos & (cluster_size_ - 1);
  const size_t head_n = in - a.cow_start, tail_n = a.cow_end - (in + a.n);
  // Like QEMU, one read of the old contents around the data (head, the part
  // the data replaces, and tail) rather than two: for a small write in a
  // big cluster that is one request to the backing file instead of two.
  std::vector<uint8_t> old(head_n && tail_n ? a.cow_end - a.cow_start : head_n + tail_n);
  uint8_t* head = old.data();
  uint8_t* tail = old.data() + (head_n && tail_n ? head_n + a.n : head_n);
  if (head_n && tail_n) {
    QCOW2J_RETURN_IF_ERROR(
        ReadOldContent(a.cluster, a.old_raw, a.old_bitmap, a.cow_start, old.data(), old.size()));
  } else if (head_n) {
    QCOW2J_RETURN_IF_ERROR(ReadOldContent(a.cluster, a.old_raw, a.old_bitmap, a.cow_start, head, head_n));
  } else if (tail_n) {
    QCOW2J_RETURN_IF_ERROR(ReadOldContent(a.cluster, a.old_raw, a.old_bitmap, in + a.n, tail, tail_n));
  }
  iovec iov[3];
  int cnt = 0;
  if (head_n) iov[cnt++] = {head, head_n};
  iov[cnt++] = {const_cast<uint8_t*>(a.src), a.n};
  if (tail_n) iov[cnt++] = {tail, tail_n};
  if (a.checksum) {
    XXH64_state_t st;
    XXH64_reset(&st, 0);
    for (int i = 0; i < cnt; i++) XXH64_update(&st, iov[i].iov_base, iov[i].iov_len);
    *hash = XXH64_digest(&st);
  }
  return data_file_->Writev(a.cluster_host + a.cow_start, std::span<const iovec>(iov, cnt));
}

bool Qcow2Image::ContinuesStreamLocked(uint64_t cluster_start) const {
  // Dense recent writes around this cluster (its neighbours included, since
  // requests in flight arrive out of order) mean a stream is passing through;
  // one write per cluster (two neighbours at most) does not.
  uint64_t lo = cluster_start >= cluster_size_ ? cluster_start - cluster_size_ : 0;
  uint64_t hi = cluster_start + 2 * cluster_size_;
  int near = 0;
  for (uint64_t e : recent_ends_) near += e > lo && e <= hi;
  return near >= 3;
}

uint64_t Qcow2Image::RegisterWrite(PendingWrite* w) {
  std::lock_guard<std::mutex> g(meta_mu_);
  uint64_t ticket = next_ticket_++;
  registered_.emplace(ticket, w);
  return ticket;
}

void Qcow2Image::PlanWriteLocked(std::unique_lock<std::mutex>& lk, PendingWrite* w) {
  Status st = CheckWritable("write", w->offset, w->len);
  while (st.ok() && draining_) inflight_cv_.wait(lk);
  uint64_t offset = w->offset;
  const uint8_t* src = w->src;
  size_t len = w->len;
  while (st.ok() && len > 0) {
    size_t n = static_cast<size_t>(
        std::min<uint64_t>(len, cluster_size_ - (offset & (cluster_size_ - 1))));
    w->acts.emplace_back();
    st = PlanPieceLocked(lk, offset, src, n, &w->acts.back());
    if (!st.ok()) w->acts.pop_back();
    offset += n;
    src += n;
    len -= n;
  }
  w->st = st;
  w->planned = true;
}

Status Qcow2Image::Write(uint64_t offset, const void* buf, size_t len) {
  PendingWrite w;
  w.offset = offset;
  w.src = static_cast<const uint8_t*>(buf);
  w.len = len;
  RegisterWrite(&w);
  uint64_t need = 0;
  QCOW2J_RETURN_IF_ERROR(RunWrite(&w, &need));
  return writethrough_ ? GroupFlush(need) : Status::OK();
}

void Qcow2Image::WriteAsync(uint64_t offset, const void* buf, size_t len, Completion done) {
  // Registered at submission: planning follows submission order even though
  // request threads reach the lock in any order.
  auto w = std::make_shared<PendingWrite>();
  w->offset = offset;
  w->src = static_cast<const uint8_t*>(buf);
  w->len = len;
  RegisterWrite(w.get());
  SubmitRequest([this, w, done = std::move(done)] {
    uint64_t need = 0;
    Status st = RunWrite(w.get(), &need);
    if (st.ok() && writethrough_) st = GroupFlush(need);
    done(st);
  });
}

Status Qcow2Image::RunWrite(PendingWrite* w, uint64_t* flush_needed) {
  {
    // Flat combining: whoever holds the lock plans every registered write in
    // submission order up to its own, so allocation follows submission
    // order (a sequential host layout for sequential writes) without any
    // request waiting for another request's thread to be scheduled.
    std::unique_lock<std::mutex> lk(meta_mu_);
    writers_active_++;
    writers_started_++;
    while (!w->planned) {
      if (planner_active_) {
        // The planner will plan this write, or hand planning over to us.
        w->waiting = true;
        w->cv.wait(lk);
        w->waiting = false;
        continue;
      }
      planner_active_ = true;
      while (!w->planned) {
        auto it = registered_.begin();  // the oldest: tickets are ordered
        PendingWrite* r = it->second;
        registered_.erase(it);
        PlanWriteLocked(lk, r);
        JoinCowBatchLocked(r);
        // Its owner may start its transfer now (one wakeup per write, not a
        // herd): a flush waiting for that transfer must not wait for the
        // rest of this batch.
        if (r != w && r->waiting) r->cv.notify_one();
      }
      planner_active_ = false;
      // Hand planning to the owner of the oldest unplanned write if it is
      // already waiting; one that has not arrived yet will find no planner.
      if (!registered_.empty()) {
        PendingWrite* next = registered_.begin()->second;
        if (next->waiting) next->cv.notify_one();
      }
    }
  }
  Status st = w->st;
  std::vector<WriteAction>& acts = w->acts;
  // Data transfers, without the lock. Pieces whose host ranges follow each
  // other go out as one vectored write.
  Status io;
  std::vector<iovec> iov;
  std::vector<SumRange> sums;  // for the journal: what landed in clusters it maps
  for (size_t i = 0; i < acts.size() && io.ok();) {
    if (acts[i].exclusive) {
      const WriteAction& a = acts[i++];
      uint64_t h = 0;
      io = w->cow_batch ? RunCowBatch(w, &h) : ImmediateCow(a, &h);
      if (a.checksum) sums.push_back({a.cluster_host + a.cow_start, a.cow_end - a.cow_start, h});
      continue;
    }
    size_t j = i + 1;
    while (j < acts.size() && !acts[j].exclusive && acts[j].host == acts[j - 1].host + acts[j - 1].n)
      j++;
    iov.clear();
    for (size_t k = i; k < j; k++) iov.push_back({const_cast<uint8_t*>(acts[k].src), acts[k].n});
    io = iov.size() == 1 ? data_file_->Write(acts[i].host, acts[i].src, acts[i].n)
                         : data_file_->Writev(acts[i].host, iov);
    for (size_t k = i; k < j; k++)
      if (acts[k].checksum) sums.push_back({acts[k].host, acts[k].n, XXH64(acts[k].src, acts[k].n, 0)});
    i = j;
  }
  std::unique_lock<std::mutex> g(meta_mu_);
  // Before the writer counts drop: a flush waiting for them commits these.
  bool any_checksum = false;
  for (const WriteAction& a : acts) any_checksum |= a.checksum;
  if (any_checksum) {
    if (io.ok()) {
      for (const SumRange& r : sums) NoteChecksumLocked(r.host, r.len, r.hash);
    } else {
      NoteDataLossLocked();
    }
  }
  for (const WriteAction& a : acts) {
    if (!a.tracked) continue;
    Inflight& inf = inflight_[a.cluster];
    if (a.exclusive) inf.exclusive = false;
    if (--inf.writers == 0) inflight_.erase(a.cluster);
  }
  if (flush_needed) *flush_needed = FlushNeededLocked();
  writers_active_--;
  inflight_cv_.notify_all();
  if (!st.ok() || !io.ok()) return st.ok() ? io : st;
  // The caches cannot evict dirty tables while a journal is on: far past
  // their capacity, commit and checkpoint without waiting for a guest flush.
  if (MetadataPressureLocked()) return FlushLocked(g);
  return Status::OK();
}

// Makes whole clusters read as zeros (zero=true) or discards them, one L2
// slice per hold of the metadata lock: the slice is looked up once and
// written once. Returns NotSupported where zeros must be written as data
// instead (a v2 image over a backing file). *done counts the clusters handled.
Status Qcow2Image::ZeroOrDiscardClusters(uint64_t first, uint64_t count, bool zero, bool unmap,
                                         uint64_t* done) {
  *done = 0;
  const bool ext = header_.extended_l2();
  const bool v3 = header_.version >= 3;
  if (!ext && !v3 && backing_ && zero) return Status::NotSupported("zero clusters need compat=1.1");
  const uint64_t per_slice = 1ull << slice_entries_bits_;
  struct Change {
    uint32_t index;  // in the run
    uint64_t old_raw, raw, bitmap;
    bool keep_host;
  };
  std::vector<Change> changes;
  while (*done < count) {
    const uint64_t c0 = first + *done;
    const uint64_t n = std::min(count - *done, per_slice - (c0 & (per_slice - 1)));
    std::unique_lock<std::mutex> lk(meta_mu_);
    while (draining_) inflight_cv_.wait(lk);
    WaitInflightLocked(lk, c0, c0 + n - 1);
    if (!cow_.empty()) {
      for (uint64_t c = c0; c < c0 + n; c++) cow_.erase(c);  // the whole cluster is replaced
    }
    changes.clear();
    QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * cur, ReadL2SliceLocked(c0));
    const uint8_t* p = cur ? cur->data() + (c0 & (per_slice - 1)) * l2_entry_bytes_ : nullptr;
    for (uint32_t i = 0; i < n; i++) {
      const uint64_t raw = p ? LoadBE64(p + i * l2_entry_bytes_) : 0;
      const uint64_t bitmap = p && ext ? LoadBE64(p + i * l2_entry_bytes_ + 8) : 0;
      const L2Entry old = DecodeL2(raw, bitmap);
      uint64_t new_raw = 0, new_bitmap = 0;
      bool keep_host = false;
      if (ext) {
        // Zero subclusters; the host cluster stays unless we may drop it.
        keep_host = !unmap && old.host_offset() && old.copied() && !old.compressed();
        new_raw = keep_host ? raw : 0;
        new_bitmap = kAllZero;
        if (!zero && !backing_ && !keep_host) new_bitmap = 0;
      } else if (v3 && (zero || backing_ || old.type() != ClusterType::kUnallocated)) {
        keep_host = zero && !unmap && old.host_offset() && old.copied() && !old.compressed();
        new_raw = kOflagZero | (keep_host ? (raw & (kL2OffsetMask | kOflagCopied)) : 0);
      }
      if (raw == new_raw && bitmap == new_bitmap) continue;
      if (raw == 0 && !ext && new_raw == 0) continue;
      changes.push_back({i, raw, new_raw, new_bitmap, keep_host});
    }
    if (cur) l2_cache_->Release(cur);
    if (!changes.empty()) {
      uint8_t* ent = nullptr;
      // Allocates the table, or copies one shared with a snapshot: the
      // entries read above stay what they were.
      QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * slice, WritableL2Locked(c0, &ent));
      L2ChangeHint hint = jl2_.end();
      for (const Change& ch : changes) {
        uint8_t* e = ent + uint64_t{ch.index} * l2_entry_bytes_;
        StoreBE64(e, ch.raw);
        if (ext) StoreBE64(e + 8, ch.bitmap);
        hint = NoteL2ChangeLocked(slice, e, hint);  // ascending offsets
        if (!ch.keep_host) FreeOldLocked(ch.old_raw, !zero || unmap);
      }
      l2_cache_->MarkDirty(slice);
      l2_cache_->Release(slice);
    }
    *done += n;
    // Like a write: far past the caches' capacity, commit and checkpoint
    // rather than let a huge zero or discard pile up dirty tables.
    if (MetadataPressureLocked()) QCOW2J_RETURN_IF_ERROR(FlushLocked(lk));
  }
  return Status::OK();
}

bool Qcow2Image::MetadataPressureLocked() const {
  return journal_on_ && !draining_ &&
         (l2_cache_->dirty_count() > 2 * l2_cache_->capacity() ||
          refcounts_->dirty_blocks() > 2 * refcounts_->cache_capacity());
}

Status Qcow2Image::WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) {
  QCOW2J_RETURN_IF_ERROR(ZeroRange(offset, len, may_unmap));
  return writethrough_ ? GroupFlush(0) : Status::OK();
}

Status Qcow2Image::ZeroRange(uint64_t offset, uint64_t len, bool may_unmap) {
  QCOW2J_RETURN_IF_ERROR(CheckWritable("write zeroes", offset, len));
  std::vector<uint8_t> zeros;
  auto write_zeros = [&](uint64_t off, uint64_t n) {
    zeros.assign(n, 0);
    return Write(off, zeros.data(), n);
  };
  const uint64_t end = offset + len;
  while (offset < end) {
    const uint64_t in = offset & (cluster_size_ - 1);
    if (in != 0 || (end - offset < cluster_size_ && end != virtual_size_)) {
      const uint64_t n = std::min<uint64_t>(end - offset, cluster_size_ - in);  // a partial cluster
      QCOW2J_RETURN_IF_ERROR(write_zeros(offset, n));
      offset += n;
      continue;
    }
    // A run of whole clusters; the last may be the image's partial tail.
    const uint64_t whole_end = end == virtual_size_ ? end : end & ~(cluster_size_ - 1);
    const uint64_t count = (whole_end - offset + cluster_size_ - 1) >> cluster_bits_;
    uint64_t done = 0;
    Status s = ZeroOrDiscardClusters(offset >> cluster_bits_, count, true, may_unmap, &done);
    offset += done << cluster_bits_;
    if (s.code() == Code::kNotSupported) {
      // Zeros as data, up to 1 MiB of whole clusters per write.
      const uint64_t n = std::min<uint64_t>(end - offset, std::max<uint64_t>(cluster_size_, 1 << 20));
      QCOW2J_RETURN_IF_ERROR(write_zeros(offset, n));
      offset += n;
      continue;
    }
    QCOW2J_RETURN_IF_ERROR(s);
    offset = std::min(offset, end);
  }
  return Status::OK();
}

Status Qcow2Image::Discard(uint64_t offset, uint64_t len) {
  QCOW2J_RETURN_IF_ERROR(CheckWritable("discard", offset, len));
  // Like QEMU, only whole clusters are discarded; partial ones are left alone.
  uint64_t first = (offset + cluster_size_ - 1) >> cluster_bits_;
  uint64_t end = offset + len == virtual_size_ ? (virtual_size_ + cluster_size_ - 1) >> cluster_bits_
                                                : (offset + len) >> cluster_bits_;
  if (end <= first) return Status::OK();
  uint64_t done = 0;
  return ZeroOrDiscardClusters(first, end - first, false, true, &done);
}

Status Qcow2Image::PunchClusters(std::vector<uint64_t> clusters) {
  // Adjacent discarded clusters are punched as one range (one fallocate per
  // run, not per cluster).
  std::sort(clusters.begin(), clusters.end());
  for (size_t i = 0; i < clusters.size();) {
    size_t j = i + 1;
    while (j < clusters.size() && clusters[j] == clusters[j - 1] + cluster_size_) j++;
    QCOW2J_RETURN_IF_ERROR(data_file_->PunchHole(clusters[i], (j - i) * cluster_size_));
    i = j;
  }
  return Status::OK();
}

Status Qcow2Image::WriteL1Locked() {
  // Write whole 512-byte sectors of the L1 table around each dirty entry.
  uint64_t l1_offset = header_.l1_table_offset;
  std::vector<uint8_t> sector(512);
  uint64_t last_sector = UINT64_MAX;
  for (uint64_t idx : l1_dirty_) {
    uint64_t sec = idx / 64;
    if (sec == last_sector) continue;
    last_sector = sec;
    for (uint64_t i = 0; i < 64; i++) {
      uint64_t j = sec * 64 + i;
      StoreBE64(sector.data() + i * 8, j < l1_.size() ? l1_[j] : 0);
    }
    uint64_t bytes = std::min<uint64_t>(512, l1_.size() * 8 - sec * 512);
    QCOW2J_RETURN_IF_ERROR(GuardWrite(l1_offset + sec * 512, bytes, MetadataKind::kL1));  // overlap-guard
    QCOW2J_RETURN_IF_ERROR(file_->Write(l1_offset + sec * 512, sector.data(), bytes));
  }
  l1_dirty_.clear();
  return Status::OK();
}

Status Qcow2Image::FlushLocked(std::unique_lock<std::mutex>& lk) {
  // One flush at a time: a flush drops the lock while it fills COW, and a
  // second flush ending meanwhile would clear draining_ and let writers into
  // clusters whose old contents are still being copied in.
  while (draining_) inflight_cv_.wait(lk);
  draining_ = true;
  const uint64_t generation = ++flush_gen_started_;
  while (!inflight_.empty()) inflight_cv_.wait(lk);
  flush_gen_drained_ = generation;  // writes completed from here on need the next flush
  Status s = [&]() -> Status {
    QCOW2J_RETURN_IF_ERROR(FinishCompressedRunLocked());  // data of compressed clusters
    QCOW2J_RETURN_IF_ERROR(ResolveAllCowLocked(lk));
    if (journal_on_) return JournalFlushLocked();
    bool meta = refcounts_->dirty() || l2_cache_->dirty_count() || !l1_dirty_.empty() ||
                !decrements_.empty();
    if (!meta) return data_file_->Sync();
    if (data_file_ != file_.get()) QCOW2J_RETURN_IF_ERROR(data_file_->Sync());
    // Clusters allocated at the end but never written (L2 tables still in
    // cache) must lie inside the file before anything points at them.
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
    if (size < refcounts_->end_offset()) QCOW2J_RETURN_IF_ERROR(file_->Truncate(refcounts_->end_offset()));
    QCOW2J_RETURN_IF_ERROR(refcounts_->WriteBack());
    QCOW2J_RETURN_IF_ERROR(file_->Sync());                      // 1: data + increments
    QCOW2J_RETURN_IF_ERROR(l2_cache_->FlushDirty());
    QCOW2J_RETURN_IF_ERROR(WriteL1Locked());
    QCOW2J_RETURN_IF_ERROR(file_->Sync());                      // 2: L2 / L1
    std::vector<Decrement> dec;
    dec.swap(decrements_);
    std::vector<uint64_t> punch;
    for (const Decrement& d : dec) {                            // 3: dropped references
      QCOW2J_ASSIGN_OR_RETURN(uint64_t rc, refcounts_->Update(d.host, -1));
      // overlap-guard: a cluster still in use as metadata must not be freed (nor punched).
      if (rc == 0) QCOW2J_RETURN_IF_ERROR(GuardWrite(d.host, cluster_size_, MetadataKind::kData));
      if (rc == 0) {
        l2_epoch_++;
        l2_cache_->Erase(d.host);  // in case it was an L2 table (slices keyed by offset)
        for (uint64_t off = d.host; off < d.host + cluster_size_; off += slice_bytes_) l2_cache_->Erase(off);
        if (d.punch) punch.push_back(d.host);
      }
    }
    QCOW2J_RETURN_IF_ERROR(PunchClusters(std::move(punch)));
    // Freed clusters may be reused at once: nothing on disk references them,
    // and their (stale, higher) refcount on disk only means a leak until the
    // next flush writes the decrement.
    refcounts_->ReleasePendingFrees();
    return Status::OK();
  }();
  if (s.ok()) flush_gen_done_ = generation;
  draining_ = false;
  inflight_cv_.notify_all();
  if (!s.ok() && s.code() != Code::kNoSpace) failed_ = s.Annotate("flush failed; image is unusable");
  return s;
}

// Resizing: the virtual size changes in the header; growing past what the
// L1 table covers moves the L1 table to a larger copy at the end of the file
// (written and synced before the header points at it, the old one freed
// after); shrinking discards the clusters past the new end first.
Status Qcow2Image::Resize(uint64_t new_size, bool shrink) {
  QCOW2J_RETURN_IF_ERROR(CheckWritable("resize", 0, 0));
  if (new_size > kMaxVirtualSize)
    return Status::InvalidArgument("size " + std::to_string(new_size) + " is too large");
  if (!snapshots_.empty() && new_size < virtual_size_)
    return Status::NotSupported("Can't resize a v3 image with internal snapshots to a smaller size");
  if (new_size < virtual_size_) {
    if (!shrink) return Status::InvalidArgument("Use the --shrink option to perform a shrink operation.");
    uint64_t from = (new_size + cluster_size_ - 1) & ~(cluster_size_ - 1);
    if (from < virtual_size_) QCOW2J_RETURN_IF_ERROR(Discard(from, virtual_size_ - from));
    if (new_size & (cluster_size_ - 1)) {  // the part of the last cluster past the new end
      uint64_t tail = std::min(virtual_size_, from) - new_size;
      QCOW2J_RETURN_IF_ERROR(WriteZeroes(new_size, tail, false));
    }
  }
  std::unique_lock<std::mutex> lk(meta_mu_);
  QCOW2J_RETURN_IF_ERROR(FlushLocked(lk));
  // With the journal, the new header fields, the new L1 table's refcounts
  // and the old one's release are one transaction (replay switches to the
  // new table); without it, ordered in-place writes.
  const bool journaled = journal_on_;
  // The session start rewrites the whole header from header_: it must not
  // see the new fields before the transaction that carries them.
  if (journaled && !jwriter_) QCOW2J_RETURN_IF_ERROR(StartJournalSessionLocked());
  const uint64_t per_l1 = cluster_size_ << l2_bits_;
  const uint64_t need = (new_size + per_l1 - 1) / per_l1;
  if (need > l1_.size()) {
    if (need * 8 > kMaxL1Bytes)
      return Status::InvalidArgument("size " + std::to_string(new_size) + " needs an L1 table larger than 32 MiB");
    uint64_t clusters = (need * 8 + cluster_size_ - 1) >> cluster_bits_;
    QCOW2J_ASSIGN_OR_RETURN(uint64_t off, refcounts_->Allocate(clusters));
    QCOW2J_RETURN_IF_ERROR(metadata_map_->Add(off, clusters << cluster_bits_, MetadataKind::kL1));  // overlap-guard
    std::vector<uint8_t> table(clusters << cluster_bits_, 0);
    for (size_t i = 0; i < l1_.size(); i++) StoreBE64(table.data() + i * 8, l1_[i]);
    QCOW2J_RETURN_IF_ERROR(file_->Write(off, table.data(), table.size()));
    if (!journaled) QCOW2J_RETURN_IF_ERROR(refcounts_->WriteBack());
    QCOW2J_RETURN_IF_ERROR(file_->Sync());  // the new table is durable before anything names it
    uint64_t old_off = header_.l1_table_offset;
    uint64_t old_clusters = (l1_.size() * 8 + cluster_size_ - 1) >> cluster_bits_;
    header_.l1_size = static_cast<uint32_t>(need);
    header_.l1_table_offset = off;
    header_.size = new_size;
    l1_.resize(need, 0);
    if (!journaled) {
      // size, crypt_method, l1_size and l1_table_offset (bytes 24..47) in one
      // write within the first sector: two writes could reach the disk one
      // without the other, and a header whose size needs more L1 entries than
      // l1_size is refused on open (the crash kit found this).
      uint8_t fields[kResizeFieldsBytes];
      EncodeResizeFields(fields);
      QCOW2J_RETURN_IF_ERROR(WriteHeaderField(kResizeFieldsOffset, fields, sizeof fields));
      QCOW2J_RETURN_IF_ERROR(file_->Sync());
    }
    metadata_map_->Remove(old_off, MetadataKind::kL1);  // overlap-guard
    for (uint64_t i = 0; i < old_clusters && old_off; i++)
      decrements_.push_back({old_off + (i << cluster_bits_), false});
  } else if (!journaled) {
    uint8_t field[8];
    StoreBE64(field, new_size);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(24, field, 8));
  }
  header_.size = new_size;
  virtual_size_ = new_size;
  if (journaled) jheader_changed_ = header_fields_stale_ = true;
  return FlushLocked(lk);
}

uint64_t Qcow2Image::FlushNeededLocked() const {
  // A flush that is still waiting for in-flight writes syncs after this
  // write's data is in: it covers it. Otherwise the next one must.
  return draining_ && flush_gen_drained_ < flush_gen_started_ ? flush_gen_started_
                                                              : flush_gen_started_ + 1;
}

Status Qcow2Image::GroupFlush(uint64_t need) {
  // Writethrough as group commit: every writer waiting at once is covered by
  // the same flush, so depth-N writethrough costs about one flush per N
  // writes instead of a sync per write (O_DSYNC).
  std::unique_lock<std::mutex> lk(meta_mu_);
  if (need == 0) need = FlushNeededLocked();
  while (flush_gen_done_ < need) {
    if (!failed_.ok()) return failed_;
    if (draining_) {
      inflight_cv_.wait(lk);
      continue;
    }
    // Let the writers under way, and those arriving right behind them (a
    // completion usually submits the next request), finish and join this
    // flush: one flush then covers the whole group. Bounded, so a lone
    // writer waits at most kGroupCommitWaitUs.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kGroupCommitWaitUs);
    for (;;) {
      uint64_t arrivals = writers_started_;
      bool settled = inflight_cv_.wait_until(lk, std::min(deadline, std::chrono::steady_clock::now() +
                                                                        std::chrono::microseconds(100)),
                                             [&] { return draining_ || flush_gen_done_ >= need; });
      if (settled || std::chrono::steady_clock::now() >= deadline) break;
      if (writers_active_ == 0 && writers_started_ == arrivals) break;  // quiet: flush now
    }
    if (draining_ || flush_gen_done_ >= need) continue;  // someone else flushed for us
    QCOW2J_RETURN_IF_ERROR(FlushLocked(lk));
  }
  return Status::OK();
}

Status Qcow2Image::Flush() {
  if (closed_) return Status::Aborted("image '" + path_ + "' is closed");
  if (read_only_) return Status::OK();
  std::unique_lock<std::mutex> lk(meta_mu_);
  if (!failed_.ok()) return failed_;  // overlap-guard: a failed image writes no more metadata
  return FlushLocked(lk);
}

Status Qcow2Image::TrimReservationLocked() {
  // Clusters reserved ahead (ReserveAheadLocked) but never allocated make
  // the file longer than its last cluster: a closed image ends where QEMU's
  // would. Only the reserved tail goes: a file that is longer for another
  // reason keeps its length, and so do bytes the file held before this
  // session reserved anything.
  if (reserved_end_ == 0 || data_file_ != file_.get()) return Status::OK();
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
  const uint64_t end = std::max(refcounts_->end_offset(), size_before_reserving_.value_or(0));
  if (size <= end || size > reserved_end_) return Status::OK();
  return file_->Truncate(end);
}

Status Qcow2Image::Close() {
  JoinAreaPunch();
  if (closed_) return Status::OK();
  StopCheckpointer();  // close checkpoints itself, below
  // A writer that never finished opening has nothing to flush; one that
  // failed earlier reports that failure rather than a clean close.
  Status s = failed_;
  if (!read_only_ && writer_ready_ && failed_.ok()) {
    std::unique_lock<std::mutex> lk(meta_mu_);
    s = FlushLocked(lk);
    if (journal_on_) {
      // Commit what is left (a transaction too large for the ring was
      // written in place instead and left its decrements queued), write
      // everything in place, and close the journal: plain qcow2 again.
      for (int i = 0; i < 3 && s.ok() && !decrements_.empty(); i++) s = FlushLocked(lk);
      if (s.ok() && jwriter_) s = CheckpointLocked();
      if (s.ok() && jwriter_) s = EndJournalSessionLocked(/*refcounts_clean=*/true);
    } else if (s.ok() && refcounts_->dirty()) {
      // The decrements the flush applied last are written too, so a closed
      // image has no leaks.
      s = refcounts_->WriteBack();
      if (s.ok()) s = file_->Sync();
    }
    if (s.ok()) s = TrimReservationLocked();
  }
  closed_ = true;
  if (backing_) (void)backing_->Close();
  return s;
}

}  // namespace qcow2j
