// Runtime overlap protection: images whose metadata contradicts itself so
// that the engine's next allocation or free lands on a live L2 table. The
// write (or flush) must fail with an error naming both structures, the
// image must be marked corrupt on disk (qemu-img info: "corrupt: true"), a
// read-write open refused and a read-only open still read the data; the
// live L2 table is never overwritten with guest data.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kCs = 65536;
constexpr uint64_t kMask = 0x00fffffffffffe00ull;

std::string HexOf(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

// 2 GiB (four L1 entries): 0x11 at guest 0, 0x22 at 1 MiB.
std::string MakeImage(const TempDir& dir) {
  const std::string img = dir.Path("img.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 2G"));
  Must(test::Run("qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 64k' " + Quote(img)));
  return img;
}

std::unique_ptr<Image> OpenRw(const std::string& path) {
  OpenOptions o;
  o.read_only = false;
  auto r = Image::Open(path, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

// What every case must show once the guard has fired.
// `l2`: the live table the refused write aimed at; `pattern`: the bytes of
// that write, which must not be found there.
void ExpectMarkedCorruptAndReadable(const std::string& img, uint64_t l2, char pattern) {
  RunResult info = test::Run("qemu-img info " + Quote(img));
  EXPECT_NE(info.out.find("corrupt: true"), std::string::npos) << info.Describe();
  OpenOptions rw;
  rw.read_only = false;
  auto refused = Image::Open(img, rw);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("marked corrupt"), std::string::npos)
      << refused.status().ToString();
  OpenOptions ro;
  auto opened = Image::Open(img, ro);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::vector<uint8_t> buf(kCs);
  ASSERT_TRUE((*opened)->Read(0, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(buf[kCs - 1], 0x11);
  ASSERT_TRUE((*opened)->Read(1 << 20, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf[0], 0x22);
  (void)(*opened)->Close();
  RunResult q = test::Run("qemu-io -r -c 'read -P 0x11 0 64k' -c 'read -P 0x22 1M 64k' " + Quote(img));
  EXPECT_EQ(q.out.find("Pattern verification failed"), std::string::npos) << q.Describe();
  const std::string file = ReadFile(img);
  EXPECT_FALSE(file.size() >= l2 + kCs && file.substr(l2, kCs) == std::string(kCs, pattern))
      << "the live L2 table was overwritten";
}

// The file lost its tail, L2 table of L1 entry 1 included: the refcounts say
// nothing there is in use, so the allocator appends its next data cluster
// exactly on that table.
TEST(OverlapGuard, DataAllocationOnAnL2TablePastTheEnd) {
  TempDir dir;
  const std::string img = MakeImage(dir);
  const uint64_t l1 = PeekBe64(img, 40);
  const uint64_t end = FileSize(img);
  ASSERT_EQ(end % kCs, 0u);
  PokeBe64(img, l1 + 8, end | (1ull << 63));
  {
    auto image = OpenRw(img);
    ASSERT_TRUE(image);
    std::vector<uint8_t> data(kCs, 0x33);
    Status s = image->Write(2 * kCs, data.data(), data.size());  // guest cluster 2: allocates
    EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
    EXPECT_NE(s.message().find("data cluster at " + HexOf(end)), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("would overwrite the L2 table"), std::string::npos) << s.message();
    // Every later request fails with the same error; nothing more is written.
    Status again = image->Write(1 << 20, data.data(), 512);
    EXPECT_NE(again.message().find("metadata overlap"), std::string::npos) << again.ToString();
    EXPECT_FALSE(image->Flush().ok());
    EXPECT_FALSE(image->Close().ok());
  }
  EXPECT_EQ(PeekBe64(img, 72) & 2, 2u) << "corrupt bit not set";
  ExpectMarkedCorruptAndReadable(img, end, 0x33);
  // check -r all repairs it back to an image qemu-img finds clean.
  RunResult fix = test::Run(Cli() + " check -r all " + Quote(img));
  EXPECT_EQ(fix.exit_code, 0) << fix.Describe();
  RunResult q = test::Run("qemu-img check " + Quote(img));
  EXPECT_EQ(q.exit_code, 0) << q.Describe();
}

// Same, but the allocation is a new L2 table (guest range of L1 entry 2,
// which has none yet): it would be placed on the live table of entry 1.
TEST(OverlapGuard, NewL2TableOnALiveOne) {
  TempDir dir;
  const std::string img = MakeImage(dir);
  const uint64_t l1 = PeekBe64(img, 40);
  const uint64_t end = FileSize(img);
  PokeBe64(img, l1 + 8, end | (1ull << 63));
  {
    auto image = OpenRw(img);
    ASSERT_TRUE(image);
    std::vector<uint8_t> data(kCs, 0x44);
    Status s = image->Write(1ull << 30, data.data(), data.size());
    EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
    EXPECT_NE(s.message().find("writing the L2 table at"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("would overwrite the L2 table at"), std::string::npos) << s.message();
    (void)image->Close();
  }
  ExpectMarkedCorruptAndReadable(img, end, 0x44);
}

// Guest cluster 5's L2 entry aliases the L2 table itself, without COPIED (as
// if shared with a snapshot), and the table's refcount is 1 where two
// references exist. Overwriting cluster 5 drops the alias and, at the flush,
// the refcount to 0: freeing (and reusing) a live L2 table is refused there.
TEST(OverlapGuard, FreeingALiveL2Table) {
  TempDir dir;
  const std::string img = MakeImage(dir);
  const uint64_t l2 = PeekBe64(img, PeekBe64(img, 40)) & kMask;
  PokeBe64(img, l2 + 8 * 5, l2);
  {
    auto image = OpenRw(img);
    ASSERT_TRUE(image);
    std::vector<uint8_t> data(kCs, 0x55);
    ASSERT_TRUE(image->Write(5 * kCs, data.data(), data.size()).ok());
    Status s = image->Flush();
    EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
    EXPECT_NE(s.message().find("would overwrite the L2 table"), std::string::npos) << s.message();
    EXPECT_FALSE(image->Write(6 * kCs, data.data(), data.size()).ok());
    (void)image->Close();
  }
  ExpectMarkedCorruptAndReadable(img, l2, 0x55);
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
