// Records and transaction frames: round trips of every record type, the
// sector padding, and decoding of broken frames: every truncation and every
// bit flip is the end of the journal, and a frame whose checksum holds but
// whose contents break the format is Corruption naming the field.
#include "journal/journal_record.h"

#include <random>

#include <gtest/gtest.h>

#include "metadata/endian.h"

namespace qcow2j {
namespace {

const JournalGeneration kGen = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

std::vector<JournalRecord> OneOfEach() {
  std::vector<JournalRecord> v;
  v.push_back(L2Update{0x50000, 7, false, {0x8000000000070000ull, 0, 1}});
  v.push_back(L2Update{0x60000, 2, true, {0x8000000000080000ull, 0xffff, 0, 0xffff0000ull}});
  v.push_back(L1Update{0x30000, 3, 0x8000000000050000ull});
  v.push_back(RefcountUpdate{0x7, 1});
  v.push_back(RefcountRun{0x100, 64, 0xffffffffffffffffull});
  v.push_back(NewTable{JournalTableKind::kL2Table, 0x50000});
  v.push_back(NewTable{JournalTableKind::kRefcountBlock, 0x90000});
  v.push_back(RefcountTableUpdate{1, 0x90000});
  v.push_back(HeaderUpdate{40, {0, 0, 0, 0, 0, 3, 0, 0}});
  v.push_back(DataChecksum{0x70000, 65536, 0x0123456789abcdefull});
  return v;
}

// About 0.9 KiB of records: a frame of two 512-byte sectors.
std::vector<JournalRecord> TwoSectorsOfRecords() {
  std::vector<JournalRecord> v;
  for (int i = 0; i < 3; i++) {
    for (const JournalRecord& r : OneOfEach()) v.push_back(r);
  }
  return v;
}

std::vector<uint8_t> Frame(const std::vector<JournalRecord>& records, uint64_t seq,
                           uint32_t sector = 512, uint64_t synced = 0) {
  TransactionBuilder b;
  for (const JournalRecord& r : records) EXPECT_TRUE(b.Add(r).ok());
  Result<std::vector<uint8_t>> f = b.Finish(seq, synced, kGen, sector);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? *f : std::vector<uint8_t>();
}

// After a test edits a frame, recomputes its checksum (XXH64 of the frame
// with the checksum field as zeros) so the edit itself is what is checked.
void Reseal(std::vector<uint8_t>* frame) {
  StoreBE64(frame->data() + 56, 0);
  StoreBE64(frame->data() + 56, JournalChecksum(*frame));
}

TEST(JournalRecordTest, EveryRecordTypeRoundTrips) {
  for (const JournalRecord& r : OneOfEach()) {
    for (uint32_t sector : {512u, 4096u}) {
      const std::vector<uint8_t> f = Frame({r}, 5, sector, 4);
      ASSERT_EQ(f.size(), sector);
      Result<JournalFrame> back = DecodeTransaction(f, 5, kGen, sector);
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      EXPECT_EQ(back->header.kind, JournalFrameKind::kTransaction);
      EXPECT_EQ(back->header.sequence, 5u);
      EXPECT_EQ(back->header.synced_through, 4u);
      ASSERT_EQ(back->records.size(), 1u);
      EXPECT_EQ(back->records[0], r) << "record index " << r.index();
    }
  }
}

TEST(JournalRecordTest, ManyRecordsRoundTripInOrder) {
  std::vector<JournalRecord> records;
  for (int i = 0; i < 40; i++) {
    for (const JournalRecord& r : OneOfEach()) records.push_back(r);
  }
  std::vector<uint64_t> big(4096);
  for (size_t i = 0; i < big.size(); i++) big[i] = 0x8000000000000000ull | (i << 16);
  records.push_back(L2Update{0x40000, 4096, false, big});
  const std::vector<uint8_t> f = Frame(records, 9, 4096);
  EXPECT_EQ(f.size() % 4096, 0u);
  Result<JournalFrame> back = DecodeTransaction(f, 9, kGen, 4096);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->records, records);
}

TEST(JournalRecordTest, SmallCommitIsOneSectorAndSizesAddUp) {
  TransactionBuilder b;
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.FrameBytes(512), 512u);
  size_t payload = 0;
  for (const JournalRecord& r : OneOfEach()) {
    ASSERT_TRUE(b.Add(r).ok());
    payload += EncodedRecordBytes(r);
  }
  EXPECT_EQ(b.payload_bytes(), payload);
  EXPECT_EQ(b.record_count(), OneOfEach().size());
  EXPECT_EQ(b.FrameBytes(4096), 4096u);
  EXPECT_EQ(b.FrameBytes(512), (64 + payload + 511) / 512 * 512);
  b.Clear();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.payload_bytes(), 0u);
}

TEST(JournalRecordTest, EmptyTransactionIsValid) {
  const std::vector<uint8_t> f = Frame({}, 3, 512, 2);
  Result<JournalFrame> back = DecodeTransaction(f, 3, kGen, 512);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->records.empty());
}

TEST(JournalRecordTest, WrapMarkerDecodes) {
  const std::vector<uint8_t> m = EncodeWrapMarker(12, 11, kGen, 4096);
  ASSERT_EQ(m.size(), 4096u);
  Result<JournalFrame> back = DecodeTransaction(m, 12, kGen, 4096);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->header.kind, JournalFrameKind::kWrap);
  EXPECT_TRUE(back->records.empty());
}

TEST(JournalRecordTest, BuilderRejectsRecordsTheDecoderWould) {
  const JournalRecord bad[] = {
      L2Update{0, 0, false, {1}},
      L2Update{0x10100, 0, false, {1}},
      L2Update{0x10000, 0, false, {}},
      L2Update{0x10000, 0, true, {1, 2, 3}},
      L2Update{0x10000, kJournalMaxL2Entries, false, {1}},
      L2Update{0x10000, kJournalMaxL2Entries / 2, true, {1, 2}},
      L1Update{0, 0, 1},
      L1Update{0x10000, 1u << 23, 1},
      RefcountUpdate{1ull << 50, 1},
      RefcountRun{0, 0, 1},
      RefcountRun{1ull << 46, (1ull << 46) + 1, 1},
      NewTable{static_cast<JournalTableKind>(3), 0x10000},
      NewTable{JournalTableKind::kL2Table, 0},
      RefcountTableUpdate{1u << 20, 0x10000},
      RefcountTableUpdate{0, 0x10001},
      HeaderUpdate{0, {}},
      HeaderUpdate{(1u << 21) - 1, {1, 2}},
      DataChecksum{0, 0, 0},
      DataChecksum{(1ull << 56) - 1, 2, 0},
  };
  for (const JournalRecord& r : bad) {
    TransactionBuilder b;
    Status s = b.Add(r);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << "record index " << r.index();
    EXPECT_TRUE(b.empty());
  }
}

// Type 10 (the offline snapshot operations' COPIED flips): round trip, the
// codec bounds, and a checksummed record that breaks them.
TEST(JournalRecordTest, L2CopiedRunRoundTripsAndIsChecked) {
  const L2CopiedRun clear{0x50000, 0, 8192, false}, set{0x60000, 16, 4, true};
  for (const JournalRecord& r : {JournalRecord(clear), JournalRecord(set)}) {
    EXPECT_EQ(EncodedRecordBytes(r), 32u);
    const std::vector<uint8_t> f = Frame({r}, 5, 512, 4);
    ASSERT_EQ(LoadBE16(f.data() + 64), 10u);
    Result<JournalFrame> back = DecodeTransaction(f, 5, kGen, 512);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_EQ(back->records.size(), 1u);
    EXPECT_EQ(back->records[0], r);
  }
  // Action byte: 1 clear, 2 set.
  EXPECT_EQ(Frame({clear}, 5)[64 + 8 + 16], 1);
  EXPECT_EQ(Frame({set}, 5)[64 + 8 + 16], 2);
  for (const L2CopiedRun& bad : {L2CopiedRun{0, 0, 1, false}, L2CopiedRun{0x10100, 0, 1, true},
                                 L2CopiedRun{0x10000, 0, 0, true},
                                 L2CopiedRun{0x10000, kJournalMaxL2Entries - 1, 2, false}}) {
    TransactionBuilder b;
    EXPECT_EQ(b.Add(bad).code(), Code::kInvalidArgument);
    EXPECT_TRUE(b.empty());
  }
  struct Case {
    const char* what;
    size_t at;
    uint8_t value;
  };
  for (const Case& c : {Case{"action", 64 + 8 + 16, 3}, Case{"action", 64 + 8 + 16, 0},
                        Case{"reserved", 64 + 8 + 23, 1}, Case{"count is zero", 64 + 8 + 15, 0}}) {
    std::vector<uint8_t> f = Frame({set}, 5);
    f[c.at] = c.value;
    Reseal(&f);
    Result<JournalFrame> r = DecodeTransaction(f, 5, kGen, 512);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), Code::kCorruption) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.what), std::string::npos) << r.status().ToString();
  }
}

TEST(JournalRecordTest, FinishChecksItsArguments) {
  TransactionBuilder b;
  EXPECT_FALSE(b.Finish(0, 0, kGen, 512).ok());
  EXPECT_FALSE(b.Finish(5, 5, kGen, 512).ok());
  EXPECT_FALSE(b.Finish(5, 0, kGen, 1000).ok());
  // A frame past the 64 MiB limit.
  std::vector<uint64_t> entries(kJournalMaxL2Entries, 1);
  for (int i = 0; i < 33; i++) ASSERT_TRUE(b.Add(L2Update{0x10000, 0, false, entries}).ok());
  Result<std::vector<uint8_t>> f = b.Finish(5, 0, kGen, 512);
  EXPECT_EQ(f.status().code(), Code::kInvalidArgument);
}

TEST(JournalRecordTest, EveryTruncationIsEndOfJournal) {
  const std::vector<uint8_t> f = Frame(TwoSectorsOfRecords(), 8, 512);
  ASSERT_EQ(f.size(), 2 * 512u);
  for (size_t n = 0; n < f.size(); n++) {
    Result<JournalFrame> r = DecodeTransaction(std::span(f).first(n), 8, kGen, 512);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_TRUE(IsEndOfJournal(r.status())) << n << ": " << r.status().ToString();
  }
  // A torn write: the first sectors new, the rest still the old bytes.
  std::vector<uint8_t> torn = f;
  std::fill(torn.begin() + 512, torn.end(), 0xa5);
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(torn, 8, kGen, 512).status()));
}

TEST(JournalRecordTest, EveryBitFlipIsRejected) {
  const std::vector<uint8_t> f = Frame(TwoSectorsOfRecords(), 8, 512, 7);
  ASSERT_EQ(f.size(), 2 * 512u);
  for (size_t byte = 0; byte < f.size(); byte++) {
    for (int bit = 0; bit < 8; bit++) {
      std::vector<uint8_t> bad = f;
      bad[byte] ^= static_cast<uint8_t>(1u << bit);
      Result<JournalFrame> r = DecodeTransaction(bad, 8, kGen, 512);
      ASSERT_FALSE(r.ok()) << "byte " << byte << " bit " << bit;
      ASSERT_TRUE(IsEndOfJournal(r.status())) << r.status().ToString();
    }
  }
}

TEST(JournalRecordTest, WrongSequenceOrGenerationIsEndOfJournal) {
  const std::vector<uint8_t> f = Frame(OneOfEach(), 8, 512);
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(f, 9, kGen, 512).status()));
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(f, 7, kGen, 512).status()));
  JournalGeneration other = kGen;
  other[0] ^= 1;
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(f, 8, other, 512).status()));
  const std::vector<uint8_t> zeros(4096, 0);
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(zeros, 1, kGen, 512).status()));
}

// Frames whose checksum verifies but whose contents are wrong: a writer bug
// or a forged image, reported as Corruption with the offending field.
TEST(JournalRecordTest, ChecksummedGarbageIsCorruptionNamingTheField) {
  const std::vector<uint8_t> good = Frame({RefcountUpdate{7, 1}, HeaderUpdate{8, {1, 2}}}, 8);
  struct Case {
    const char* what;
    void (*patch)(std::vector<uint8_t>*);
  };
  const Case cases[] = {
      {"reserved", [](std::vector<uint8_t>* f) { StoreBE16(f->data() + 6, 1); }},
      {"reserved", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 36, 1); }},
      {"synced_through", [](std::vector<uint8_t>* f) { StoreBE64(f->data() + 16, 8); }},
      {"payload_bytes", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 28, 4000); }},
      {"payload bytes follow", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 28, 64); }},
      {"record_count", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 32, 1000); }},
      {"truncated record prefix", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 32, 3); }},
      {"unknown", [](std::vector<uint8_t>* f) { StoreBE16(f->data() + 64, 99); }},
      {"reserved field", [](std::vector<uint8_t>* f) { StoreBE16(f->data() + 66, 1); }},
      {"body length", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 68, 24); }},
      {"runs past", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 68, 5000); }},
      {"cluster_index", [](std::vector<uint8_t>* f) { StoreBE64(f->data() + 72, 1ull << 60); }},
      {"header update", [](std::vector<uint8_t>* f) { StoreBE32(f->data() + 96, 1u << 21); }},
      {"padding", [](std::vector<uint8_t>* f) { (*f)[511] = 1; }},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> bad = good;
    c.patch(&bad);
    Reseal(&bad);
    Result<JournalFrame> r = DecodeTransaction(bad, 8, kGen, 512);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), Code::kCorruption) << c.what << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.what), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("frame offset"), std::string::npos);
  }
}

TEST(JournalRecordTest, WrapMarkerWithRecordsIsCorruption) {
  std::vector<uint8_t> m = EncodeWrapMarker(4, 3, kGen, 512);
  StoreBE32(m.data() + 32, 1);
  Reseal(&m);
  EXPECT_EQ(DecodeTransaction(m, 4, kGen, 512).status().code(), Code::kCorruption);
  // A wrap marker is always one sector.
  m = EncodeWrapMarker(4, 3, kGen, 512);
  m.resize(1024, 0);
  StoreBE32(m.data() + 24, 1024);
  Reseal(&m);
  EXPECT_TRUE(IsEndOfJournal(DecodeTransaction(m, 4, kGen, 512).status()));
}

// Random bytes behind a valid-looking, resealed header must never crash the
// decoder (the fuzzer does this at scale).
TEST(JournalRecordTest, ResealedRandomPayloadsNeverCrash) {
  std::mt19937_64 rng(42);
  const std::vector<uint8_t> base = Frame(OneOfEach(), 8, 512);
  int decoded = 0;
  for (int iter = 0; iter < 3000; iter++) {
    std::vector<uint8_t> f = base;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; e++) {
      const size_t at = 64 + rng() % (f.size() - 64);
      f[at] = static_cast<uint8_t>(rng());
    }
    if (rng() % 4 == 0) StoreBE32(f.data() + 32, static_cast<uint32_t>(rng() % 40));
    if (rng() % 4 == 0) StoreBE32(f.data() + 28, static_cast<uint32_t>(rng() % 1100));
    Reseal(&f);
    Result<JournalFrame> r = DecodeTransaction(f, 8, kGen, 512);
    if (r.ok()) {
      decoded++;
    } else {
      EXPECT_TRUE(r.status().code() == Code::kCorruption || IsEndOfJournal(r.status()));
    }
  }
  SUCCEED() << decoded << " decoded";
}

}  // namespace
}  // namespace qcow2j
