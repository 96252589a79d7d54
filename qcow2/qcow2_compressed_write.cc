// Compressed writes (qemu-img convert -c, qemu-io write -c) and the
// compressed-write cache.
//
// Whole guest clusters are compressed in the caller's thread without any
// lock, so callers on several threads compress in parallel. Under meta_mu_
// each compressed cluster is then packed into the current run (see
// CompressedRun in qcow2_image.h): byte after byte, spanning into the next
// host cluster when that one is contiguous, as QEMU's qcow2_alloc_bytes
// packs them. A host cluster of the run goes to disk once, whole and
// aligned, when the run has moved past it, so an O_DIRECT target needs no
// read-modify-write; a flush writes the partial last cluster and ends the
// run.
//
// Refcounts: a host cluster's refcount counts the compressed clusters whose
// bytes touch it (qcow2.txt). A cluster joins the run through Allocate,
// whose refcount of 1 counts the first compressed cluster placed into it;
// every later one that touches it adds 1.
//
// Ordering on disk (why it is safe):
//   - the run's clusters are written at the latest when a flush starts,
//     before its first sync, so the L2 entries the flush writes afterwards
//     point at data that is already durable;
//   - increments are made when a cluster is placed, so they are durable no
//     later than the entry that references it (a crash leaks, never frees);
//   - the clusters of the replaced entry are freed through decrements_,
//     after the new entry is durable, as every other overwrite.
//   - the run ends at every flush: a flush may free clusters of the run
//     (their compressed clusters overwritten meanwhile), so nothing may be
//     packed into them afterwards.
// Readers of a compressed cluster still in the run get its bytes from the
// buffer (ReadHostCompressed). When the buffer is full, its complete
// clusters leave with it (zout_) and the run goes on in a fresh buffer; the
// writer that filled it writes them once it has dropped meta_mu_, so the
// other writers keep packing meanwhile. A run that cannot grow (the next
// host cluster is not next to it: uncompressed clusters took those) leaves
// whole the same way, its partial last cluster zero-padded. Readers find them in zout_ until
// they are on disk; a flush writes or waits for every one before it syncs.
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "metadata/endian.h"
#include "qcow2/compression.h"
#include "qcow2/qcow2_image.h"

namespace qcow2j {
namespace {

// The run's buffer: large enough that an O_DIRECT target sees big writes.
constexpr uint64_t kRunBytes = 1u << 20;
// Guest bytes compressed per batch (bounds the memory of one call).
constexpr uint64_t kBatchBytes = 2u << 20;
// Write-outs (a run's buffer each) that may wait for a writer to take them
// before a batch stops packing to write them.
constexpr size_t kMaxUnclaimedWriteOuts = 4;

}  // namespace

void Qcow2Image::StoreL2EntryLocked(TableCache::Table* slice, uint8_t* entry, uint64_t raw,
                                    uint64_t bitmap) {
  StoreBE64(entry, raw);
  if (header_.extended_l2()) StoreBE64(entry + 8, bitmap);
  l2_cache_->MarkDirty(slice);
  NoteL2ChangeLocked(slice, entry);
}

Status Qcow2Image::WriteCompressed(uint64_t offset, const void* buf, size_t len) {
  QCOW2J_RETURN_IF_ERROR(CheckWritable("compressed write", offset, len));
  if (data_file_ != file_.get())
    return Status::NotSupported("compressed writes are not supported with an external data file ('" +
                                path_ + "')");
  if (offset & (cluster_size_ - 1))
    return Status::InvalidArgument("compressed write at offset " + std::to_string(offset) +
                                   " is not aligned to the cluster size (" +
                                   std::to_string(cluster_size_) + " bytes)");
  if ((len & (cluster_size_ - 1)) && offset + len != virtual_size_)
    return Status::InvalidArgument(
        "compressed write of " + std::to_string(len) + " bytes at offset " + std::to_string(offset) +
        ": the length is not a multiple of the cluster size (" + std::to_string(cluster_size_) +
        " bytes) and does not reach the end of the image (" + std::to_string(virtual_size_) +
        " bytes)");
  const auto type = static_cast<CompressionType>(header_.compression_type);
  const auto* src = static_cast<const uint8_t*>(buf);
  const uint64_t per_batch = std::max<uint64_t>(1, kBatchBytes >> cluster_bits_);
  // Per thread and kept: a fresh 2 MiB buffer per call costs a zero fill
  // and page faults on every call, a few percent of a convert -c.
  thread_local std::unique_ptr<uint8_t[]> out_buf;
  thread_local size_t out_cap = 0;
  std::vector<size_t> zlen;
  std::vector<uint8_t> padded;
  while (len > 0) {
    const uint64_t batch_bytes = std::min<uint64_t>(len, per_batch << cluster_bits_);
    const size_t count = static_cast<size_t>((batch_bytes + cluster_size_ - 1) >> cluster_bits_);
    if (out_cap < (count << cluster_bits_)) {
      out_cap = count << cluster_bits_;
      out_buf.reset(new uint8_t[out_cap]);
    }
    uint8_t* const out = out_buf.get();
    zlen.assign(count, 0);
    // Compress, without the lock. A compressed cluster must be smaller than
    // a cluster (QEMU gives the codec cluster_size - 1 bytes of room).
    for (size_t i = 0; i < count; i++) {
      const uint64_t at = uint64_t{i} << cluster_bits_;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(cluster_size_, batch_bytes - at));
      std::span<const uint8_t> in(src + at, n);
      if (n < cluster_size_) {  // the image's last cluster: zero-padded, as QEMU does
        padded.assign(cluster_size_, 0);
        std::memcpy(padded.data(), src + at, n);
        in = std::span<const uint8_t>(padded);
      }
      std::span<uint8_t> dst(out + at, cluster_size_);
      QCOW2J_ASSIGN_OR_RETURN(zlen[i], CompressCluster(type, in, dst));
    }
    // Clusters that do not compress are written as they are, through the
    // normal write path (as QEMU does), a run of them at a time.
    for (size_t i = 0; i < count;) {
      if (zlen[i]) {
        i++;
        continue;
      }
      size_t j = i + 1;
      while (j < count && zlen[j] == 0) j++;
      const uint64_t a = uint64_t{i} << cluster_bits_;
      const uint64_t b = std::min<uint64_t>(uint64_t{j} << cluster_bits_, batch_bytes);
      QCOW2J_RETURN_IF_ERROR(Write(offset + a, src + a, static_cast<size_t>(b - a)));
      i = j;
    }
    // Pack the compressed ones and point their L2 entries at them.
    std::unique_lock<std::mutex> lk(meta_mu_);
    for (size_t i = 0; i < count; i++) {
      if (zlen[i] == 0) continue;
      const uint64_t cluster = (offset >> cluster_bits_) + i;
      // Not while a flush drains (it may be copying old contents in), nor
      // while a write of this cluster is still in flight.
      while (failed_.ok() && (draining_ || inflight_.count(cluster))) inflight_cv_.wait(lk);
      if (!failed_.ok()) return failed_;
      cow_.erase(cluster);  // the whole cluster is replaced: no old contents to copy in
      uint8_t* ent = nullptr;
      QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * slice, WritableL2Locked(cluster, &ent));
      const uint64_t old_raw = LoadBE64(ent);
      uint64_t host = 0;
      Status s = PlaceCompressedLocked(out + (uint64_t{i} << cluster_bits_), zlen[i], &host);
      Result<uint64_t> desc = s.ok() ? CompressedDescriptor::Encode(host, zlen[i], cluster_bits_)
                                     : Result<uint64_t>(s);
      if (!desc.ok()) {
        l2_cache_->Release(slice);
        return desc.status().Annotate("compressed write of guest cluster at offset " +
                                      std::to_string(cluster << cluster_bits_));
      }
      StoreL2EntryLocked(slice, ent, *desc, 0);  // no subcluster bits on a compressed entry
      l2_cache_->Release(slice);
      FreeOldLocked(old_raw, false);
      // Runs that ended early (uncompressed clusters took the next host
      // cluster) leave with their whole buffer: do not let a batch that
      // meets many of them hold those buffers until it ends. The loop
      // checks everything again per cluster, so it may drop the lock here.
      size_t unclaimed = 0;
      for (const RunWriteOut& o : zout_) unclaimed += !o.claimed;
      if (unclaimed >= kMaxUnclaimedWriteOuts) QCOW2J_RETURN_IF_ERROR(WriteOutClaimed(lk));
    }
    QCOW2J_RETURN_IF_ERROR(WriteOutClaimed(lk));
    lk.unlock();
    offset += batch_bytes;
    src += batch_bytes;
    len -= static_cast<size_t>(batch_bytes);
  }
  return writethrough_ ? GroupFlush(0) : Status::OK();
}

Status Qcow2Image::PlaceCompressedLocked(const uint8_t* z, size_t n, uint64_t* host) {
  CompressedRun& r = zrun_;
  const uint64_t cs = cluster_size_;
  r.capacity = std::max<uint64_t>(2 * cs, kRunBytes);
  // A partly used cluster whose refcount is at its maximum (1-bit refcounts
  // allow one compressed cluster each) takes no more, as in QEMU.
  if (r.base && (r.fill & (cs - 1))) {
    const uint64_t last = r.base + (r.fill & ~(cs - 1));
    if (last < r.claimed_end) {
      QCOW2J_ASSIGN_OR_RETURN(uint64_t rc, refcounts_->Get(last));
      if (rc >= refcounts_->MaxRefcount()) {
        std::lock_guard<std::mutex> g(zcache_mu_);
        const uint64_t end = (r.fill + cs - 1) & ~(cs - 1);
        std::memset(r.buf.get() + r.fill, 0, end - r.fill);
        r.fill = end;
      }
    }
  }
  if (!r.base || r.clusters * cs - r.fill < n) {
    // One more host cluster (n < cs: one is enough). Make room first.
    if (r.base && r.clusters * cs == r.capacity) QCOW2J_RETURN_IF_ERROR(MoveRunToWriteOutLocked(false));
    bool fresh = false;
    QCOW2J_ASSIGN_OR_RETURN(uint64_t c, refcounts_->Allocate(1, &fresh));
    // An O_DIRECT write-out of the run must not extend the file (see
    // ReserveAheadLocked).
    if (fresh && file_->direct()) {
      if (Status s = ReserveAheadLocked(c); !s.ok()) {
        decrements_.push_back({c, false});
        return s;
      }
    }
    // Bytes the last journal commit checksummed stay as they are until a
    // later frame confirms it (docs/journal-format.md, "Writing", rule 2).
    if (journal_on_ && OverlapsUnconfirmedLocked(c, cs)) {
      Status s = ConfirmLocked();
      if (!s.ok()) {
        decrements_.push_back({c, false});
        return s;
      }
    }
    if (r.base && c == r.base + r.clusters * cs) {
      std::lock_guard<std::mutex> g(zcache_mu_);
      r.clusters++;  // contiguous: the data may span into it
    } else {
      // The run ends here (the new cluster is not next to it); its buffer
      // is written like any full one, by this writer once it drops
      // meta_mu_, not under the lock: every other writer would wait.
      Status s = MoveRunToWriteOutLocked(true);
      if (s.ok() && !r.buf) {  // the first run, or the last one took its buffer along
        void* p = std::aligned_alloc(4096, r.capacity);
        s = p ? Status::OK() : Status::FromErrno(ENOMEM, "compressed-write cache");
        r.buf.reset(static_cast<uint8_t*>(p));
      }
      if (!s.ok()) {
        decrements_.push_back({c, false});  // give the new cluster back at the next flush
        return s;
      }
      std::lock_guard<std::mutex> g(zcache_mu_);
      r.base = c;
      r.clusters = 1;
      r.fill = 0;
      r.claimed_end = c;
    }
  }
  const uint64_t pos = r.base + r.fill;
  for (uint64_t c = pos & ~(cs - 1); c < pos + n; c += cs) {
    if (c < r.claimed_end) QCOW2J_RETURN_IF_ERROR(refcounts_->Update(c, 1).status());
  }
  r.claimed_end = std::max(r.claimed_end, ((pos + n - 1) & ~(cs - 1)) + cs);
  {
    std::lock_guard<std::mutex> g(zcache_mu_);
    std::memcpy(r.buf.get() + r.fill, z, n);
    r.fill += n;
  }
  *host = pos;
  return Status::OK();
}

Status Qcow2Image::MoveRunToWriteOutLocked(bool whole) {
  CompressedRun& r = zrun_;
  if (!r.base) return Status::OK();
  const uint64_t cs = cluster_size_;
  const uint64_t full = r.fill >> cluster_bits_;  // clusters no compressed cluster can enter
  // whole: the partial last cluster goes too, zero-padded, and the run ends
  // (nothing may enter that cluster afterwards), so the buffer leaves as it
  // is; else only the complete clusters leave and the partial one moves to
  // a fresh buffer, where the run goes on.
  const uint64_t clusters = whole ? r.clusters : full;  // a run has at least one
  if (clusters == 0) return Status::OK();
  const uint64_t bytes = clusters * cs;
  QCOW2J_RETURN_IF_ERROR(GuardWrite(r.base, bytes, MetadataKind::kData));  // overlap-guard
  std::unique_ptr<uint8_t, CompressedRun::Free> rest;
  if (!whole) {
    void* p = std::aligned_alloc(4096, r.capacity);
    if (p == nullptr) return Status::FromErrno(ENOMEM, "compressed-write cache");
    rest.reset(static_cast<uint8_t*>(p));
  }
  RunWriteOut o;
  o.base = r.base;
  o.bytes = bytes;
  // Each range is written once in a transaction (the run ends at every
  // flush), so the journal can vouch for it by its checksum.
  o.hash_it = JournalChecksums();
  std::lock_guard<std::mutex> g(zcache_mu_);
  if (whole) {
    std::memset(r.buf.get() + r.fill, 0, bytes - r.fill);
  } else {
    std::memcpy(rest.get(), r.buf.get() + bytes, r.fill - bytes);
  }
  o.buf = std::move(r.buf);
  r.buf = std::move(rest);  // none when whole: the next run allocates its own
  zout_.push_back(std::move(o));
  if (whole) {
    r.base = r.clusters = r.fill = r.claimed_end = 0;
  } else {
    r.base += bytes;
    r.clusters -= full;
    r.fill -= bytes;
  }
  return Status::OK();
}

void Qcow2Image::WriteOut(RunWriteOut* o) {
  // o stays listed (and its buffer readable) until it is marked written
  // and a holder of meta_mu_ reaps it; after the mark it is not touched.
  Status st = file_->Write(o->base, o->buf.get(), o->bytes);
  uint64_t h = st.ok() && o->hash_it ? XXH64(o->buf.get(), o->bytes, 0) : 0;
  std::lock_guard<std::mutex> g(zcache_mu_);
  o->st = st;
  o->hash = h;
  o->written = true;
}

Status Qcow2Image::WriteOutClaimed(std::unique_lock<std::mutex>& lk) {
  std::vector<RunWriteOut*> mine;
  for (RunWriteOut& o : zout_) {
    if (!o.claimed) {
      o.claimed = true;
      mine.push_back(&o);
    }
  }
  if (mine.empty()) return Status::OK();
  lk.unlock();
  for (RunWriteOut* o : mine) {
    WriteOut(o);
    zout_cv_.notify_all();
  }
  lk.lock();
  return ReapWriteOutsLocked();
}

Status Qcow2Image::SettleWriteOutsLocked() {
  if (zout_.empty()) return Status::OK();
  // Unclaimed ones (their creator stopped at an error) are written here.
  for (RunWriteOut& o : zout_) {
    if (o.claimed) continue;
    o.claimed = true;
    WriteOut(&o);
  }
  {
    // Their writers need only zcache_mu_ to mark them written.
    std::unique_lock<std::mutex> z(zcache_mu_);
    zout_cv_.wait(z, [&] {
      for (const RunWriteOut& o : zout_)
        if (!o.written) return false;
      return true;
    });
  }
  return ReapWriteOutsLocked();
}

Status Qcow2Image::ReapWriteOutsLocked() {
  Status err;
  for (auto it = zout_.begin(); it != zout_.end();) {
    bool written;
    {
      std::lock_guard<std::mutex> g(zcache_mu_);
      written = it->written;
    }
    if (!written) {
      ++it;
      continue;
    }
    if (!it->st.ok()) {
      if (err.ok()) err = it->st;
      NoteDataLossLocked();
    } else if (it->hash_it) {
      NoteChecksumLocked(it->base, it->bytes, it->hash);
    }
    std::lock_guard<std::mutex> g(zcache_mu_);
    it = zout_.erase(it);
  }
  return err;
}

Status Qcow2Image::FinishCompressedRunLocked() {
  QCOW2J_RETURN_IF_ERROR(MoveRunToWriteOutLocked(true));
  return SettleWriteOutsLocked();
}

Status Qcow2Image::ReadHostCompressed(uint64_t host, uint8_t* dst, size_t len) {
  // Bytes still in memory (the run, or clusters being written out) are
  // copied first, under zcache_mu_; the rest is read from disk after. A
  // write-out leaves the list only once written, so what is not found in
  // memory here is on disk already.
  const uint64_t end = host + len;
  std::vector<std::pair<uint64_t, uint64_t>> mem;  // host ranges copied from memory
  {
    std::lock_guard<std::mutex> g(zcache_mu_);
    auto copy = [&](uint64_t base, uint64_t size, const uint8_t* buf) {
      const uint64_t a = std::max(host, base), b = std::min(end, base + size);
      if (a >= b) return;
      std::memcpy(dst + (a - host), buf + (a - base), b - a);
      mem.emplace_back(a, b);
    };
    for (const RunWriteOut& o : zout_) copy(o.base, o.bytes, o.buf.get());
    const CompressedRun& r = zrun_;
    const uint64_t run_end = r.base + r.clusters * cluster_size_;
    if (r.base && end > r.base && host < run_end) {
      copy(r.base, r.clusters * cluster_size_, r.buf.get());
      if (end > run_end) {  // past the run: nothing written there yet
        std::memset(dst + (run_end - host), 0, end - run_end);
        mem.emplace_back(run_end, end);
      }
    }
  }
  std::sort(mem.begin(), mem.end());
  uint64_t pos = host;
  for (const auto& [a, b] : mem) {
    if (a > pos) QCOW2J_RETURN_IF_ERROR(file_->Read(pos, dst + (pos - host), a - pos));
    pos = std::max(pos, b);
  }
  return pos < end ? file_->Read(pos, dst + (pos - host), end - pos) : Status::OK();
}

}  // namespace qcow2j
