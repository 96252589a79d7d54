#include "metadata/table_cache.h"

#include <algorithm>
#include <cstring>

#include "metadata/endian.h"
#include <cerrno>
#include <new>
#include <string>

namespace qcow2j {

namespace {
constexpr size_t kSlabSlots = 64;
}  // namespace
namespace {

constexpr size_t kInitialBuckets = 16;

// 4 KiB (O_DIRECT) for real cluster sizes; tiny tables in tests get the
// largest power of two that divides them so small slots stay small.
size_t AlignmentFor(size_t table_size) {
  size_t a = table_size == 0 ? 16 : (table_size & (~table_size + 1));
  return std::clamp<size_t>(a, 16, 4096);
}

}  // namespace

TableCache::TableCache(size_t table_size, size_t capacity_tables, WriteBack wb)
    : table_size_(table_size),
      alignment_(AlignmentFor(table_size)),
      capacity_(std::max<size_t>(capacity_tables, 1)),
      write_back_(std::move(wb)),
      buckets_(new Index::bucket_type[kInitialBuckets]),
      bucket_count_(kInitialBuckets),
      index_(Index::bucket_traits(buckets_.get(), bucket_count_)) {}

TableCache::~TableCache() {
  dirty_.clear();
  lru_.clear();
  orphans_.clear_and_dispose(Delete);
  index_.clear_and_dispose(Delete);
}

Result<TableCache::Table*> TableCache::NewTable() {
  if (free_bufs_.empty()) {
    size_t bytes = std::max<size_t>(table_size_, 1);
    size_t slots = std::min<size_t>(kSlabSlots, std::max<size_t>(1, capacity_ - std::min(capacity_, slots_allocated_)));
    slots = std::max<size_t>(1, std::min(slots, std::max<size_t>(1, (4u << 20) / bytes)));
    void* p = nullptr;
    if (::posix_memalign(&p, alignment_, bytes * slots) != 0) {
      return Status::FromErrno(ENOMEM, "table cache: allocate " + std::to_string(slots) + " tables of " +
                                           std::to_string(table_size_) + " bytes");
    }
    slabs_.emplace_back(static_cast<uint8_t*>(p));
    for (size_t i = 0; i < slots; i++) free_bufs_.push_back(static_cast<uint8_t*>(p) + i * bytes);
    slots_allocated_ += slots;
  }
  Table* t = new (std::nothrow) Table();
  if (t == nullptr) return Status::FromErrno(ENOMEM, "table cache: allocate a table");
  t->data_ = free_bufs_.back();
  free_bufs_.pop_back();
  return t;
}

void TableCache::MaybeGrowIndex() {
  if (index_.size() < bucket_count_) return;
  size_t n = bucket_count_ * 2;
  std::unique_ptr<Index::bucket_type[]> bigger(new Index::bucket_type[n]);
  index_.rehash(Index::bucket_traits(bigger.get(), n));
  buckets_ = std::move(bigger);
  bucket_count_ = n;
}

void TableCache::MarkClean(Table* t) {
  if (!t->dirty_) return;
  dirty_.erase(dirty_.iterator_to(*t));
  t->dirty_ = false;
  // Keep-dirty mode kept it off the LRU list while dirty: evictable again.
  if (t->pins_ == 0 && !t->erased_ && !t->list_hook_.is_linked()) lru_.push_back(*t);
}

void TableCache::set_compact(bool on) {
  compact_on_ = on && table_size_ >= 32 && table_size_ % 16 == 0;
  if (!compact_on_) compact_.clear();
}

bool TableCache::Describe(const uint8_t* data, Progression* p) const {
  if (!compact_on_) return false;
  p->first[0] = LoadBE64(data);
  p->first[1] = LoadBE64(data + 8);
  p->step[0] = LoadBE64(data + 16) - p->first[0];
  p->step[1] = LoadBE64(data + 24) - p->first[1];
  uint64_t w0 = p->first[0], w1 = p->first[1];
  for (size_t off = 16; off < table_size_; off += 16) {
    w0 += p->step[0];
    w1 += p->step[1];
    if (LoadBE64(data + off) != w0 || LoadBE64(data + off + 8) != w1) return false;
  }
  return true;
}

void TableCache::Expand(const Progression& p, uint8_t* data) const {
  uint64_t w0 = p.first[0], w1 = p.first[1];
  for (size_t off = 0; off < table_size_; off += 16) {
    StoreBE64(data + off, w0);
    StoreBE64(data + off + 8, w1);
    w0 += p.step[0];
    w1 += p.step[1];
  }
}

void TableCache::Remember(uint64_t offset, const Progression& p) {
  if (compact_.size() >= capacity_ * kCompactPerSlot) {
    // Full: forget one (any) description. Hash order is as good as random.
    compact_.erase(compact_.begin());
  }
  compact_[offset] = p;
}

bool TableCache::Compactable(const uint8_t* data) const {
  Progression p;
  return Describe(data, &p);
}

bool TableCache::Offer(uint64_t offset, const uint8_t* data) {
  if (!compact_on_ || index_.find(offset) != index_.end()) return false;
  Progression p;
  if (!Describe(data, &p)) return false;
  Remember(offset, p);
  return true;
}

Result<TableCache::Table*> TableCache::EvictOne() {
  if (lru_.empty()) {
    return Status::Busy("table cache: all " + std::to_string(index_.size()) +
                        " tables are pinned");
  }
  Table* victim = &lru_.back();
  if (victim->dirty_) {
    Status s = write_back_(victim->offset_, victim->data());
    if (!s.ok()) {
      return s.Annotate("table cache: write-back of table at offset " +
                        std::to_string(victim->offset_) + " before eviction");
    }
    MarkClean(victim);
  }
  lru_.pop_back();
  index_.erase(index_.iterator_to(*victim));
  // Clean now, so its contents are the file's: keep them as a description.
  if (compact_on_) {
    Progression p;
    if (Describe(victim->data(), &p)) Remember(victim->offset_, p);
  }
  return victim;
}

TableCache::Table* TableCache::Get(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end()) {
    if (compact_.empty()) return nullptr;
    auto d = compact_.find(offset);
    if (d == compact_.end()) return nullptr;
    // Described: expand into a slot (the eviction this may cause can add
    // descriptions, so take this one out first).
    Progression p = d->second;
    compact_.erase(d);
    auto put = Put(offset);
    if (!put.ok()) {
      Remember(offset, p);
      return nullptr;
    }
    Expand(p, (*put)->data());
    return *put;
  }
  Table* t = &*it;
  if (t->pins_ == 0 && t->list_hook_.is_linked()) lru_.erase(lru_.iterator_to(*t));
  ++t->pins_;
  return t;
}

Result<TableCache::Table*> TableCache::Put(uint64_t offset) {
  if (index_.find(offset) != index_.end()) {
    return Status::InvalidArgument("table cache: table at offset " + std::to_string(offset) +
                                   " is already cached");
  }
  if (!compact_.empty()) compact_.erase(offset);  // the caller fills it anew
  Table* t = nullptr;
  // Usually one eviction; more only after Resize shrank below pinned tables.
  while (index_.size() >= capacity_) {
    if (keep_dirty_ && lru_.empty()) break;  // soft capacity: every unpinned table is dirty
    QCOW2J_ASSIGN_OR_RETURN(Table * victim, EvictOne());
    if (t != nullptr) Recycle(t);
    t = victim;
  }
  if (t == nullptr) {
    QCOW2J_ASSIGN_OR_RETURN(t, NewTable());
  }
  t->offset_ = offset;
  t->pins_ = 1;
  t->dirty_ = false;
  t->erased_ = false;
  MaybeGrowIndex();
  index_.insert(*t);
  return t;
}

void TableCache::Release(Table* t) {
  if (t == nullptr || t->pins_ == 0) return;  // unbalanced Release: ignore, never abort
  if (--t->pins_ > 0) return;
  if (t->erased_) {
    orphans_.erase(orphans_.iterator_to(*t));
    Recycle(t);
    return;
  }
  if (keep_dirty_ && t->dirty_) return;  // not evictable until written back
  lru_.push_front(*t);
}

void TableCache::MarkDirty(Table* t) {
  if (t == nullptr || t->dirty_ || t->erased_) return;
  t->dirty_ = true;
  dirty_.insert(*t);
  if (keep_dirty_ && t->list_hook_.is_linked()) lru_.erase(lru_.iterator_to(*t));
}

Status TableCache::ZeroTables(uint64_t offset, uint64_t bytes) {
  for (uint64_t off = offset; off < offset + bytes; off += table_size_) {
    Table* t = Get(off);
    if (!t) {
      QCOW2J_ASSIGN_OR_RETURN(t, Put(off));
    }
    std::memset(t->data(), 0, table_size_);
    MarkDirty(t);
    Release(t);
  }
  return Status::OK();
}

Result<TableCache::Table*> TableCache::GetOrRead(uint64_t offset, File* file) {
  if (Table* t = Get(offset)) return t;
  QCOW2J_ASSIGN_OR_RETURN(Table * t, Put(offset));
  Status s = file->Read(offset, t->data(), table_size_);
  if (!s.ok()) {
    Release(t);
    Erase(offset);
    return s;
  }
  return t;
}

Status TableCache::FlushDirty() {
  while (!dirty_.empty()) {
    Table& t = *dirty_.begin();
    Status s = write_back_(t.offset_, t.data());
    if (!s.ok()) {
      return s.Annotate("table cache: write-back of table at offset " + std::to_string(t.offset_));
    }
    MarkClean(&t);
  }
  return Status::OK();
}

void TableCache::Erase(uint64_t offset) {
  if (!compact_.empty()) compact_.erase(offset);
  auto it = index_.find(offset);
  if (it == index_.end()) return;
  Table* t = &*it;
  index_.erase(it);
  t->erased_ = t->pins_ > 0;  // MarkClean must not put it back on the LRU list
  MarkClean(t);
  if (t->pins_ == 0) {
    if (t->list_hook_.is_linked()) lru_.erase(lru_.iterator_to(*t));
    Recycle(t);
  } else {
    t->erased_ = true;
    orphans_.push_back(*t);
  }
}

void TableCache::Clear() {
  compact_.clear();
  dirty_.clear();
  lru_.clear();
  index_.clear_and_dispose([this](Table* t) {
    t->dirty_ = false;
    if (t->pins_ == 0) {
      Recycle(t);
    } else {
      t->erased_ = true;
      orphans_.push_back(*t);
    }
  });
}

Status TableCache::Resize(size_t capacity) {
  if (capacity == 0) return Status::InvalidArgument("table cache: capacity must be at least 1");
  capacity_ = capacity;
  while (index_.size() > capacity_ && !lru_.empty()) {
    QCOW2J_ASSIGN_OR_RETURN(Table * victim, EvictOne());
    Recycle(victim);
  }
  return Status::OK();
}

}  // namespace qcow2j
