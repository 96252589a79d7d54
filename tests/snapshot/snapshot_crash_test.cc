// Crash safety of the offline snapshot operations: each runs on a
// CrashEnv, and every crash point, under every crash model (prefix, subset
// of the unsynced writes, torn writes), must leave an image that
//   - qemu-img check finds free of anything but leaks and OFLAG_COPIED
//     mismatches (QEMU's own snapshot code has the same windows: a refcount
//     and the COPIED flag that mirrors it cannot change in one write);
//   - reads as the image before or after the operation, and whose listed
//     snapshots read what they held;
//   - keeps those snapshots intact when QEMU then overwrites the whole active
//     image (no COPIED flag ever claims a cluster a snapshot still uses);
//   - qemu-img check -r all makes clean.
// The journaled scenarios make the image with qcow2j (journal on, closed
// cleanly): there each operation is one journal transaction, so every
// crash state, once our engine has opened it read-write (which replays a
// committed transaction, or closes an empty journal) and closed it, must be
// exactly the image before or after the operation: qemu-img check finds
// nothing at all (no leak, no COPIED mismatch), the snapshot is fully there
// or fully absent, and the data is intact. They then overwrite each state
// through our engine, which starts a new journal session on it.
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "qcow2j/snapshot.h"
#include "util/offline_crash.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

std::vector<std::string> Names(const std::string& img) {
  RunResult r = test::Run("qemu-img snapshot -U -l " + Quote(img));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  std::vector<std::string> out;
  size_t pos = 0;
  int line = 0;
  while (pos < r.out.size()) {
    size_t nl = r.out.find('\n', pos);
    if (nl == std::string::npos) nl = r.out.size();
    std::string l = r.out.substr(pos, nl - pos);
    pos = nl + 1;
    if (line++ < 2 || l.empty()) continue;
    size_t b = l.find_first_not_of(' ', l.find(' '));
    out.push_back(l.substr(b, l.find(' ', b) - b));
  }
  return out;
}

enum class Op { kCreate, kApply, kDelete };

struct Scenario {
  const char* name;
  Op op;
  const char* opts;
  bool journaled = false;  // made, written and overwritten by qcow2j (journal on)
};

// The tool that makes and writes the image: qemu's, or ours with its journal.
std::string Tool(const Scenario& sc, const char* qemu, const char* ours) {
  return sc.journaled ? Cli() + " " + ours : std::string(qemu);
}

Status RunOp(Op op, const std::string& path, Env* env, const std::string& name = "s1") {
  return op == Op::kCreate  ? CreateSnapshot(path, name, env)
         : op == Op::kApply ? ApplySnapshot(path, name, env)
                            : DeleteSnapshot(path, name, env);
}

class SnapshotCrash : public ::testing::TestWithParam<Scenario> {};

TEST_P(SnapshotCrash, EveryCrashStateIsSafe) {
  ASSERT_TRUE(HaveProgram("qemu-img") && HaveProgram("qemu-io"));
  const Scenario& sc = GetParam();
  TempDir dir;
  const uint64_t size = 2ull << 20;
  std::string img = dir.Path("base.qcow2");
  Must(test::Run(Tool(sc, "qemu-img", "") + " create -q -f qcow2 " +
                 (sc.opts[0] ? std::string("-o ") + sc.opts + " " : "") + Quote(img) + " " +
                 std::to_string(size)));
  if (sc.journaled) {
    RunResult info = test::Run(Cli() + " info " + Quote(img));
    ASSERT_NE(info.out.find("journal: true"), std::string::npos) << info.Describe();
  }
  const std::string io = Tool(sc, "qemu-io", "io -f qcow2");
  Must(test::Run(io + " -c 'write -P 0x11 0 640k' -c 'write -P 0x12 1M 64k' " + Quote(img)));
  std::string snap_data;  // what s1 holds (apply/delete)
  if (sc.op != Op::kCreate) {
    Must(test::Run("qemu-img snapshot -c s1 " + Quote(img)));
    snap_data = QemuRead(dir, img, "s1");
    Must(test::Run(io + " -c 'write -P 0x21 64k 128k' -c 'write -z 1M 32k' " + Quote(img)));
  }
  const std::string before = QemuRead(dir, img, "");
  const std::string after = sc.op == Op::kApply ? snap_data : before;
  if (sc.op == Op::kCreate) snap_data = before;

  // Run the operation on a crash-recording Env over an in-memory copy.
  OfflineCrashRun run(img);
  Status s = run.Run([&](const std::string& path, Env* env) { return RunOp(sc.op, path, env); });
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_GT(run.crash().op_count(), 3u);

  std::string state = dir.Path("state.qcow2");
  int checked = 0, applied = 0;
  // 512-byte clusters: by far the most crash points, the two longest tests
  // of the suite; sampled under sanitizers (SampleEveryUnderSanitizers).
  const uint64_t every = std::string(sc.opts) == "cluster_size=512" ? SampleEveryUnderSanitizers() : 1;
  run.ForEachState(state, [&](uint64_t, CrashModel) {
    checked++;
    if (sc.journaled) {
      // Recovery: a read-write open replays a committed transaction.
      OpenOptions o;
      o.read_only = false;
      auto image = Image::Open(state, o);
      ASSERT_TRUE(image.ok()) << image.status().ToString();
      ASSERT_TRUE((*image)->Close().ok());
      RunResult check = test::Run("qemu-img check " + Quote(state));
      ASSERT_EQ(check.exit_code, 0) << "not clean (leaks or COPIED mismatches): " << check.Describe();
      // All or nothing: the snapshot list and the active image agree on
      // whether the operation happened.
      std::vector<std::string> names = Names(state);
      std::string active = QemuRead(dir, state, "");
      bool done = sc.op == Op::kCreate   ? names.size() == 1
                  : sc.op == Op::kDelete ? names.empty()
                                         : active == after;
      ASSERT_LE(names.size(), 1u);
      if (sc.op == Op::kApply) {
        ASSERT_EQ(names.size(), 1u);
      }
      ASSERT_TRUE(active == (done ? after : before)) << "active image is not the one the snapshot list says";
      applied += done;
    }
    RunResult check = test::Run("qemu-img check " + Quote(state));
    ASSERT_TRUE(check.exit_code == 0 || check.exit_code == 2 || check.exit_code == 3)
        << check.Describe();
    size_t pos = 0;
    while ((pos = check.err.find("ERROR", pos)) != std::string::npos) {
      size_t nl = check.err.find('\n', pos);
      std::string line = check.err.substr(pos, nl - pos);
      EXPECT_NE(line.find("OFLAG_COPIED"), std::string::npos) << line;
      pos = nl;
    }
    std::string active = QemuRead(dir, state, "");
    ASSERT_TRUE(active == before || active == after) << "active image is neither before nor after";
    std::vector<std::string> names = Names(state);
    if (sc.op == Op::kApply) {
      ASSERT_EQ(names.size(), 1u);
    }
    for (const std::string& n : names) {
      ASSERT_EQ(n, "s1");
      ASSERT_TRUE(QemuRead(dir, state, "s1") == snap_data) << "s1 changed";
    }
    // QEMU trusts COPIED, and so do we: overwrite everything (ours through
    // a journal session), the snapshot must not move.
    Must(test::Run(io + " -c 'write -P 0xee 0 " + std::to_string(size) + "' " + Quote(state)));
    for (const std::string& n : names)
      ASSERT_TRUE(QemuRead(dir, state, n) == snap_data) << "s1 changed by a write to the active image";
    RunResult repair = test::Run("qemu-img check -r all " + Quote(state));
    ASSERT_TRUE(repair.exit_code == 0) << repair.Describe();
  }, every);
  std::cout << "[snapshot-crash] " << sc.name << ": " << checked << " crash states checked"
            << (every > 1 ? " (one in " + std::to_string(every) + ")" : "") << "\n";
  EXPECT_GT(checked, 5);
  if (sc.journaled) {
    EXPECT_GT(applied, 0);
    EXPECT_LT(applied, checked);
  }
}

// A crash during the recovery of a committed snapshot transaction: the
// replay writes in place and closes the journal; every crash state of that
// must recover again (replay is idempotent) to the image with the snapshot.
TEST(SnapshotCrashReplay, CrashDuringTheReplayOfACreateIsSafe) {
  ASSERT_TRUE(HaveProgram("qemu-img") && HaveProgram("qemu-io"));
  TempDir dir;
  std::string img = dir.Path("base.qcow2");
  Must(test::Run(Cli() + " create -q -f qcow2 " + Quote(img) + " 2M"));
  Must(test::Run(Cli() + " io -f qcow2 -c 'write -P 0x11 0 640k' -c 'write -P 0x12 1M 64k' " +
                 Quote(img)));
  const std::string data = QemuRead(dir, img, "");
  // The first state (at a sync) where the transaction is committed.
  OfflineCrashRun run(img);
  ASSERT_TRUE(run.Run([&](const std::string& path, Env* env) {
                    return CreateSnapshot(path, "s1", env);
                  }).ok());
  std::string committed = dir.Path("committed.qcow2"), state = dir.Path("state.qcow2");
  bool found = false;
  run.ForEachState(state, [&](uint64_t, CrashModel model) {
    if (found || model != CrashModel::kPrefix || !(PeekBe64(state, 72) & (1ull << 16))) return;
    found = true;
    Must(test::Run("cp " + Quote(state) + " " + Quote(committed)));
  });
  ASSERT_TRUE(found) << "no crash state holds the committed transaction";

  OfflineCrashRun replay(committed);
  Status s = replay.Run([&](const std::string& path, Env* env) -> Status {
    OpenOptions o;
    o.read_only = false;
    o.env = env;
    o.background_checkpoints = false;
    auto image = Image::Open(path, o);
    if (!image.ok()) return image.status();
    return (*image)->Close();
  });
  ASSERT_TRUE(s.ok()) << s.ToString();
  int checked = 0;
  replay.ForEachState(state, [&](uint64_t, CrashModel) {
    checked++;
    OpenOptions o;
    o.read_only = false;
    auto image = Image::Open(state, o);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    ASSERT_TRUE((*image)->Close().ok());
    RunResult check = test::Run("qemu-img check " + Quote(state));
    ASSERT_EQ(check.exit_code, 0) << check.Describe();
    ASSERT_EQ(Names(state), std::vector<std::string>{"s1"});
    ASSERT_TRUE(QemuRead(dir, state, "") == data);
    ASSERT_TRUE(QemuRead(dir, state, "s1") == data);
  });
  EXPECT_GT(checked, 5);
}

// Syncs of `op` on the image file `img`, run on a CrashEnv that records
// every one.
uint64_t SyncsOf(const std::string& img, Op op, const std::string& name) {
  OfflineCrashRun run(img);
  Status s = run.Run([&](const std::string& path, Env* env) { return RunOp(op, path, env, name); });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return run.Syncs();
}

// Issue 7: the refcount updates of a snapshot are batched, not a sync per
// cluster. On a journaled image (made and written by qcow2j) each operation
// does the same few syncs whether 16 or 1024 clusters are mapped.
TEST(SnapshotSyncs, BoundedAndIndependentOfTheMappedClusters) {
  TempDir dir;
  for (bool journaled : {true, false}) {
    // journal=off: the ordered path (as on QEMU-made images).
    const std::string opts = journaled ? "" : " -o journal=off";
    std::vector<std::vector<uint64_t>> counts;
    for (const char* mapped : {"1M", "64M"}) {
      std::string img = dir.Path(std::string("img") + mapped + (journaled ? "j" : "o") + ".qcow2");
      Must(test::Run(Cli() + " create -q -f qcow2" + opts + " " + Quote(img) + " 128M"));
      Must(test::Run(Cli() + " io -f qcow2 -c 'write -P 0x31 0 " + mapped + "' " + Quote(img)));
      Must(test::Run(Cli() + " snapshot -c s1 " + Quote(img)));
      Must(test::Run(Cli() + " io -f qcow2 -c 'write -P 0x32 0 64k' " + Quote(img)));
      std::vector<uint64_t> c;
      c.push_back(SyncsOf(img, Op::kCreate, "s2"));
      c.push_back(SyncsOf(img, Op::kApply, "s1"));
      c.push_back(SyncsOf(img, Op::kDelete, "s1"));
      for (uint64_t n : c) {
        if (journaled) {
          // One transaction each: the area's format, the commit, the
          // in-place writes, the header closing the session.
          EXPECT_EQ(n, 4u);
        } else {
          EXPECT_GE(n, 3u);
          EXPECT_LE(n, 8u);
        }
      }
      counts.push_back(c);
    }
    EXPECT_EQ(counts[0], counts[1]);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Ops, SnapshotCrash,
    ::testing::Values(Scenario{"create", Op::kCreate, ""}, Scenario{"apply", Op::kApply, ""},
                      Scenario{"delete", Op::kDelete, ""},
                      Scenario{"create512", Op::kCreate, "cluster_size=512"},
                      Scenario{"delete_extl2", Op::kDelete, "extended_l2=on"},
                      Scenario{"create_journaled", Op::kCreate, "", true},
                      Scenario{"apply_journaled", Op::kApply, "", true},
                      Scenario{"delete_journaled", Op::kDelete, "", true},
                      Scenario{"create512_journaled", Op::kCreate, "cluster_size=512", true},
                      Scenario{"delete_extl2_journaled", Op::kDelete, "extended_l2=on", true}),
    [](const ::testing::TestParamInfo<Scenario>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace test
}  // namespace qcow2j
