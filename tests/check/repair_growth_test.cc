// Regression (found by the check fuzzer): an L1 table offset far past the end
// of a 1267-byte file made `check -r all` grow the file to ~1 TB and use
// 16 GB of memory. The repair must refuse, quickly, and leave the file as is.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "tests/util/test_util.h"

namespace qcow2j {
namespace {

TEST(RepairGrowthTest, TableFarPastEofIsRefusedNotGrown) {
  test::TempDir dir;
  std::string img = dir.path() + "/bad.qcow2";
  std::string src = std::string(QCOW2J_SOURCE_DIR) + "/tests/check/data/table-past-eof-1tb.qcow2";
  ASSERT_EQ(test::Run("cp " + src + " " + img).exit_code, 0);
  struct stat before {};
  ASSERT_EQ(::stat(img.c_str(), &before), 0);
  auto r = test::Run("timeout 60 " + test::Cli() + " check -r all " + img);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("refusing to grow the file"), std::string::npos) << r.err;
  struct stat after {};
  ASSERT_EQ(::stat(img.c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);
}

}  // namespace
}  // namespace qcow2j
