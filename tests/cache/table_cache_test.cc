#include "metadata/table_cache.h"

#include <cstring>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace qcow2j {
namespace {

// Records every write-back: (offset, first byte of the table).
struct Recorder {
  std::vector<std::pair<uint64_t, uint8_t>> writes;
  Status fail_with = Status::OK();
  TableCache::WriteBack Fn() {
    return [this](uint64_t off, const uint8_t* data) {
      if (!fail_with.ok()) return fail_with;
      writes.emplace_back(off, data[0]);
      return Status::OK();
    };
  }
};

constexpr size_t kTable = 4096;

// Put + fill with `fill` + Release.
void Load(TableCache& c, uint64_t off, uint8_t fill) {
  auto t = c.Put(off);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  std::memset((*t)->data(), fill, kTable);
  c.Release(*t);
}

TEST(TableCacheTest, HitMissAndAlignment) {
  Recorder rec;
  TableCache c(kTable, 4, rec.Fn());
  EXPECT_EQ(c.Get(0x10000), nullptr);
  Load(c, 0x10000, 7);
  TableCache::Table* t = c.Get(0x10000);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->offset(), 0x10000u);
  EXPECT_EQ(t->data()[kTable - 1], 7);
  EXPECT_EQ(t->pins(), 1u);
  EXPECT_FALSE(t->dirty());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 4096, 0u);  // O_DIRECT-ready
  c.Release(t);
  EXPECT_EQ(c.Get(0x20000), nullptr);
  EXPECT_EQ(c.size(), 1u);
  // A second Put of a cached offset is a caller bug, reported, not a crash.
  EXPECT_EQ(c.Put(0x10000).status().code(), Code::kInvalidArgument);
}

TEST(TableCacheTest, EvictsLeastRecentlyUsed) {
  Recorder rec;
  TableCache c(kTable, 3, rec.Fn());
  Load(c, 0 * kTable, 0);
  Load(c, 1 * kTable, 1);
  Load(c, 2 * kTable, 2);
  // Touch 0: now 1 is the least recent.
  c.Release(c.Get(0));
  Load(c, 3 * kTable, 3);
  EXPECT_EQ(c.Get(1 * kTable), nullptr);
  for (uint64_t i : {0, 2, 3}) {
    TableCache::Table* t = c.Get(i * kTable);
    ASSERT_NE(t, nullptr) << i;
    EXPECT_EQ(t->data()[0], i);
    c.Release(t);
  }
  // Order of use is now 0, 2, 3: 0 goes next.
  Load(c, 4 * kTable, 4);
  EXPECT_EQ(c.Get(0), nullptr);
  EXPECT_EQ(c.size(), 3u);
  EXPECT_TRUE(rec.writes.empty());  // clean tables are dropped without I/O
}

TEST(TableCacheTest, PinnedTablesAreNeverEvicted) {
  Recorder rec;
  TableCache c(kTable, 2, rec.Fn());
  auto a = c.Put(0);
  ASSERT_TRUE(a.ok());
  Load(c, kTable, 1);
  // Only the unpinned one can go.
  Load(c, 2 * kTable, 2);
  EXPECT_EQ(c.Get(kTable), nullptr);
  TableCache::Table* b = c.Get(2 * kTable);
  ASSERT_NE(b, nullptr);
  // Everything pinned: Put fails cleanly.
  auto full = c.Put(3 * kTable);
  EXPECT_EQ(full.status().code(), Code::kBusy);
  EXPECT_EQ(c.size(), 2u);
  // Pins nest.
  TableCache::Table* a2 = c.Get(0);
  EXPECT_EQ(a2, *a);
  EXPECT_EQ(a2->pins(), 2u);
  c.Release(a2);
  c.Release(*a);
  c.Release(b);
  // Now 0 is the least recently released.
  Load(c, 3 * kTable, 3);
  EXPECT_EQ(c.Get(0), nullptr);
  ASSERT_NE(c.Get(2 * kTable), nullptr);
}

TEST(TableCacheTest, DirtyTablesAreWrittenBackOnEviction) {
  Recorder rec;
  TableCache c(kTable, 2, rec.Fn());
  auto a = c.Put(0);
  ASSERT_TRUE(a.ok());
  std::memset((*a)->data(), 0xaa, kTable);
  c.MarkDirty(*a);
  c.Release(*a);
  EXPECT_EQ(c.dirty_count(), 1u);
  Load(c, kTable, 1);
  Load(c, 2 * kTable, 2);  // evicts 0, which is dirty
  ASSERT_EQ(rec.writes.size(), 1u);
  EXPECT_EQ(rec.writes[0], std::make_pair(uint64_t{0}, uint8_t{0xaa}));
  EXPECT_EQ(c.dirty_count(), 0u);

  // A failing write-back keeps the victim cached and dirty, and says why.
  auto b = c.Get(2 * kTable);
  c.MarkDirty(b);
  c.Release(b);
  c.Release(c.Get(kTable));  // 2 is now the LRU tail
  rec.fail_with = Status::FromErrno(EIO, "disk");
  auto r = c.Put(3 * kTable);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(std::to_string(2 * kTable)), std::string::npos);
  EXPECT_EQ(c.dirty_count(), 1u);
  TableCache::Table* still = c.Get(2 * kTable);
  ASSERT_NE(still, nullptr);
  EXPECT_TRUE(still->dirty());
  c.Release(still);
}

TEST(TableCacheTest, FlushDirtyWritesInOffsetOrder) {
  Recorder rec;
  TableCache c(kTable, 10, rec.Fn());
  TableCache::Table* pinned = nullptr;
  for (uint64_t off : {7, 3, 9, 1, 5}) {
    auto t = c.Put(off * kTable);
    ASSERT_TRUE(t.ok());
    (*t)->data()[0] = static_cast<uint8_t>(off);
    c.MarkDirty(*t);
    c.MarkDirty(*t);  // idempotent
    if (off == 9) {
      pinned = *t;  // a pinned dirty table is flushed too
    } else {
      c.Release(*t);
    }
  }
  Load(c, 2 * kTable, 2);  // clean: not written
  EXPECT_EQ(c.dirty_count(), 5u);
  ASSERT_TRUE(c.FlushDirty().ok());
  std::vector<std::pair<uint64_t, uint8_t>> want;
  for (uint64_t off : {1, 3, 5, 7, 9}) want.emplace_back(off * kTable, off);
  EXPECT_EQ(rec.writes, want);
  EXPECT_EQ(c.dirty_count(), 0u);
  ASSERT_TRUE(c.FlushDirty().ok());
  EXPECT_EQ(rec.writes.size(), 5u);  // nothing left to write
  EXPECT_FALSE(pinned->dirty());
  c.Release(pinned);
}

TEST(TableCacheTest, EraseDropsWithoutWriteBack) {
  Recorder rec;
  TableCache c(kTable, 4, rec.Fn());
  auto a = c.Put(0);
  ASSERT_TRUE(a.ok());
  c.MarkDirty(*a);
  c.Release(*a);
  c.Erase(0);
  EXPECT_EQ(c.Get(0), nullptr);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.dirty_count(), 0u);

  // Erasing a pinned table: gone from the index now, memory valid until Release.
  auto b = c.Put(kTable);
  ASSERT_TRUE(b.ok());
  c.MarkDirty(*b);
  c.Erase(kTable);
  EXPECT_EQ(c.Get(kTable), nullptr);
  (*b)->data()[0] = 1;  // still ours
  c.Release(*b);
  ASSERT_TRUE(c.FlushDirty().ok());
  EXPECT_TRUE(rec.writes.empty());
  c.Erase(12345);  // absent: no-op

  Load(c, 0, 1);
  Load(c, kTable, 2);
  c.Clear();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.Get(0), nullptr);
}

TEST(TableCacheTest, ResizeEvictsAndWritesBack) {
  Recorder rec;
  TableCache c(kTable, 4, rec.Fn());
  for (uint64_t i = 0; i < 4; ++i) {
    auto t = c.Put(i * kTable);
    ASSERT_TRUE(t.ok());
    (*t)->data()[0] = static_cast<uint8_t>(i);
    c.MarkDirty(*t);
    c.Release(*t);
  }
  ASSERT_TRUE(c.Resize(2).ok());
  EXPECT_EQ(c.capacity(), 2u);
  EXPECT_EQ(c.size(), 2u);
  ASSERT_EQ(rec.writes.size(), 2u);
  EXPECT_EQ(rec.writes[0].first, 0u);  // least recently released first
  EXPECT_EQ(rec.writes[1].first, kTable);
  EXPECT_EQ(c.Resize(0).code(), Code::kInvalidArgument);
  ASSERT_TRUE(c.Resize(100).ok());
  Load(c, 50 * kTable, 5);
  EXPECT_EQ(c.size(), 3u);
}

TEST(TableCacheTest, HugeTablesAreAllocatedOnDemand) {
  // A one-table cache of 2 MiB clusters must not reserve memory for more.
  Recorder rec;
  constexpr size_t kHuge = 2 << 20;
  TableCache c(kHuge, 1, rec.Fn());
  for (uint8_t i = 1; i <= 2; ++i) {
    auto t = c.Put(i * kHuge);
    ASSERT_TRUE(t.ok());
    std::memset((*t)->data(), i, kHuge);
    c.Release(*t);
  }
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(c.Get(kHuge), nullptr);
  TableCache::Table* t = c.Get(2 * kHuge);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->data()[kHuge - 1], 2);
  c.Release(t);

  // Capacity is a limit, not a reservation: a million 2 MiB slots (2 TiB)
  // cost nothing until used.
  TableCache big(kHuge, 1 << 20, rec.Fn());
  auto b = big.Put(0);
  ASSERT_TRUE(b.ok());
  (*b)->data()[kHuge - 1] = 9;
  big.Release(*b);
  EXPECT_EQ(big.size(), 1u);
}

TEST(TableCacheTest, LargeCapacityStaysConstantTimePerOperation) {
  // 100k small tables with evictions, hits and misses all over: with any
  // linear scan this would take minutes instead of well under a second.
  constexpr size_t kSmall = 512;
  constexpr uint64_t kN = 100000;
  uint64_t writes = 0;
  TableCache c(kSmall, kN, [&](uint64_t, const uint8_t*) {
    ++writes;
    return Status::OK();
  });
  for (uint64_t i = 0; i < kN; ++i) {
    auto t = c.Put(i * kSmall);
    ASSERT_TRUE(t.ok());
    (*t)->data()[0] = static_cast<uint8_t>(i);
    if (i % 2 == 0) c.MarkDirty(*t);
    c.Release(*t);
  }
  EXPECT_EQ(c.size(), kN);
  for (uint64_t i = 0; i < kN; i += 3) {
    TableCache::Table* t = c.Get(i * kSmall);
    ASSERT_NE(t, nullptr) << i;
    ASSERT_EQ(t->data()[0], static_cast<uint8_t>(i));
    c.Release(t);
  }
  // Another kN puts evict every original table; dirty ones are written back.
  for (uint64_t i = kN; i < 2 * kN; ++i) {
    auto t = c.Put(i * kSmall);
    ASSERT_TRUE(t.ok());
    c.Release(*t);
  }
  EXPECT_EQ(writes, kN / 2);
  EXPECT_EQ(c.Get(0), nullptr);
  EXPECT_EQ(c.size(), kN);
  EXPECT_EQ(c.dirty_count(), 0u);
}

// An L2-like slice: entry i maps host cluster first + i (8-byte entries).
void FillProgression(uint8_t* d, uint64_t first_host) {
  for (size_t i = 0; i < kTable / 8; i++) {
    uint64_t v = (1ull << 63) | (first_host + i * 65536);
    for (int b = 0; b < 8; b++) d[i * 8 + b] = static_cast<uint8_t>(v >> (56 - 8 * b));
  }
}

TEST(TableCacheTest, CompactModeKeepsEvictedProgressionsAsDescriptions) {
  Recorder rec;
  TableCache c(kTable, 2, rec.Fn());
  c.set_compact(true);
  std::vector<uint8_t> want(kTable);
  FillProgression(want.data(), 0x100000);
  {
    auto t = c.Put(0);
    ASSERT_TRUE(t.ok());
    std::memcpy((*t)->data(), want.data(), kTable);
    c.Release(*t);
  }
  Load(c, 1 * kTable, 5);  // constant bytes: also a progression (step 0)
  {
    auto t = c.Put(2 * kTable);  // not a progression
    ASSERT_TRUE(t.ok());
    for (size_t i = 0; i < kTable; i++) (*t)->data()[i] = static_cast<uint8_t>(i * i * 7);
    c.Release(*t);
  }
  Load(c, 3 * kTable, 9);  // evicts 0 (described), then 1 (described)
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(c.described(), 2u);  // 0 and 1
  TableCache::Table* t = c.Get(0);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(std::memcmp(t->data(), want.data(), kTable), 0);
  EXPECT_EQ(c.described(), 1u);  // 0 is cached now (2 was evicted, not described)
  c.Release(t);
  EXPECT_EQ(c.Get(2 * kTable), nullptr);
  // Erase and Put drop descriptions: the caller's contents win.
  c.Erase(1 * kTable);
  EXPECT_EQ(c.Get(1 * kTable), nullptr);
  EXPECT_TRUE(c.Offer(5 * kTable, want.data()));
  EXPECT_FALSE(c.Offer(0, want.data()));  // cached: left alone
  auto p = c.Put(5 * kTable);
  ASSERT_TRUE(p.ok());
  std::memset((*p)->data(), 1, kTable);
  c.Release(*p);
  t = c.Get(5 * kTable);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->data()[0], 1);
  c.Release(t);
  c.Clear();
  EXPECT_EQ(c.described(), 0u);
  EXPECT_TRUE(rec.writes.empty());
}

TEST(TableCacheTest, CompactModeDescribesDirtyTablesOnlyAfterWriteBack) {
  Recorder rec;
  TableCache c(kTable, 1, rec.Fn());
  c.set_compact(true);
  auto t = c.Put(0);
  ASSERT_TRUE(t.ok());
  FillProgression((*t)->data(), 0x200000);
  c.MarkDirty(*t);
  c.Release(*t);
  Load(c, kTable, 3);  // evicts 0: written back, then described
  ASSERT_EQ(rec.writes.size(), 1u);
  EXPECT_EQ(c.described(), 1u);
  TableCache::Table* g = c.Get(0);
  ASSERT_NE(g, nullptr);
  EXPECT_FALSE(g->dirty());
  std::vector<uint8_t> want(kTable);
  FillProgression(want.data(), 0x200000);
  EXPECT_EQ(std::memcmp(g->data(), want.data(), kTable), 0);
  c.Release(g);
}

}  // namespace
}  // namespace qcow2j
