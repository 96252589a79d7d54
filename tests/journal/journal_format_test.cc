// The journal's fixed structures: the header extension payload and the
// superblock. Round trips, every validation rule (the error names the
// field), and every single-bit corruption of a superblock being rejected.
#include "journal/journal_format.h"

#include <gtest/gtest.h>

#include "metadata/endian.h"

namespace qcow2j {
namespace {

constexpr uint32_t kClusterBits = 16;

JournalExtension ValidExtension() {
  JournalExtension ext;
  ext.area_offset = 5 << kClusterBits;
  ext.area_size = 4 << kClusterBits;
  ext.sector_size = 4096;
  ext.flags = kJournalFlagDirtyRefcounts;
  return ext;
}

JournalSuperblock ValidSuperblock(const JournalExtension& ext) {
  JournalSuperblock sb;
  sb.sector_size = ext.sector_size;
  sb.area_size = ext.area_size;
  sb.tail_offset = ext.ring_start() + 3 * ext.sector_size;
  sb.tail_sequence = 77;
  sb.checkpoint_number = 12;
  sb.generation = NewJournalGeneration();
  return sb;
}

// Rewrites the superblock checksum after a test patched a field, so the
// field's own validation is what fails.
void Reseal(std::vector<uint8_t>* sector) {
  StoreBE64(sector->data() + 64, JournalChecksum({sector->data(), 64}));
}

TEST(JournalExtensionTest, RoundTrip) {
  const JournalExtension ext = ValidExtension();
  const std::string payload = EncodeJournalExtension(ext);
  ASSERT_EQ(payload.size(), kJournalExtensionBytes);
  EXPECT_EQ(LoadBE64(payload.data()), ext.area_offset);  // big-endian, offset 0
  EXPECT_EQ(LoadBE32(payload.data() + 16), 4096u);
  Result<JournalExtension> back = DecodeJournalExtension(payload, kClusterBits);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, ext);
  EXPECT_TRUE(back->dirty_refcounts());
  EXPECT_EQ(back->ring_start(), 2u * 4096);
  EXPECT_EQ(back->ring_bytes(), ext.area_size - 2 * 4096);
}

TEST(JournalExtensionTest, LongerPayloadIsAccepted) {
  std::string payload = EncodeJournalExtension(ValidExtension());
  payload.append(16, '\x5a');
  EXPECT_TRUE(DecodeJournalExtension(payload, kClusterBits).ok());
}

TEST(JournalExtensionTest, ShortPayloadIsCorruption) {
  const std::string payload = EncodeJournalExtension(ValidExtension());
  for (size_t n = 0; n < payload.size(); n++) {
    Result<JournalExtension> r = DecodeJournalExtension(payload.substr(0, n), kClusterBits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kCorruption);
  }
}

struct BadExtension {
  const char* field;
  void (*patch)(JournalExtension*);
  Code code;
};

TEST(JournalExtensionTest, IdleJournalHasNoArea) {
  // A cleanly closed image: no area; area_size is what the next session
  // allocates (0: the default).
  for (uint64_t size : {uint64_t{0}, uint64_t{64} << 20}) {
    JournalExtension ext = ValidExtension();
    ext.area_offset = 0;
    ext.area_size = size;
    Result<JournalExtension> r = DecodeJournalExtension(EncodeJournalExtension(ext), kClusterBits);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->has_area());
    EXPECT_EQ(r->area_size, size);
  }
}

TEST(JournalExtensionTest, EveryRuleNamesItsField) {
  const BadExtension cases[] = {
      {"sector_size", [](JournalExtension* e) { e->sector_size = 1024; }, Code::kCorruption},
      {"sector_size", [](JournalExtension* e) { e->sector_size = 0; }, Code::kCorruption},
      {"flags", [](JournalExtension* e) { e->flags |= 1u << 7; }, Code::kNotSupported},
      // Idle (no area) but asking for a ring that breaks the size rules.
      {"area_size",
       [](JournalExtension* e) {
         e->area_offset = 0;
         e->area_size = 4096 * 3;
       },
       Code::kCorruption},
      {"area_offset", [](JournalExtension* e) { e->area_offset += 512; }, Code::kCorruption},
      {"area_offset", [](JournalExtension* e) { e->area_offset = 1ull << 60; },
       Code::kCorruption},
      {"area_size", [](JournalExtension* e) { e->area_size += 4096; }, Code::kCorruption},
      {"area_size", [](JournalExtension* e) { e->area_size = 0; }, Code::kCorruption},
      {"area_size", [](JournalExtension* e) { e->area_size = 1ull << 40; }, Code::kCorruption},
      {"area_size",
       [](JournalExtension* e) {
         e->area_offset = (1ull << 56) - (1ull << 16);
         e->area_size = 1ull << 17;
       },
       Code::kCorruption},
  };
  for (const BadExtension& c : cases) {
    JournalExtension ext = ValidExtension();
    c.patch(&ext);
    Result<JournalExtension> r = DecodeJournalExtension(EncodeJournalExtension(ext), kClusterBits);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.field), std::string::npos) << r.status().ToString();
  }
}

TEST(JournalExtensionTest, SmallClustersNeedFourSectors) {
  JournalExtension ext;
  ext.area_offset = 512 * 10;
  ext.sector_size = 512;
  ext.area_size = 3 * 512;
  EXPECT_FALSE(ValidateJournalExtension(ext, 9).ok());
  ext.area_size = 4 * 512;
  EXPECT_TRUE(ValidateJournalExtension(ext, 9).ok());
  // 4096-byte sectors with 512-byte clusters: the size must still be a sector multiple.
  ext.sector_size = 4096;
  ext.area_size = 4 * 4096 + 512;
  EXPECT_FALSE(ValidateJournalExtension(ext, 9).ok());
}

TEST(JournalSuperblockTest, RoundTripFillsOneSector) {
  const JournalExtension ext = ValidExtension();
  const JournalSuperblock sb = ValidSuperblock(ext);
  const std::vector<uint8_t> sector = EncodeJournalSuperblock(sb);
  ASSERT_EQ(sector.size(), ext.sector_size);
  EXPECT_EQ(LoadBE32(sector.data()), kJournalSuperblockMagic);
  for (size_t i = kJournalSuperblockBytes; i < sector.size(); i++) ASSERT_EQ(sector[i], 0);
  Result<JournalSuperblock> back = DecodeJournalSuperblock(sector, ext);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, sb);
  EXPECT_EQ(back->slot(), 0u);
}

TEST(JournalSuperblockTest, EveryBitFlipIsRejected) {
  const JournalExtension ext = ValidExtension();
  const std::vector<uint8_t> good = EncodeJournalSuperblock(ValidSuperblock(ext));
  for (size_t byte = 0; byte < kJournalSuperblockBytes; byte++) {
    for (int bit = 0; bit < 8; bit++) {
      std::vector<uint8_t> bad = good;
      bad[byte] ^= static_cast<uint8_t>(1u << bit);
      Result<JournalSuperblock> r = DecodeJournalSuperblock(bad, ext);
      ASSERT_FALSE(r.ok()) << "byte " << byte << " bit " << bit;
      EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
    }
  }
}

TEST(JournalSuperblockTest, TooShortIsCorruption) {
  const JournalExtension ext = ValidExtension();
  const std::vector<uint8_t> good = EncodeJournalSuperblock(ValidSuperblock(ext));
  for (size_t n = 0; n < kJournalSuperblockBytes; n++) {
    EXPECT_FALSE(DecodeJournalSuperblock(std::span(good).first(n), ext).ok());
  }
}

struct BadSuperblock {
  const char* field;
  size_t offset;
  int width;  // 4 or 8
  uint64_t value;
  Code code;
};

TEST(JournalSuperblockTest, FieldRulesNameTheField) {
  const JournalExtension ext = ValidExtension();
  const BadSuperblock cases[] = {
      {"version", 4, 4, 2, Code::kNotSupported},
      {"sector_size", 8, 4, 512, Code::kCorruption},
      {"verified_count", 12, 4, 0xffffffff, Code::kCorruption},
      {"area_size", 16, 8, ext.area_size * 2, Code::kCorruption},
      {"tail_offset", 24, 8, 0, Code::kCorruption},
      {"tail_offset", 24, 8, ext.sector_size, Code::kCorruption},  // a superblock slot
      {"tail_offset", 24, 8, ext.area_size, Code::kCorruption},
      {"tail_offset", 24, 8, ext.ring_start() + 512, Code::kCorruption},
      {"tail_sequence", 32, 8, 0, Code::kCorruption},
      {"tail_sequence", 32, 8, 1ull << 63, Code::kCorruption},
  };
  const std::vector<uint8_t> good = EncodeJournalSuperblock(ValidSuperblock(ext));
  for (const BadSuperblock& c : cases) {
    std::vector<uint8_t> bad = good;
    if (c.width == 4) {
      StoreBE32(bad.data() + c.offset, static_cast<uint32_t>(c.value));
    } else {
      StoreBE64(bad.data() + c.offset, c.value);
    }
    Reseal(&bad);
    Result<JournalSuperblock> r = DecodeJournalSuperblock(bad, ext);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.field), std::string::npos) << r.status().ToString();
  }
  // An all-zero generation is what a zeroed sector would hold.
  std::vector<uint8_t> bad = good;
  std::fill(bad.begin() + 48, bad.begin() + 64, 0);
  Reseal(&bad);
  Result<JournalSuperblock> r = DecodeJournalSuperblock(bad, ext);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("generation"), std::string::npos);
}

TEST(JournalSuperblockTest, ZeroedSectorIsCorruptionNamingMagic) {
  const std::vector<uint8_t> zeros(4096, 0);
  Result<JournalSuperblock> r = DecodeJournalSuperblock(zeros, ValidExtension());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("magic"), std::string::npos);
}

TEST(JournalSuperblockTest, ChooseTakesTheHigherValidCheckpoint) {
  const JournalExtension ext = ValidExtension();
  JournalSuperblock a = ValidSuperblock(ext);
  a.checkpoint_number = 6;
  JournalSuperblock b = a;
  b.checkpoint_number = 7;
  b.tail_sequence = 90;
  Result<JournalSuperblock> bad = Status::Corruption("torn");

  Result<JournalSuperblock> r = ChooseJournalSuperblock(a, b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tail_sequence, 90u);
  r = ChooseJournalSuperblock(a, bad);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->checkpoint_number, 6u);
  r = ChooseJournalSuperblock(bad, b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->checkpoint_number, 7u);

  // A copy in the wrong slot is ignored.
  r = ChooseJournalSuperblock(b, a);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("checkpoint_number"), std::string::npos);

  r = ChooseJournalSuperblock(bad, Status::Corruption("zeros"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find("torn"), std::string::npos);
  EXPECT_NE(r.status().message().find("zeros"), std::string::npos);

  r = ChooseJournalSuperblock(bad, Status::NotSupported("version 9"));
  EXPECT_EQ(r.status().code(), Code::kNotSupported);
}

TEST(JournalGenerationTest, FreshGenerationsDiffer) {
  const JournalGeneration a = NewJournalGeneration();
  const JournalGeneration b = NewJournalGeneration();
  EXPECT_NE(a, b);
  EXPECT_NE(a, JournalGeneration{});
}

}  // namespace
}  // namespace qcow2j
