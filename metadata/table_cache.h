// The cache of metadata tables (L2 tables, refcount blocks), after LevelDB's
// util/cache.cc: a hash index keyed by the table's host offset plus an LRU
// list, both intrusive (boost::intrusive), so every operation is O(1) at any
// size except FlushDirty, which visits only the dirty tables.
//
// Pinned tables (between Get/Put and Release) are kept OFF the LRU list: the
// LRU list holds exactly the evictable tables, so eviction takes its tail
// without skipping anything. Dirty tables are also kept in an offset-ordered
// intrusive set, so a flush writes them back in offset order (sequential I/O)
// without sorting or scanning clean ones.
//
// Slots are allocated on demand, up to capacity; a slot's buffer is reused by
// the table that evicts it. Buffers are aligned (to 4 KiB when the table is at
// least that big) so they can be read and written with O_DIRECT.
//
// NOT thread-safe: the engine serialises every call under its metadata lock.
#ifndef QCOW2J_METADATA_TABLE_CACHE_H_
#define QCOW2J_METADATA_TABLE_CACHE_H_

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <boost/intrusive/unordered_set.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

class TableCache {
 public:
  class Table {
   public:
    uint64_t offset() const { return offset_; }
    uint8_t* data() { return data_; }
    const uint8_t* data() const { return data_; }
    bool dirty() const { return dirty_; }
    uint32_t pins() const { return pins_; }

   private:
    friend class TableCache;
    struct Free {
      void operator()(uint8_t* p) const { std::free(p); }
    };
    Table() = default;

    boost::intrusive::unordered_set_member_hook<> hash_hook_;
    boost::intrusive::list_member_hook<> list_hook_;  // LRU when unpinned; orphans when erased
    boost::intrusive::set_member_hook<> dirty_hook_;
    uint64_t offset_ = 0;
    uint32_t pins_ = 0;
    bool dirty_ = false;
    bool erased_ = false;  // Erase()d or Clear()ed while pinned; freed on last Release
    uint8_t* data_ = nullptr;  // a slot of one of the cache's slabs
  };

  // Writes table_size bytes back to offset. Called for dirty tables only.
  using WriteBack = std::function<Status(uint64_t offset, const uint8_t* data)>;

  // capacity_tables of 0 is treated as 1.
  TableCache(size_t table_size, size_t capacity_tables, WriteBack wb);
  // Frees every table, pinned or not, without writing anything back: flush
  // and release before destroying the cache.
  ~TableCache();
  TableCache(const TableCache&) = delete;
  TableCache& operator=(const TableCache&) = delete;

  // Hit: pins the table and returns it. Miss: nullptr.
  Table* Get(uint64_t offset);
  // A new pinned, clean slot for offset, whose contents are undefined (the
  // caller fills it, from disk or as a new table). When the cache is full the
  // least recently released unpinned table is evicted, written back first if
  // dirty. Busy if every table is pinned; the write-back's error if it fails
  // (the victim then stays cached and dirty); InvalidArgument if offset is
  // already cached.
  Result<Table*> Put(uint64_t offset);
  // Unpins; the table becomes the most recently used once no pin remains.
  void Release(Table* t);
  // Get, or on a miss a new slot filled from `file` at offset (table_size
  // bytes); a failed read leaves nothing cached. The table comes pinned.
  Result<Table*> GetOrRead(uint64_t offset, File* file);
  void MarkDirty(Table* t);
  // The tables at [offset, offset + bytes) become zero-filled and dirty
  // (cached or not; nothing is read): a newly created table.
  Status ZeroTables(uint64_t offset, uint64_t bytes);
  // Keep-dirty mode (the journal's): dirty tables are never evicted, because
  // writing one in place could expose changes that are not committed yet.
  // They leave the LRU list while dirty and return to it once written back,
  // and the capacity becomes soft: when every unpinned table is dirty, Put
  // allocates a slot beyond it instead of evicting. The engine checkpoints
  // (FlushDirty) to bring the cache back under its capacity.
  void set_keep_dirty(bool on) { keep_dirty_ = on; }
  bool keep_dirty() const { return keep_dirty_; }
  // Writes back every dirty table in offset order and marks it clean. Stops
  // at the first failure (the tables written so far are clean).
  Status FlushDirty();
  // Drops offset without writing it back (its cluster was freed). A pinned
  // table leaves the index at once and is freed by its last Release.
  void Erase(uint64_t offset);
  // Erase() of every table. Dirty contents are discarded: FlushDirty first.
  void Clear();
  // Shrinking evicts (with write-back) unpinned tables down to capacity;
  // pinned ones above it are evicted by later Puts. 0 is InvalidArgument.
  Status Resize(size_t capacity);

  // Compact mode (the L2 cache's): a clean table whose 16-byte records form
  // an arithmetic progression (record i = first + i * step, each of its two
  // big-endian 64-bit words with its own step) is kept, once evicted, as
  // that 32-byte description instead of being dropped. A table written by
  // a sequential stream or by metadata preallocation maps consecutive host
  // clusters, so its L2 slices are such progressions: a cache of 32 MiB
  // then remembers the whole table set of a multi-TiB image, and a miss on
  // one of them costs a 4 KiB expansion instead of a disk read. The
  // descriptions hold only what the file holds (clean tables); every call
  // that changes or drops a table (Put, ZeroTables, Erase, Clear) drops its
  // description too, and an offset is never both cached and described.
  // At most capacity * kCompactPerSlot descriptions are kept.
  void set_compact(bool on);
  bool compact() const { return compact_on_; }
  // Compact mode: describes the table at `offset` (whose current file
  // contents are `data`) unless it is cached or not a progression. True if
  // it is described now.
  bool Offer(uint64_t offset, const uint8_t* data);
  // Whether `data` is a progression (the test Offer applies).
  bool Compactable(const uint8_t* data) const;
  size_t described() const { return compact_.size(); }

  size_t size() const { return index_.size(); }
  size_t capacity() const { return capacity_; }
  size_t dirty_count() const { return dirty_.size(); }
  size_t table_size() const { return table_size_; }

 private:
  struct OffsetOf {
    using type = uint64_t;
    uint64_t operator()(const Table& t) const { return t.offset_; }
  };
  // Offsets are multiples of the table size, so their low bits are zero;
  // mix before the power-of-two bucket mask takes them.
  struct OffsetHash {
    size_t operator()(uint64_t v) const {
      v *= 0x9E3779B97F4A7C15ull;
      return static_cast<size_t>(v ^ (v >> 29));
    }
  };
  using HashHook = boost::intrusive::member_hook<Table, boost::intrusive::unordered_set_member_hook<>,
                                                 &Table::hash_hook_>;
  using Index = boost::intrusive::unordered_set<
      Table, HashHook, boost::intrusive::key_of_value<OffsetOf>,
      boost::intrusive::hash<OffsetHash>, boost::intrusive::power_2_buckets<true>,
      boost::intrusive::constant_time_size<true>>;
  using List = boost::intrusive::list<
      Table, boost::intrusive::member_hook<Table, boost::intrusive::list_member_hook<>,
                                           &Table::list_hook_>,
      boost::intrusive::constant_time_size<true>>;
  using DirtySet = boost::intrusive::set<
      Table, boost::intrusive::member_hook<Table, boost::intrusive::set_member_hook<>,
                                           &Table::dirty_hook_>,
      boost::intrusive::key_of_value<OffsetOf>, boost::intrusive::constant_time_size<true>>;

  struct Progression {
    uint64_t first[2];
    uint64_t step[2];
  };
  static constexpr size_t kCompactPerSlot = 8;
  bool Describe(const uint8_t* data, Progression* p) const;
  void Expand(const Progression& p, uint8_t* data) const;
  void Remember(uint64_t offset, const Progression& p);
  Result<Table*> NewTable();
  // Grows the bucket array so the load factor stays at most 1 (amortised O(1)).
  void MaybeGrowIndex();
  // Writes back (if dirty) and unlinks the LRU tail; returns it, unlinked.
  Result<Table*> EvictOne();
  void MarkClean(Table* t);
  static void Delete(Table* t) { delete t; }
  // Returns t's buffer to the free slots and deletes t.
  void Recycle(Table* t) {
    free_bufs_.push_back(t->data_);
    delete t;
  }
  // Buffers come from slabs of many slots: one aligned allocation per table
  // would cost a page of allocator overhead per 4 KiB slice.
  std::vector<std::unique_ptr<uint8_t, Table::Free>> slabs_;
  std::vector<uint8_t*> free_bufs_;
  size_t slots_allocated_ = 0;

  const size_t table_size_;
  const size_t alignment_;
  size_t capacity_;
  WriteBack write_back_;
  bool keep_dirty_ = false;

  std::unique_ptr<Index::bucket_type[]> buckets_;
  size_t bucket_count_;
  Index index_;   // every live table, pinned or not
  List lru_;      // unpinned live tables, most recent at the front
  List orphans_;  // erased while pinned
  DirtySet dirty_;
  bool compact_on_ = false;
  std::unordered_map<uint64_t, Progression> compact_;  // offset -> description (never cached too)
};

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_TABLE_CACHE_H_
