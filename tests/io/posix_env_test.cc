// The POSIX Env against a real ext4/xfs directory under /var/tmp (/tmp may be
// tmpfs, which behaves differently for O_DIRECT and hole punching). Every test
// runs twice: with the system calls (Env::Default()) and with io_uring
// (Env::IoUring()), which share everything but the data calls.
#include <stdlib.h>
#include <sys/vfs.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2j/file.h"

namespace qcow2j {
namespace {

class PosixEnvTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "io_uring") {
      auto r = Env::IoUring();
      // Only a kernel without io_uring or a sandbox that forbids it excuses
      // the io_uring runs; any other failure is one.
      if (!r.ok() && (r.status().sys_errno() == ENOSYS || r.status().sys_errno() == EPERM))
        GTEST_SKIP() << r.status().ToString();
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      env_ = *r;
    } else {
      env_ = Env::Default();
    }
    char tmpl[] = "/var/tmp/qcow2j_posix_env_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::unique_ptr<File> OpenOrDie(const std::string& name, unsigned flags) {
    auto r = env_->Open(Path(name), flags);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  Env* env_ = nullptr;
  std::string dir_;
};

std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

std::vector<uint8_t> ReadAll(File* f, uint64_t offset, size_t n) {
  std::vector<uint8_t> out(n, 0xee);
  Status s = f->Read(offset, out.data(), n);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

TEST_P(PosixEnvTest, ReadWriteAndZerosPastEof) {
  auto f = OpenOrDie("a", kOpenCreate);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->alignment(), 1u);
  EXPECT_FALSE(f->direct());
  auto data = Pattern(10000, 1);
  ASSERT_TRUE(f->Write(123, data.data(), data.size()).ok());
  EXPECT_EQ(*f->Size(), 10123u);
  auto back = ReadAll(f.get(), 123, data.size());
  EXPECT_EQ(back, data);
  // Straddling EOF: the tail reads as zeros.
  auto tail = ReadAll(f.get(), 10000, 1000);
  EXPECT_TRUE(std::equal(tail.begin(), tail.begin() + 123, data.end() - 123));
  EXPECT_TRUE(std::all_of(tail.begin() + 123, tail.end(), [](uint8_t b) { return b == 0; }));
}

TEST_P(PosixEnvTest, VectoredIo) {
  auto f = OpenOrDie("v", kOpenCreate);
  ASSERT_TRUE(f);
  auto a = Pattern(1000, 2), b = Pattern(3000, 3), c = Pattern(17, 4);
  std::vector<iovec> w = {{a.data(), a.size()}, {nullptr, 0}, {b.data(), b.size()}, {c.data(), c.size()}};
  ASSERT_TRUE(f->Writev(50, w).ok());
  auto flat = ReadAll(f.get(), 50, 4017);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), flat.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), flat.begin() + 1000));
  EXPECT_TRUE(std::equal(c.begin(), c.end(), flat.begin() + 4000));

  // Read back in differently shaped pieces, the last one past EOF.
  std::vector<uint8_t> x(7), y(4010), z(100, 0xff);
  std::vector<iovec> r = {{x.data(), x.size()}, {y.data(), y.size()}, {z.data(), z.size()}};
  ASSERT_TRUE(f->Readv(50, r).ok());
  EXPECT_TRUE(std::equal(x.begin(), x.end(), flat.begin()));
  EXPECT_TRUE(std::equal(y.begin(), y.end(), flat.begin() + 7));
  EXPECT_TRUE(std::all_of(z.begin(), z.end(), [](uint8_t v) { return v == 0; }));
}

TEST_P(PosixEnvTest, DirectAlignedAndUnalignedThroughBounceBuffers) {
  auto f = OpenOrDie("d", kOpenCreate | kOpenDirect);
  ASSERT_TRUE(f);
  ASSERT_TRUE(f->direct());
  const size_t a = f->alignment();
  ASSERT_GE(a, 512u);
  ASSERT_EQ(a & (a - 1), 0u);

  // The model of what the file should hold.
  std::vector<uint8_t> model(6 << 20, 0);
  auto write = [&](uint64_t off, const std::vector<uint8_t>& d) {
    // Deliberately unaligned source buffer.
    std::vector<uint8_t> buf(d.size() + 1);
    std::memcpy(buf.data() + 1, d.data(), d.size());
    Status s = f->Write(off, buf.data() + 1, d.size());
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::memcpy(model.data() + off, d.data(), d.size());
  };
  write(0, Pattern(16384, 5));     // aligned offset and length, unaligned buffer
  write(100, Pattern(1000, 6));    // inside one block
  write(a - 3, Pattern(10, 7));    // across a block boundary
  write(8191, Pattern(3 * a + 5, 8));
  write(513, Pattern((3 << 20) + 7, 9));  // larger than one bounce window

  // An aligned write with an aligned buffer goes straight through.
  void* p = nullptr;
  ASSERT_EQ(::posix_memalign(&p, a, 2 * a), 0);
  std::unique_ptr<void, decltype(&std::free)> aligned(p, &std::free);
  auto d = Pattern(2 * a, 10);
  std::memcpy(p, d.data(), d.size());
  ASSERT_TRUE(f->Write(4 << 20, p, 2 * a).ok());
  std::memcpy(model.data() + (4 << 20), d.data(), d.size());
  ASSERT_TRUE(f->Sync().ok());

  uint64_t size = *f->Size();
  ASSERT_GE(size, (4u << 20) + 2 * a);
  // Unaligned reads of every shape, through the direct file.
  for (auto [off, len] : std::vector<std::pair<uint64_t, size_t>>{
           {0, 16384}, {1, 1}, {99, 1003}, {a - 4, 12}, {8000, 3 * a + 300}, {511, (3 << 20) + 11}}) {
    std::vector<uint8_t> buf(len + 3);
    ASSERT_TRUE(f->Read(off, buf.data() + 3, len).ok());
    EXPECT_TRUE(std::equal(buf.begin() + 3, buf.end(), model.begin() + off)) << off << "+" << len;
  }
  // Read straddling EOF (unaligned) gives zeros past it.
  std::vector<uint8_t> tail(3 * a + 1, 0xee);
  ASSERT_TRUE(f->Read(size - a - 1, tail.data(), tail.size()).ok());
  EXPECT_TRUE(std::equal(tail.begin(), tail.begin() + a + 1, model.begin() + (size - a - 1)));
  EXPECT_TRUE(std::all_of(tail.begin() + a + 1, tail.end(), [](uint8_t b) { return b == 0; }));

  // Unaligned vectored I/O on the direct file.
  auto v1 = Pattern(333, 11), v2 = Pattern(5000, 12);
  std::vector<iovec> w = {{v1.data(), v1.size()}, {v2.data(), v2.size()}};
  ASSERT_TRUE(f->Writev(12345, w).ok());
  std::memcpy(model.data() + 12345, v1.data(), v1.size());
  std::memcpy(model.data() + 12345 + 333, v2.data(), v2.size());
  std::vector<uint8_t> r1(1000), r2(4400);
  std::vector<iovec> r = {{r1.data(), r1.size()}, {r2.data(), r2.size()}};
  ASSERT_TRUE(f->Readv(12001, r).ok());
  EXPECT_TRUE(std::equal(r1.begin(), r1.end(), model.begin() + 12001));
  EXPECT_TRUE(std::equal(r2.begin(), r2.end(), model.begin() + 13001));

  // And the bytes really are on disk: read through a buffered descriptor.
  f.reset();
  auto g = OpenOrDie("d", kOpenReadOnly);
  ASSERT_TRUE(g);
  auto all = ReadAll(g.get(), 0, model.size());
  EXPECT_TRUE(all == model);
}

TEST_P(PosixEnvTest, DirectUnalignedWritesToOneBlockDoNotLoseBytes) {
  auto f = OpenOrDie("race", kOpenCreate | kOpenDirect);
  ASSERT_TRUE(f);
  const size_t a = f->alignment();
  std::vector<uint8_t> zeros(2 * a, 0);
  ASSERT_TRUE(f->Write(0, zeros.data(), zeros.size()).ok());
  // Each thread owns every 4th byte-pair of the same two blocks; each of its
  // writes is a read-modify-write of a block the others rewrite too.
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<Status> errors(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t pos = 2 * t; pos + 2 <= 2 * a; pos += 2 * kThreads) {
        uint8_t v[2] = {static_cast<uint8_t>(t + 1), static_cast<uint8_t>(t + 1)};
        Status s = f->Write(pos, v, 2);
        if (!s.ok()) {
          errors[t] = s;
          return;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const Status& s : errors) ASSERT_TRUE(s.ok()) << s.ToString();
  auto back = ReadAll(f.get(), 0, 2 * a);
  for (size_t i = 0; i < 2 * a; ++i) {
    ASSERT_EQ(back[i], static_cast<uint8_t>((i / 2) % kThreads + 1)) << "byte " << i;
  }
}

TEST_P(PosixEnvTest, PunchHoleReadsZerosAndFreesBlocks) {
  auto f = OpenOrDie("p", kOpenCreate);
  ASSERT_TRUE(f);
  auto data = Pattern(1 << 20, 13);
  ASSERT_TRUE(f->Write(0, data.data(), data.size()).ok());
  ASSERT_TRUE(f->Sync().ok());
  uint64_t before = *f->AllocatedBytes();
  ASSERT_GE(before, 1u << 20);
  ASSERT_TRUE(f->PunchHole(256 << 10, 512 << 10).ok());
  uint64_t after = *f->AllocatedBytes();
  EXPECT_LE(after, before - (512 << 10));
  EXPECT_EQ(*f->Size(), 1u << 20);
  auto back = ReadAll(f.get(), 0, 1 << 20);
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + (256 << 10), data.begin()));
  EXPECT_TRUE(std::all_of(back.begin() + (256 << 10), back.begin() + (768 << 10),
                          [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::equal(back.begin() + (768 << 10), back.end(), data.begin() + (768 << 10)));
  // Punching past EOF changes nothing.
  ASSERT_TRUE(f->PunchHole(2 << 20, 4096).ok());
  EXPECT_EQ(*f->Size(), 1u << 20);
}

// Zeroing inside and past EOF, preallocation and truncation. Run on ext4 (fast
// paths) and on tmpfs, which has no FALLOC_FL_ZERO_RANGE, so ZeroRange takes
// its punch-hole-then-extend fallback there.
void CheckZeroRangeAllocateTruncate(File* f) {
  auto data = Pattern(65536, 14);
  ASSERT_TRUE(f->Write(0, data.data(), data.size()).ok());
  ASSERT_TRUE(f->ZeroRange(1000, 3000).ok());
  auto back = ReadAll(f, 0, 65536);
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 1000, data.begin()));
  EXPECT_TRUE(std::all_of(back.begin() + 1000, back.begin() + 4000, [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::equal(back.begin() + 4000, back.end(), data.begin() + 4000));
  // Zeroing past EOF grows the file like writing zeros would.
  ASSERT_TRUE(f->ZeroRange(60000, 10000).ok());
  EXPECT_EQ(*f->Size(), 70000u);
  auto grown = ReadAll(f, 59000, 11000);
  EXPECT_TRUE(std::equal(grown.begin(), grown.begin() + 1000, data.begin() + 59000));
  EXPECT_TRUE(std::all_of(grown.begin() + 1000, grown.end(), [](uint8_t b) { return b == 0; }));

  uint64_t alloc = *f->AllocatedBytes();
  ASSERT_TRUE(f->Allocate(1 << 20, 1 << 20, /*keep_size=*/true).ok());
  EXPECT_EQ(*f->Size(), 70000u);
  EXPECT_GE(*f->AllocatedBytes(), alloc + (1 << 20));
  ASSERT_TRUE(f->Allocate(4 << 20, 4096, /*keep_size=*/false).ok());
  EXPECT_EQ(*f->Size(), (4u << 20) + 4096);

  ASSERT_TRUE(f->Truncate(100).ok());
  EXPECT_EQ(*f->Size(), 100u);
  ASSERT_TRUE(f->Truncate(200).ok());
  auto t = ReadAll(f, 0, 200);
  EXPECT_TRUE(std::equal(t.begin(), t.begin() + 100, data.begin()));
  EXPECT_TRUE(std::all_of(t.begin() + 100, t.end(), [](uint8_t b) { return b == 0; }));
}

TEST_P(PosixEnvTest, ZeroRangeAllocateTruncate) {
  auto f = OpenOrDie("z", kOpenCreate);
  ASSERT_TRUE(f);
  CheckZeroRangeAllocateTruncate(f.get());
}

TEST_P(PosixEnvTest, ZeroRangeFallsBackWhereZeroRangeIsMissing) {
  struct statfs fs;
  if (::statfs("/dev/shm", &fs) != 0 || fs.f_type != 0x01021994 /* TMPFS_MAGIC */)
    GTEST_SKIP() << "no tmpfs at /dev/shm";
  char tmpl[] = "/dev/shm/qcow2j_posix_env_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  {
    auto f = env_->Open(dir + "/z", kOpenCreate);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    CheckZeroRangeAllocateTruncate(f->get());
  }
  std::filesystem::remove_all(dir);
}

TEST_P(PosixEnvTest, SyncFlagAndReopen) {
  {
    auto f = OpenOrDie("s", kOpenCreate | kOpenSync);
    ASSERT_TRUE(f);
    auto d = Pattern(5000, 15);
    ASSERT_TRUE(f->Write(7, d.data(), d.size()).ok());
  }
  EXPECT_TRUE(env_->Exists(Path("s")));
  auto f = OpenOrDie("s", kOpenReadOnly);
  ASSERT_TRUE(f);
  auto d = Pattern(5000, 15);
  EXPECT_EQ(ReadAll(f.get(), 7, 5000), d);
  ASSERT_TRUE(env_->Remove(Path("s")).ok());
  EXPECT_FALSE(env_->Exists(Path("s")));
}

TEST_P(PosixEnvTest, ErrorsNamePathOperationAndOffset) {
  auto missing = env_->Open(Path("nope"), 0);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(Path("nope")), std::string::npos);

  { auto f = OpenOrDie("ro", kOpenCreate); }
  auto f = OpenOrDie("ro", kOpenReadOnly);
  ASSERT_TRUE(f);
  uint8_t b = 1;
  Status s = f->Write(4096, &b, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kIOError);
  EXPECT_EQ(s.sys_errno(), EBADF);
  EXPECT_NE(s.message().find(Path("ro")), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("write"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("offset 4096"), std::string::npos) << s.message();

  auto ex = env_->Open(Path("ro"), kOpenCreate | kOpenExclusive);
  ASSERT_FALSE(ex.ok());
  EXPECT_EQ(ex.status().sys_errno(), EEXIST);
}

// Many threads writing and reading their own interleaved pieces of one file at
// once, through the request paths the engine's worker threads use: aligned
// direct writes go straight to the kernel, the others through bounce buffers.
TEST_P(PosixEnvTest, ConcurrentWritersAndReadersFromManyThreads) {
  for (unsigned flags : {0u, unsigned{kOpenDirect}}) {
    SCOPED_TRACE(flags ? "direct" : "buffered");
    auto f = OpenOrDie(flags ? "cd" : "cb", kOpenCreate | flags);
    ASSERT_TRUE(f);
    constexpr int kThreads = 16, kPieces = 40;
    constexpr size_t kSlot = 5 * 4096;  // thread t owns slots t, t+16, t+32, ...
    std::vector<std::thread> threads;
    std::vector<std::string> errors(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(t);
        void* p = nullptr;
        if (::posix_memalign(&p, 4096, kSlot) != 0) return;
        std::unique_ptr<void, decltype(&std::free)> aligned(p, &std::free);
        for (int i = 0; i < kPieces; ++i) {
          uint64_t off = (static_cast<uint64_t>(i) * kThreads + t) * kSlot;
          // Odd pieces are aligned in offset, length and buffer (straight to
          // the kernel even when direct); even ones end mid-block (bounced
          // and read-modify-written when direct).
          size_t len = (i % 2) ? 8192 : 1 + rng() % (kSlot - 1);
          auto d = Pattern(len, static_cast<uint32_t>(off));
          std::memcpy(p, d.data(), len);
          Status s = f->Write(off, p, len);
          if (s.ok() && i % 8 == 7) s = f->Sync();
          std::vector<uint8_t> back(len);
          if (s.ok()) s = f->Read(off, back.data(), len);
          if (!s.ok()) {
            errors[t] = s.ToString();
            return;
          }
          if (back != d) {
            errors[t] = "piece at " + std::to_string(off) + " read back wrong";
            return;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    for (const std::string& e : errors) EXPECT_EQ(e, "");
    // Everything again from this thread after all have finished.
    for (int t = 0; t < kThreads; ++t) {
      std::mt19937 rng(t);
      for (int i = 0; i < kPieces; ++i) {
        uint64_t off = (static_cast<uint64_t>(i) * kThreads + t) * kSlot;
        size_t len = (i % 2) ? 8192 : 1 + rng() % (kSlot - 1);
        ASSERT_EQ(ReadAll(f.get(), off, len), Pattern(len, static_cast<uint32_t>(off))) << off;
      }
    }
  }
}

// More segments than one preadv/pwritev (or io_uring readv/writev) takes: the
// file must split the request into IOV_MAX windows and lose nothing.
TEST_P(PosixEnvTest, MoreSegmentsThanIovMax) {
  for (unsigned flags : {0u, unsigned{kOpenDirect}}) {
    SCOPED_TRACE(flags ? "direct" : "buffered");
    auto f = OpenOrDie(flags ? "id" : "ib", kOpenCreate | flags);
    ASSERT_TRUE(f);
    const size_t segs = 3 * IOV_MAX + 5;
    auto data = Pattern(segs * 4096, 21);
    std::vector<iovec> w;
    for (size_t i = 0; i < segs; ++i) w.push_back({data.data() + i * 4096, 4096});
    ASSERT_TRUE(f->Writev(0, w).ok());
    std::vector<uint8_t> back(data.size() + 4096, 0xee);
    std::vector<iovec> r;  // 512-byte segments, the last one past EOF
    for (size_t i = 0; i < back.size() / 512; ++i) r.push_back({back.data() + i * 512, 512});
    ASSERT_GT(r.size(), size_t{IOV_MAX});
    ASSERT_TRUE(f->Readv(0, r).ok());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), back.begin()));
    EXPECT_TRUE(std::all_of(back.begin() + data.size(), back.end(), [](uint8_t b) { return b == 0; }));
  }
}

// Reads that start at or past EOF, and a direct read whose end is past EOF:
// the kernel returns a short count or 0, the file fills zeros.
TEST_P(PosixEnvTest, ShortAndEofReadsFillZeros) {
  for (unsigned flags : {0u, unsigned{kOpenDirect}}) {
    SCOPED_TRACE(flags ? "direct" : "buffered");
    auto f = OpenOrDie(flags ? "ed" : "eb", kOpenCreate | flags);
    ASSERT_TRUE(f);
    auto data = Pattern(3 * 4096, 22);
    ASSERT_TRUE(f->Write(0, data.data(), data.size()).ok());
    ASSERT_TRUE(f->Truncate(data.size() - 100).ok());  // an EOF inside a block
    auto at_eof = ReadAll(f.get(), data.size() - 100, 5000);
    EXPECT_TRUE(std::all_of(at_eof.begin(), at_eof.end(), [](uint8_t b) { return b == 0; }));
    auto past = ReadAll(f.get(), 1 << 20, 4096);
    EXPECT_TRUE(std::all_of(past.begin(), past.end(), [](uint8_t b) { return b == 0; }));
    auto across = ReadAll(f.get(), 4096, 3 * 4096);
    EXPECT_TRUE(std::equal(across.begin(), across.begin() + 2 * 4096 - 100, data.begin() + 4096));
    EXPECT_TRUE(std::all_of(across.begin() + 2 * 4096 - 100, across.end(), [](uint8_t b) { return b == 0; }));
    ASSERT_TRUE(f->Sync().ok());
  }
}

// Sync on every kind of file, and its error: a file whose descriptor cannot
// sync reports the path and the errno instead of pretending.
TEST_P(PosixEnvTest, SyncMakesWritesDurableAndReportsErrors) {
  for (unsigned flags : {0u, unsigned{kOpenDirect}, unsigned{kOpenSync}}) {
    auto f = OpenOrDie("sy" + std::to_string(flags), kOpenCreate | flags);
    ASSERT_TRUE(f);
    auto d = Pattern(8192, 23);
    ASSERT_TRUE(f->Write(0, d.data(), d.size()).ok());
    Status s = f->Sync();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  // /dev/null, a character device: fdatasync fails with EINVAL.
  auto n = env_->Open("/dev/null", 0);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  Status s = (*n)->Sync();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.sys_errno(), EINVAL) << s.ToString();
  EXPECT_NE(s.message().find("/dev/null: fdatasync"), std::string::npos) << s.message();
}

INSTANTIATE_TEST_SUITE_P(Envs, PosixEnvTest, ::testing::Values("posix", "io_uring"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace qcow2j
