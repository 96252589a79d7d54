// The journal ring on an in-memory file: appends read back in order, torn
// and bit-flipped frames end the scan before them, frames of an earlier lap
// or generation are never replayed, wrap-around with and without a marker,
// a full ring, the tail advancing through the two superblock slots, and every
// access sector-aligned (as O_DIRECT needs).
#include "journal/journal_ring.h"

#include <deque>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "io/memory_env.h"
#include "metadata/endian.h"

namespace qcow2j {
namespace {

// Forwards to a file and fails the test on any access that is not
// sector-aligned in offset and length; can be told to fail I/O.
class SectorCheckingFile : public File {
 public:
  SectorCheckingFile(File* base, uint32_t sector) : base_(base), sector_(sector) {}
  Status Read(uint64_t offset, void* buf, size_t n) override {
    Check("read", offset, n);
    if (fail_reads) return Status::FromErrno(EIO, "injected read error");
    return base_->Read(offset, buf, n);
  }
  Status Write(uint64_t offset, const void* buf, size_t n) override {
    Check("write", offset, n);
    if (fail_writes) return Status::FromErrno(EIO, "injected write error");
    writes++;
    return base_->Write(offset, buf, n);
  }
  Status Sync() override {
    if (fail_syncs) return Status::FromErrno(EIO, "injected sync error");
    syncs++;
    return base_->Sync();
  }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t size) override { return base_->Truncate(size); }

  bool fail_reads = false;
  bool fail_writes = false;
  bool fail_syncs = false;
  int writes = 0;
  int syncs = 0;

 private:
  void Check(const char* what, uint64_t offset, size_t n) {
    EXPECT_EQ(offset % sector_, 0u) << what << " at " << offset;
    EXPECT_EQ(n % sector_, 0u) << what << " of " << n;
    EXPECT_GT(n, 0u) << what;
  }
  File* base_;
  uint32_t sector_;
};

// Records that make a frame of exactly `sectors` sectors, tagged by seq.
std::vector<JournalRecord> RecordsFor(uint64_t seq, uint32_t sectors, uint32_t sector_size) {
  const size_t per = EncodedRecordBytes(RefcountUpdate{});
  const size_t k = (size_t{sectors} * sector_size - kJournalFrameHeaderBytes) / per;
  std::vector<JournalRecord> v;
  for (size_t i = 0; i < k; i++) v.push_back(RefcountUpdate{seq * 100000 + i, seq});
  return v;
}

class JournalRingTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void SetUp() override {
    sector_ = GetParam();
    env_ = NewMemoryEnvForTest();
    Result<std::unique_ptr<File>> f = env_->Open("image", kOpenCreate);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    raw_ = std::move(*f);
    file_ = std::make_unique<SectorCheckingFile>(raw_.get(), sector_);
    ext_.area_offset = 3 * 65536;
    ext_.area_size = sector_ == 512 ? 65536 : 128 * 4096;
    ext_.sector_size = sector_;
    ASSERT_TRUE(ValidateJournalExtension(ext_, 16).ok());
    Format();
  }

  void Format() {
    Result<JournalSuperblock> sb = FormatJournal(file_.get(), ext_);
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    sb_ = *sb;
    writer_ = std::make_unique<JournalWriter>(file_.get(), ext_, sb_);
    model_.clear();
  }

  uint64_t ring_sectors() const { return ext_.ring_bytes() / sector_; }

  // Appends a transaction of `sectors` sectors; returns its area offset.
  uint64_t Append(uint32_t sectors) {
    const uint64_t seq = writer_->next_sequence();
    std::vector<JournalRecord> records = RecordsFor(seq, sectors, sector_);
    TransactionBuilder b;
    for (const JournalRecord& r : records) EXPECT_TRUE(b.Add(r).ok());
    Result<std::vector<uint8_t>> frame =
        b.Finish(seq, writer_->synced_through(), writer_->generation(), sector_);
    EXPECT_TRUE(frame.ok()) << frame.status().ToString();
    EXPECT_EQ(frame->size(), uint64_t{sectors} * sector_);
    uint64_t offset = 0;
    Status s = writer_->Append(*frame, &offset);
    EXPECT_TRUE(s.ok()) << s.ToString();
    model_[seq] = std::move(records);
    last_frame_ = *frame;
    return offset;
  }

  void Sync() { ASSERT_TRUE(writer_->Sync().ok()); }

  void AdvanceTail(uint64_t seq) {
    Status s = writer_->AdvanceTail(seq);
    ASSERT_TRUE(s.ok()) << s.ToString();
    model_.erase(model_.begin(), model_.lower_bound(seq));
  }

  struct Scan {
    std::vector<JournalTransaction> txns;
    Status status;
    uint64_t end_offset = 0;
  };

  Scan ReadAll() {
    Scan scan;
    Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    if (!sb.ok()) return scan;
    JournalReader reader(file_.get(), ext_, *sb);
    JournalTransaction t;
    while (reader.Next(&t)) scan.txns.push_back(t);
    EXPECT_FALSE(reader.Next(&t));  // stays stopped
    scan.status = reader.status();
    scan.end_offset = reader.end_offset();
    return scan;
  }

  // The scan returns exactly the model's live transactions and ends cleanly.
  void ExpectScanMatchesModel() {
    Scan scan = ReadAll();
    EXPECT_TRUE(IsEndOfJournal(scan.status)) << scan.status.ToString();
    ASSERT_EQ(scan.txns.size(), model_.size());
    auto it = model_.begin();
    for (const JournalTransaction& t : scan.txns) {
      EXPECT_EQ(t.sequence, it->first);
      EXPECT_EQ(t.records, it->second) << "sequence " << t.sequence;
      ++it;
    }
    if (writer_->empty() || model_.empty()) return;
    EXPECT_EQ(scan.end_offset, writer_->head_offset());
  }

  std::vector<uint8_t> AreaBytes() {
    std::vector<uint8_t> v(ext_.area_size);
    EXPECT_TRUE(raw_->Read(ext_.area_offset, v.data(), v.size()).ok());
    return v;
  }
  void RestoreArea(const std::vector<uint8_t>& v) {
    ASSERT_TRUE(raw_->Write(ext_.area_offset, v.data(), v.size()).ok());
  }

  uint32_t sector_ = 512;
  std::unique_ptr<MemoryEnv> env_;
  std::unique_ptr<File> raw_;
  std::unique_ptr<SectorCheckingFile> file_;
  JournalExtension ext_;
  JournalSuperblock sb_;
  std::unique_ptr<JournalWriter> writer_;
  std::map<uint64_t, std::vector<JournalRecord>> model_;
  std::vector<uint8_t> last_frame_;
};

INSTANTIATE_TEST_SUITE_P(Sectors, JournalRingTest, ::testing::Values(512u, 4096u));

TEST_P(JournalRingTest, EmptyJournalReadsNothing) {
  Scan scan = ReadAll();
  EXPECT_TRUE(scan.txns.empty());
  EXPECT_TRUE(IsEndOfJournal(scan.status)) << scan.status.ToString();
  EXPECT_EQ(scan.end_offset, ext_.ring_start());
}

TEST_P(JournalRingTest, AppendsReadBackInOrder) {
  EXPECT_EQ(Append(1), ext_.ring_start());
  EXPECT_EQ(Append(3), ext_.ring_start() + sector_);
  Append(1);
  Append(2);
  Sync();
  EXPECT_EQ(writer_->synced_through(), 4u);
  Append(1);  // not synced: still in the file, still read
  ExpectScanMatchesModel();
  Scan scan = ReadAll();
  EXPECT_EQ(scan.txns[1].offset, ext_.ring_start() + sector_);
  EXPECT_EQ(scan.txns[1].length, 3 * sector_);
  EXPECT_EQ(scan.txns[4].synced_through, 4u);
  EXPECT_EQ(scan.txns[0].synced_through, 0u);
}

// The reader fetches frames through a multi-MiB read-ahead window: frames
// that straddle its end, frames larger than it, and laps around a ring much
// larger than it all read back exactly.
TEST_P(JournalRingTest, FramesAcrossTheReadAheadWindowReadBack) {
  ext_.area_size = 12u << 20;
  ASSERT_TRUE(ValidateJournalExtension(ext_, 16).ok());
  Format();
  const uint32_t big = static_cast<uint32_t>((5u << 20) / sector_);  // > the window
  std::mt19937 rng(GetParam());
  for (int lap = 0; lap < 3; lap++) {
    uint64_t appended = 0;
    while (appended + (2u << 20) < ext_.ring_bytes() / 2) {
      const uint32_t sectors = rng() % 7 == 0 ? big : 1 + rng() % (300u * 512 / sector_);
      Append(sectors);
      appended += uint64_t{sectors} * sector_;
    }
    Sync();
    ExpectScanMatchesModel();
    AdvanceTail(writer_->next_sequence());
  }
  Append(big);  // one more past a wrap, on its own
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, ReaderReportsMaxSyncedThrough) {
  Append(1);
  Sync();
  Append(1);
  Append(1);  // written before 2 was synced: synced_through still 1
  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok());
  JournalReader reader(file_.get(), ext_, *sb);
  JournalTransaction t;
  int n = 0;
  while (reader.Next(&t)) n++;
  EXPECT_EQ(n, 3);
  EXPECT_EQ(reader.max_synced_through(), 1u);  // 2 and 3 are unconfirmed
  EXPECT_EQ(reader.next_sequence(), 4u);
  EXPECT_EQ(reader.used_bytes(), 3u * sector_);
}

TEST_P(JournalRingTest, TornLastFrameEndsTheScanBeforeIt) {
  Append(1);
  Append(2);
  Append(1);
  Sync();
  std::vector<uint8_t> before = AreaBytes();
  const uint64_t offset = Append(4);
  const std::vector<uint8_t> frame = last_frame_;
  // What the sectors held before (an old lap): never the frame's own bytes.
  std::fill(before.begin() + static_cast<std::ptrdiff_t>(offset),
            before.begin() + static_cast<std::ptrdiff_t>(offset + frame.size()), 0x5a);
  model_.erase(writer_->next_sequence() - 1);
  // Every sector boundary and several points inside sectors.
  std::vector<size_t> cuts;
  for (size_t c = 0; c < frame.size(); c += sector_) {
    for (size_t d : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{sector_ / 2},
                     size_t{sector_ - 1}}) {
      cuts.push_back(c + d);
    }
  }
  for (size_t cut : cuts) {
    RestoreArea(before);
    ASSERT_TRUE(raw_->Write(ext_.area_offset + offset, frame.data(), cut).ok());
    Scan scan = ReadAll();
    ASSERT_EQ(scan.txns.size(), 3u) << "cut at " << cut;
    EXPECT_TRUE(IsEndOfJournal(scan.status)) << scan.status.ToString();
  }
  // The tail of a frame landing without its head (out-of-order sectors).
  RestoreArea(before);
  ASSERT_TRUE(raw_->Write(ext_.area_offset + offset + sector_, frame.data() + sector_,
                          frame.size() - sector_)
                  .ok());
  EXPECT_EQ(ReadAll().txns.size(), 3u);
  // And a frame missing only a middle sector.
  RestoreArea(before);
  ASSERT_TRUE(raw_->Write(ext_.area_offset + offset, frame.data(), frame.size()).ok());
  ASSERT_TRUE(raw_->ZeroRange(ext_.area_offset + offset + 2 * sector_, sector_).ok());
  EXPECT_EQ(ReadAll().txns.size(), 3u);
}

TEST_P(JournalRingTest, BitFlipsInAFrameEndTheScanBeforeIt) {
  Append(1);
  const uint64_t offset = Append(3);
  Append(1);
  Sync();
  const std::vector<uint8_t> good = AreaBytes();
  std::mt19937 rng(7);
  for (int i = 0; i < 200; i++) {
    std::vector<uint8_t> bad = good;
    const size_t at = offset + rng() % (3 * sector_);
    bad[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
    RestoreArea(bad);
    Scan scan = ReadAll();
    ASSERT_EQ(scan.txns.size(), 1u) << "flip at area offset " << at;
    EXPECT_TRUE(IsEndOfJournal(scan.status)) << scan.status.ToString();
  }
}

TEST_P(JournalRingTest, WrapMarkerWhenTheFrameDoesNotFitAtTheEnd) {
  // Fill to 3 sectors before the end, release everything, then a 5-sector
  // frame must wrap.
  const uint64_t n = ring_sectors() - 3;
  for (uint64_t i = 0; i < n; i++) Append(1);
  Sync();
  AdvanceTail(writer_->next_sequence());
  EXPECT_TRUE(writer_->empty());
  EXPECT_EQ(writer_->head_offset(), ext_.area_size - 3 * sector_);
  const uint64_t wrapped_seq = writer_->next_sequence();
  EXPECT_EQ(Append(5), ext_.ring_start());
  EXPECT_EQ(writer_->free_bytes(), ext_.ring_bytes() - 8 * sector_);  // waste counts
  Append(1);
  ExpectScanMatchesModel();
  // The marker sits where the frame would have started.
  std::vector<uint8_t> marker(sector_);
  ASSERT_TRUE(raw_->Read(ext_.area_offset + ext_.area_size - 3 * sector_, marker.data(),
                         sector_)
                  .ok());
  Result<JournalFrame> m = DecodeTransaction(marker, wrapped_seq, writer_->generation(), sector_);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->header.kind, JournalFrameKind::kWrap);
  // Advancing the tail to the wrapped frame releases the waste too.
  Sync();
  AdvanceTail(wrapped_seq);
  EXPECT_EQ(writer_->free_bytes(), ext_.ring_bytes() - 6 * sector_);
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, TornWrapMarkerDropsTheWrappedFrame) {
  const uint64_t n = ring_sectors() - 3;
  for (uint64_t i = 0; i < n; i++) Append(1);
  Sync();
  AdvanceTail(writer_->next_sequence());
  Append(5);
  ASSERT_TRUE(raw_->ZeroRange(ext_.area_offset + ext_.area_size - 3 * sector_, 1).ok());
  Scan scan = ReadAll();
  EXPECT_TRUE(scan.txns.empty());
  EXPECT_TRUE(IsEndOfJournal(scan.status));
}

TEST_P(JournalRingTest, FrameExactlyFillingTheRingEnd) {
  const uint64_t ring = ring_sectors();
  for (uint64_t i = 0; i < ring / 2; i++) Append(1);
  Sync();
  AdvanceTail(writer_->next_sequence());
  const uint64_t rest = ring - ring / 2;
  const uint64_t last = Append(static_cast<uint32_t>(rest));
  EXPECT_EQ(last + rest * sector_, ext_.area_size);
  EXPECT_EQ(writer_->head_offset(), ext_.ring_start());
  // The next frame starts the ring with no marker and no waste.
  EXPECT_EQ(Append(2), ext_.ring_start());
  EXPECT_EQ(writer_->free_bytes(), ext_.ring_bytes() - (rest + 2) * sector_);
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, FullRingReportsFullAndScansOneLap) {
  const uint64_t ring = ring_sectors();
  for (uint64_t i = 0; i < ring / 2; i++) Append(2);
  if (ring % 2) Append(1);
  EXPECT_EQ(writer_->free_bytes(), 0u);
  EXPECT_FALSE(writer_->Fits(sector_));
  TransactionBuilder b;
  Result<std::vector<uint8_t>> f =
      b.Finish(writer_->next_sequence(), 0, writer_->generation(), sector_);
  ASSERT_TRUE(f.ok());
  uint64_t offset = 0;
  Status s = writer_->Append(*f, &offset);
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.ToString();
  EXPECT_NE(s.message().find("journal full"), std::string::npos);
  // The head met the tail: the reader stops after one lap.
  ExpectScanMatchesModel();
  // Only synced transactions may be released.
  EXPECT_EQ(writer_->AdvanceTail(3).code(), Code::kInvalidArgument);
  Sync();
  AdvanceTail(3);
  EXPECT_EQ(writer_->free_bytes(), 4u * sector_);
  EXPECT_TRUE(writer_->Fits(4 * sector_));
  EXPECT_FALSE(writer_->Fits(5 * sector_));
  EXPECT_EQ(Append(4), ext_.ring_start());
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, FitsCountsTheWasteBeforeAWrap) {
  const uint64_t ring = ring_sectors();
  for (uint64_t i = 0; i < ring - 4; i++) Append(1);
  Sync();
  AdvanceTail(writer_->next_sequence() - 2);  // keep two frames live
  // 4 sectors left at the end, ring_sectors - 2 free in total.
  EXPECT_TRUE(writer_->Fits((ring - 6) * sector_));  // 4 waste + ring-6
  EXPECT_FALSE(writer_->Fits((ring - 5) * sector_));
  EXPECT_TRUE(writer_->Fits(4 * sector_));  // fits without wrapping
}

TEST_P(JournalRingTest, StaleFramesFromEarlierLapsAreNotReplayed) {
  std::mt19937 rng(11);
  uint64_t appended_sectors = 0;
  int wraps = 0;
  while (appended_sectors < 6 * ring_sectors()) {
    const uint32_t sectors = 1 + rng() % 7;
    if (!writer_->Fits(uint64_t{sectors} * sector_)) {
      Sync();
      AdvanceTail(writer_->next_sequence() - std::min<uint64_t>(model_.size(), 3));
      continue;
    }
    const uint64_t before = writer_->head_offset();
    const uint64_t at = Append(sectors);
    if (at < before) wraps++;
    appended_sectors += sectors;
    if (rng() % 5 == 0) ExpectScanMatchesModel();
  }
  EXPECT_GE(wraps, 4);
  ExpectScanMatchesModel();
  // What follows the live frames is an older lap's frame (or a wrap marker
  // of one): its sequence is lower, so the scan ends there.
  Scan scan = ReadAll();
  EXPECT_TRUE(IsEndOfJournal(scan.status)) << scan.status.ToString();
}

TEST_P(JournalRingTest, NewGenerationNeverReplaysOldFrames) {
  Append(1);
  Append(2);
  Sync();
  ASSERT_EQ(ReadAll().txns.size(), 2u);
  const JournalGeneration old = writer_->generation();
  Format();
  EXPECT_NE(writer_->generation(), old);
  Scan scan = ReadAll();
  EXPECT_TRUE(scan.txns.empty());
  EXPECT_NE(scan.status.message().find("generation"), std::string::npos)
      << scan.status.ToString();
  Append(1);
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, TailAdvancesThroughAlternatingSlots) {
  for (int i = 0; i < 6; i++) Append(1);
  Sync();
  const int writes_before = file_->writes;
  const int syncs_before = file_->syncs;
  AdvanceTail(3);
  EXPECT_EQ(file_->writes, writes_before + 1);  // one superblock sector
  EXPECT_EQ(file_->syncs, syncs_before + 1);
  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok());
  EXPECT_EQ(sb->tail_sequence, 3u);
  EXPECT_EQ(sb->checkpoint_number, 2u);
  EXPECT_EQ(sb->slot(), 0u);
  EXPECT_EQ(sb->tail_offset, ext_.ring_start() + 2 * sector_);
  ExpectScanMatchesModel();
  AdvanceTail(5);
  sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok());
  EXPECT_EQ(sb->checkpoint_number, 3u);
  EXPECT_EQ(sb->slot(), 1u);
  ExpectScanMatchesModel();
}

TEST_P(JournalRingTest, TornSuperblockFallsBackToTheOtherSlot) {
  for (int i = 0; i < 6; i++) Append(1);
  Sync();
  AdvanceTail(3);  // slot 0
  AdvanceTail(5);  // slot 1
  // Tear the newest copy: replay starts at the older tail, which is still
  // intact (its space was not reused) and replaying 3 and 4 again is harmless.
  ASSERT_TRUE(raw_->ZeroRange(ext_.area_offset + ext_.superblock_offset(1) + 40, 8).ok());
  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_EQ(sb->tail_sequence, 3u);
  Scan scan = ReadAll();
  ASSERT_EQ(scan.txns.size(), 4u);
  EXPECT_EQ(scan.txns.front().sequence, 3u);
  // Both copies gone: Corruption, never a silent empty journal.
  ASSERT_TRUE(raw_->ZeroRange(ext_.area_offset, sector_).ok());
  sb = ReadJournalSuperblock(file_.get(), ext_);
  EXPECT_EQ(sb.status().code(), Code::kCorruption);
}

TEST_P(JournalRingTest, WriterRejectsFramesThatAreNotNext) {
  TransactionBuilder b;
  ASSERT_TRUE(b.Add(RefcountUpdate{1, 1}).ok());
  uint64_t offset = 0;
  Result<std::vector<uint8_t>> wrong_seq = b.Finish(2, 0, writer_->generation(), sector_);
  ASSERT_TRUE(wrong_seq.ok());
  EXPECT_EQ(writer_->Append(*wrong_seq, &offset).code(), Code::kInvalidArgument);
  Result<std::vector<uint8_t>> wrong_gen = b.Finish(1, 0, NewJournalGeneration(), sector_);
  ASSERT_TRUE(wrong_gen.ok());
  EXPECT_EQ(writer_->Append(*wrong_gen, &offset).code(), Code::kInvalidArgument);
  const std::vector<uint8_t> marker = EncodeWrapMarker(1, 0, writer_->generation(), sector_);
  EXPECT_EQ(writer_->Append(marker, &offset).code(), Code::kInvalidArgument);
  Result<std::vector<uint8_t>> right = b.Finish(1, 0, writer_->generation(), sector_);
  ASSERT_TRUE(right.ok());
  std::vector<uint8_t> padded = *right;
  padded.resize(padded.size() + sector_, 0);
  EXPECT_EQ(writer_->Append(padded, &offset).code(), Code::kInvalidArgument);
  EXPECT_TRUE(writer_->Append(*right, &offset).ok());
  EXPECT_EQ(writer_->AdvanceTail(0).code(), Code::kInvalidArgument);
}

TEST_P(JournalRingTest, FailedWritesCanBeRetriedAndReadErrorsAreNotTheEnd) {
  Append(1);
  const uint64_t head = writer_->head_offset();
  file_->fail_writes = true;
  TransactionBuilder b;
  Result<std::vector<uint8_t>> f = b.Finish(2, 0, writer_->generation(), sector_);
  ASSERT_TRUE(f.ok());
  uint64_t offset = 0;
  EXPECT_EQ(writer_->Append(*f, &offset).code(), Code::kIOError);
  EXPECT_EQ(writer_->head_offset(), head);
  EXPECT_EQ(writer_->next_sequence(), 2u);
  file_->fail_writes = false;
  ASSERT_TRUE(writer_->Append(*f, &offset).ok());
  EXPECT_EQ(offset, head);
  ASSERT_TRUE(writer_->Sync().ok());
  {
    Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
    ASSERT_TRUE(sb.ok());
    JournalReader reader(file_.get(), ext_, *sb);
    JournalTransaction t;
    int seen = 0;
    while (reader.Next(&t)) seen++;
    EXPECT_EQ(seen, 2);
  }

  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok());
  JournalReader reader(file_.get(), ext_, *sb);
  file_->fail_reads = true;
  JournalTransaction t;
  EXPECT_FALSE(reader.Next(&t));
  EXPECT_EQ(reader.status().code(), Code::kIOError);
  EXPECT_FALSE(IsEndOfJournal(reader.status()));
  EXPECT_EQ(ReadJournalSuperblock(file_.get(), ext_).status().code(), Code::kIOError);
}

TEST_P(JournalRingTest, FailedSyncStopsTheWriter) {
  Append(1);
  file_->fail_syncs = true;
  EXPECT_EQ(writer_->Sync().code(), Code::kIOError);
  EXPECT_EQ(writer_->synced_through(), 0u);
  file_->fail_syncs = false;
  EXPECT_EQ(writer_->Sync().code(), Code::kAborted);
}

TEST_P(JournalRingTest, AreaPastTheEndOfTheFileReadsAsEmpty) {
  JournalExtension far = ext_;
  far.area_offset = 1ull << 40;  // nothing written there: reads as zeros
  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), far);
  EXPECT_EQ(sb.status().code(), Code::kCorruption);
}

// A checksummed frame that claims a wrap at the start of the ring cannot
// have been written by the writer: Corruption, and the scan stops.
TEST_P(JournalRingTest, ImpossibleWrapMarkerIsCorruption) {
  const std::vector<uint8_t> marker = EncodeWrapMarker(1, 0, writer_->generation(), sector_);
  ASSERT_TRUE(raw_->Write(ext_.area_offset + ext_.ring_start(), marker.data(), sector_).ok());
  Scan scan = ReadAll();
  EXPECT_TRUE(scan.txns.empty());
  EXPECT_EQ(scan.status.code(), Code::kCorruption) << scan.status.ToString();
}

// Random appends, syncs, checkpoints and torn last frames against a model:
// the scan always returns exactly the live transactions in order.
TEST_P(JournalRingTest, RandomOperationsMatchTheModel) {
  for (uint32_t seed = 1; seed <= 20; seed++) {
    Format();
    std::mt19937 rng(seed);
    for (int op = 0; op < 300; op++) {
      const uint32_t choice = rng() % 10;
      if (choice < 6) {
        const uint32_t sectors = 1 + rng() % (rng() % 4 == 0 ? 30 : 4);
        if (writer_->Fits(uint64_t{sectors} * sector_)) {
          Append(sectors);
        } else {
          Sync();
          const uint64_t lo = writer_->tail_sequence();
          const uint64_t hi = writer_->next_sequence();
          AdvanceTail(lo + rng() % (hi - lo + 1));
        }
      } else if (choice < 8) {
        Sync();
      } else if (choice < 9 && writer_->synced_through() + 1 > writer_->tail_sequence()) {
        const uint64_t lo = writer_->tail_sequence();
        const uint64_t hi = std::min(writer_->next_sequence(), writer_->synced_through() + 1);
        AdvanceTail(lo + rng() % (hi - lo + 1));
      } else {
        ExpectScanMatchesModel();
        if (HasFatalFailure()) return;
      }
    }
    ExpectScanMatchesModel();
    // Tear the newest frame (if any): the scan drops exactly it.
    if (!model_.empty() && !last_frame_.empty() &&
        model_.rbegin()->first == writer_->next_sequence() - 1) {
      Scan full = ReadAll();
      ASSERT_FALSE(full.txns.empty());
      const JournalTransaction& last = full.txns.back();
      const uint64_t cut = rng() % last.length;
      std::vector<uint8_t> old(last.length - cut, 0x5a);
      ASSERT_TRUE(raw_->Write(ext_.area_offset + last.offset + cut, old.data(), old.size()).ok());
      model_.erase(last.sequence);
      Scan torn = ReadAll();
      EXPECT_EQ(torn.txns.size(), full.txns.size() - 1) << "seed " << seed << " cut " << cut;
    }
  }
}

// A recovery's verdict goes into the other slot and wins; the tail and the
// frames stay.
TEST_P(JournalRingTest, MarkVerifiedWritesTheOtherSlotAndKeepsTheTail) {
  Append(1);
  Append(1);
  Append(1);
  Sync();
  Result<JournalSuperblock> sb = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_FALSE(MarkJournalVerified(file_.get(), ext_, *sb, sb->tail_sequence - 2).ok());
  Result<JournalSuperblock> marked = MarkJournalVerified(file_.get(), ext_, *sb, sb->tail_sequence + 2);
  ASSERT_TRUE(marked.ok()) << marked.status().ToString();
  Result<JournalSuperblock> now = ReadJournalSuperblock(file_.get(), ext_);
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  EXPECT_EQ(*now, *marked);
  EXPECT_EQ(now->slot(), 1 - sb->slot());
  EXPECT_EQ(now->tail_offset, sb->tail_offset);
  EXPECT_EQ(now->verified_count, 3u);
  EXPECT_EQ(now->verified_through(), sb->tail_sequence + 2);
  ExpectScanMatchesModel();
}

}  // namespace
}  // namespace qcow2j
