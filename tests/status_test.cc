#include <cerrno>

#include <gtest/gtest.h>

#include "qcow2j/status.h"

namespace qcow2j {
namespace {

Result<int> Half(int v) {
  if (v % 2) return Status::InvalidArgument("value " + std::to_string(v) + " is odd");
  return v / 2;
}

Status Quarter(int v, int* out) {
  QCOW2J_ASSIGN_OR_RETURN(int h, Half(v));
  QCOW2J_ASSIGN_OR_RETURN(*out, Half(h));
  return Status::OK();
}

TEST(StatusTest, ErrnoMapsToCodeAndKeepsContext) {
  Status s = Status::FromErrno(ENOSPC, "write at offset 0x1000");
  EXPECT_EQ(s.code(), Code::kNoSpace);
  EXPECT_EQ(s.sys_errno(), ENOSPC);
  EXPECT_NE(s.message().find("offset 0x1000"), std::string::npos);
  EXPECT_EQ(Status::FromErrno(EIO, "x").code(), Code::kIOError);
}

TEST(StatusTest, AssignOrReturnPropagatesFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(), "value 3 is odd");
  EXPECT_EQ(s.Annotate("image a.qcow2").message(), "image a.qcow2: value 3 is odd");
}

}  // namespace
}  // namespace qcow2j
