// MetadataMap: the extents of an image's metadata and the overlap query the
// engine asks before each metadata write or cluster allocation.
#include "metadata/metadata_map.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace qcow2j {
namespace {

constexpr uint64_t kCs = 65536;

TEST(MetadataMap, WritesOfTheSameKindPassOthersFailNamingBoth) {
  MetadataMap m;
  ASSERT_TRUE(m.Add(0, kCs, MetadataKind::kHeader).ok());
  ASSERT_TRUE(m.Add(3 * kCs, kCs, MetadataKind::kL1).ok());
  ASSERT_TRUE(m.Add(4 * kCs, kCs, MetadataKind::kL2).ok());
  ASSERT_TRUE(m.Add(kCs, kCs, MetadataKind::kRefcountTable).ok());
  // An L2 slice inside its table; the header rewritten.
  EXPECT_TRUE(m.CheckMetadataWrite(4 * kCs + 4096, 4096, MetadataKind::kL2).ok());
  EXPECT_TRUE(m.CheckMetadataWrite(72, 8, MetadataKind::kHeader).ok());
  // Data between and after structures.
  EXPECT_TRUE(m.CheckMetadataWrite(2 * kCs, kCs, MetadataKind::kData).ok());
  EXPECT_TRUE(m.CheckMetadataWrite(5 * kCs, kCs, MetadataKind::kData).ok());

  Status s = m.CheckMetadataWrite(4 * kCs, kCs, MetadataKind::kData);
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find("data cluster at 0x40000"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("L2 table at 0x40000"), std::string::npos) << s.message();
  // A refcount block slice written over the L1 table's last bytes.
  s = m.CheckMetadataWrite(4 * kCs - 512, 4096, MetadataKind::kRefcountBlock);
  EXPECT_NE(s.message().find("refcount block at 0x3fe00"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("active L1 table at 0x30000"), std::string::npos) << s.message();
  // A write spanning two structures of its own kind and one of another.
  ASSERT_TRUE(m.Add(5 * kCs, kCs, MetadataKind::kL2).ok());
  EXPECT_TRUE(m.CheckMetadataWrite(4 * kCs, 2 * kCs, MetadataKind::kL2).ok());
  EXPECT_FALSE(m.CheckMetadataWrite(3 * kCs, 3 * kCs, MetadataKind::kL2).ok());
}

TEST(MetadataMap, AddRefusesAnyOverlapAndRemoveForgets) {
  MetadataMap m;
  std::vector<std::string> seen;
  m.set_on_overlap([&](const Status& s) { seen.push_back(s.message()); });
  ASSERT_TRUE(m.Add(4 * kCs, kCs, MetadataKind::kL2).ok());
  // A new L2 table on a live one, and a refcount block straddling it.
  EXPECT_FALSE(m.Add(4 * kCs, kCs, MetadataKind::kL2).ok());
  EXPECT_FALSE(m.Add(4 * kCs - 512, 1024, MetadataKind::kRefcountBlock).ok());
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(m.size(), 1u);
  // Adjacent extents do not overlap.
  EXPECT_TRUE(m.Add(3 * kCs, kCs, MetadataKind::kRefcountBlock).ok());
  EXPECT_TRUE(m.Add(5 * kCs, kCs, MetadataKind::kRefcountBlock).ok());
  EXPECT_EQ(m.KindAt(4 * kCs + 100), MetadataKind::kL2);
  // Remove only forgets the named kind.
  m.Remove(4 * kCs, MetadataKind::kL1);
  EXPECT_EQ(m.KindAt(4 * kCs), MetadataKind::kL2);
  m.Remove(4 * kCs, MetadataKind::kL2);
  EXPECT_EQ(m.KindAt(4 * kCs), MetadataKind::kData);
  EXPECT_TRUE(m.CheckMetadataWrite(4 * kCs, kCs, MetadataKind::kData).ok());
  EXPECT_EQ(seen.size(), 2u);
  // Ranges at the top of the address space do not wrap.
  EXPECT_TRUE(m.CheckMetadataWrite(UINT64_MAX - 10, 100, MetadataKind::kData).ok());
}

// A map of a 1 TiB image's 16384 L2 tables interleaved with data: every
// query stays a tree lookup.
TEST(MetadataMap, ManyExtents) {
  MetadataMap m;
  for (uint64_t i = 0; i < 16384; ++i) {
    ASSERT_TRUE(m.Add((2 * i + 1) * kCs, kCs, MetadataKind::kL2).ok());
  }
  for (uint64_t i = 0; i < 16384; ++i) {
    ASSERT_TRUE(m.CheckMetadataWrite(2 * i * kCs, kCs, MetadataKind::kData).ok());
    ASSERT_FALSE(m.CheckMetadataWrite((2 * i + 1) * kCs + 8, 8, MetadataKind::kData).ok());
  }
  for (uint64_t i = 0; i < 16384; i += 2) m.Remove((2 * i + 1) * kCs, MetadataKind::kL2);
  EXPECT_EQ(m.size(), 8192u);
}

}  // namespace
}  // namespace qcow2j
