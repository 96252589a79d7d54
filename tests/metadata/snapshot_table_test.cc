#include "metadata/snapshot_table.h"

#include <gtest/gtest.h>

#include "metadata/endian.h"

namespace qcow2j {
namespace {

constexpr uint32_t kBits = 16;
constexpr uint64_t kFile = 1 << 20;

std::vector<SnapshotEntry> TwoEntries() {
  SnapshotEntry a;
  a.l1_table_offset = 0x50000;
  a.l1_size = 16;
  a.id = "1";
  a.name = "before upgrade";
  a.date_sec = 1700000000;
  a.date_nsec = 123456789;
  a.vm_clock_nsec = 987654321012ull;
  a.vm_state_size = 5ull << 32;  // needs the 64-bit field
  a.disk_size = 1 << 30;
  a.icount = 42;
  SnapshotEntry b;
  b.l1_table_offset = 0x60000;
  b.l1_size = 1;
  b.id = "22";
  b.name = "";
  b.unknown_extra = "future!";
  return {a, b};
}

void ExpectSame(const SnapshotEntry& a, const SnapshotEntry& b) {
  EXPECT_EQ(a.l1_table_offset, b.l1_table_offset);
  EXPECT_EQ(a.l1_size, b.l1_size);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.date_sec, b.date_sec);
  EXPECT_EQ(a.date_nsec, b.date_nsec);
  EXPECT_EQ(a.vm_clock_nsec, b.vm_clock_nsec);
  EXPECT_EQ(a.vm_state_size, b.vm_state_size);
  EXPECT_EQ(a.disk_size, b.disk_size);
  EXPECT_EQ(a.icount, b.icount);
  EXPECT_EQ(a.unknown_extra, b.unknown_extra);
}

TEST(SnapshotTableTest, RoundTrip) {
  std::vector<SnapshotEntry> in = TwoEntries();
  std::vector<uint8_t> bytes = SerializeSnapshotTable(in);
  // 40 + 24 + 1 + 14 = 79 -> 80; 40 + 31 + 2 = 73 -> 80.
  EXPECT_EQ(bytes.size(), 160u);
  EXPECT_EQ(LoadBE32(&bytes[36]), 24u);        // extra_data_size
  EXPECT_EQ(LoadBE32(&bytes[32]), 0u);         // low 32 bits of 5 << 32
  EXPECT_EQ(LoadBE64(&bytes[40]), 5ull << 32);
  EXPECT_EQ(LoadBE32(&bytes[80 + 36]), 31u);
  EXPECT_EQ(LoadBE64(&bytes[80 + 56]), UINT64_MAX);  // absent icount is written as -1
  Result<std::vector<SnapshotEntry>> out = ParseSnapshotTable(bytes, 2, kBits, kFile);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->size(), 2u);
  ExpectSame(in[0], (*out)[0]);
  ExpectSame(in[1], (*out)[1]);
  EXPECT_EQ(SerializeSnapshotTable(*out), bytes);
  // The table may be longer than the entries.
  bytes.resize(4096, 0xee);
  EXPECT_TRUE(ParseSnapshotTable(bytes, 2, kBits, kFile).ok());
}

TEST(SnapshotTableTest, OldEntriesWithoutExtraData) {
  // A v2-era entry: no extra data, so the 32-bit VM state size counts.
  std::vector<uint8_t> e(48, 0);
  StoreBE64(&e[0], 0x30000);
  StoreBE32(&e[8], 2);
  StoreBE16(&e[12], 1);
  StoreBE16(&e[14], 3);
  StoreBE32(&e[32], 4096);
  e[40] = '7';
  e[41] = 'a';
  e[42] = 'b';
  e[43] = 'c';
  Result<std::vector<SnapshotEntry>> p = ParseSnapshotTable(e, 1, kBits, kFile);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)[0].vm_state_size, 4096u);
  EXPECT_EQ((*p)[0].disk_size, 0u);
  EXPECT_FALSE((*p)[0].icount.has_value());
  EXPECT_EQ((*p)[0].id, "7");
  EXPECT_EQ((*p)[0].name, "abc");
  // Last entry without its padding is still whole.
  e.resize(44);
  EXPECT_TRUE(ParseSnapshotTable(e, 1, kBits, kFile).ok());
}

struct Bad {
  std::string name;
  size_t entry;  // 0 or 1
  size_t at;
  uint64_t value;
  int width;
  std::vector<std::string> in_message;
};

TEST(SnapshotTableTest, MalformedEntriesNameIndexAndField) {
  const std::vector<Bad> cases = {
      {"l1 unaligned", 1, 0, 0x60200, 8, {"snapshot 1", "l1_table_offset 0x60200", "aligned"}},
      {"l1 outside", 1, 0, kFile, 8, {"snapshot 1", "l1_table_offset", "outside the file"}},
      {"l1 zero", 0, 0, 0, 8, {"snapshot 0", "l1_table_offset"}},
      {"l1_size", 0, 8, 4u << 20 | 1, 4, {"snapshot 0", "l1_size"}},
      {"extra", 1, 36, 1025, 4, {"snapshot 1", "extra_data_size 1025"}},
      {"name past end", 1, 14, 500, 2, {"snapshot 1", "name_size 500", "past the end"}},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<uint8_t> bytes = SerializeSnapshotTable(TwoEntries());
    uint8_t* p = &bytes[c.entry * 80 + c.at];
    if (c.width == 8) StoreBE64(p, c.value);
    if (c.width == 4) StoreBE32(p, static_cast<uint32_t>(c.value));
    if (c.width == 2) StoreBE16(p, static_cast<uint16_t>(c.value));
    Result<std::vector<SnapshotEntry>> r = ParseSnapshotTable(bytes, 2, kBits, kFile);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kCorruption);
    for (const std::string& s : c.in_message) {
      EXPECT_NE(r.status().message().find(s), std::string::npos) << r.status().message();
    }
  }
  std::vector<uint8_t> bytes = SerializeSnapshotTable(TwoEntries());
  Result<std::vector<SnapshotEntry>> r = ParseSnapshotTable(bytes, 3, kBits, kFile);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("snapshot 2"), std::string::npos);
  EXPECT_FALSE(ParseSnapshotTable(std::span<const uint8_t>(bytes.data(), 30), 1, kBits, kFile).ok());
  EXPECT_TRUE(ParseSnapshotTable({}, 0, kBits, kFile).ok());
  EXPECT_EQ(ParseSnapshotTable(bytes, 70000, kBits, kFile).status().code(), Code::kNotSupported);
}

}  // namespace
}  // namespace qcow2j
