// Allocating writes that partly cover new clusters reserve them in runs
// (one fallocate per 16 clusters, at most 1 MiB), whether or not a stream
// passes: W4x's one 4K write per cluster made one fallocate per cluster,
// and each fallocate waits for every O_DIRECT write in flight.
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
constexpr uint64_t kClusters = 64;

struct Counted {
  uint64_t space_ops = 0;  // Allocate, ZeroRange, PunchHole during the writes
  std::string image;
};

// One 4K write at the start of each of kClusters clusters (W4's pattern),
// counting the space operations the writes make.
void WriteOnePerCluster(const TempDir& dir, bool extended_l2, bool backing, Counted* out) {
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
  if (backing) {
    c.backing_file = base;
    c.backing_format = "qcow2";
  }
  ASSERT_TRUE(Image::Create(img, c).ok());
  OpenOptions o;
  o.read_only = false;
  o.env = &fault;
  auto im = Image::Open(img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  fault.Arm(0, 0, FaultEnv::kSpace);  // count space operations from here on
  std::vector<uint8_t> data(4096, 0x5a);
  for (uint64_t i = 0; i < kClusters; i++) {
    ASSERT_TRUE((*im)->Write(i * kCluster, data.data(), data.size()).ok()) << "cluster " << i;
  }
  out->space_ops = fault.ops();
  ASSERT_TRUE((*im)->Close().ok());
  out->image = img;
}

std::string Expected(bool backing) {
  std::string want;
  for (uint64_t i = 0; i < kClusters; i++) {
    want += std::string(4096, '\x5a');
    want += std::string(kCluster - 4096, backing ? '\xab' : '\0');
  }
  return want;
}

class ReserveAheadTest : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(ReserveAheadTest, OneFallocatePerSixteenNewClusters) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  const auto [extended_l2, backing] = GetParam();
  TempDir dir;
  Counted c;
  WriteOnePerCluster(dir, extended_l2, backing, &c);
  if (::testing::Test::HasFatalFailure()) return;
  // 64 clusters, 16 per reservation: 4 (one more if an L2 table or
  // refcount block landed in between and broke a run).
  EXPECT_GE(c.space_ops, kClusters / 16);
  EXPECT_LE(c.space_ops, kClusters / 16 + 2);
  RunResult check = test::Run("qemu-img check " + Quote(c.image));
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_EQ(QemuRead(dir, c.image, ""), Expected(backing));
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReserveAheadTest,
                         ::testing::Values(std::make_pair(true, true),    // W4x
                                           std::make_pair(false, true),   // W4
                                           std::make_pair(false, false),  // W2/W3
                                           std::make_pair(true, false)));

}  // namespace
}  // namespace test
}  // namespace qcow2j
