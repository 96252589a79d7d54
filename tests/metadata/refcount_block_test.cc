#include "metadata/refcount_block.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace qcow2j {
namespace {

TEST(RefcountBlockTest, EntriesPerBlockAndMaximum) {
  EXPECT_EQ(RefcountBlockEntries(16, 4), 32768u);  // 64 KiB of 16-bit entries
  EXPECT_EQ(RefcountBlockEntries(9, 0), 4096u);
  EXPECT_EQ(RefcountBlockEntries(21, 6), 262144u);
  EXPECT_EQ(MaxRefcount(0), 1u);
  EXPECT_EQ(MaxRefcount(2), 15u);
  EXPECT_EQ(MaxRefcount(4), 65535u);
  EXPECT_EQ(MaxRefcount(5), 0xffffffffu);
  EXPECT_EQ(MaxRefcount(6), UINT64_MAX);
}

// Every width: random values written to every entry read back, and writing
// one entry never disturbs its neighbours.
TEST(RefcountBlockTest, EveryWidthRoundTrips) {
  std::mt19937_64 rng(42);
  for (uint32_t order = 0; order <= 6; ++order) {
    SCOPED_TRACE("order " + std::to_string(order));
    std::vector<uint8_t> block(512, 0);
    const uint64_t n = RefcountBlockEntries(9, order);
    std::vector<uint64_t> want(n);
    for (uint64_t i = 0; i < n; ++i) {
      want[i] = rng() & MaxRefcount(order);
      SetRefcount(block, order, i, want[i]);
    }
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(GetRefcount(block, order, i), want[i]) << i;
    // Overwrite every other entry with its maximum, then with 0.
    for (uint64_t i = 0; i < n; i += 2) SetRefcount(block, order, i, MaxRefcount(order));
    for (uint64_t i = 0; i < n; ++i) {
      ASSERT_EQ(GetRefcount(block, order, i), i % 2 ? want[i] : MaxRefcount(order)) << i;
    }
    for (uint64_t i = 0; i < n; i += 2) SetRefcount(block, order, i, 0);
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(GetRefcount(block, order, i), i % 2 ? want[i] : 0);
  }
}

// The exact bit placement QEMU uses: sub-byte entries LSB first, wider ones
// big-endian.
TEST(RefcountBlockTest, OnDiskLayoutMatchesQemu) {
  std::vector<uint8_t> b(16, 0);
  SetRefcount(b, 0, 0, 1);
  SetRefcount(b, 0, 7, 1);
  EXPECT_EQ(b[0], 0x81);
  SetRefcount(b, 0, 9, 1);
  EXPECT_EQ(b[1], 0x02);

  std::fill(b.begin(), b.end(), 0);
  SetRefcount(b, 1, 1, 3);  // bits 2-3 of byte 0
  SetRefcount(b, 1, 4, 2);  // bits 0-1 of byte 1
  EXPECT_EQ(b[0], 0x0c);
  EXPECT_EQ(b[1], 0x02);

  std::fill(b.begin(), b.end(), 0);
  SetRefcount(b, 2, 1, 0xa);
  SetRefcount(b, 2, 0, 0x5);
  EXPECT_EQ(b[0], 0xa5);

  std::fill(b.begin(), b.end(), 0);
  SetRefcount(b, 3, 2, 0x7f);
  EXPECT_EQ(b[2], 0x7f);
  SetRefcount(b, 4, 1, 0x1234);
  EXPECT_EQ(b[2], 0x12);
  EXPECT_EQ(b[3], 0x34);
  SetRefcount(b, 5, 1, 0x01020304);
  EXPECT_EQ(b[4], 0x01);
  EXPECT_EQ(b[7], 0x04);
  SetRefcount(b, 6, 1, 0x0102030405060708ull);
  EXPECT_EQ(b[8], 0x01);
  EXPECT_EQ(b[15], 0x08);
  EXPECT_EQ(GetRefcount(b, 6, 1), 0x0102030405060708ull);
}

TEST(RefcountBlockTest, OutOfRangeIsHarmless) {
  std::vector<uint8_t> b(8, 0xff);
  EXPECT_EQ(GetRefcount(b, 4, 4), 0u);  // entry 4 would be bytes 8-9
  SetRefcount(b, 4, 4, 0);
  SetRefcount(b, 0, 64, 0);
  for (uint8_t v : b) EXPECT_EQ(v, 0xff);
  EXPECT_EQ(GetRefcount(b, 7, 0), 0u);  // no such order
  EXPECT_EQ(GetRefcount(b, 0, 63), 1u);
}

}  // namespace
}  // namespace qcow2j
