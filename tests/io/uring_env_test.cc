// What is particular to Env::IoUring() (the File conformance tests run on it
// in posix_env_test.cc): a ring per calling thread, closed when the thread
// ends; a clear error and exit 1 from the CLI where io_uring is forbidden;
// and the engine writing an image through it at depth, checked by QEMU.
#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace {

using test::Quote;
using test::RunResult;
using test::TempDir;

// io_uring may be missing where the kernel or a sandbox forbids it (ENOSYS,
// EPERM): the test is skipped there; any other failure fails it.
#define URING_OR_SKIP(env)                                                           \
  auto env##_or = Env::IoUring();                                                    \
  if (!env##_or.ok()) {                                                              \
    int e = env##_or.status().sys_errno();                                           \
    if (e == ENOSYS || e == EPERM) GTEST_SKIP() << env##_or.status().ToString();     \
    FAIL() << env##_or.status().ToString();                                          \
  }                                                                                  \
  Env* env = *env##_or

// Descriptors of this process that are io_uring instances.
int CountRings() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d)) {
    char target[256];
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    ssize_t len = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (len <= 0) continue;
    target[len] = '\0';
    if (std::strstr(target, "io_uring") != nullptr) ++n;
  }
  ::closedir(d);
  return n;
}

TEST(UringEnvTest, EachThreadGetsItsOwnRingClosedWhenItEnds) {
  URING_OR_SKIP(env);
  TempDir dir;
  auto f = env->Open(dir.Path("f"), kOpenCreate);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  File* file = f->get();

  // Four threads, each doing I/O and then holding until all have: four new
  // rings at once, and none left once they have ended.
  const int before = CountRings();
  ASSERT_GE(before, 0);
  constexpr int kThreads = 4;
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, during = -1;
  bool release = false;
  std::vector<std::thread> threads;
  std::vector<Status> errors(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint8_t b = static_cast<uint8_t>(t);
      errors[t] = file->Write(t, &b, 1);
      std::unique_lock<std::mutex> l(mu);
      if (++done == kThreads) {
        during = CountRings();
        release = true;
        cv.notify_all();
      }
      cv.wait(l, [&] { return release; });
    });
  }
  for (auto& th : threads) th.join();
  for (const Status& s : errors) ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(during, before + kThreads);
  EXPECT_EQ(CountRings(), before);
  uint8_t back[kThreads] = {};
  ASSERT_TRUE(file->Read(0, back, kThreads).ok());
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(back[t], t);
}

// A child of fork() inherits the forking thread's ring, which is the
// parent's (and refused to the child under SINGLE_ISSUER): its I/O must
// still work, on a ring of its own, and leave the parent's ring working.
TEST(UringEnvTest, ForkedChildGetsAFreshRing) {
  URING_OR_SKIP(env);
  TempDir dir;
  auto f = env->Open(dir.Path("f"), kOpenCreate);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const std::string hello = "before fork";
  ASSERT_TRUE((*f)->Write(0, hello.data(), hello.size()).ok());  // this thread's ring now exists
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char buf[11] = {};
    const std::string child = "from child";
    int code = 0;
    if (!(*f)->Read(0, buf, sizeof buf).ok()) code = 1;
    else if (std::string(buf, sizeof buf) != hello) code = 2;
    else if (!(*f)->Write(100, child.data(), child.size()).ok()) code = 3;
    else if (!(*f)->Sync().ok()) code = 4;
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: read failed, 2: wrong bytes, 3: write failed, 4: sync failed";
  char back[10] = {};
  ASSERT_TRUE((*f)->Read(100, back, sizeof back).ok());
  EXPECT_EQ(std::string(back, sizeof back), "from child");
}

// Runs the CLI with args in a child whose seccomp filter makes io_uring_setup
// fail with err, as an old kernel (ENOSYS) or a container's profile (EPERM)
// does. Returns the exit status (-1: could not run; 77: seccomp unavailable)
// and the child's stderr.
int RunWithoutIoUring(const std::vector<std::string>& args, int err, const std::string& errfile,
                      std::string* stderr_text) {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = ::open(errfile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ::_exit(126);
    ::dup2(fd, 2);
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 1);
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<unsigned>(err) & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ::_exit(77);
    }
    std::vector<char*> argv;
    std::string cli = test::Cli();
    argv.push_back(cli.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(cli.c_str(), argv.data());
    ::_exit(127);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  *stderr_text = test::ReadFile(errfile);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(UringEnvTest, CliSaysUnableToUseIoUringAndExits1WhereItIsForbidden) {
  TempDir dir;
  std::string img = dir.Path("a.qcow2");
  RunResult c = test::Run(test::Cli() + " create -f qcow2 " + Quote(img) + " 16M");
  ASSERT_TRUE(c.ok()) << c.Describe();

  std::string err;
  int rc = RunWithoutIoUring({"bench", "-w", "-c", "100", "-i", "io_uring", img}, ENOSYS,
                             dir.Path("err1"), &err);
  if (rc == 77) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("Could not open '" + img + "': Unable to use io_uring"), std::string::npos) << err;
  EXPECT_NE(err.find("Function not implemented"), std::string::npos) << err;

  rc = RunWithoutIoUring({"io", "-i", "io_uring", "-c", "read 0 4k", img}, EPERM, dir.Path("err2"), &err);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("Unable to use io_uring"), std::string::npos) << err;
  EXPECT_NE(err.find("Operation not permitted"), std::string::npos) << err;

  // threads needs no io_uring, and works under the same filter.
  rc = RunWithoutIoUring({"bench", "-w", "-c", "100", "-i", "threads", img}, ENOSYS, dir.Path("err3"), &err);
  EXPECT_EQ(rc, 0) << err;
}

TEST(UringEnvTest, CliRejectsAnUnknownAioMode) {
  TempDir dir;
  std::string img = dir.Path("a.qcow2");
  ASSERT_TRUE(test::Run(test::Cli() + " create -f qcow2 " + Quote(img) + " 16M").ok());
  for (const char* cmd : {" bench -i posix ", " io -i posix -c 'read 0 4k' "}) {
    RunResult r = test::Run(test::Cli() + cmd + Quote(img));
    EXPECT_EQ(r.exit_code, 1) << r.Describe();
    EXPECT_NE(r.err.find("Invalid aio option: posix"), std::string::npos) << r.Describe();
  }
}

// The CLI's io_uring paths write what qemu-io then reads.
TEST(UringEnvTest, CliBenchAndIoThroughIoUring) {
  URING_OR_SKIP(env);
  (void)env;
  TempDir dir;
  std::string img = dir.Path("b.qcow2");
  ASSERT_TRUE(test::Run(test::Cli() + " create -f qcow2 " + Quote(img) + " 64M").ok());
  RunResult b = test::Run(test::Cli() + " bench -w -i io_uring -t none -c 4096 -s 4k -d 32 --pattern=171 " +
                          Quote(img));
  ASSERT_TRUE(b.ok()) << b.Describe();
  RunResult w = test::Run(test::Cli() + " io -i io_uring -c 'write -P 7 20M 100000' -c 'read -P 7 20M 100000' " +
                          Quote(img));
  ASSERT_TRUE(w.ok()) << w.Describe();
  EXPECT_EQ(w.err, "");
  RunResult q = test::Run("qemu-io -f qcow2 -c 'read -P 171 0 16M' -c 'read -P 7 20M 100000' -c 'read -P 0 16M 4M' " +
                          Quote(img));
  ASSERT_TRUE(q.ok()) << q.Describe();
  EXPECT_EQ(q.out.find("Pattern verification failed"), std::string::npos) << q.Describe();
  RunResult chk = test::Run("qemu-img check -f qcow2 " + Quote(img));
  EXPECT_TRUE(chk.ok()) << chk.Describe();
}

// The engine at depth over the io_uring Env (cache=none), with a backing file
// so that copy-on-write reads go through it too; QEMU then finds the image
// clean and identical to the same writes made on a raw file.
TEST(UringEnvTest, ImageWrittenAtDepthIsCleanAndIdenticalForQemu) {
  URING_OR_SKIP(env);
  TempDir dir;
  const uint64_t kSize = 32 << 20;
  std::string base = dir.Path("base.raw"), img = dir.Path("top.qcow2"), ref = dir.Path("ref.raw");
  RunResult r = test::Run("qemu-img create -f raw " + Quote(base) + " 32M && qemu-io -f raw -c 'write -P 3 0 32M' " +
                          Quote(base) + " && cp " + Quote(base) + " " + Quote(ref));
  ASSERT_TRUE(r.ok()) << r.Describe();
  CreateOptions co;
  co.env = env;
  co.size = kSize;
  co.backing_file = base;
  co.backing_format = "raw";
  ASSERT_TRUE(Image::Create(img, co).ok());

  OpenOptions oo;
  oo.env = env;
  oo.read_only = false;
  oo.direct = true;
  auto image = Image::Open(img, oo);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  auto reff = Env::Default()->Open(ref, 0);
  ASSERT_TRUE(reff.ok());

  // 3000 writes of 512 B .. 96 KiB, up to 32 in flight. Write i lands in
  // 1 MiB stripe i % 32 and waits for the stripe's previous write, so writes
  // in flight never overlap (their order would be undefined) while most
  // stripes' clusters are partly written, reallocated and COWed from base.
  std::mt19937_64 rng(7);
  constexpr int kDepth = 32, kWrites = 3000;
  constexpr uint64_t kStripe = kSize / kDepth;
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::vector<bool> busy(kDepth, false);
  Status first_error;
  std::vector<std::vector<uint8_t>> bufs(kWrites);
  for (int i = 0; i < kWrites; ++i) {
    const int stripe = i % kDepth;
    size_t len = 512 * (1 + rng() % 192);
    uint64_t off = stripe * kStripe + (rng() % ((kStripe - len) / 512)) * 512;
    bufs[i].assign(len, static_cast<uint8_t>(i * 7 + 1));
    ASSERT_TRUE((*reff)->Write(off, bufs[i].data(), len).ok());
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return !busy[stripe]; });
    busy[stripe] = true;
    ++in_flight;
    l.unlock();
    (*image)->WriteAsync(off, bufs[i].data(), len, [&, stripe](Status s) {
      std::lock_guard<std::mutex> g(mu);
      if (!s.ok() && first_error.ok()) first_error = s;
      busy[stripe] = false;
      --in_flight;
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return in_flight == 0; });
  }
  ASSERT_TRUE(first_error.ok()) << first_error.ToString();
  ASSERT_TRUE((*image)->Close().ok());

  RunResult chk = test::Run("qemu-img check -f qcow2 " + Quote(img));
  EXPECT_TRUE(chk.ok()) << chk.Describe();
  EXPECT_NE(chk.out.find("No errors were found"), std::string::npos) << chk.Describe();
  RunResult cmp = test::Run("qemu-img compare -f qcow2 -F raw " + Quote(img) + " " + Quote(ref));
  EXPECT_TRUE(cmp.ok()) << cmp.Describe();
}

}  // namespace
}  // namespace qcow2j
