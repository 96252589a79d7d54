#include "io/memory_env.h"

#include <algorithm>
#include <numeric>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace qcow2j {
namespace {

constexpr uint64_t kPage = MemoryEnv::kPageSize;

bool AllZero(const std::vector<uint8_t>& v) {
  return std::all_of(v.begin(), v.end(), [](uint8_t b) { return b == 0; });
}

std::vector<uint8_t> Bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

std::vector<uint8_t> ReadAll(File* f, uint64_t offset, size_t n) {
  std::vector<uint8_t> out(n, 0xee);
  EXPECT_TRUE(f->Read(offset, out.data(), n).ok());
  return out;
}

TEST(MemoryEnvTest, FilesSurviveReopenAndRemove) {
  auto env = NewMemoryEnv();
  EXPECT_EQ(env->Open("f", 0).status().code(), Code::kNotFound);
  {
    auto f = env->Open("f", kOpenCreate);
    ASSERT_TRUE(f.ok());
    auto d = Bytes(5000, 1);
    ASSERT_TRUE((*f)->Write(10, d.data(), d.size()).ok());
  }
  EXPECT_TRUE(env->Exists("f"));
  EXPECT_FALSE(env->Open("f", kOpenCreate | kOpenExclusive).ok());
  auto f = env->Open("f", kOpenReadOnly);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*(*f)->Size(), 5010u);
  EXPECT_EQ(ReadAll(f->get(), 10, 5000), Bytes(5000, 1));
  // Read-only handles refuse changes and say where.
  uint8_t b = 0;
  Status s = (*f)->Write(77, &b, 1);
  EXPECT_EQ(s.code(), Code::kReadOnly);
  EXPECT_NE(s.message().find("offset 77"), std::string::npos);

  ASSERT_TRUE(env->Remove("f").ok());
  EXPECT_FALSE(env->Exists("f"));
  // An open handle keeps the removed file's bytes, like an unlinked inode.
  EXPECT_EQ(ReadAll(f->get(), 10, 5000), Bytes(5000, 1));
  EXPECT_EQ(env->Remove("f").code(), Code::kNotFound);

  auto g = env->Open("f", kOpenCreate);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*(*g)->Size(), 0u);
}

TEST(MemoryEnvTest, TruncateOnOpenAndReadPastEof) {
  auto env = NewMemoryEnv();
  auto f = env->Open("f", kOpenCreate);
  ASSERT_TRUE(f.ok());
  auto d = Bytes(100, 7);
  ASSERT_TRUE((*f)->Write(0, d.data(), d.size()).ok());
  auto r = ReadAll(f->get(), 50, 100);
  EXPECT_TRUE(std::equal(r.begin(), r.begin() + 50, d.begin() + 50));
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(r.begin() + 50, r.end())));
  auto g = env->Open("f", kOpenTruncate);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*(*f)->Size(), 0u);
  EXPECT_TRUE(AllZero(ReadAll(f->get(), 0, 100)));
}

TEST(MemoryEnvTest, TruncateShrinkThenGrowReadsZeros) {
  auto env = NewMemoryEnv();
  auto f = std::move(env->Open("f", kOpenCreate)).value();
  auto d = Bytes(3 * kPage, 3);
  ASSERT_TRUE(f->Write(0, d.data(), d.size()).ok());
  ASSERT_TRUE(f->Truncate(kPage + 10).ok());
  EXPECT_EQ(*f->Size(), kPage + 10);
  EXPECT_EQ(*f->AllocatedBytes(), 2 * kPage);
  ASSERT_TRUE(f->Truncate(3 * kPage).ok());
  auto r = ReadAll(f.get(), 0, 3 * kPage);
  EXPECT_TRUE(std::equal(r.begin(), r.begin() + kPage + 10, d.begin()));
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(r.begin() + kPage + 10, r.end())));
}

TEST(MemoryEnvTest, SparseHugeFileAndPunchHole) {
  auto env = NewMemoryEnvForTest();
  auto f = std::move(env->Open("big", kOpenCreate)).value();
  const uint64_t kTwoTiB = 2ull << 40;
  auto d = Bytes(2 * kPage, 9);
  ASSERT_TRUE(f->Write(kTwoTiB - 2 * kPage, d.data(), d.size()).ok());
  ASSERT_TRUE(f->Write(0, d.data(), d.size()).ok());
  EXPECT_EQ(*f->Size(), kTwoTiB);
  EXPECT_EQ(*f->AllocatedBytes(), 4 * kPage);
  EXPECT_TRUE(AllZero(ReadAll(f.get(), 1ull << 40, 100000)));

  // Punching the whole middle touches only the pages that exist. Partial
  // pages are zeroed and stay allocated.
  ASSERT_TRUE(f->PunchHole(100, kTwoTiB - 200).ok());
  EXPECT_EQ(*f->Size(), kTwoTiB);
  EXPECT_EQ(*f->AllocatedBytes(), 2 * kPage);
  auto head = ReadAll(f.get(), 0, kPage);
  EXPECT_TRUE(std::equal(head.begin(), head.begin() + 100, d.begin()));
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(head.begin() + 100, head.end())));
  auto tail = ReadAll(f.get(), kTwoTiB - kPage, kPage);
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(tail.begin(), tail.begin() + kPage - 100)));
  EXPECT_TRUE(std::equal(tail.end() - 100, tail.end(), d.end() - 100));
}

TEST(MemoryEnvTest, ZeroRangeAllocateAndStats) {
  auto env = NewMemoryEnvForTest();
  auto f = std::move(env->Open("f", kOpenCreate)).value();
  auto d = Bytes(2 * kPage, 1);
  ASSERT_TRUE(f->Write(0, d.data(), d.size()).ok());
  ASSERT_TRUE(f->ZeroRange(10, kPage).ok());
  EXPECT_EQ(*f->AllocatedBytes(), 2 * kPage);  // zeroed, not deallocated
  auto r = ReadAll(f.get(), 0, 2 * kPage);
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(r.begin() + 10, r.begin() + 10 + kPage)));
  EXPECT_EQ(r[9], d[9]);
  EXPECT_EQ(r[kPage + 10], d[kPage + 10]);
  // Zeroing past EOF grows the file (like writing zeros) without allocating.
  ASSERT_TRUE(f->ZeroRange(10 * kPage, kPage).ok());
  EXPECT_EQ(*f->Size(), 11 * kPage);
  EXPECT_EQ(*f->AllocatedBytes(), 2 * kPage);

  ASSERT_TRUE(f->Allocate(20 * kPage, 2 * kPage, /*keep_size=*/true).ok());
  EXPECT_EQ(*f->Size(), 11 * kPage);
  EXPECT_EQ(*f->AllocatedBytes(), 4 * kPage);
  ASSERT_TRUE(f->Allocate(30 * kPage, 1, /*keep_size=*/false).ok());
  EXPECT_EQ(*f->Size(), 30 * kPage + 1);

  ASSERT_TRUE(f->Sync().ok());
  ASSERT_TRUE(f->Sync().ok());
  auto st = env->Stats("f");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->syncs, 2u);
  EXPECT_EQ(st->writes, 1u);
  EXPECT_EQ(st->size, 30 * kPage + 1);
  EXPECT_EQ(st->allocated_pages, 5u);
  auto bytes = env->Contents("f");
  ASSERT_TRUE(bytes.ok());
  ASSERT_EQ(bytes->size(), 30 * kPage + 1);
  EXPECT_EQ((*bytes)[0], d[0]);
  EXPECT_EQ((*bytes)[10], 0);
  EXPECT_EQ(env->Contents("missing").status().code(), Code::kNotFound);
}

TEST(MemoryEnvTest, ConcurrentWritersAndReaders) {
  auto env = NewMemoryEnv();
  auto f = std::move(env->Open("f", kOpenCreate)).value();
  constexpr int kThreads = 4;
  constexpr size_t kChunk = 3000;  // not page aligned: neighbours share pages
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> v(kChunk, static_cast<uint8_t>(t + 1));
      for (int i = 0; i < 200; ++i) {
        ASSERT_TRUE(f->Write((i * kThreads + t) * kChunk, v.data(), v.size()).ok());
        std::vector<uint8_t> back(kChunk);
        ASSERT_TRUE(f->Read((i * kThreads + t) * kChunk, back.data(), kChunk).ok());
        ASSERT_EQ(back, v);
      }
    });
  }
  for (auto& th : threads) th.join();
  auto all = ReadAll(f.get(), 0, 200 * kThreads * kChunk);
  for (size_t i = 0; i < all.size(); i += 997) {
    ASSERT_EQ(all[i], (i / kChunk) % kThreads + 1) << i;
  }
}

}  // namespace
}  // namespace qcow2j
