// Allocating writes that partly cover new clusters, and O_DIRECT writes of
// whole new clusters, reserve them in runs (one fallocate per 8 MiB),
// whether or not a stream passes: W4x's one 4K write per cluster made one
// fallocate per cluster, and each fallocate waits for every O_DIRECT write
// in flight; an O_DIRECT write past the end of the file holds ext4's inode
// lock until it completes. Close gives back what was reserved past the
// last cluster.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/fault_env.h"
#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kCluster = 65536;
constexpr uint64_t kClusters = 256;  // 16 MiB: two reservations of 8 MiB

struct Counted {
  uint64_t space_ops = 0;  // Allocate, ZeroRange, PunchHole during the writes
  std::string image;
};

// One write of `len` bytes at the start of each of kClusters clusters
// (W4's pattern with 4 KiB), counting the space operations the writes make.
void WriteOnePerCluster(const TempDir& dir, bool extended_l2, bool backing, Counted* out,
                        size_t len = 4096, bool direct = false, bool journal = true,
                        uint64_t clusters = kClusters) {
  FaultEnv fault(Env::Default());
  const std::string base = dir.Path("base.qcow2"), img = dir.Path("img.qcow2");
  CreateOptions bc;
  bc.size = kClusters * kCluster;
  if (backing) {
    ASSERT_TRUE(Image::Create(base, bc).ok());
    OpenOptions o;
    o.read_only = false;
    auto b = Image::Open(base, o);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    std::vector<uint8_t> fill(kClusters * kCluster, 0xab);
    ASSERT_TRUE((*b)->Write(0, fill.data(), fill.size()).ok());
    ASSERT_TRUE((*b)->Close().ok());
  }
  CreateOptions c;
  c.size = kClusters * kCluster;
  c.extended_l2 = extended_l2;
  c.journal = journal;
  if (backing) {
    c.backing_file = base;
    c.backing_format = "qcow2";
  }
  ASSERT_TRUE(Image::Create(img, c).ok());
  OpenOptions o;
  o.read_only = false;
  o.env = &fault;
  o.direct = direct;
  auto im = Image::Open(img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  fault.Arm(0, 0, FaultEnv::kSpace);  // count space operations from here on
  std::vector<uint8_t> data(len, 0x5a);
  for (uint64_t i = 0; i < clusters; i++) {
    ASSERT_TRUE((*im)->Write(i * kCluster, data.data(), data.size()).ok()) << "cluster " << i;
  }
  out->space_ops = fault.ops();
  ASSERT_TRUE((*im)->Close().ok());
  out->image = img;
}

std::string Expected(bool backing, size_t len = 4096) {
  std::string want;
  for (uint64_t i = 0; i < kClusters; i++) {
    want += std::string(len, '\x5a');
    want += std::string(kCluster - len, backing ? '\xab' : '\0');
  }
  return want;
}

// The image's last byte as `qemu-img check` computes it.
uint64_t ImageEnd(const std::string& image) {
  RunResult r = test::Run("qemu-img check --output=json " + Quote(image));
  auto doc = ParseJson(r.out);
  const Json* end = doc ? doc->Get("image-end-offset") : nullptr;
  return end ? std::stoull(end->str) : 0;
}

class ReserveAheadTest : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(ReserveAheadTest, OneFallocatePerEightMiBOfNewClusters) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  const auto [extended_l2, backing] = GetParam();
  TempDir dir;
  Counted c;
  WriteOnePerCluster(dir, extended_l2, backing, &c);
  if (::testing::Test::HasFatalFailure()) return;
  // 16 MiB of clusters, 8 MiB per reservation: 2 (one more if an L2
  // table or refcount block landed in between and broke a run).
  EXPECT_GE(c.space_ops, 2u);
  EXPECT_LE(c.space_ops, 4u);
  RunResult check = test::Run("qemu-img check " + Quote(c.image));
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_EQ(QemuRead(dir, c.image, ""), Expected(backing));
}

TEST_P(ReserveAheadTest, DirectWholeClusterWritesReserveToo) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  const auto [extended_l2, backing] = GetParam();
  TempDir dir;
  Counted c;
  WriteOnePerCluster(dir, extended_l2, backing, &c, kCluster, /*direct=*/true);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_GE(c.space_ops, 2u);
  EXPECT_LE(c.space_ops, 4u);
  RunResult check = test::Run("qemu-img check " + Quote(c.image));
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_EQ(QemuRead(dir, c.image, ""), Expected(backing, kCluster));
}

TEST_P(ReserveAheadTest, CloseTrimsTheReservation) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  const auto [extended_l2, backing] = GetParam();
  for (bool journal : {true, false}) {
    TempDir dir;
    Counted c;
    // 9 MiB of new clusters: the second reservation reaches 7 MiB past them.
    constexpr uint64_t kWritten = 144;
    WriteOnePerCluster(dir, extended_l2, backing, &c, 4096, false, journal, kWritten);
    if (::testing::Test::HasFatalFailure()) return;
    auto size = Env::Default()->Open(c.image, 0);
    ASSERT_TRUE(size.ok());
    auto bytes = (*size)->Size();
    ASSERT_TRUE(bytes.ok());
    const uint64_t end = ImageEnd(c.image);
    EXPECT_GT(end, kWritten * kCluster) << "journal " << journal;
    EXPECT_EQ(*bytes, end) << "journal " << journal;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReserveAheadTest,
                         ::testing::Values(std::make_pair(true, true),    // W4x
                                           std::make_pair(false, true),   // W4
                                           std::make_pair(false, false),  // W2/W3
                                           std::make_pair(true, false)));

}  // namespace
}  // namespace test
}  // namespace qcow2j
