// `qcow2j bench` against `qemu-img bench`: the same arguments on two fresh
// images must leave the same guest contents (requests wrap at the end of the
// image, offsets and steps apply, flushes are drained or not), print the
// same lines, and reject the same bad arguments with exit status 1. Our bench
// issues each next request from the completion of the last one, as qemu-img's
// does; these runs cover that path at several depths.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

class BenchTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required"; }

  // Runs `args` through both benches, each on a fresh image of `size`.
  void Compare(const std::string& size, const std::string& args) {
    SCOPED_TRACE(args);
    const std::string q = dir_.Path("q.qcow2"), o = dir_.Path("o.qcow2");
    for (const std::string& img : {q, o}) {
      RunResult c = test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " " + size);
      ASSERT_TRUE(c.ok()) << c.Describe();
    }
    RunResult theirs = test::Run("qemu-img bench -f qcow2 " + args + " " + Quote(q));
    ASSERT_TRUE(theirs.ok()) << theirs.Describe();
    RunResult ours = test::Run(Quote(Cli()) + " bench -f qcow2 " + args + " " + Quote(o));
    ASSERT_TRUE(ours.ok()) << ours.Describe();
    // Every line but the timing one.
    EXPECT_EQ(FirstLines(ours.out), FirstLines(theirs.out));
    EXPECT_NE(ours.out.find("Run completed in "), std::string::npos) << ours.out;
    RunResult cmp = test::Run("qemu-img compare -f qcow2 -F qcow2 " + Quote(q) + " " + Quote(o));
    EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
    RunResult check = test::Run("qemu-img check " + Quote(o));
    EXPECT_EQ(check.exit_code, 0) << check.Describe();
  }

  static std::string FirstLines(const std::string& out) {
    std::string kept;
    size_t pos = 0;
    while (pos < out.size()) {
      size_t end = out.find('\n', pos);
      if (end == std::string::npos) end = out.size();
      std::string line = out.substr(pos, end - pos);
      if (line.rfind("Run completed", 0) != 0) kept += line + "\n";
      pos = end + 1;
    }
    return kept;
  }

  TempDir dir_;
};

TEST_F(BenchTest, ScatteredWritesWrapAtTheEndOfTheImage) {
  // 1500 writes 12 KiB apart cover 18000 KiB of a 4 MiB image: they wrap
  // four times. (Images stay small: this machine's file system discards
  // the blocks of a deleted file synchronously, at a few MB/s.)
  Compare("4M", "-w -c 1500 -s 4k -S 12k -d 32 --pattern=171");
}

TEST_F(BenchTest, OffsetStepAndDepthsAboveAndBelowTheCount) {
  Compare("8M", "-w -c 2000 -s 4k -S 1000k -o 3k -d 7 --pattern=17");
  Compare("2M", "-w -c 20 -s 64k -d 64 --pattern=5");
  Compare("1M", "-w -c 300 -s 512 -S 1536 -d 1 --pattern=200");
}

TEST_F(BenchTest, DrainedAndUndrainedFlushes) {
  // Few flushes: each costs a disk sync on both sides.
  Compare("4M", "-w -c 600 -s 4k -S 8k -d 32 --pattern=99 --flush-interval=100");
  Compare("4M", "-w -c 600 -s 4k -S 8k -d 16 --pattern=98 --flush-interval=100 --no-drain");
  // A flush interval equal to the depth: every flush waits for a full queue.
  Compare("4M", "-w -c 64 -s 4k -d 8 --pattern=97 --flush-interval=8 -t none");
}

TEST_F(BenchTest, ReadsLeaveTheImageAlone) {
  Compare("4M", "-c 4000 -s 4k -S 12k -d 32");
}

TEST_F(BenchTest, ARequestThatWouldRunPastTheEndStartsAtZero) {
  // 4 MiB is no multiple of 7 KiB: the 586th read would straddle the end.
  // qemu-img 7.2 fails it with EIO (later versions wrap modulo size - 4k);
  // ours reads at 0 instead, which keeps every run qemu-img 7.2 completes
  // identical.
  const std::string img = dir_.Path("a.qcow2");
  ASSERT_TRUE(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 4M").ok());
  RunResult ours = test::Run(Quote(Cli()) + " bench -f qcow2 -c 1000 -s 4k -S 7k -d 32 " + Quote(img));
  EXPECT_EQ(ours.exit_code, 0) << ours.Describe();
}

TEST_F(BenchTest, ArgumentsAreAcceptedAndRejectedLikeQemuImg) {
  const std::string img = dir_.Path("a.qcow2");
  ASSERT_TRUE(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 1M").ok());
  struct Case {
    const char* args;
    int exit_code;  // qemu-img's
  };
  for (const Case& c : {Case{"-w -c 100 -d 32 --flush-interval=16", 1}, Case{"-c 100 --flush-interval=100", 1},
                        Case{"-c x", 1}, Case{"-c -1", 1}, Case{"-d -1", 1}, Case{"--pattern=256 -w", 1},
                        Case{"-t bogus", 1}, Case{"-s 2M", 1},
                        // Accepted by qemu-img: no flushes to drain, and requests of no bytes.
                        Case{"-w -c 100 --no-drain", 0}, Case{"-w -c 100 -s 0", 0}}) {
    SCOPED_TRACE(c.args);
    RunResult theirs = test::Run("qemu-img bench -f qcow2 " + std::string(c.args) + " " + Quote(img));
    RunResult ours = test::Run(Quote(Cli()) + " bench -f qcow2 " + std::string(c.args) + " " + Quote(img));
    EXPECT_EQ(theirs.exit_code, c.exit_code) << theirs.Describe();
    EXPECT_EQ(ours.exit_code, c.exit_code) << ours.Describe();
    EXPECT_EQ(ours.err.empty(), c.exit_code == 0) << ours.Describe();
  }
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
