// kill -9 in the middle of a flushing workload (`qcow2j io`, a real process
// on a real file), then recovery by the next open: every write whose flush
// completed reads back, every other write reads as all old or all new per
// sector, and qemu-img check finds the image clean after we close it.
// (Power loss, where unsynced writes vanish or tear, is the crash kit's job:
// tests/crash.)
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "tests/util/test_util.h"

namespace qcow2j {
namespace {

constexpr int kWrites = 600;
constexpr uint64_t kWriteBytes = 65536;

uint64_t OffsetOf(int i) { return uint64_t(i * 3 % 4096) * kWriteBytes; }  // distinct for i < 4096
int PatternOf(int i) { return i % 250 + 1; }

// Runs `argv`, reading its stdout; kills it with SIGKILL once `lines` lines
// containing `needle` were read. Returns how many such lines were read.
int RunAndKill(const std::vector<std::string>& argv, const std::string& needle, int lines) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string pending;
  int seen = 0;
  char buf[4096];
  while (seen < lines) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      if (pending.substr(0, nl).find(needle) != std::string::npos) seen++;
      pending.erase(0, nl + 1);
    }
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  return seen;
}

TEST(JournalKillTest, KillNineMidWorkloadLosesNoFlushedWrite) {
  std::mt19937 rng(20261121);
  for (const char* opts : {"", "lazy_refcounts=on", "cluster_size=4k"}) {
    SCOPED_TRACE(std::string("create -o '") + opts + "'");
    test::TempDir dir;
    const std::string img = dir.Path("k.qcow2");
    ASSERT_EQ(test::Run(test::Cli() + " create -q -f qcow2 " + (*opts ? std::string("-o ") + opts + " " : "") +
                        test::Quote(img) + " 256M").exit_code, 0);
    // write i; flush; read back a sector of i: the read's line proves that
    // flush i completed.
    std::vector<std::string> argv = {test::Cli(), "io"};
    for (int i = 0; i < kWrites; i++) {
      argv.push_back("-c");
      argv.push_back("write -P " + std::to_string(PatternOf(i)) + " " + std::to_string(OffsetOf(i)) + " " +
                     std::to_string(kWriteBytes));
      argv.push_back("-c");
      argv.push_back("flush");
      argv.push_back("-c");
      argv.push_back("read -P " + std::to_string(PatternOf(i)) + " " + std::to_string(OffsetOf(i)) + " 512");
    }
    argv.push_back(img);
    const int target = 50 + static_cast<int>(rng() % 400);
    const int acked = RunAndKill(argv, "read 512/512", target);
    ASSERT_GT(acked, 0);
    ASSERT_LT(acked, kWrites) << "the process finished before the kill";

    // Recovery is the next read-write open (check -r replays first).
    auto rec = test::Run(test::Cli() + " check -r all " + test::Quote(img));
    EXPECT_EQ(rec.exit_code, 0) << rec.out << rec.err;

    OpenOptions o;
    auto image = Image::Open(img, o);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    std::vector<uint8_t> b(kWriteBytes);
    for (int i = 0; i < kWrites; i++) {
      ASSERT_TRUE((*image)->Read(OffsetOf(i), b.data(), b.size()).ok());
      for (size_t s = 0; s < b.size(); s += 512) {
        const uint8_t want = static_cast<uint8_t>(PatternOf(i));
        bool is_new = std::all_of(b.begin() + s, b.begin() + s + 512, [&](uint8_t v) { return v == want; });
        bool is_old = std::all_of(b.begin() + s, b.begin() + s + 512, [](uint8_t v) { return v == 0; });
        if (i < acked) {
          ASSERT_TRUE(is_new) << "write " << i << " was flushed (" << acked << " acknowledged) but sector "
                              << s / 512 << " does not read back";
        } else {
          ASSERT_TRUE(is_new || is_old) << "write " << i << " sector " << s / 512 << " is neither old nor new";
        }
      }
    }
    ASSERT_TRUE((*image)->Close().ok());
    auto q = test::Run("qemu-img check " + test::Quote(img));
    EXPECT_EQ(q.exit_code, 0) << q.out << q.err;
  }
}

}  // namespace
}  // namespace qcow2j
