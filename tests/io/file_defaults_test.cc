// The File defaults that a minimal backend (Read/Write/Sync/Size/Truncate only)
// inherits must keep the same size semantics as the posix and memory files.
#include <algorithm>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2j/file.h"

namespace qcow2j {
namespace {

class VectorFile final : public File {
 public:
  Status Read(uint64_t offset, void* buf, size_t n) override {
    auto* p = static_cast<uint8_t*>(buf);
    std::memset(p, 0, n);
    if (offset < bytes.size())
      std::memcpy(p, bytes.data() + offset, std::min<uint64_t>(n, bytes.size() - offset));
    return Status::OK();
  }
  Status Write(uint64_t offset, const void* buf, size_t n) override {
    ++writes;
    if (offset + n > bytes.size()) bytes.resize(offset + n);
    std::memcpy(bytes.data() + offset, buf, n);
    return Status::OK();
  }
  Status Sync() override { return Status::OK(); }
  Result<uint64_t> Size() override { return static_cast<uint64_t>(bytes.size()); }
  Status Truncate(uint64_t size) override {
    bytes.resize(size);
    return Status::OK();
  }

  std::vector<uint8_t> bytes;
  int writes = 0;
};

TEST(FileDefaultsTest, VectoredIoLoops) {
  VectorFile f;
  uint8_t a[3] = {1, 2, 3}, b[2] = {4, 5};
  std::vector<iovec> w = {{a, 3}, {b, 2}};
  ASSERT_TRUE(f.Writev(10, w).ok());
  EXPECT_EQ(f.bytes.size(), 15u);
  uint8_t x[4], y[4];
  std::vector<iovec> r = {{x, 4}, {y, 4}};
  ASSERT_TRUE(f.Readv(9, r).ok());
  EXPECT_EQ(std::vector<uint8_t>(x, x + 4), (std::vector<uint8_t>{0, 1, 2, 3}));
  EXPECT_EQ(std::vector<uint8_t>(y, y + 4), (std::vector<uint8_t>{4, 5, 0, 0}));
}

TEST(FileDefaultsTest, ZeroRangeGrowsPunchHoleDoesNot) {
  VectorFile f;
  f.bytes.assign(100, 0xff);
  ASSERT_TRUE(f.PunchHole(90, 50).ok());
  EXPECT_EQ(f.bytes.size(), 100u);
  EXPECT_TRUE(std::all_of(f.bytes.begin() + 90, f.bytes.end(), [](uint8_t v) { return v == 0; }));
  EXPECT_EQ(f.bytes[89], 0xff);
  int writes = f.writes;
  ASSERT_TRUE(f.PunchHole(500, 50).ok());  // entirely past EOF: nothing to do
  EXPECT_EQ(f.writes, writes);
  EXPECT_EQ(f.bytes.size(), 100u);

  ASSERT_TRUE(f.ZeroRange(50, (3 << 20) + 1).ok());  // more than one zero chunk
  EXPECT_EQ(f.bytes.size(), 50u + (3 << 20) + 1);
  EXPECT_EQ(f.bytes[49], 0xff);
  EXPECT_TRUE(std::all_of(f.bytes.begin() + 50, f.bytes.end(), [](uint8_t v) { return v == 0; }));

  EXPECT_EQ(f.Allocate(0, 10, false).code(), Code::kNotSupported);
  EXPECT_EQ(*f.AllocatedBytes(), f.bytes.size());
  EXPECT_EQ(f.alignment(), 1u);
}

}  // namespace
}  // namespace qcow2j
