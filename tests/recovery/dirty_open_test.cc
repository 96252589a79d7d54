// An image QEMU left dirty (lazy refcounts, killed before close) opens
// read-write after an automatic refcount rebuild, reads back what QEMU wrote,
// and is clean for qemu-img check afterwards.
#include <gtest/gtest.h>

#include "qcow2j/image.h"
#include "tests/util/test_util.h"

namespace qcow2j {
namespace {

TEST(DirtyOpenTest, LazyRefcountImageLeftDirtyByQemuIsRepairedOnWritableOpen) {
  test::TempDir dir;
  std::string img = dir.path() + "/lazy.qcow2";
  ASSERT_EQ(test::Run("qemu-img create -q -f qcow2 -o lazy_refcounts=on " + img + " 64M").exit_code, 0);
  // qemu-io's abort leaves the dirty bit set and the refcounts unwritten.
  test::Run("qemu-io -c 'write -P 0x61 0 4M' -c 'write -P 0x62 32M 1M' -c abort " + img);
  auto before = test::Run("qemu-img check " + img);
  ASSERT_EQ(before.exit_code, 2) << "the aborted image should have refcount errors: " << before.out;

  OpenOptions o;
  o.read_only = false;
  auto opened = Image::Open(img, o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Image> image = std::move(opened).value();
  EXPECT_FALSE(image->Info().dirty);
  EXPECT_NE(image->Info().recovery_report.find("refcounts rebuilt"), std::string::npos);
  std::vector<uint8_t> buf(1 << 20);
  ASSERT_TRUE(image->Read(32 << 20, buf.data(), buf.size()).ok());
  EXPECT_EQ(buf.front(), 0x62);
  EXPECT_EQ(buf.back(), 0x62);
  std::vector<uint8_t> data(65536, 0x63);
  ASSERT_TRUE(image->Write(48 << 20, data.data(), data.size()).ok());
  ASSERT_TRUE(image->Close().ok());

  auto after = test::Run("qemu-img check " + img);
  EXPECT_EQ(after.exit_code, 0) << after.out << after.err;
  auto read = test::Run("qemu-io -r -c 'read -P 0x61 0 4M' -c 'read -P 0x62 32M 1M' -c 'read -P 0x63 48M 64k' " + img);
  EXPECT_EQ(read.out.find("failed"), std::string::npos) << read.out;
}

}  // namespace
}  // namespace qcow2j
