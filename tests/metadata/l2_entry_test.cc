#include "metadata/l2_entry.h"

#include <gtest/gtest.h>

namespace qcow2j {
namespace {

TEST(L1EntryTest, DecodeEncode) {
  L1Entry e = L1Entry::Decode(kOflagCopied | 0x50000);
  EXPECT_EQ(e.l2_offset, 0x50000u);
  EXPECT_TRUE(e.copied);
  EXPECT_EQ(e.reserved_bits, 0u);
  EXPECT_EQ(e.Encode(), kOflagCopied | 0x50000);

  L1Entry bad = L1Entry::Decode(0x50000 | 0x1 | (1ull << 60));
  EXPECT_EQ(bad.reserved_bits, 0x1 | (1ull << 60));
  EXPECT_FALSE(bad.copied);
  EXPECT_EQ(bad.Encode(), 0x50000 | 0x1 | (1ull << 60));  // kept, for check to see
}

TEST(L2EntryTest, StandardClusterTypes) {
  EXPECT_EQ(L2Entry::Decode(0, 0, false).type(), ClusterType::kUnallocated);
  EXPECT_EQ(L2Entry::Decode(kOflagZero, 0, false).type(), ClusterType::kZeroPlain);
  EXPECT_EQ(L2Entry::Decode(kOflagZero | 0x30000, 0, false).type(), ClusterType::kZeroAllocated);
  L2Entry n = L2Entry::Decode(kOflagCopied | 0x30000, 0, false);
  EXPECT_EQ(n.type(), ClusterType::kNormal);
  EXPECT_EQ(n.host_offset(), 0x30000u);
  EXPECT_TRUE(n.copied());
  L2Entry c = L2Entry::Decode(kOflagCompressed | 0x12345, 0, false);
  EXPECT_EQ(c.type(), ClusterType::kCompressed);
  EXPECT_EQ(c.host_offset(), 0u);
  // COPIED with offset 0 is a cluster at data-file offset 0 only with an
  // external data file.
  EXPECT_EQ(L2Entry::Decode(kOflagCopied, 0, false).type(), ClusterType::kUnallocated);
  EXPECT_EQ(L2Entry::Decode(kOflagCopied, 0, false, true).type(), ClusterType::kNormal);

  for (unsigned sc : {0u, 31u}) {
    EXPECT_EQ(L2Entry::Decode(0, 0, false).subcluster_type(sc), SubclusterType::kUnallocated);
    EXPECT_EQ(L2Entry::Decode(kOflagZero, 0, false).subcluster_type(sc), SubclusterType::kZero);
    EXPECT_EQ(n.subcluster_type(sc), SubclusterType::kNormal);
  }
}

TEST(L2EntryTest, ReservedBits) {
  EXPECT_EQ(L2Entry::Decode(kOflagCopied | kOflagZero | 0x30000, 0, false).reserved_bits(), 0u);
  EXPECT_EQ(L2Entry::Decode(0x30000 | 0x100, 0, false).reserved_bits(), 0x100u);
  EXPECT_EQ(L2Entry::Decode(0x30000 | (1ull << 56), 0, false).reserved_bits(), 1ull << 56);
  // Extended entries have no zero flag: bit 0 is reserved there.
  EXPECT_EQ(L2Entry::Decode(0x30000 | kOflagZero, 0, true).reserved_bits(), 1u);
  // Compressed descriptors use those bits for the offset.
  EXPECT_EQ(L2Entry::Decode(kOflagCompressed | 0x1ff, 0, false).reserved_bits(), 0u);
}

TEST(L2EntryTest, ExtendedSubclusterTypes) {
  const uint64_t host = kOflagCopied | 0x40000;
  // Subcluster 0 allocated, 1 zero, 2 unallocated, 31 allocated, 30 zero.
  const uint64_t bitmap = (1ull << 0) | (1ull << 31) | (1ull << (32 + 1)) | (1ull << (32 + 30));
  L2Entry e = L2Entry::Decode(host, bitmap, true);
  EXPECT_EQ(e.type(), ClusterType::kNormal);
  EXPECT_EQ(e.invalid_bitmap_bits(), 0u);
  EXPECT_EQ(e.subcluster_type(0), SubclusterType::kNormal);
  EXPECT_EQ(e.subcluster_type(1), SubclusterType::kZero);
  EXPECT_EQ(e.subcluster_type(2), SubclusterType::kUnallocated);
  EXPECT_EQ(e.subcluster_type(30), SubclusterType::kZero);
  EXPECT_EQ(e.subcluster_type(31), SubclusterType::kNormal);
  EXPECT_EQ(e.subcluster_type(32), SubclusterType::kInvalid);

  // No host cluster: zero bits are fine, allocation bits are not.
  L2Entry zeros = L2Entry::Decode(0, 0xffffffff00000000ull, true);
  EXPECT_EQ(zeros.type(), ClusterType::kUnallocated);
  EXPECT_EQ(zeros.invalid_bitmap_bits(), 0u);
  EXPECT_EQ(zeros.subcluster_type(5), SubclusterType::kZero);
  L2Entry orphan = L2Entry::Decode(0, 0x6, true);
  EXPECT_EQ(orphan.invalid_bitmap_bits(), 0x6u);
  EXPECT_EQ(orphan.subcluster_type(0), SubclusterType::kInvalid);
  // ... unless it is data-file offset 0.
  EXPECT_EQ(L2Entry::Decode(kOflagCopied, 0x6, true, true).invalid_bitmap_bits(), 0u);

  // Allocated and zero at once.
  L2Entry both = L2Entry::Decode(host, (1ull << 3) | (1ull << 35) | (1ull << 4), true);
  EXPECT_EQ(both.invalid_bitmap_bits(), (1ull << 3) | (1ull << 35));
  EXPECT_EQ(both.subcluster_type(4), SubclusterType::kInvalid);

  // Compressed: the bitmap must be all zero.
  EXPECT_EQ(L2Entry::Decode(kOflagCompressed | 0x1000, 0, true).invalid_bitmap_bits(), 0u);
  EXPECT_EQ(L2Entry::Decode(kOflagCompressed | 0x1000, 0, true).subcluster_type(7),
            SubclusterType::kNormal);
  EXPECT_EQ(L2Entry::Decode(kOflagCompressed | 0x1000, 1ull << 40, true).invalid_bitmap_bits(),
            1ull << 40);

  // The standard zero flag means nothing in an extended entry.
  EXPECT_EQ(L2Entry::Decode(kOflagZero, 0, true).type(), ClusterType::kUnallocated);
  // Standard entries ignore the bitmap word.
  EXPECT_EQ(L2Entry::Decode(0, 0x6, false).invalid_bitmap_bits(), 0u);
}

TEST(CompressedDescriptorTest, RoundTripEveryClusterSize) {
  for (uint32_t bits = 9; bits <= 21; ++bits) {
    SCOPED_TRACE("cluster_bits " + std::to_string(bits));
    const uint32_t x = 62 - (bits - 8);
    EXPECT_EQ(CompressedOffsetBits(bits), x);
    const uint64_t cs = 1ull << bits;
    const uint64_t max_offset = (1ull << std::min(x, 56u)) - 1;
    for (uint64_t offset : {uint64_t{0x10000}, uint64_t{0x10001}, uint64_t{0x101ff},
                            uint64_t{0x12345677}, max_offset - cs - 1}) {
      for (uint64_t size : {uint64_t{1}, uint64_t{511}, uint64_t{512}, cs / 2, cs}) {
        Result<uint64_t> raw = CompressedDescriptor::Encode(offset, size, bits);
        ASSERT_TRUE(raw.ok()) << raw.status().ToString() << " offset " << offset << " size " << size;
        EXPECT_TRUE(*raw & kOflagCompressed);
        EXPECT_FALSE(*raw & kOflagCopied);
        EXPECT_EQ(L2Entry::Decode(*raw, 0, false).type(), ClusterType::kCompressed);
        CompressedDescriptor d = CompressedDescriptor::Decode(*raw, bits);
        EXPECT_EQ(d.host_offset, offset);
        // The descriptor covers every sector the data touches, and no more.
        const uint64_t sectors = (offset + size - 1) / 512 - offset / 512;
        EXPECT_EQ(d.nb_additional_sectors, sectors);
        EXPECT_EQ(*raw >> x & ((1ull << (bits - 8)) - 1), sectors);
        EXPECT_GE(d.compressed_size(), size);
        EXPECT_LT(d.compressed_size() - size, 512u);
        EXPECT_EQ((offset + d.compressed_size()) % 512, 0u);
      }
    }
  }
}

TEST(CompressedDescriptorTest, EncodeRejectsWhatDoesNotFit) {
  // 512-byte clusters: one bit of sector count, so at most 2 sectors.
  EXPECT_TRUE(CompressedDescriptor::Encode(0x1000, 1024, 9).ok());
  EXPECT_FALSE(CompressedDescriptor::Encode(0x1001, 1024, 9).ok());
  // 2 MiB clusters: the offset field has 49 bits.
  EXPECT_TRUE(CompressedDescriptor::Encode((1ull << 49) - 4096, 100, 21).ok());
  EXPECT_FALSE(CompressedDescriptor::Encode(1ull << 49, 100, 21).ok());
  // Small clusters: the field is wider than 56 bits but offsets stay below 2^56.
  EXPECT_FALSE(CompressedDescriptor::Encode(1ull << 56, 100, 9).ok());
  EXPECT_FALSE(CompressedDescriptor::Encode(0x1000, 0, 16).ok());
  EXPECT_FALSE(CompressedDescriptor::Encode(0x1000, 100, 8).ok());
  EXPECT_FALSE(CompressedDescriptor::Encode(0x1000, 100, 22).ok());
  // A nonsense cluster_bits does not crash the decoder.
  EXPECT_EQ(CompressedDescriptor::Decode(kOflagCompressed | 0x1000, 40).host_offset, 0u);
}

TEST(CompressedDescriptorTest, DecodeKnownValue) {
  // 64 KiB clusters: x = 54. Offset 0x123456, 3 additional sectors.
  const uint64_t raw = kOflagCompressed | (3ull << 54) | 0x123456;
  CompressedDescriptor d = CompressedDescriptor::Decode(raw, 16);
  EXPECT_EQ(d.host_offset, 0x123456u);
  EXPECT_EQ(d.nb_additional_sectors, 3u);
  EXPECT_EQ(d.compressed_size(), 4 * 512 - 0x56u);
}

}  // namespace
}  // namespace qcow2j
