// A crash during the read-write recovery of a crashed journal. Recovery
// writes the replayed tables in place without a checkpoint's ordering (one
// sync for the tables and the area's release, one for the header that
// clears the journal bit), relying on the ring to replay them again: every
// crash state of that recovery must open, read the acknowledged data and
// check clean.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "io/crash_env.h"
#include "io/memory_env.h"
#include "qcow2j/check.h"
#include "qcow2j/image.h"
#include "qcow2j/snapshot.h"

namespace qcow2j {
namespace {

constexpr char kPath[] = "img.qcow2";

// Acknowledged writes (offset, length, byte), in order.
using Writes = std::vector<std::tuple<uint64_t, uint64_t, uint8_t>>;

Result<std::unique_ptr<Image>> OpenReadWrite(Env* env, uint64_t l2_cache_size = 0) {
  OpenOptions o;
  o.env = env;
  o.l2_cache_size = l2_cache_size;
  o.background_checkpoints = false;  // the same I/O sequence every run
  o.read_only = false;
  return Image::Open(kPath, o);
}

void Write(Image* img, Writes* expect, uint64_t off, uint64_t len, uint8_t v) {
  std::vector<uint8_t> b(len, v);
  EXPECT_TRUE(img->Write(off, b.data(), b.size()).ok());
  expect->emplace_back(off, len, v);
}

Writes Workload(Image* img) {
  Writes expect;
  Write(img, &expect, 0, 3 * 65536, 0x11);
  Write(img, &expect, 700ull << 20, 12345, 0x22);  // another L2 table
  EXPECT_TRUE(img->Flush().ok());
  Write(img, &expect, 5 << 20, 8192, 0x33);
  Write(img, &expect, 65536, 4096, 0x44);  // in place over a cluster of the first flush
  EXPECT_TRUE(img->Flush().ok());
  for (int i = 0; i < 40; i++)
    Write(img, &expect, (1500ull << 20) + i * 65536ull, 4096, static_cast<uint8_t>(0x50 + i));
  EXPECT_TRUE(img->Flush().ok());
  return expect;
}

void ExpectReads(Image* img, const Writes& expect, const std::string& where) {
  // Later writes overwrite earlier ones: apply them in order to a model of
  // the touched ranges.
  for (size_t i = 0; i < expect.size(); i++) {
    auto [off, len, v] = expect[i];
    std::vector<uint8_t> want(len, v);
    for (size_t j = i + 1; j < expect.size(); j++) {
      auto [o2, l2, v2] = expect[j];
      for (uint64_t b = std::max(off, o2); b < std::min(off + len, o2 + l2); b++) want[b - off] = v2;
    }
    std::vector<uint8_t> got(len);
    ASSERT_TRUE(img->Read(off, got.data(), len).ok()) << where;
    auto bad = std::mismatch(got.begin(), got.end(), want.begin());
    ASSERT_TRUE(bad.first == got.end()) << where << ": byte " << off + (bad.first - got.begin()) << " reads "
                                        << int{*bad.first} << ", expected " << int{*bad.second};
  }
}

// Runs `workload` in a session over the image in `mem` that commits and then
// dies without closing (everything it wrote stays in `mem`, as after kill -9).
Writes CrashedSession(MemoryEnv* mem, Writes (*workload)(Image*)) {
  CrashEnv session(mem);
  auto img = OpenReadWrite(&session);
  EXPECT_TRUE(img.ok()) << img.status().ToString();
  if (!img.ok()) return {};
  Writes expect = workload(img->get());
  session.CrashNow();  // the close below must not reach the disk
  return expect;
}

struct RecoveryRun {
  uint64_t syncs = 0;        // of the recorded recovery
  uint64_t checkpoints = 0;  // its write-backs of the replayed tables
  int states = 0;            // crash states of it that recovered again
};

// How the recovery opens, and which of its crash points are tried.
struct RecoveryOptions {
  uint64_t l2_cache_size = 0;  // 0: the default
  uint64_t point_stride = 1;   // every crash point, or every n-th (and the last)
};

// Records the read-write recovery of the crashed image in `mem`, then opens
// every crash state of it (prefix, subset and torn models) read-write: each
// must recover again, read `expect` and check clean.
RecoveryRun ExpectEveryCrashStateOfRecoveryRecovers(MemoryEnv* mem, const Writes& expect,
                                                    const RecoveryOptions& ro = {}) {
  RecoveryRun run;
  int& states = run.states;
  CrashEnv rec(mem);
  {
    auto img = OpenReadWrite(&rec, ro.l2_cache_size);
    EXPECT_TRUE(img.ok()) << img.status().ToString();
    if (!img.ok()) return run;
    run.checkpoints = (*img)->Info().journal_checkpoints;
    EXPECT_NE((*img)->Info().recovery_report.find("journal: replayed"), std::string::npos)
        << (*img)->Info().recovery_report;
    ExpectReads(img->get(), expect, "first recovery");
    rec.CrashNow();  // stop recording here: the states below cover the open
  }
  const uint64_t ops = rec.op_count();
  EXPECT_GT(ops, 0u);
  for (uint64_t i = 0; i < ops; i++) run.syncs += rec.op(i).kind == CrashOp::kSync;
  for (uint64_t point = 0; point <= ops; point = point == ops ? ops + 1 : std::min(point + ro.point_stride, ops)) {
    for (CrashModel model : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      for (uint64_t seed = 0; seed < (model == CrashModel::kPrefix ? 1u : 4u); seed++) {
        auto out = NewMemoryEnvForTest();
        CrashStateOptions so;
        so.model = model;
        so.seed = seed;
        EXPECT_TRUE(rec.BuildCrashState(point, so, out.get()).ok());
        const std::string where = "crash point " + std::to_string(point) + "/" + std::to_string(ops) +
                                  " model " + std::to_string(static_cast<int>(model)) + " seed " +
                                  std::to_string(seed);
        {
          auto img = OpenReadWrite(out.get(), ro.l2_cache_size);
          EXPECT_TRUE(img.ok()) << where << ": " << img.status().ToString();
          if (!img.ok()) return run;
          ExpectReads(img->get(), expect, where + " (" + (*img)->Info().recovery_report + ")");
          if (::testing::Test::HasFailure()) return run;
          EXPECT_TRUE((*img)->Close().ok()) << where;
        }
        CheckOptions co;
        co.env = out.get();
        auto report = CheckImage(kPath, co);
        EXPECT_TRUE(report.ok()) << where << ": " << report.status().ToString();
        if (!report.ok()) return run;
        EXPECT_EQ(report->corruptions, 0u) << where;
        EXPECT_EQ(report->leaks, 0u) << where;
        if (::testing::Test::HasFailure()) return run;
        states++;
      }
    }
  }
  return run;
}

std::unique_ptr<MemoryEnv> NewImage(uint64_t size = 2ull << 30) {
  auto mem = NewMemoryEnvForTest();
  CreateOptions c;
  c.size = size;
  c.env = mem.get();
  EXPECT_TRUE(Image::Create(kPath, c).ok());
  return mem;
}

// Crashes a session running `workload` over the image in `mem` (whose
// acknowledged contents are `before`), then requires every crash state of
// its recovery to recover, and the recovery to take `syncs` syncs.
void ExpectRecoveryOfCrashedSession(MemoryEnv* mem, Writes before, Writes (*workload)(Image*),
                                    uint64_t syncs) {
  Writes session = CrashedSession(mem, workload);
  ASSERT_FALSE(::testing::Test::HasFailure());
  before.insert(before.end(), session.begin(), session.end());
  RecoveryRun run = ExpectEveryCrashStateOfRecoveryRecovers(mem, before);
  EXPECT_GT(run.states, 3);
  EXPECT_EQ(run.syncs, syncs);
}

// The last transaction is unconfirmed and kept by its data checksums, which
// cover data clusters only: nothing recovery writes in place meets them, so
// no verdict is recorded (tables, header).
TEST(RecoveryCrashTest, EveryCrashStateOfAReadWriteRecoveryReplaysAgain) {
  auto mem = NewImage();
  ExpectRecoveryOfCrashedSession(mem.get(), {}, Workload, 2);
}

// Nothing unconfirmed with data checksums (the last transaction has none,
// and its synced_through confirms the one before): tables, header.
TEST(RecoveryCrashTest, WithNothingToVerifyRecoveryTakesTwoSyncs) {
  auto mem = NewImage();
  ExpectRecoveryOfCrashedSession(mem.get(), {}, [](Image* img) {
    Writes w = Workload(img);
    EXPECT_TRUE(img->Discard(1500ull << 20, 65536).ok());
    w.emplace_back(1500ull << 20, 65536, 0);
    EXPECT_TRUE(img->Flush().ok());
    return w;
  }, 2);
}

// The last transaction copies an L2 table shared with a snapshot: the copy
// is data that transaction checksums (it was not synced before the commit),
// and the same transaction's L2 update changes it. Recovery writes the
// updated copy in place; a crash before the header write must not make the
// next replay see a checksum mismatch and drop the acknowledged transaction.
// Syncs: data, superblock (the verdict), tables, header.
TEST(RecoveryCrashTest, ACopiedL2TableTheLastTransactionChecksumsSurvivesACrashedRecovery) {
  auto mem = NewImage();
  Writes before;
  {
    auto img = OpenReadWrite(mem.get());
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    Write(img->get(), &before, 0, 4 * 65536, 0x11);
    ASSERT_TRUE((*img)->Close().ok());
  }
  ASSERT_TRUE(CreateSnapshot(kPath, "s1", mem.get()).ok());
  ExpectRecoveryOfCrashedSession(mem.get(), before, [](Image* img) {
    Writes w;
    Write(img, &w, 65536 + 4096, 4096, 0x44);  // COW of a shared cluster in a shared L2 table
    EXPECT_TRUE(img->Flush().ok());
    return w;
  }, 4);
}

// A replay that dirties more L2 slices than it may hold (here: a small
// cache) writes them back midway, without syncs, and again at the end: a
// crash anywhere in that recovery still recovers.
TEST(RecoveryCrashTest, AReplayThatOutgrowsItsCacheWritesBackMidwayAndStillRecovers) {
  auto mem = NewImage(40ull << 30);
  Writes expect = CrashedSession(mem.get(), [](Image* img) {
    Writes w;
    for (int i = 0; i < 1100; i++) {  // one L2 slice (32 MiB of guest space) each
      Write(img, &w, i * (32ull << 20), 512, static_cast<uint8_t>(i % 251 + 1));
      if (i % 100 == 99) {
        EXPECT_TRUE(img->Flush().ok());
      }
    }
    EXPECT_TRUE(img->Flush().ok());
    return w;
  });
  ASSERT_FALSE(HasFailure());
  RecoveryOptions ro;
  ro.l2_cache_size = 64 << 10;  // 16 slices: write-backs past 1024 dirty ones
  ro.point_stride = 97;
  RecoveryRun run = ExpectEveryCrashStateOfRecoveryRecovers(mem.get(), expect, ro);
  EXPECT_GE(run.checkpoints, 2u) << "no write-back during the replay";
  EXPECT_GT(run.states, 30);
  // The last transaction's slices cross the threshold: a write-back while
  // the verdict is pending records it first (two syncs), then the end's two;
  // none for the write-backs themselves.
  EXPECT_EQ(run.syncs, 4u);
}

uint64_t AllocatedBytes(Env* env) {
  auto f = env->Open(kPath, kOpenReadOnly);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (!f.ok()) return 0;
  auto n = (*f)->AllocatedBytes();
  EXPECT_TRUE(n.ok()) << n.status().ToString();
  return n.ok() ? *n : 0;
}

// A read-write recovery gives the freed area's space back (inline, or on a
// thread while the image is already in use): the ring's written pages are
// gone, and writes made meanwhile (appended past the area) read back.
TEST(RecoveryCrashTest, ReadWriteRecoveryPunchesTheFreedArea) {
  for (bool background : {false, true}) {
    for (bool write : {false, true}) {
      SCOPED_TRACE(std::string(background ? "on a thread" : "inline") + (write ? ", writing" : ""));
      auto mem = NewImage();
      Writes expect = CrashedSession(mem.get(), [](Image* img) {
        Writes w;
        for (int i = 0; i < 300; i++) {  // 300 commits: about 100 KiB of ring
          Write(img, &w, i * 65536ull, 4096, static_cast<uint8_t>(i % 251 + 1));
          EXPECT_TRUE(img->Flush().ok());
        }
        return w;
      });
      ASSERT_FALSE(HasFailure());
      const uint64_t before = AllocatedBytes(mem.get());
      {
        OpenOptions o;
        o.env = mem.get();
        o.background_checkpoints = background;
        o.read_only = false;
        auto img = Image::Open(kPath, o);
        ASSERT_TRUE(img.ok()) << img.status().ToString();
        for (int i = 0; write && i < 64; i++)
          Write(img->get(), &expect, (1ull << 30) + i * 65536ull, 65536, 0x77);
        ASSERT_TRUE((*img)->Flush().ok());
        ExpectReads(img->get(), expect, "after the recovery");
        ASSERT_TRUE((*img)->Close().ok());  // joins the thread
      }
      // Without the punch the file only grows (the replayed tables are
      // written in place); with it the ring's pages go.
      if (!write) {
        EXPECT_LT(AllocatedBytes(mem.get()) + (32u << 10), before);
      }
      auto img = OpenReadWrite(mem.get());
      ASSERT_TRUE(img.ok()) << img.status().ToString();
      ExpectReads(img->get(), expect, "reopened");
      ASSERT_TRUE((*img)->Close().ok());
      CheckOptions co;
      co.env = mem.get();
      auto report = CheckImage(kPath, co);
      ASSERT_TRUE(report.ok()) << report.status().ToString();
      EXPECT_EQ(report->corruptions, 0u);
      EXPECT_EQ(report->leaks, 0u);
    }
  }
}

}  // namespace
}  // namespace qcow2j
