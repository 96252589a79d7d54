#include "alloc/refcount_manager.h"
#include "metadata/hex.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

#include "metadata/endian.h"
#include "metadata/refcount_block.h"

namespace qcow2j {
namespace {

}  // namespace

RefcountManager::RefcountManager(const Config& c)
    : cfg_(c),
      file_(c.file),
      cluster_bits_(c.cluster_bits),
      cluster_size_(1ull << c.cluster_bits),
      order_(c.refcount_order),
      block_entries_(RefcountBlockEntries(c.cluster_bits, c.refcount_order)),
      slice_bytes_(std::min<uint64_t>(cluster_size_, 4096)),
      slice_entries_((slice_bytes_ * 8) >> c.refcount_order),
      table_offset_(c.refcount_table_offset),
      table_clusters_(c.refcount_table_clusters),
      end_((c.file_size + cluster_size_ - 1) & ~(cluster_size_ - 1)) {
  size_t slices = c.cache_blocks ? c.cache_blocks * (cluster_size_ / slice_bytes_)
                                 : std::max<size_t>(16, (1u << 20) / slice_bytes_);
  cache_ = std::make_unique<TableCache>(slice_bytes_, slices,
                                        [this](uint64_t off, const uint8_t* data) {
                                          QCOW2J_RETURN_IF_ERROR(  // overlap-guard
                                              Guard(off, slice_bytes_, MetadataKind::kRefcountBlock));
                                          return file_->Write(off, data, slice_bytes_);
                                        });
}

uint64_t RefcountManager::MaxRefcount() const { return qcow2j::MaxRefcount(order_); }

bool RefcountManager::MeetsRefcountMetadata(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) const {
  std::vector<uint64_t> blocks;
  for (uint64_t e : table_)
    if (e & kRefcountTableOffsetMask) blocks.push_back(e & kRefcountTableOffsetMask);
  std::sort(blocks.begin(), blocks.end());
  const uint64_t table_end = table_offset_ + (uint64_t{table_clusters_} << cluster_bits_);
  for (auto [off, len] : ranges) {
    if (off < table_end && table_offset_ < off + len) return true;
    // The last block starting before the range's end.
    auto it = std::lower_bound(blocks.begin(), blocks.end(), off + len);
    if (it != blocks.begin() && *std::prev(it) + cluster_size_ > off) return true;
  }
  return false;
}

Status RefcountManager::Load() {
  if (table_clusters_ && table_offset_ >= cfg_.file_size)
    return Status::Corruption("the refcount table (" + Hex(table_offset_) +
                              ") starts past the end of the file (" +
                              std::to_string(cfg_.file_size) + " bytes)");
  uint64_t entries = (uint64_t{table_clusters_} << cluster_bits_) / 8;
  std::vector<uint8_t> raw(entries * 8);
  QCOW2J_RETURN_IF_ERROR(file_->Read(table_offset_, raw.data(), raw.size()));
  table_.resize(entries);
  for (uint64_t i = 0; i < entries; i++) {
    table_[i] = LoadBE64(raw.data() + i * 8);
    uint64_t off = table_[i] & kRefcountTableOffsetMask;
    if (off && (off & (cluster_size_ - 1)))
      return Status::Corruption("refcount table entry " + std::to_string(i) + " (" + Hex(off) +
                                ") is not aligned to the cluster size");
    // A block past the end of the file was never written: its refcounts
    // read as zeros, and appends would land wherever the corrupt entry
    // points (up to 2^64). QEMU's check calls it "outside image"; refuse to
    // write through it instead of guessing.
    if (off && off >= cfg_.file_size)
      return Status::Corruption("refcount table entry " + std::to_string(i) + " (" + Hex(off) +
                                ") points past the end of the file (" +
                                std::to_string(cfg_.file_size) +
                                " bytes); 'check -r all' rebuilds the refcounts");
    if (off) end_ = std::max(end_.load(), off + cluster_size_);
    if (off) (void)Claim(off, cluster_size_, MetadataKind::kRefcountBlock);  // overlap-guard
  }
  end_ = std::max(end_.load(), table_offset_ + (uint64_t{table_clusters_} << cluster_bits_));
  // overlap-guard: a broken image may already overlap; only writes are refused.
  (void)Claim(table_offset_, uint64_t{table_clusters_} << cluster_bits_, MetadataKind::kRefcountTable);
  return Status::OK();
}

Result<TableCache::Table*> RefcountManager::LoadSlice(uint64_t slice_offset) {
  return cache_->GetOrRead(slice_offset, file_);
}

Result<TableCache::Table*> RefcountManager::Slice(uint64_t ci, bool create, uint64_t* index) {
  uint64_t bi = ci / block_entries_;
  uint64_t in_block = ci % block_entries_;
  uint64_t slice_off = (in_block / slice_entries_) * slice_bytes_;
  *index = in_block % slice_entries_;
  if (bi < table_.size()) {
    uint64_t off = table_[bi] & kRefcountTableOffsetMask;
    if (off) return LoadSlice(off + slice_off);
  }
  if (!create) return static_cast<TableCache::Table*>(nullptr);
  if (bi >= table_.size()) {
    // Growing describes the new table in refcount blocks, which may create
    // exactly the block we are after: look again.
    QCOW2J_RETURN_IF_ERROR(GrowTable(bi + 1));
    return Slice(ci, create, index);
  }
  // Place the new block at the end of the file, where it reads as zeros
  // until written (flush extends the file over it). If it falls in the range
  // it describes, it counts itself; otherwise its own refcount goes into
  // whichever block covers it (created in turn by the recursive call).
  uint64_t off = end_;
  end_ += cluster_size_;
  QCOW2J_RETURN_IF_ERROR(Claim(off, cluster_size_, MetadataKind::kRefcountBlock));  // overlap-guard
  // A new block is all zeros: cached as such, never read (a failed read here
  // would leave the table pointing at a block that does not count itself).
  QCOW2J_RETURN_IF_ERROR(ReplayNewBlock(off));
  table_[bi] = off;
  table_dirty_ = true;
  if (track_) new_blocks_.push_back(bi);
  uint64_t own = off >> cluster_bits_;
  Status s = SetRange(own, 1, 1);
  if (!s.ok()) {
    table_[bi] = 0;
    if (track_) new_blocks_.pop_back();
    return s;
  }
  return LoadSlice(off + slice_off);
}

Status RefcountManager::GrowTable(uint64_t min_entries) {
  // Grow by half again (at least to min_entries), place the new table at
  // the end, and describe it in the blocks before switching to it.
  uint64_t want = std::max<uint64_t>(min_entries, table_.size() + table_.size() / 2 + 1);
  uint64_t clusters = (want * 8 + cluster_size_ - 1) >> cluster_bits_;
  if ((clusters << cluster_bits_) > (8ull << 20) * 8)
    return Status::FromErrno(ENOSPC, "refcount table would exceed its maximum size");
  uint64_t new_off = end_;
  end_ += clusters << cluster_bits_;
  QCOW2J_RETURN_IF_ERROR(  // overlap-guard
      Claim(new_off, clusters << cluster_bits_, MetadataKind::kRefcountTable));
  uint64_t old_off = table_offset_;
  uint32_t old_clusters = table_clusters_;
  table_.resize(clusters << cluster_bits_ >> 3, 0);
  table_offset_ = new_off;
  table_clusters_ = static_cast<uint32_t>(clusters);
  table_dirty_ = true;
  table_moved_ = track_;
  QCOW2J_RETURN_IF_ERROR(SetRange(new_off >> cluster_bits_, clusters, 1));
  // The old table is freed once the header points at the new one (WriteBack).
  if (cfg_.metadata_map) cfg_.metadata_map->Remove(old_off, MetadataKind::kRefcountTable);  // overlap-guard
  for (uint64_t i = 0; i < old_clusters; i++) {
    QCOW2J_ASSIGN_OR_RETURN(uint64_t rc, Update(old_off + (i << cluster_bits_), -1));
    // Not reusable before the header on disk points at the new table: until
    // then the old one is what an open (and journal replay) reads first.
    if (rc == 0 && !pending_free_.empty() && pending_free_.back() == ((old_off >> cluster_bits_) + i)) {
      pending_free_.pop_back();
      held_.push_back((old_off >> cluster_bits_) + i);
    }
  }
  return Status::OK();
}

Status RefcountManager::SetRange(uint64_t first_ci, uint64_t n, uint64_t value) {
  for (uint64_t ci = first_ci; ci < first_ci + n;) {
    uint64_t idx;
    QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, Slice(ci, true, &idx));
    uint64_t run = std::min(slice_entries_ - idx, first_ci + n - ci);
    std::span<uint8_t> blk(t->data(), slice_bytes_);
    for (uint64_t i = 0; i < run; i++) SetRefcount(blk, order_, idx + i, value);
    if (track_)
      for (uint64_t i = 0; i < run; i++) NoteChanged(ci + i);
    cache_->MarkDirty(t);
    cache_->Release(t);
    ci += run;
  }
  return Status::OK();
}

Result<uint64_t> RefcountManager::FirstInUse(uint64_t first_ci, uint64_t n) {
  // A slice at a time (a journal area is thousands of clusters).
  for (uint64_t ci = first_ci; ci < first_ci + n;) {
    uint64_t idx;
    QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, Slice(ci, false, &idx));
    const uint64_t run = std::min(slice_entries_ - idx, first_ci + n - ci);
    if (t) {
      std::span<const uint8_t> blk(t->data(), slice_bytes_);
      for (uint64_t i = 0; i < run; i++) {
        if (GetRefcount(blk, order_, idx + i)) {
          cache_->Release(t);
          return ci + i - first_ci;
        }
      }
      cache_->Release(t);
    }
    ci += run;
  }
  return n;
}

Result<uint64_t> RefcountManager::Get(uint64_t host_offset) {
  uint64_t ci = host_offset >> cluster_bits_;
  uint64_t idx;
  QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, Slice(ci, false, &idx));
  if (!t) return uint64_t{0};
  uint64_t v = GetRefcount(std::span<const uint8_t>(t->data(), slice_bytes_), order_, idx);
  cache_->Release(t);
  return v;
}

Result<uint64_t> RefcountManager::Update(uint64_t host_offset, int64_t delta) {
  uint64_t ci = host_offset >> cluster_bits_;
  uint64_t idx;
  QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, Slice(ci, delta > 0, &idx));
  if (!t)
    return Status::Corruption("refcount of cluster at " + Hex(host_offset) +
                              " would drop below 0 (no refcount block)");
  std::span<uint8_t> blk(t->data(), slice_bytes_);
  uint64_t old = GetRefcount(blk, order_, idx);
  if (delta < 0 && old < static_cast<uint64_t>(-delta)) {
    cache_->Release(t);
    return Status::Corruption("refcount of cluster at " + Hex(host_offset) + " would drop below 0");
  }
  uint64_t nv = old + static_cast<uint64_t>(delta);
  if (delta > 0 && (nv < old || nv > MaxRefcount())) {
    cache_->Release(t);
    return Status::InvalidArgument("refcount of cluster at " + Hex(host_offset) +
                                   " would exceed the maximum " + std::to_string(MaxRefcount()));
  }
  SetRefcount(blk, order_, idx, nv);
  if (track_) NoteChanged(ci);
  cache_->MarkDirty(t);
  cache_->Release(t);
  if (nv == 0) pending_free_.push_back(ci);
  return nv;
}

Result<uint64_t> RefcountManager::Allocate(uint64_t n, bool* fresh) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < n) continue;
    uint64_t ci = it->first;
    uint64_t len = it->second;
    free_.erase(it);
    if (len > n) free_[ci + n] = len - n;
    // A free cluster may have been taken by a refcount block meanwhile.
    QCOW2J_ASSIGN_OR_RETURN(uint64_t used, FirstInUse(ci, n));
    if (used < n) continue;  // dropped from the free map: retry with the rest
    QCOW2J_RETURN_IF_ERROR(SetRange(ci, n, 1));
    if (fresh) *fresh = false;
    return ci << cluster_bits_;
  }
  // Append. Skip clusters that are in use (e.g. a refcount block the last
  // allocation placed at the end).
  for (;;) {
    uint64_t off = end_;
    uint64_t ci = off >> cluster_bits_;
    QCOW2J_ASSIGN_OR_RETURN(uint64_t used, FirstInUse(ci, n));
    if (used < n) {
      end_ = (ci + used + 1) << cluster_bits_;
      continue;
    }
    end_ = off + (n << cluster_bits_);
    QCOW2J_RETURN_IF_ERROR(SetRange(ci, n, 1));
    // SetRange may have appended a refcount block after us; that is fine.
    if (fresh) *fresh = true;
    return off;
  }
}

void RefcountManager::AddFree(uint64_t ci, uint64_t n) {
  auto next = free_.lower_bound(ci);
  if (next != free_.end() && next->first == ci + n) {
    n += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == ci) {
      prev->second += n;
      return;
    }
  }
  free_[ci] = n;
}

void RefcountManager::ReleasePendingFrees() {
  for (uint64_t ci : pending_free_) AddFree(ci, 1);
  pending_free_.clear();
}

Status RefcountManager::WriteBack(bool replayed) {
  // Blocks first, then the table that points at them, then the header that
  // points at the table: each step only references what is already written.
  QCOW2J_RETURN_IF_ERROR(cache_->FlushDirty());
  if (!table_dirty_) return Status::OK();
  // A table entry must never reach the disk before the block it points at
  // (a crash would leave the entry pointing at zeros: refcounts too low).
  // After a replay it may: such a crash leaves the journal bit set, and
  // replay zeroes the new block (its new-table record) and restores its
  // refcounts before anything reads them.
  const bool moved = table_offset_ != cfg_.refcount_table_offset || table_clusters_ != cfg_.refcount_table_clusters;
  if (!replayed || moved) QCOW2J_RETURN_IF_ERROR(file_->Sync());
  std::vector<uint8_t> raw(table_.size() * 8);
  for (size_t i = 0; i < table_.size(); i++) StoreBE64(raw.data() + i * 8, table_[i]);
  QCOW2J_RETURN_IF_ERROR(Guard(table_offset_, raw.size(), MetadataKind::kRefcountTable));  // overlap-guard
  QCOW2J_RETURN_IF_ERROR(file_->Write(table_offset_, raw.data(), raw.size()));
  if (moved) {
    QCOW2J_RETURN_IF_ERROR(file_->Sync());
    QCOW2J_RETURN_IF_ERROR(cfg_.update_header(table_offset_, table_clusters_));
    cfg_.refcount_table_offset = table_offset_;
    cfg_.refcount_table_clusters = table_clusters_;
    for (uint64_t ci : held_) AddFree(ci, 1);
    held_.clear();
  }
  table_dirty_ = false;
  return Status::OK();
}

Status RefcountManager::JournalRecords(std::vector<JournalRecord>* out) {
  if (table_moved_) {
    // The header switches to the new table; every live entry is restated,
    // because replay starts from the old table's contents.
    HeaderUpdate h;
    h.offset = 48;  // refcount_table_offset, refcount_table_clusters
    h.bytes.resize(12);
    StoreBE64(h.bytes.data(), table_offset_);
    StoreBE32(h.bytes.data() + 8, table_clusters_);
    out->push_back(std::move(h));
    for (uint64_t i = 0; i < table_.size(); i++)
      if (table_[i]) out->push_back(RefcountTableUpdate{i, table_[i]});
  } else {
    for (uint64_t bi : new_blocks_) out->push_back(RefcountTableUpdate{bi, table_[bi]});
  }
  for (uint64_t bi : new_blocks_)
    out->push_back(NewTable{JournalTableKind::kRefcountBlock, table_[bi] & kRefcountTableOffsetMask});
  if (!changed_ascending_) SortChanges();
  // The refcount of changed_[k], its slice looked up once per slice: a
  // commit after a large allocation restates thousands of clusters.
  TableCache::Table* slice = nullptr;
  uint64_t slice_first = 0;  // cluster index of the slice's first entry
  auto value = [&](uint64_t ci) -> Result<uint64_t> {
    if (!slice || ci < slice_first || ci >= slice_first + slice_entries_) {
      if (slice) cache_->Release(slice);
      slice = nullptr;
      uint64_t idx;
      QCOW2J_ASSIGN_OR_RETURN(slice, Slice(ci, false, &idx));
      if (!slice) return uint64_t{0};
      slice_first = ci - idx;
    }
    return GetRefcount(std::span<const uint8_t>(slice->data(), slice_bytes_), order_, ci - slice_first);
  };
  Status st = Status::OK();
  auto get = [&](uint64_t ci, uint64_t* v) {
    Result<uint64_t> r = value(ci);
    if (!r.ok()) st = r.status();
    *v = r.ok() ? *r : 0;
    return r.ok();
  };
  for (size_t i = 0; i < changed_.size();) {
    uint64_t v = 0;
    if (!get(changed_[i], &v)) break;
    size_t j = i + 1;
    uint64_t w = 0;
    while (j < changed_.size() && changed_[j] == changed_[j - 1] + 1 && get(changed_[j], &w) && w == v) j++;
    if (!st.ok()) break;
    if (j - i == 1) {
      out->push_back(RefcountUpdate{changed_[i], v});
    } else {
      out->push_back(RefcountRun{changed_[i], j - i, v});
    }
    i = j;
  }
  if (slice) cache_->Release(slice);
  return st;
}

void RefcountManager::SortChanges() {
  // The list is mostly ascending runs over a dense range of clusters (those
  // written since the last commit): mark them in a bitmap of that range and
  // read it back in order, in linear time. A sparse list is sorted.
  if (changed_.empty()) return;
  const auto [lo, hi] = std::minmax_element(changed_.begin(), changed_.end());
  const uint64_t first = *lo, span = *hi - *lo + 1;
  if (span / 64 <= changed_.size()) {
    std::vector<uint64_t> bits((span + 63) / 64);
    for (uint64_t ci : changed_) bits[(ci - first) / 64] |= uint64_t{1} << ((ci - first) % 64);
    changed_.clear();
    for (uint64_t w = 0; w < bits.size(); w++)
      for (uint64_t b = bits[w]; b; b &= b - 1) changed_.push_back(first + w * 64 + std::countr_zero(b));
  } else {
    std::sort(changed_.begin(), changed_.end());
    changed_.erase(std::unique(changed_.begin(), changed_.end()), changed_.end());
  }
  changed_ascending_ = true;
}

void RefcountManager::NoteChanged(uint64_t cluster_index) {
  // Appending allocation changes refcounts in ascending order, often the
  // same cluster several times in a row: keep such a list sorted and free of
  // repeats as it grows, and sort only a list that is not.
  if (!changed_.empty()) {
    if (changed_.back() == cluster_index) return;
    if (changed_.back() > cluster_index) changed_ascending_ = false;
  }
  changed_.push_back(cluster_index);
}

void RefcountManager::ForgetChanges() {
  changed_ascending_ = true;
  changed_.clear();
  new_blocks_.clear();
  table_moved_ = false;
}

Status RefcountManager::ReplaySet(uint64_t cluster_index, uint64_t n, uint64_t value) {
  if (value > MaxRefcount())
    return Status::Corruption("journal: refcount " + std::to_string(value) + " of cluster " +
                              std::to_string(cluster_index) + " exceeds the maximum " +
                              std::to_string(MaxRefcount()));
  for (uint64_t ci = cluster_index; ci < cluster_index + n;) {
    uint64_t idx;
    QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, Slice(ci, false, &idx));
    if (!t) {
      if (value == 0) {  // no block: already 0
        ci = (ci / block_entries_ + 1) * block_entries_;
        continue;
      }
      return Status::Corruption("journal: refcount of cluster " + std::to_string(ci) +
                                " has no refcount block");
    }
    uint64_t run = std::min(slice_entries_ - idx, cluster_index + n - ci);
    std::span<uint8_t> blk(t->data(), slice_bytes_);
    for (uint64_t i = 0; i < run; i++) SetRefcount(blk, order_, idx + i, value);
    cache_->MarkDirty(t);
    cache_->Release(t);
    if (value) end_ = std::max(end_.load(), (ci + run) << cluster_bits_);
    ci += run;
  }
  return Status::OK();
}

Status RefcountManager::ReplayNewBlock(uint64_t block_offset) {
  if (block_offset == 0 || (block_offset & (cluster_size_ - 1)))
    return Status::Corruption("journal: new refcount block at " + Hex(block_offset) +
                              " is not cluster aligned");
  QCOW2J_RETURN_IF_ERROR(cache_->ZeroTables(block_offset, cluster_size_));
  end_ = std::max(end_.load(), block_offset + cluster_size_);
  return Status::OK();
}

Status RefcountManager::ReplayTableEntry(uint64_t index, uint64_t block_offset) {
  if (index >= table_.size())
    return Status::Corruption("journal: refcount table index " + std::to_string(index) +
                              " is beyond the table (" + std::to_string(table_.size()) + " entries)");
  if (block_offset & (cluster_size_ - 1))
    return Status::Corruption("journal: refcount block offset " + Hex(block_offset) +
                              " is not cluster aligned");
  table_[index] = block_offset;
  table_dirty_ = true;
  if (block_offset) end_ = std::max(end_.load(), block_offset + cluster_size_);
  return Status::OK();
}

Status RefcountManager::ReplayTableMove(uint64_t table_offset, uint32_t clusters) {
  if (table_offset == 0 || (table_offset & (cluster_size_ - 1)) || clusters == 0 ||
      (uint64_t{clusters} << cluster_bits_) > (8ull << 20) * 8)
    return Status::Corruption("journal: refcount table move to " + Hex(table_offset) + " (" +
                              std::to_string(clusters) + " clusters) is invalid");
  table_offset_ = table_offset;
  table_clusters_ = clusters;
  table_.resize((uint64_t{clusters} << cluster_bits_) / 8, 0);
  table_dirty_ = true;
  end_ = std::max(end_.load(), table_offset + (uint64_t{clusters} << cluster_bits_));
  return Status::OK();
}

}  // namespace qcow2j
