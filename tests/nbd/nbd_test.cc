// The nbdkit plugin (tools/nbdkit) end to end: nbdkit serves an image through
// qcow2j on a unix socket; fio (ioengine=nbd), qemu-io and nbdinfo are the
// clients; qemu-img check judges the file once nbdkit has closed it.
// Missing nbdkit, fio, qemu-io or the plugin is a failure, not a skip:
// scripts/install-deps.sh installs them.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2j/image.h"
#include "util/test_util.h"

#ifndef QCOW2J_NBDKIT_PLUGIN
#define QCOW2J_NBDKIT_PLUGIN ""
#endif
#ifndef QCOW2J_NBDKIT_PRELOAD
#define QCOW2J_NBDKIT_PRELOAD ""
#endif

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// A connected unix socket, or -1.
int ConnectUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// One nbdkit process serving one image on a unix socket. The destructor kills
// it if a test did not stop it; --exit-with-parent covers a crashed test.
class NbdkitServer {
 public:
  NbdkitServer(const TempDir& dir, std::string image) : dir_(dir), image_(std::move(image)) {}
  ~NbdkitServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Starts nbdkit and waits (bounded) until it accepts connections.
  ::testing::AssertionResult Start(const std::vector<std::string>& params = {}) {
    const std::string plugin = QCOW2J_NBDKIT_PLUGIN;
    if (plugin.empty()) {
      return ::testing::AssertionFailure()
             << "the nbdkit plugin was not built (install nbdkit-plugin-dev: scripts/install-deps.sh)";
    }
    if (!HaveProgram("nbdkit")) {
      return ::testing::AssertionFailure() << "nbdkit is not installed (scripts/install-deps.sh)";
    }
    ::unlink(socket().c_str());
    ::unlink(pidfile().c_str());
    std::vector<std::string> args = {"nbdkit", "-f", "--exit-with-parent", "-v",
                                     "-U", socket(), "-P", pidfile(), plugin, "file=" + image_};
    args.insert(args.end(), params.begin(), params.end());
    pid_t pid = ::fork();
    if (pid < 0) return ::testing::AssertionFailure() << "fork failed";
    if (pid == 0) {
      int fd = ::open(log().c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      const std::string preload = QCOW2J_NBDKIT_PRELOAD;
      if (!preload.empty()) {
        // nbdkit is not instrumented; the sanitized plugin needs its runtime
        // first. nbdkit's own allocations at exit are not ours to report.
        ::setenv("LD_PRELOAD", preload.c_str(), 1);
        ::setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp("nbdkit", argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    // nbdkit writes the PID file once the socket is bound, but opens the image
    // (the plugin's after_fork) only after that: it is ready when it greets.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int fd = -1;
    std::string greeting;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (fd >= 0) ::close(fd);
        return ::testing::AssertionFailure() << "nbdkit exited at start (status " << status
                                             << "):\n" << Log();
      }
      // The plugin failed to open the image: nbdkit is on its way out.
      if (Log().find("error: qcow2j:") != std::string::npos) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        if (fd >= 0) ::close(fd);
        return ::testing::AssertionFailure() << "nbdkit failed at start:\n" << Log();
      }
      if (fd < 0 && ::access(pidfile().c_str(), R_OK) == 0) fd = ConnectUnix(socket());
      if (fd >= 0) {
        pollfd p = {fd, POLLIN, 0};
        if (::poll(&p, 1, 20) > 0) {
          char buf[8];
          ssize_t n = ::read(fd, buf, sizeof buf);
          ::close(fd);
          fd = -1;
          if (n == 8 && std::string(buf, 8) == "NBDMAGIC") return ::testing::AssertionSuccess();
          // EOF: nbdkit is exiting; the next round reaps it.
        }
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    if (fd >= 0) ::close(fd);
    return ::testing::AssertionFailure() << "nbdkit did not start within 60 s:\n" << Log();
  }

  // SIGTERM, then wait (bounded) for the plugin's cleanup to close the image.
  ::testing::AssertionResult Stop() {
    if (pid_ <= 0) return ::testing::AssertionFailure() << "nbdkit is not running";
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    int status = 0;
    const std::string preload = QCOW2J_NBDKIT_PRELOAD;
    const auto sanitizer_grace = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      // With the sanitizer runtime preloaded into (uninstrumented) nbdkit,
      // nbdkit sometimes hangs in its own exit handlers (libp11-kit's fini
      // blocks on glibc's locale lock) after our plugin has closed the image
      // and been unloaded. Our part is done by then: accept it.
      if (!preload.empty() && std::chrono::steady_clock::now() > sanitizer_grace &&
          Log().find("qcow2j: unload plugin") != std::string::npos) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return Log().find("qcow2j: close failed") == std::string::npos
                   ? ::testing::AssertionSuccess()
                   : ::testing::AssertionFailure() << "closing the image failed:\n" << Log();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return ::testing::AssertionFailure() << "nbdkit did not exit within 120 s:\n" << Log();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return ::testing::AssertionFailure() << "nbdkit exit status " << status << ":\n" << Log();
    }
    // The plugin reports a failed Close through nbdkit_error.
    if (Log().find("qcow2j: close failed") != std::string::npos) {
      return ::testing::AssertionFailure() << "closing the image failed:\n" << Log();
    }
    return ::testing::AssertionSuccess();
  }

  std::string socket() const { return dir_.Path("nbd.sock"); }
  std::string uri() const { return "nbd+unix:///?socket=" + socket(); }
  std::string Log() const {
    if (::access(log().c_str(), R_OK) != 0) return "";  // nbdkit has not written yet
    std::string s = ReadFile(log());
    return s.size() > 8000 ? "..." + s.substr(s.size() - 8000) : s;
  }

 private:
  std::string pidfile() const { return dir_.Path("nbdkit.pid"); }
  std::string log() const { return dir_.Path("nbdkit.log"); }

  const TempDir& dir_;
  std::string image_;
  pid_t pid_ = -1;
};

// A qcow2 image made by our engine (with its journal), as nbdkit users would.
std::string CreateImage(const TempDir& dir, uint64_t size) {
  std::string path = dir.Path("disk.qcow2");
  CreateOptions opts;
  opts.size = size;
  Status s = Image::Create(path, opts);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return path;
}

void ExpectQemuImgCheckClean(const std::string& image) {
  RunResult r = test::Run("qemu-img check -f qcow2 " + Quote(image));
  EXPECT_TRUE(r.ok()) << r.Describe();
  EXPECT_NE(r.out.find("No errors were found"), std::string::npos) << r.Describe();
}

// Runs fio in `dir` with JSON output; checks exit status and every job's error.
// Returns the parsed document (null on failure).
Json RunFio(const TempDir& dir, const std::string& args) {
  if (!HaveProgram("fio")) {
    ADD_FAILURE() << "fio is not installed (scripts/install-deps.sh)";
    return Json{};
  }
  RunResult r = test::Run("cd " + Quote(dir.path()) + " && timeout 600 fio --output-format=json " + args);
  EXPECT_TRUE(r.ok()) << r.Describe();
  // fio's nbd engine prints "fio: connected to NBD server" before the document.
  size_t brace = r.out.find('{');
  std::string error;
  auto doc = ParseJson(brace == std::string::npos ? "" : r.out.substr(brace), &error);
  if (!doc) {
    ADD_FAILURE() << "fio output is not JSON (" << error << "): " << r.Describe();
    return Json{};
  }
  const Json* jobs = doc->Get("jobs");
  EXPECT_TRUE(jobs && jobs->is_array() && !jobs->arr.empty()) << r.out;
  if (jobs) {
    for (const Json& job : jobs->arr) {
      const Json* err = job.Get("error");
      EXPECT_TRUE(err && err->str == "0") << "fio job failed: " << r.Describe();
    }
  }
  return *doc;
}

uint64_t FioBytes(const Json& doc, const char* dir) {
  uint64_t total = 0;
  const Json* jobs = doc.Get("jobs");
  if (!jobs) return 0;
  for (const Json& job : jobs->arr) {
    const Json* bytes = job.At(std::string(dir) + ".io_bytes");
    if (bytes) total += std::strtoull(bytes->str.c_str(), nullptr, 10);
  }
  return total;
}

std::string FioNbd(const NbdkitServer& server) {
  return "--ioengine=nbd " + Quote("--uri=" + server.uri());
}

// fio's verification: every block written (random order, 32 in flight) is read
// back and its crc32c checked; then, after nbdkit closed and reopened the
// image, verified again from a fresh process.
TEST(Nbd, FioRandWriteVerifyAndQemuImgCheck) {
  TempDir dir;
  std::string image = CreateImage(dir, 64 * kMiB);
  NbdkitServer server(dir, image);
  ASSERT_TRUE(server.Start());
  const std::string job = "--name=verify " + FioNbd(server) +
                          " --rw=randwrite --bs=4k --iodepth=32 --size=64M"
                          " --verify=crc32c --verify_fatal=1 --verify_state_save=0";
  Json doc = RunFio(dir, job);
  EXPECT_EQ(FioBytes(doc, "write"), 64 * kMiB);
  EXPECT_EQ(FioBytes(doc, "read"), 64 * kMiB) << "fio did not read everything back to verify";
  ASSERT_TRUE(server.Stop());
  ExpectQemuImgCheckClean(image);

  // The data survived close: a new nbdkit, fio verifying only.
  ASSERT_TRUE(server.Start());
  doc = RunFio(dir, job + " --verify_only");
  EXPECT_EQ(FioBytes(doc, "read"), 64 * kMiB);
  ASSERT_TRUE(server.Stop());
  ExpectQemuImgCheckClean(image);
}

// Four connections at once (multi-conn), each writing and verifying its own
// quarter: one shared Image, requests from all connections interleaved.
TEST(Nbd, FioFourConnections) {
  TempDir dir;
  std::string image = CreateImage(dir, 64 * kMiB);
  NbdkitServer server(dir, image);
  ASSERT_TRUE(server.Start());
  Json doc = RunFio(dir, "--name=multi " + FioNbd(server) +
                             " --numjobs=4 --size=16M --offset_increment=16M"
                             " --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c"
                             " --verify_fatal=1 --verify_state_save=0");
  EXPECT_EQ(FioBytes(doc, "write"), 64 * kMiB);
  EXPECT_EQ(FioBytes(doc, "read"), 64 * kMiB);
  ASSERT_TRUE(server.Stop());
  ExpectQemuImgCheckClean(image);
}

std::string QemuIo(const std::string& fmt, const std::string& target,
                   const std::vector<std::string>& cmds) {
  std::string s = "timeout 300 qemu-io -f " + fmt;
  for (const auto& c : cmds) s += " -c " + Quote(c);
  return s + " " + Quote(target);
}

void ExpectQemuIo(const std::string& fmt, const std::string& target,
                  const std::vector<std::string>& cmds) {
  RunResult r = test::Run(QemuIo(fmt, target, cmds));
  EXPECT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.Describe();
  EXPECT_EQ(r.out.find("failed"), std::string::npos) << r.Describe();
  EXPECT_EQ(r.err.find("failed"), std::string::npos) << r.Describe();
}

// What the server advertises: the can_* callbacks and multi-conn.
TEST(Nbd, AdvertisedFlags) {
  TempDir dir;
  std::string image = CreateImage(dir, 16 * kMiB);
  NbdkitServer server(dir, image);
  ASSERT_TRUE(server.Start());
  RunResult r = test::Run("timeout 60 nbdinfo --json " + Quote(server.uri()));
  ASSERT_TRUE(r.ok()) << r.Describe();
  auto doc = ParseJson(r.out);
  ASSERT_TRUE(doc) << r.out;
  const Json* exports = doc->Get("exports");
  ASSERT_TRUE(exports && exports->is_array() && exports->arr.size() == 1) << r.out;
  const Json& e = exports->arr[0];
  for (const char* key : {"can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero"}) {
    const Json* v = e.Get(key);
    EXPECT_TRUE(v && v->b) << key << " in " << r.out;
  }
  const Json* ro = e.Get("is_read_only");
  EXPECT_TRUE(ro && !ro->b) << r.out;
  const Json* size = e.Get("export-size");
  EXPECT_TRUE(size && size->str == std::to_string(16 * kMiB)) << r.out;
  ASSERT_TRUE(server.Stop());
}

// qemu-io as the NBD client: patterns written (plain, FUA, zero, trim) read
// back over NBD; block status over NBD shows the holes; then the file itself,
// read by QEMU after nbdkit closed it, holds the same bytes.
TEST(Nbd, QemuIoPatternsAndBlockStatus) {
  TempDir dir;
  std::string image = CreateImage(dir, 64 * kMiB);
  NbdkitServer server(dir, image);
  ASSERT_TRUE(server.Start());
  ExpectQemuIo("raw", server.uri(),
               {"write -P 0xab 0 1M", "write -f -P 0xcd 3M 64k", "write -P 0x11 4M 128k",
                "write -z 4M 64k", "write -z -u 4160k 64k", "write -P 0x22 8M 256k",
                "discard 8M 128k", "write -P 0x33 17k 3k", "flush"});
  // A second connection sees the first one's data (one shared Image).
  const std::vector<std::string> reads = {
      "read -P 0xab 0 17k",     "read -P 0x33 17k 3k",    "read -P 0xab 20k 1004k",
      "read -P 0 1M 2M",        "read -P 0xcd 3M 64k",    "read -P 0 4M 128k",
      "read -P 0 8M 128k",      "read -P 0x22 8320k 128k", "read -P 0 9M 55M"};
  ExpectQemuIo("raw", server.uri(), reads);

  // Block status over NBD: data where written, holes that read as zeros elsewhere.
  RunResult map = test::Run("timeout 60 qemu-img map --output=json -f raw " + Quote(server.uri()));
  ASSERT_TRUE(map.ok()) << map.Describe();
  auto doc = ParseJson(map.out);
  ASSERT_TRUE(doc && doc->is_array()) << map.out;
  bool saw_data_at_0 = false, saw_zero_hole_at_1m = false, saw_zero_hole_at_9m = false;
  for (const Json& e : doc->arr) {
    uint64_t start = std::strtoull(e.Get("start")->str.c_str(), nullptr, 10);
    uint64_t length = std::strtoull(e.Get("length")->str.c_str(), nullptr, 10);
    bool data = e.Get("data")->b, zero = e.Get("zero")->b;
    if (start == 0) saw_data_at_0 = data && !zero;
    if (start <= 1 * kMiB && 1 * kMiB < start + length) saw_zero_hole_at_1m = !data && zero;
    if (start <= 9 * kMiB && 9 * kMiB < start + length) saw_zero_hole_at_9m = !data && zero;
  }
  EXPECT_TRUE(saw_data_at_0) << map.out;
  EXPECT_TRUE(saw_zero_hole_at_1m) << map.out;
  EXPECT_TRUE(saw_zero_hole_at_9m) << map.out;

  ASSERT_TRUE(server.Stop());
  ExpectQemuImgCheckClean(image);
  ExpectQemuIo("qcow2", image, reads);
}

// readonly=on: reads work, writes are refused, the file is untouched.
TEST(Nbd, ReadOnly) {
  TempDir dir;
  std::string image = CreateImage(dir, 16 * kMiB);
  ASSERT_TRUE(test::Run(QemuIo("qcow2", image, {"write -P 0x5a 0 64k"})).ok());
  NbdkitServer server(dir, image);
  ASSERT_TRUE(server.Start({"readonly=on"}));
  // qemu-io -r: a read-write open of a read-only export is refused.
  ExpectQemuIo("raw -r", server.uri(), {"read -P 0x5a 0 64k", "read -P 0 64k 1M"});
  RunResult w = test::Run(QemuIo("raw", server.uri(), {"write -P 1 0 4k"}));
  EXPECT_TRUE(!w.ok() || w.out.find("failed") != std::string::npos ||
              w.err.find("failed") != std::string::npos ||
              w.err.find("read-only") != std::string::npos)
      << "a write to a readonly export succeeded: " << w.Describe();
  ASSERT_TRUE(server.Stop());
  ExpectQemuIo("qcow2", image, {"read -P 0x5a 0 64k"});
  ExpectQemuImgCheckClean(image);
}

// aio=io_uring with direct=on: the image's reads and writes go through the
// io_uring Env; what qemu-io writes over NBD reads back over NBD and from the
// file. A mode the plugin does not know stops nbdkit at start.
TEST(Nbd, IoUringDirect) {
  auto uring = Env::IoUring();
  if (!uring.ok() && (uring.status().sys_errno() == ENOSYS || uring.status().sys_errno() == EPERM))
    GTEST_SKIP() << uring.status().ToString();
  TempDir dir;
  std::string image = CreateImage(dir, 32 * kMiB);
  NbdkitServer server(dir, image);
  EXPECT_FALSE(server.Start({"aio=native"}));
  EXPECT_NE(server.Log().find("aio=native: expected threads or io_uring"), std::string::npos)
      << server.Log();
  ASSERT_TRUE(server.Start({"aio=io_uring", "direct=on"}));
  ExpectQemuIo("raw", server.uri(), {"write -P 0x5c 0 1M", "write -P 0x6d 5000 3000", "flush"});
  const std::vector<std::string> reads = {"read -P 0x5c 0 5000", "read -P 0x6d 5000 3000",
                                          "read -P 0x5c 8000 1040576", "read -P 0 1M 31M"};
  ExpectQemuIo("raw", server.uri(), reads);
  ASSERT_TRUE(server.Stop());
  ExpectQemuImgCheckClean(image);
  ExpectQemuIo("qcow2", image, reads);
}

// A missing image makes nbdkit fail at start with the plugin's message.
TEST(Nbd, MissingImageFailsAtStart) {
  TempDir dir;
  NbdkitServer server(dir, dir.Path("no-such.qcow2"));
  ::testing::AssertionResult started = server.Start();
  EXPECT_FALSE(started);
  EXPECT_NE(server.Log().find("no-such.qcow2"), std::string::npos) << server.Log();
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
