#include "metadata/bitmap_directory.h"

#include <functional>

#include <gtest/gtest.h>

#include "metadata/endian.h"

namespace qcow2j {
namespace {

constexpr uint32_t kBits = 16;
constexpr uint64_t kFile = 1 << 20;

std::vector<BitmapDirectoryEntry> Entries() {
  BitmapDirectoryEntry a;
  a.bitmap_table_offset = 0x40000;
  a.bitmap_table_size = 1;
  a.flags = kBitmapFlagAuto;
  a.granularity_bits = 17;
  a.name = "backup-0";  // 24 + 8 = 32
  BitmapDirectoryEntry b;
  b.bitmap_table_offset = 0x50000;
  b.bitmap_table_size = 2;
  b.flags = kBitmapFlagInUse | kBitmapFlagExtraDataCompatible;
  b.granularity_bits = 9;
  b.name = "x";
  b.extra_data = "extra";  // 24 + 5 + 1 = 30 -> 32
  return {a, b};
}

TEST(BitmapDirectoryTest, RoundTrip) {
  std::vector<uint8_t> bytes = SerializeBitmapDirectory(Entries());
  ASSERT_EQ(bytes.size(), 64u);
  EXPECT_EQ(bytes[16], kBitmapTypeDirtyTracking);
  EXPECT_EQ(bytes[17], 17);
  EXPECT_EQ(LoadBE16(&bytes[18]), 8u);
  Result<std::vector<BitmapDirectoryEntry>> p = ParseBitmapDirectory(bytes, 2, kBits, kFile);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].name, "backup-0");
  EXPECT_EQ((*p)[0].granularity(), 131072u);
  EXPECT_TRUE((*p)[0].auto_enabled());
  EXPECT_FALSE((*p)[0].in_use());
  EXPECT_TRUE((*p)[0].usable());
  EXPECT_EQ((*p)[0].bitmap_table_offset, 0x40000u);
  EXPECT_EQ((*p)[1].name, "x");
  EXPECT_EQ((*p)[1].extra_data, "extra");
  EXPECT_TRUE((*p)[1].in_use());
  EXPECT_TRUE((*p)[1].usable());  // extra data marked compatible
  EXPECT_EQ((*p)[1].bitmap_table_size, 2u);
  EXPECT_EQ(SerializeBitmapDirectory(*p), bytes);

  std::vector<BitmapDirectoryEntry> e = Entries();
  e[1].flags = 0;
  EXPECT_FALSE(e[1].usable());  // unknown extra data, not marked compatible
  e[0].type = 2;
  EXPECT_FALSE(e[0].usable());
}

TEST(BitmapDirectoryTest, MalformedEntries) {
  struct Case {
    std::string name;
    std::function<void(std::vector<uint8_t>&)> mutate;
    uint32_t nb = 2;
    std::vector<std::string> in_message;
  };
  const std::vector<Case> cases = {
      {"flags", [](auto& b) { StoreBE32(&b[12], 8); }, 2, {"bitmap 0", "flags 0x8", "reserved"}},
      {"granularity", [](auto& b) { b[32 + 17] = 64; }, 2, {"bitmap 1", "granularity_bits 64"}},
      {"empty name", [](auto& b) { StoreBE16(&b[18], 0); }, 2, {"bitmap 0", "name_size is 0"}},
      {"name past end", [](auto& b) { StoreBE16(&b[32 + 18], 40); }, 2,
       {"bitmap 1", "name_size 40", "past bitmap_directory_size"}},
      {"table unaligned", [](auto& b) { StoreBE64(&b[0], 0x40008); }, 2,
       {"bitmap 0", "bitmap_table_offset 0x40008", "aligned"}},
      {"table outside", [](auto& b) { StoreBE64(&b[32], kFile); }, 2,
       {"bitmap 1", "bitmap_table_offset", "outside the file"}},
      {"table too big", [](auto& b) { StoreBE32(&b[8], 0x8000001); }, 2,
       {"bitmap 0", "bitmap_table_size"}},
      {"padding", [](auto& b) { b[32 + 31] = 1; }, 2, {"bitmap 1", "padding"}},
      {"duplicate", [](auto& b) {
         // Rename "x" to "b" and make entry 0 also "b" with a 1-byte name.
         StoreBE16(&b[18], 1);
         b[24] = 'b';
         std::fill(b.begin() + 25, b.begin() + 32, 0);
         b[32 + 24 + 5] = 'b';
       }, 2, {"bitmap 1", "used twice"}},
      {"fewer entries than size", [](auto&) {}, 1, {"bitmap_directory_size is 64"}},
      {"more entries than size", [](auto&) {}, 3, {"bitmap 2"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<uint8_t> bytes = SerializeBitmapDirectory(Entries());
    c.mutate(bytes);
    Result<std::vector<BitmapDirectoryEntry>> r = ParseBitmapDirectory(bytes, c.nb, kBits, kFile);
    ASSERT_FALSE(r.ok());
    for (const std::string& s : c.in_message) {
      EXPECT_NE(r.status().message().find(s), std::string::npos) << r.status().message();
    }
  }
}

}  // namespace
}  // namespace qcow2j
