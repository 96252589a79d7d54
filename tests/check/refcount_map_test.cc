// The checker's refcount array (recovery/refcount_map.h): one byte per
// cluster, large counts in a side map, two bytes per cluster once large
// counts are common. Every operation is held to a plain vector of 64-bit
// counts.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "recovery/refcount_map.h"

namespace qcow2j {
namespace test {
namespace {

void ExpectSame(const RefcountMap& map, const std::vector<uint64_t>& model) {
  ASSERT_EQ(map.size(), model.size());
  for (uint64_t i = 0; i < model.size(); ++i) {
    ASSERT_EQ(map.Get(i), model[i]) << "cluster " << i;
  }
  EXPECT_EQ(map.Get(model.size()), 0u) << "past the end";
}

TEST(RefcountMapTest, CountsOfEveryWidthRoundTrip) {
  RefcountMap map;
  ASSERT_TRUE(map.Resize(64).ok());
  std::vector<uint64_t> model(64, 0);
  const uint64_t values[] = {0, 1, 2, 254, 255, 256, 65534, 65535, 65536, uint64_t{1} << 40,
                             ~uint64_t{0}};
  for (uint64_t i = 0; i < 64; ++i) {
    model[i] = values[i % std::size(values)];
    map.Set(i, model[i]);
  }
  ExpectSame(map, model);
  EXPECT_FALSE(map.wide()) << "a few large counts stay in the side map";
  // Back down: a cluster that had a large count holds a small one again.
  for (uint64_t i = 0; i < 64; ++i) {
    model[i] = i % 3;
    map.Set(i, model[i]);
  }
  ExpectSame(map, model);
}

TEST(RefcountMapTest, IncrementStopsAtTheMaximumAcrossTheNarrowLimit) {
  RefcountMap map;
  ASSERT_TRUE(map.Resize(4).ok());
  for (int n = 0; n < 300; ++n) ASSERT_TRUE(map.Increment(1, 1000));
  EXPECT_EQ(map.Get(1), 300u);
  for (int n = 0; n < 3; ++n) ASSERT_TRUE(map.Increment(2, 3));
  EXPECT_FALSE(map.Increment(2, 3)) << "refcount_bits=2 allows 3";
  EXPECT_EQ(map.Get(2), 3u);
  map.Set(3, 65535);
  EXPECT_TRUE(map.Increment(3, 65536));
  EXPECT_FALSE(map.Increment(3, 65536));
  EXPECT_EQ(map.Get(3), 65536u);
  EXPECT_EQ(map.Get(0), 0u);
}

TEST(RefcountMapTest, ManyLargeCountsWidenTheArrayAndKeepEveryCount) {
  // 100,000 clusters: more than max(4096, 1/64) of them at 255 or more.
  constexpr uint64_t kN = 100000;
  RefcountMap map;
  ASSERT_TRUE(map.Resize(kN).ok());
  std::vector<uint64_t> model(kN, 0);
  std::mt19937_64 rng(7);
  for (uint64_t i = 0; i < kN; ++i) {
    const uint64_t r = rng() % 10;
    model[i] = r < 5 ? r : r < 9 ? 255 + rng() % 60000 : 65535 + rng() % 5;
    map.Set(i, model[i]);
  }
  EXPECT_TRUE(map.wide());
  ExpectSame(map, model);
  for (uint64_t i = 0; i < kN; i += 7) {
    if (map.Increment(i, ~uint64_t{0})) model[i]++;
  }
  ExpectSame(map, model);
}

TEST(RefcountMapTest, ResizeClearsWhatWasCutAway) {
  RefcountMap map;
  ASSERT_TRUE(map.Resize(100).ok());
  map.Set(10, 5);
  map.Set(90, 70000);
  map.Set(95, 3);
  ASSERT_TRUE(map.Resize(50).ok());
  EXPECT_EQ(map.Get(90), 0u);
  ASSERT_TRUE(map.Resize(100).ok());
  EXPECT_EQ(map.Get(10), 5u);
  EXPECT_EQ(map.Get(90), 0u) << "a large count cut away must not come back";
  EXPECT_EQ(map.Get(95), 0u);
  map.Clear();
  EXPECT_EQ(map.Get(10), 0u);
}

TEST(RefcountMapTest, SetFromBigEndian16BitBlocks) {
  RefcountMap map;
  ASSERT_TRUE(map.Resize(8).ok());
  map.Set(6, 1u << 20);  // a large count already held: the per-entry path
  const uint8_t block[] = {0, 1, 0, 0, 0, 255, 1, 0, 0xff, 0xff, 0x12, 0x34};
  map.SetFromBE16(1, block, 6);
  std::vector<uint64_t> model = {0, 1, 0, 255, 256, 65535, 0x1234, 0};
  ExpectSame(map, model);
  RefcountMap fresh;
  ASSERT_TRUE(fresh.Resize(8).ok());
  fresh.SetFromBE16(1, block, 6);
  ExpectSame(fresh, model);
}

TEST(RefcountMapTest, SameRunComparesCountsNotRepresentations) {
  RefcountMap a, b;
  ASSERT_TRUE(a.Resize(8192).ok());
  ASSERT_TRUE(b.Resize(8192).ok());
  for (uint64_t i = 0; i < 8192; ++i) {
    a.Set(i, i % 3);
    b.Set(i, i % 3);
  }
  EXPECT_TRUE(RefcountMap::SameRun(a, b, 0, 4096));
  EXPECT_TRUE(RefcountMap::SameRun(a, b, 4096, 4096));
  EXPECT_FALSE(RefcountMap::SameRun(a, b, 4096, 8192)) << "past the end";
  b.Set(5000, 7);
  EXPECT_TRUE(RefcountMap::SameRun(a, b, 0, 4096));
  EXPECT_FALSE(RefcountMap::SameRun(a, b, 4096, 4096));
  b.Set(5000, 5000 % 3);
  // A large count on one side: the arrays cannot tell, so no claim of
  // sameness even where the counts agree.
  a.Set(100, 300);
  b.Set(100, 300);
  EXPECT_FALSE(RefcountMap::SameRun(a, b, 0, 4096));
  EXPECT_EQ(a.Get(100), b.Get(100));
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
