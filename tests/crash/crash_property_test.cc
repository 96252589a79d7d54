// The crash-consistency properties in CI: RunCrashTest over thousands of
// crash states under the three fault models, RapidCheck stateful runs of
// the same requests (with shrinking to a minimal failing sequence), and
// fault injection (EIO, ENOSPC) at every I/O point of a small workload.
//
// QCOW2J_CRASH_STATES overrides the state count (e.g. 100000 for a long
// local run); under AddressSanitizer the default is smaller.
#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/state.h>

#include "io/fault_env.h"
#include "qcow2j/crashtest.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define QCOW2J_CRASH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define QCOW2J_CRASH_SANITIZED 1
#endif
#endif
#ifndef QCOW2J_CRASH_SANITIZED
#define QCOW2J_CRASH_SANITIZED 0
#endif

namespace qcow2j {
namespace {

uint64_t EnvCount(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return std::strtoull(v, nullptr, 10);
}

// ---------------------------------------------------------------------------
// RunCrashTest: the randomized property over all three models.

TEST(CrashTest, ThousandsOfStatesAcrossTheThreeModels) {
  CrashTestOptions o;
  o.states = EnvCount("QCOW2J_CRASH_STATES", QCOW2J_CRASH_SANITIZED ? 1200 : 6000);
  o.seed = EnvCount("QCOW2J_CRASH_SEED", 20240601);
  o.qemu_check_every = 250;
  o.log = [](const std::string& line) {
    if (line.rfind("VIOLATION", 0) == 0) std::cerr << line << "\n";
  };
  CrashTestResult r = RunCrashTest(o);
  std::cout << "[crash] seed " << r.seed << ": " << r.states << " crash states (prefix "
            << r.states_by_model[0] << ", subset " << r.states_by_model[1] << ", torn "
            << r.states_by_model[2] << "), " << r.violations << " violations, " << r.leaky_states
            << " with leaks, " << r.qemu_checks << " qemu-img checks, " << r.reused
            << " reused read-write, " << r.recovery_crashes << " recoveries crashed and recovered again, "
            << r.runs << " runs\n";
  EXPECT_EQ(r.states, o.states);
  EXPECT_GT(r.recovery_crashes, 0u);
  EXPECT_GT(r.states_by_model[0], 0u);
  EXPECT_GT(r.states_by_model[1], 0u);
  EXPECT_GT(r.states_by_model[2], 0u);
  EXPECT_EQ(r.violations, 0u) << r.failure;
}

// --jobs: the states are shared out, the counts summed, and the same
// (seed, jobs) explores the same states.
TEST(CrashTest, JobsShareTheStatesAndAreDeterministic) {
  CrashTestOptions o;
  o.states = 301;
  o.seed = 99;
  o.jobs = 2;
  CrashTestResult a = RunCrashTest(o);
  CrashTestResult b = RunCrashTest(o);
  EXPECT_EQ(a.states, 301u);
  EXPECT_EQ(a.violations, 0u) << a.failure;
  EXPECT_EQ(a.states_by_model[0] + a.states_by_model[1] + a.states_by_model[2], a.states);
  EXPECT_EQ(a.runs, b.runs);
  EXPECT_EQ(a.leaky_states, b.leaky_states);
  EXPECT_EQ(a.reused, b.reused);
  for (int m = 0; m < 3; ++m) EXPECT_EQ(a.states_by_model[m], b.states_by_model[m]);
  // 151 + 150 states at 40 per run: four runs per job.
  EXPECT_EQ(a.runs, 8u);
}

// Regression: with 512-byte clusters a new self-describing refcount block
// and the refcount-table entry pointing at it were written with no sync
// between them, so a crash could keep the entry and lose the block.
TEST(CrashTest, RefcountBlockOrderingWithTinyClusters) {
  CrashTestOptions o;
  o.replay_run_seed = 2092789425003139053ull;  // size 32 MiB, cluster 512
  CrashTestResult r = RunCrashTest(o);
  EXPECT_EQ(r.violations, 0u) << r.failure;
}

// Regression (the 1M-state long run): without the journal, an evicted L2
// slice could reach the disk describing compressed clusters that were still
// in the compressed-write cache; after a crash their descriptors pointed
// past the end of the file, or at bytes that never held the data.
TEST(CrashTest, EvictedSliceNeverDescribesCompressedDataStillInTheCache) {
  for (uint64_t seed : {13136808864688556828ull, 9000586610029640968ull}) {
    CrashTestOptions o;
    o.replay_run_seed = seed;  // no journal, backing file, 2 KiB / 1 KiB clusters
    CrashTestResult r = RunCrashTest(o);
    EXPECT_GT(r.states, 0u) << seed;
    EXPECT_EQ(r.violations, 0u) << seed << ": " << r.failure;
  }
}

// Regression: growing past what the L1 table covers wrote the new l1_size
// and l1_table_offset, then the new size, as two header writes with no sync
// between; a crash could keep the size and lose the L1 fields, and the image
// no longer opened ("header field l1_size 5 is too small for size 13950976").
TEST(CrashTest, ResizeThatGrowsTheL1TableSwitchesTheHeaderInOneWrite) {
  for (bool journal : {false, true}) {
    CrashWorkload::Config c;
    c.size = 8ull << 20;
    c.cluster_size = 4096;  // 2 MiB per L1 entry
    c.journal = journal;
    auto w = CrashWorkload::Create(c);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_TRUE((*w)->Write(4096, 65536).ok());
    ASSERT_TRUE((*w)->Flush().ok());
    const uint64_t from = (*w)->crash_points();
    ASSERT_TRUE((*w)->Resize(13950976).ok());  // 7 L1 entries
    EXPECT_EQ((*w)->size(), 13950976u);
    ASSERT_TRUE((*w)->Write(13950976 - 1000, 1000).ok());
    ASSERT_TRUE((*w)->Flush().ok());
    const uint64_t to = (*w)->crash_points();
    for (uint64_t p = from; p <= to; ++p) {
      for (CrashModel m : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
        for (uint64_t seed = 1; seed <= (m == CrashModel::kPrefix ? 1u : 32u); ++seed) {
          bool leaked = false;
          Status s = (*w)->VerifyCrash(p, m, seed, &leaked);
          ASSERT_TRUE(s.ok()) << "journal " << journal << ": " << s.ToString();
        }
      }
    }
  }
}

// Snapshot create, apply and delete, resize and compressed writes in one
// sequence, verified at every crash point: apply must bring back the
// snapshot's data and size (and a later shrink must not expose it).
TEST(CrashTest, SnapshotsResizeAndCompressedWritesAtEveryCrashPoint) {
  CrashWorkload::Config c;
  c.size = 4ull << 20;
  c.cluster_size = 65536;
  c.backing = true;
  auto w = CrashWorkload::Create(c);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  CrashWorkload& x = **w;
  ASSERT_TRUE(x.WriteCompressed(0, 3 * 65536).ok());
  ASSERT_TRUE(x.Write(100000, 200000).ok());
  ASSERT_TRUE(x.CreateSnapshot().ok());
  ASSERT_EQ(x.snapshot_count(), 1u);
  ASSERT_TRUE(x.Resize(6ull << 20).ok());
  ASSERT_TRUE(x.Write(5ull << 20, 300000).ok());
  ASSERT_TRUE(x.WriteCompressed(65536, 65536).ok());
  ASSERT_TRUE(x.CheckLive(0, x.size()).ok());
  ASSERT_TRUE(x.ApplySnapshot(0).ok());
  EXPECT_EQ(x.size(), 4ull << 20);  // the snapshot's size
  ASSERT_TRUE(x.CheckLive(0, x.size()).ok());
  ASSERT_TRUE(x.DeleteSnapshot(0).ok());
  ASSERT_EQ(x.snapshot_count(), 0u);
  ASSERT_TRUE(x.Resize(1ull << 20).ok());
  ASSERT_TRUE(x.Resize(3ull << 20).ok());
  ASSERT_TRUE(x.CheckLive(0, x.size()).ok());  // zeros past 1 MiB
  ASSERT_TRUE(x.Flush().ok());
  for (uint64_t p = 0; p <= x.crash_points(); ++p) {
    for (CrashModel m : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      bool leaked = false;
      Status s = x.VerifyCrash(p, m, p * 3 + static_cast<int>(m), &leaked);
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
  }
}

// ---------------------------------------------------------------------------
// RapidCheck: the same requests as commands, a crash as one of them.

struct RcModel {
  uint64_t size = 0;
  uint32_t cluster = 0;
};
using RcCommand = rc::state::Command<RcModel, CrashWorkload>;

uint64_t GenOffset(const RcModel& m) {
  const uint64_t hot = std::min<uint64_t>(m.size, 1 << 20);
  uint64_t span = *rc::gen::element(hot, m.size);
  uint64_t off = *rc::gen::inRange<uint64_t>(0, span);
  switch (*rc::gen::inRange(0, 3)) {
    case 0: return off & ~uint64_t{511};
    case 1: return off & ~uint64_t{m.cluster - 1};
    default: return off;
  }
}

uint64_t GenLength(const RcModel& m) {
  switch (*rc::gen::inRange(0, 3)) {
    case 0: return *rc::gen::inRange<uint64_t>(1, 1025);
    case 1: return uint64_t{m.cluster} * *rc::gen::inRange<uint64_t>(1, 5);
    default: return *rc::gen::inRange<uint64_t>(1, 256 << 10);
  }
}

void Ok(const Status& s) {
  if (!s.ok()) RC_FAIL(s.ToString());
}

struct RcWrite : RcCommand {
  uint64_t off, len;
  explicit RcWrite(const RcModel& m) : off(GenOffset(m)), len(GenLength(m)) {}
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.Write(off, len)); }
  void show(std::ostream& os) const override { os << "Write(" << off << ", " << len << ")"; }
};

struct RcZero : RcCommand {
  uint64_t off, len;
  bool unmap;
  explicit RcZero(const RcModel& m) : off(GenOffset(m)), len(GenLength(m)), unmap(*rc::gen::arbitrary<bool>()) {}
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.WriteZeroes(off, len, unmap)); }
  void show(std::ostream& os) const override {
    os << "WriteZeroes(" << off << ", " << len << (unmap ? ", unmap)" : ")");
  }
};

struct RcDiscard : RcCommand {
  uint64_t off, len;
  explicit RcDiscard(const RcModel& m) : off(GenOffset(m)), len(GenLength(m)) {}
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.Discard(off, len)); }
  void show(std::ostream& os) const override { os << "Discard(" << off << ", " << len << ")"; }
};

struct RcFlush : RcCommand {
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.Flush()); }
  void show(std::ostream& os) const override { os << "Flush()"; }
};

struct RcReopen : RcCommand {
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.Reopen()); }
  void show(std::ostream& os) const override { os << "Reopen()"; }
};

struct RcRead : RcCommand {
  uint64_t off, len;
  explicit RcRead(const RcModel& m) : off(GenOffset(m)), len(GenLength(m)) {}
  void run(const RcModel&, CrashWorkload& w) const override { Ok(w.CheckLive(off, len)); }
  void show(std::ostream& os) const override { os << "CheckLive(" << off << ", " << len << ")"; }
};

// Crashes somewhere in what was recorded since the last crash, verifies the
// state and goes on from it.
struct RcCrash : RcCommand {
  uint32_t permille;
  CrashModel model;
  uint64_t seed;
  RcCrash()
      : permille(*rc::gen::inRange<uint32_t>(0, 1001)),
        model(*rc::gen::element(CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn)),
        seed(*rc::gen::arbitrary<uint64_t>()) {}
  void run(const RcModel&, CrashWorkload& w) const override {
    uint64_t point = w.crash_points() * permille / 1000;
    Ok(w.CrashAndContinue(point, model, seed));
  }
  void show(std::ostream& os) const override {
    os << "Crash(" << permille << "/1000, " << CrashModelName(model) << ", seed " << seed << ")";
  }
};

TEST(CrashTest, RapidCheckStatefulRequestsAndCrashes) {
  rc::detail::TestParams params;
  params.seed = EnvCount("QCOW2J_RC_SEED", 7);
  params.maxSuccess = static_cast<int>(EnvCount("QCOW2J_RC_RUNS", QCOW2J_CRASH_SANITIZED ? 8 : 30));
  params.maxSize = 40;  // commands per sequence
  rc::detail::TestMetadata meta;
  meta.id = "CrashTest/RapidCheckStatefulRequestsAndCrashes";
  meta.description = "request sequences with crashes keep the image consistent";
  auto result = rc::detail::checkTestable(
      [] {
        CrashWorkload::Config c;
        c.cluster_size = *rc::gen::element(1024u, 4096u, 16384u, 65536u);
        c.extended_l2 = c.cluster_size >= 16384 && *rc::gen::arbitrary<bool>();
        c.backing = *rc::gen::arbitrary<bool>();
        c.journal = *rc::gen::arbitrary<bool>();
        c.lazy_refcounts = *rc::gen::arbitrary<bool>();
        c.size = 8ull << 20;
        c.seed = *rc::gen::inRange<uint64_t>(1, 1000);
        auto w = CrashWorkload::Create(c);
        if (!w.ok()) RC_FAIL(w.status().ToString());
        RcModel m{c.size, c.cluster_size};
        rc::state::check(m, **w,
                         rc::state::gen::execOneOfWithArgs<RcWrite, RcWrite, RcWrite, RcZero,
                                                           RcDiscard, RcFlush, RcFlush, RcReopen,
                                                           RcRead, RcCrash, RcCrash>());
        // And a last crash at the very end.
        bool leaked = false;
        Status s = (*w)->VerifyCrash((*w)->crash_points(), CrashModel::kTorn, 1, &leaked);
        if (!s.ok()) RC_FAIL(s.ToString());
      },
      meta, params);
  std::ostringstream msg;
  rc::detail::printResultMessage(result, msg);
  EXPECT_TRUE(result.template is<rc::detail::SuccessResult>()) << msg.str();
}

// ---------------------------------------------------------------------------
// Fault injection: one failing I/O at every point of a small workload.

using StepFn = Status (*)(CrashWorkload&);
struct Step {
  const char* name;
  StepFn run;
};

const Step kSteps[] = {
    {"write head", [](CrashWorkload& w) { return w.Write(0, 65536 + 100); }},
    {"write 1M", [](CrashWorkload& w) { return w.Write(1 << 20, 4096); }},
    {"flush", [](CrashWorkload& w) { return w.Flush(); }},
    {"overwrite", [](CrashWorkload& w) { return w.Write(300, 5000); }},
    {"zero", [](CrashWorkload& w) { return w.WriteZeroes(65536, 65536, false); }},
    {"discard", [](CrashWorkload& w) { return w.Discard(2 << 20, 131072); }},
    {"unaligned write", [](CrashWorkload& w) { return w.Write(5000, 3000); }},
    {"flush", [](CrashWorkload& w) { return w.Flush(); }},
    {"read", [](CrashWorkload& w) { return w.CheckLive(0, 200 << 10); }},
    {"write 3M", [](CrashWorkload& w) { return w.Write(3 << 20, 70000); }},
    {"zero unmap", [](CrashWorkload& w) { return w.WriteZeroes(1 << 20, 65536, true); }},
    {"close", [](CrashWorkload& w) { return w.Close(); }},
    {"open", [](CrashWorkload& w) { return w.Open(); }},
    {"read back", [](CrashWorkload& w) { return w.CheckLive(0, 4 << 20); }},
};

struct FaultRun {
  FaultEnv* fault = nullptr;
  std::unique_ptr<CrashWorkload> w;
};

FaultRun StartFaultRun(CrashWorkload::Config c) {
  FaultRun r;
  auto* slot = &r.fault;
  c.wrap_env = [slot](Env* recording) {
    auto f = std::make_unique<FaultEnv>(recording);
    *slot = f.get();
    return std::unique_ptr<Env>(std::move(f));
  };
  auto w = CrashWorkload::Create(c);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  if (w.ok()) r.w = std::move(*w);
  return r;
}

// Faults go to the request that hit them; nothing crashes; what the engine
// leaves behind has no corruption and reads as the requests allow.
//
// Faults land in opens and closes too. Regressions: a read-write
// Image::Open that failed part-way crashed in ~Qcow2Image, and Close after a
// failed request returned OK without writing the metadata.
void FaultEveryPoint(const CrashWorkload::Config& c, int err, bool sticky) {
  const Code want = err == ENOSPC ? Code::kNoSpace : Code::kIOError;
  const unsigned kinds = FaultEnv::kAll & ~FaultEnv::kMeta;
  uint64_t points = 0;
  auto run_step = [&](const Step& s, FaultRun& r) { return s.run(*r.w); };
  {
    FaultRun r = StartFaultRun(c);
    ASSERT_TRUE(r.w && r.fault);
    r.fault->Arm(0, 0, kinds);
    for (const Step& s : kSteps) ASSERT_TRUE(run_step(s, r).ok()) << s.name;
    points = r.fault->ops();
  }
  ASSERT_GT(points, 10u);
  uint64_t stride = sticky ? std::max<uint64_t>(1, points / 12) : 1;
  uint64_t failed_requests = 0;
  for (uint64_t n = 1; n <= points; n += stride) {
    SCOPED_TRACE("fault " + std::string(err == ENOSPC ? "ENOSPC" : "EIO") + (sticky ? " sticky" : "") +
                 " at I/O " + std::to_string(n) + " of " + std::to_string(points));
    FaultRun r = StartFaultRun(c);
    ASSERT_TRUE(r.w && r.fault);
    r.fault->Arm(n, err, kinds, sticky);
    bool seen_failure = false;
    for (const Step& s : kSteps) {
      bool fired_before = r.fault->fired();
      Status st = run_step(s, r);
      if (!fired_before && r.fault->fired()) {
        // The request that met the fault reports it, with its code.
        EXPECT_FALSE(st.ok()) << s.name << " swallowed the fault at " << r.fault->fired_at();
        if (!st.ok()) {
          EXPECT_EQ(st.code(), want) << s.name << ": " << st.ToString();
        }
      } else if (!fired_before) {
        EXPECT_TRUE(st.ok()) << s.name << " failed before any fault: " << st.ToString();
      }
      // Requests may fail after the fault, but reads never return wrong data.
      EXPECT_NE(st.code(), Code::kCorruption) << s.name << ": " << st.ToString();
      seen_failure |= !st.ok();
    }
    failed_requests += seen_failure;
    r.fault->Disarm();
    bool leaked = false;
    Status v = r.w->VerifyNow(&leaked);
    EXPECT_TRUE(v.ok()) << "fault at " << r.fault->fired_at() << ": " << v.ToString();
    if (::testing::Test::HasFailure()) return;  // one point's report is enough
  }
  std::cout << "[fault] " << points << " I/O points, " << failed_requests
            << " runs with a failed request\n";
  EXPECT_GT(failed_requests, 0u);
}

CrashWorkload::Config FaultConfig(uint32_t cluster, bool backing, bool ext) {
  CrashWorkload::Config c;
  c.size = 8ull << 20;
  c.cluster_size = cluster;
  c.backing = backing;
  c.extended_l2 = ext;
  c.seed = 11;
  return c;
}

TEST(CrashFaultTest, EioAtEveryPoint) { FaultEveryPoint(FaultConfig(65536, false, false), EIO, false); }
TEST(CrashFaultTest, EnospcAtEveryPoint) { FaultEveryPoint(FaultConfig(65536, false, false), ENOSPC, false); }
TEST(CrashFaultTest, EioAtEveryPointSmallClustersBacking) {
  FaultEveryPoint(FaultConfig(4096, true, false), EIO, false);
}
TEST(CrashFaultTest, EnospcAtEveryPointExtendedL2Backing) {
  FaultEveryPoint(FaultConfig(16384, true, true), ENOSPC, false);
}
TEST(CrashFaultTest, DeadDiskFromEachPoint) { FaultEveryPoint(FaultConfig(65536, true, false), EIO, true); }

}  // namespace
}  // namespace qcow2j
