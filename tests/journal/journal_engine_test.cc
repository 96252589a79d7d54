// The metadata journal in the engine: one sync per guest flush, a few
// hundred bytes of metadata per allocating write, QEMU locked out while
// transactions are not checkpointed, replay (read-only in memory, read-write
// in place), dropping an unconfirmed transaction whose data did not land,
// dirty-refcount mode, and a cleanly closed image that is plain qcow2.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "io/forwarding_file.h"
#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/l2_entry.h"
#include "qcow2/offline_image.h"
#include "qcow2j/image.h"
#include "tests/util/test_util.h"

namespace qcow2j {
namespace {

struct Counters {
  std::atomic<uint64_t> syncs{0};
  std::atomic<uint64_t> bytes_written{0};
};

// Counts syncs and written bytes of every file it opens.
class CountingFile final : public ForwardingFile {
 public:
  CountingFile(std::unique_ptr<File> f, Counters* c) : ForwardingFile(std::move(f)), c_(c) {}
  Status Write(uint64_t o, const void* b, size_t n) override {
    c_->bytes_written += n;
    return base_->Write(o, b, n);
  }
  Status Writev(uint64_t o, std::span<const iovec> v) override {
    for (const iovec& x : v) c_->bytes_written += x.iov_len;
    return base_->Writev(o, v);
  }
  Status Sync() override {
    c_->syncs++;
    return base_->Sync();
  }

 private:
  Counters* c_;
};

class CountingEnv final : public Env {
 public:
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    QCOW2J_ASSIGN_OR_RETURN(auto f, Env::Default()->Open(path, flags));
    return std::unique_ptr<File>(new CountingFile(std::move(f), &counters));
  }
  bool Exists(const std::string& p) override { return Env::Default()->Exists(p); }
  Status Remove(const std::string& p) override { return Env::Default()->Remove(p); }
  Counters counters;
};

std::unique_ptr<Image> OpenRw(const std::string& path, Env* env = nullptr) {
  OpenOptions o;
  o.read_only = false;
  o.env = env;
  auto img = Image::Open(path, o);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
  return img.ok() ? std::move(img).value() : nullptr;
}

std::unique_ptr<Image> OpenRo(const std::string& path) {
  OpenOptions o;
  o.read_only = true;
  auto img = Image::Open(path, o);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
  return img.ok() ? std::move(img).value() : nullptr;
}

void Create(const std::string& path, uint64_t size, bool journal = true, bool lazy = false) {
  CreateOptions c;
  c.size = size;
  c.journal = journal;
  c.lazy_refcounts = lazy;
  Status s = Image::Create(path, c);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

void WritePattern(Image* img, uint64_t off, size_t len, uint8_t v) {
  std::vector<uint8_t> b(len, v);
  Status s = img->Write(off, b.data(), b.size());
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// A journaled image of `size` bytes, open read-write, with [0, len) written
// as `v` and, with `flush`, committed (nullptr after a failure, reported).
std::unique_ptr<Image> CreateAndWrite(const std::string& path, uint64_t size, size_t len, uint8_t v,
                                      bool flush = false) {
  Create(path, size);
  auto image = OpenRw(path);
  if (!image) return nullptr;
  std::vector<uint8_t> b(len, v);
  Status s = image->Write(0, b.data(), b.size());
  if (s.ok() && flush) s = image->Flush();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return s.ok() ? std::move(image) : nullptr;
}

uint64_t Incompatible(const std::string& path) { return test::PeekBe64(path, 72); }

// A read-write open of a crashed image replays (its report says `report`)
// and the close leaves the journal bit clear.
void ExpectReadWriteRecovery(const std::string& path, const std::string& report) {
  auto rw = OpenRw(path);
  ASSERT_TRUE(rw);
  EXPECT_NE(rw->Info().recovery_report.find(report), std::string::npos) << rw->Info().recovery_report;
  ASSERT_TRUE(rw->Close().ok());
  EXPECT_EQ(Incompatible(path) & kIncompatJournal, 0u);
}

// Our engine reads every (offset, len, pattern) back.
void ExpectReads(Image* img, const std::vector<std::tuple<uint64_t, uint64_t, int>>& reads) {
  for (auto [off, len, p] : reads) {
    std::vector<uint8_t> b(len);
    ASSERT_TRUE(img->Read(off, b.data(), len).ok());
    EXPECT_EQ(b, std::vector<uint8_t>(len, static_cast<uint8_t>(p))) << "offset " << off;
  }
}

// qemu-io reads every (offset, len, pattern) back.
void ExpectQemuReads(const std::string& path,
                     const std::vector<std::tuple<uint64_t, uint64_t, int>>& reads) {
  std::string cmd = "qemu-io -r -f qcow2";
  for (auto [off, len, p] : reads)
    cmd += " -c 'read -P " + std::to_string(p) + " " + std::to_string(off) + " " + std::to_string(len) + "'";
  auto r = test::Run(cmd + " " + test::Quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
}

void ExpectQemuClean(const std::string& path) {
  auto r = test::Run("qemu-img check " + test::Quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

uint64_t Autoclear(const std::string& path) { return test::PeekBe64(path, 88); }

// A copy of the file as it is now, taken while the image is still open:
// what a power cut right after the last flush would leave.
std::string CrashCopy(const std::string& path, const std::string& name) {
  std::string to = std::filesystem::path(path).parent_path() / name;
  std::filesystem::copy_file(path, to, std::filesystem::copy_options::overwrite_existing);
  return to;
}

TEST(JournalEngineTest, OneSyncPerGuestFlushAndLittleMetadata) {
  test::TempDir dir;
  for (bool journal : {true, false}) {
    SCOPED_TRACE(journal ? "journal" : "no journal");
    std::string img = dir.Path(journal ? "j.qcow2" : "nj.qcow2");
    Create(img, 1ull << 30, journal);
    CountingEnv env;
    auto image = OpenRw(img, &env);
    ASSERT_TRUE(image);
    // The first allocating flush starts the journal session (area, header).
    WritePattern(image.get(), 0, 4096, 1);
    ASSERT_TRUE(image->Flush().ok());
    const uint64_t syncs0 = env.counters.syncs, bytes0 = env.counters.bytes_written;
    constexpr int kFlushes = 150;
    for (int i = 1; i <= kFlushes; i++) {
      WritePattern(image.get(), uint64_t(i) * 65536, 4096, static_cast<uint8_t>(i));
      ASSERT_TRUE(image->Flush().ok());
    }
    const double syncs = double(env.counters.syncs - syncs0) / kFlushes;
    const double bpb = double(env.counters.bytes_written - bytes0) / (kFlushes * 4096.0);
    if (journal) {
      EXPECT_LE(syncs, 1.0) << "syncs per flush";
      EXPECT_LE(bpb, 1.5) << "bytes written per guest byte";
      EXPECT_NE(Incompatible(img) & kIncompatJournal, 0u) << "open session: QEMU must be locked out";
    } else {
      EXPECT_GE(syncs, 2.0) << "the journal-less flush orders with two syncs";
    }
    ASSERT_TRUE(image->Close().ok());
    EXPECT_EQ(Incompatible(img) & kIncompatJournal, 0u);
    EXPECT_EQ(Autoclear(img) & kAutoclearJournalValid, 0u);
    ExpectQemuClean(img);
    ExpectQemuReads(img, {{0, 4096, 1}, {65536, 4096, 1}, {kFlushes * 65536ull, 4096, kFlushes}});
  }
}

// Past half the ring a commit hands the checkpoint to a background thread:
// the guest flush that crossed the threshold returns after its one sync.
TEST(JournalEngineTest, CheckpointsRunInTheBackgroundPastHalfTheRing) {
  test::TempDir dir;
  std::string img = dir.Path("bg.qcow2");
  CreateOptions c;
  c.size = 1ull << 30;
  c.journal = true;
  c.journal_size = 1 << 20;
  ASSERT_TRUE(Image::Create(img, c).ok());
  auto image = OpenRw(img);
  ASSERT_TRUE(image);
  int written = 0;
  for (int i = 0; i < 4000 && image->Info().journal_background_checkpoints == 0; i++) {
    WritePattern(image.get(), uint64_t(i) * 65536, 4096, static_cast<uint8_t>(i % 250 + 1));
    ASSERT_TRUE(image->Flush().ok());
    written = i + 1;
    std::this_thread::yield();  // the checkpointer needs the metadata lock
  }
  ImageInfo info = image->Info();
  EXPECT_GT(info.journal_background_checkpoints, 0u) << written << " flushes, "
                                                     << info.journal_checkpoints << " checkpoints";
  EXPECT_GE(info.journal_commits, uint64_t(written));
  ASSERT_TRUE(image->Close().ok());
  ExpectQemuClean(img);
  ExpectQemuReads(img, {{0, 4096, 1}, {uint64_t(written - 1) * 65536, 4096, (written - 1) % 250 + 1}});
}

TEST(JournalEngineTest, QemuRefusesAnImageWithUncheckpointedTransactions) {
  test::TempDir dir;
  std::string img = dir.Path("a.qcow2");
  auto image = CreateAndWrite(img, 64 << 20, 65536, 0x5a, /*flush=*/true);
  ASSERT_TRUE(image);
  std::string copy = CrashCopy(img, "copy.qcow2");
  auto r = test::Run("qemu-img info " + test::Quote(copy));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE((r.out + r.err).find("qcow2j journal"), std::string::npos)
      << "QEMU names the feature from the feature-name table: " << r.out << r.err;
  ASSERT_TRUE(image->Close().ok());
  ExpectQemuClean(img);
}

TEST(JournalEngineTest, CrashedImageReplaysReadOnlyInMemoryAndReadWriteInPlace) {
  test::TempDir dir;
  std::string img = dir.Path("a.qcow2");
  auto image = CreateAndWrite(img, 1ull << 30, 3 * 65536, 0x11);
  ASSERT_TRUE(image);
  WritePattern(image.get(), 700ull << 20, 12345, 0x22);  // another L2 table
  ASSERT_TRUE(image->Flush().ok());
  ASSERT_TRUE(image->Discard(65536, 65536).ok());
  WritePattern(image.get(), 5 << 20, 8192, 0x33);
  ASSERT_TRUE(image->WriteZeroes(2 * 65536, 65536, false).ok());
  ASSERT_TRUE(image->Flush().ok());
  std::string crashed = CrashCopy(img, "crashed.qcow2");
  std::string unreplayed = CrashCopy(img, "unreplayed.qcow2");
  ASSERT_TRUE(image->Close().ok());

  // The tables in place are stale: without replay the data is not there.
  test::PokeBe64(unreplayed, 72, Incompatible(unreplayed) & ~kIncompatJournal);
  auto stale = test::Run("qemu-io -r -f qcow2 -c 'read -P 0x33 5M 8k' " + test::Quote(unreplayed));
  EXPECT_NE(stale.out.find("Pattern verification failed"), std::string::npos)
      << "the data must live only in the journal until a checkpoint: " << stale.out;

  const std::vector<std::tuple<uint64_t, uint64_t, int>> expect = {
      {0, 65536, 0x11}, {65536, 65536, 0}, {2 * 65536, 65536, 0}, {700ull << 20, 12345, 0x22},
      {5 << 20, 8192, 0x33}};
  {
    auto ro = OpenRo(crashed);
    ASSERT_TRUE(ro);
    EXPECT_NE(ro->Info().recovery_report.find("in memory"), std::string::npos)
        << ro->Info().recovery_report;
    ExpectReads(ro.get(), expect);
  }
  EXPECT_NE(Incompatible(crashed) & kIncompatJournal, 0u) << "a read-only open changes nothing";
  ExpectReadWriteRecovery(crashed, "journal: replayed 2 transactions");
  ExpectQemuClean(crashed);
  ExpectQemuReads(crashed, expect);
  auto check = test::Run(test::Cli() + " check " + test::Quote(crashed));
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
}

// Record type 10 (L2 COPIED run) and the snapshot-table header switch, as
// the offline snapshot operations commit them: replay applies them, and
// replaying over a file where they are already in place (a crash after the
// in-place writes) gives the same image.
TEST(JournalEngineTest, L2CopiedRunAndSnapshotSwitchReplayIdempotently) {
  test::TempDir dir;
  std::string img = dir.Path("a.qcow2");
  {
    auto image = CreateAndWrite(img, 64ull << 20, 3 * 65536, 0x44);
    ASSERT_TRUE(image);
    ASSERT_TRUE(image->Close().ok());
  }
  uint64_t table = 0, l1_offset = 0;
  // Commits [clear all entries, set 1..2, set 1..2 again, no snapshots
  // (nb 0, offset 0)] without writing anything in place.
  auto commit = [&](const std::string& path, bool in_place) {
    auto im = OpenOffline(path, nullptr, true);
    ASSERT_TRUE(im.ok()) << im.status().ToString();
    table = im->l1[0] & kL1OffsetMask;
    l1_offset = im->h.l1_table_offset;
    ASSERT_NE(table, 0u);
    auto ext = OfflineJournalExtension(*im);
    ASSERT_TRUE(ext);
    JournalExtension area = OfflineJournalArea(*im, *ext, (im->file_size + 65535) & ~65535ull);
    std::vector<JournalRecord> recs;
    recs.push_back(L2CopiedRun{table, 0, 8192, false});
    recs.push_back(L2CopiedRun{table, 1, 2, true});
    recs.push_back(L2CopiedRun{table, 1, 2, true});
    recs.push_back(L1Update{l1_offset, 0, im->l1[0] & ~kOflagCopied});
    HeaderUpdate h;
    h.offset = 60;
    h.bytes.assign(12, 0);
    recs.push_back(h);
    auto j = BeginOfflineJournal(*im, area, ext->area_size);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    Status s = CommitOfflineJournal(*im, *j, recs);
    ASSERT_TRUE(s.ok()) << s.ToString();
    if (in_place) {  // what the operation writes after its commit
      uint8_t e[8];
      ASSERT_TRUE(im->file->Read(table, e, 8).ok());
      StoreBE64(e, LoadBE64(e) & ~kOflagCopied);
      ASSERT_TRUE(im->file->Write(table, e, 8).ok());
      StoreBE64(e, im->l1[0] & ~kOflagCopied);
      ASSERT_TRUE(im->file->Write(l1_offset, e, 8).ok());
      ASSERT_TRUE(im->file->Sync().ok());
    }
  };
  std::string a = CrashCopy(img, "replay.qcow2"), b = CrashCopy(img, "again.qcow2");
  commit(a, false);
  commit(b, true);
  EXPECT_NE(Incompatible(a) & kIncompatJournal, 0u);
  for (const std::string& path : {a, b}) {
    ExpectReadWriteRecovery(path, "journal: replayed 1 transaction");
    EXPECT_EQ(test::PeekBe64(path, l1_offset) & kOflagCopied, 0u);
    EXPECT_EQ(test::PeekBe64(path, table) & kOflagCopied, 0u) << "entry 0: cleared";
    EXPECT_NE(test::PeekBe64(path, table + 8) & kOflagCopied, 0u) << "entry 1: set again";
    EXPECT_NE(test::PeekBe64(path, table + 16) & kOflagCopied, 0u) << "entry 2: set again";
    EXPECT_EQ(test::PeekBe64(path, table + 24), 0u) << "entry 3: unmapped, left alone";
    ExpectQemuReads(path, {{0, 3 * 65536, 0x44}});
  }
  auto cmp = test::Run("cmp " + test::Quote(a) + " " + test::Quote(b));
  EXPECT_EQ(cmp.exit_code, 0) << "replay over the in-place writes differs from replay alone";
}

// A resize that outgrows the L1 table is one transaction: the header on
// disk keeps the old size and table until a checkpoint, and replay switches
// to the new table (read-only in memory, read-write in place).
TEST(JournalEngineTest, ResizeThatMovesTheL1TableIsAJournalTransaction) {
  test::TempDir dir;
  std::string img = dir.Path("r.qcow2");
  // One L1 entry: growing to 2 GiB moves the table.
  auto image = CreateAndWrite(img, 64ull << 20, 65536, 0x41, /*flush=*/true);
  ASSERT_TRUE(image);
  const uint64_t old_l1 = test::PeekBe64(img, 40);  // a commit leaves the L1 table in place
  ASSERT_TRUE(image->Resize(2ull << 30, false).ok());
  WritePattern(image.get(), 1536ull << 20, 65536, 0x42);  // in the part the new L1 table covers
  ASSERT_TRUE(image->Flush().ok());
  std::string crashed = CrashCopy(img, "crashed.qcow2");
  ASSERT_TRUE(image->Close().ok());

  EXPECT_EQ(test::PeekBe64(crashed, 24), 64ull << 20) << "the size lives in the journal until a checkpoint";
  EXPECT_EQ(test::PeekBe64(crashed, 40), old_l1) << "so does the L1 table's move";
  const std::vector<std::tuple<uint64_t, uint64_t, int>> expect = {
      {0, 65536, 0x41}, {1536ull << 20, 65536, 0x42}, {1ull << 30, 65536, 0}};
  {
    auto ro = OpenRo(crashed);
    ASSERT_TRUE(ro);
    EXPECT_EQ(ro->size(), 2ull << 30);
    ExpectReads(ro.get(), expect);
  }
  {
    auto rw = OpenRw(crashed);
    ASSERT_TRUE(rw);
    EXPECT_EQ(rw->size(), 2ull << 30);
    ASSERT_TRUE(rw->Close().ok());
  }
  EXPECT_EQ(test::PeekBe64(crashed, 24), 2ull << 30);
  EXPECT_NE(test::PeekBe64(crashed, 40), old_l1);
  ExpectQemuClean(crashed);
  ExpectQemuReads(crashed, expect);
  ExpectQemuClean(img);
  ExpectQemuReads(img, expect);
}

TEST(JournalEngineTest, UnconfirmedTransactionWhoseDataDidNotLandIsDropped) {
  test::TempDir dir;
  std::string img = dir.Path("a.qcow2");
  auto image = CreateAndWrite(img, 64 << 20, 65536, 0x41, /*flush=*/true);
  ASSERT_TRUE(image);
  WritePattern(image.get(), 8 << 20, 4096, 0x42);
  ASSERT_TRUE(image->Flush().ok());  // the last transaction: not confirmed by a later one
  std::string crashed = CrashCopy(img, "crashed.qcow2");
  ASSERT_TRUE(image->Close().ok());

  // Where the last write's data went, as the (replaying) map sees it.
  auto map = test::Run(test::Cli() + " map --output=json " + test::Quote(crashed));
  ASSERT_EQ(map.exit_code, 0) << map.err;
  auto j = test::ParseJson(map.out);
  ASSERT_TRUE(j);
  uint64_t host = 0;
  for (const test::Json& e : j->arr) {
    const test::Json* start = e.Get("start");
    const test::Json* offset = e.Get("offset");
    if (start && offset && std::stoull(start->str) == (8u << 20)) host = std::stoull(offset->str);
  }
  ASSERT_NE(host, 0u) << map.out;
  // The data never reached the disk (the sync that would have made it
  // durable is the one the crash interrupted).
  test::PokeBytes(crashed, host, std::string(4096, '\0'));

  auto rw = OpenRw(crashed);
  ASSERT_TRUE(rw);
  const std::string rep = rw->Info().recovery_report;
  EXPECT_NE(rep.find("replayed 1 transaction"), std::string::npos) << rep;
  EXPECT_NE(rep.find("dropped 1 unconfirmed"), std::string::npos) << rep;
  ASSERT_TRUE(rw->Close().ok());
  ExpectQemuClean(crashed);
  ExpectQemuReads(crashed, {{0, 65536, 0x41}, {8 << 20, 4096, 0}});
}

TEST(JournalEngineTest, DirtyRefcountModeRebuildsRefcountsAfterReplay) {
  test::TempDir dir;
  std::string img = dir.Path("a.qcow2");
  Create(img, 256 << 20, /*journal=*/true, /*lazy=*/true);
  auto image = OpenRw(img);
  ASSERT_TRUE(image);
  WritePattern(image.get(), 0, 200000, 0x61);
  WritePattern(image.get(), 100 << 20, 65536, 0x62);
  ASSERT_TRUE(image->Flush().ok());
  EXPECT_NE(Incompatible(img) & kIncompatDirty, 0u) << "refcounts on disk may be stale: dirty bit";
  std::string crashed = CrashCopy(img, "crashed.qcow2");
  ASSERT_TRUE(image->Close().ok());
  EXPECT_EQ(Incompatible(img) & (kIncompatDirty | kIncompatJournal), 0u);
  ExpectQemuClean(img);

  auto rw = OpenRw(crashed);
  ASSERT_TRUE(rw);
  const std::string rep = rw->Info().recovery_report;
  EXPECT_NE(rep.find("journal: replayed"), std::string::npos) << rep;
  EXPECT_NE(rep.find("refcounts rebuilt"), std::string::npos) << rep;
  WritePattern(rw.get(), 50 << 20, 4096, 0x63);
  ASSERT_TRUE(rw->Close().ok());
  ExpectQemuClean(crashed);
  ExpectQemuReads(crashed, {{0, 200000, 0x61}, {100 << 20, 65536, 0x62}, {50 << 20, 4096, 0x63}});
}

TEST(JournalEngineTest, JournalOffImagesHaveNoExtensionAndQemuWrittenImagesStayUsable) {
  test::TempDir dir;
  std::string off = dir.Path("off.qcow2");
  ASSERT_EQ(test::Run(test::Cli() + " create -q -f qcow2 -o journal=off " + test::Quote(off) + " 64M").exit_code, 0);
  auto info = test::Run(test::Cli() + " info " + test::Quote(off));
  EXPECT_EQ(info.out.find("journal"), std::string::npos) << info.out;

  // A journal image, closed by us, written by QEMU (which clears the
  // autoclear bits it does not know), then by us again.
  std::string img = dir.Path("j.qcow2");
  Create(img, 64 << 20);
  {
    auto image = OpenRw(img);
    ASSERT_TRUE(image);
    WritePattern(image.get(), 0, 65536, 0x71);
    ASSERT_TRUE(image->Close().ok());
  }
  auto q = test::Run("qemu-io -f qcow2 -c 'write -P 0x72 1M 64k' " + test::Quote(img));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  {
    auto image = OpenRw(img);
    ASSERT_TRUE(image);
    WritePattern(image.get(), 2 << 20, 65536, 0x73);
    ASSERT_TRUE(image->Flush().ok());
    ASSERT_TRUE(image->Close().ok());
  }
  ExpectQemuClean(img);
  ExpectQemuReads(img, {{0, 65536, 0x71}, {1 << 20, 65536, 0x72}, {2 << 20, 65536, 0x73}});
}

}  // namespace
}  // namespace qcow2j
