// `qcow2j io` refuses a bad read/write command line with the line qemu-io
// prints, and accepts what qemu-io accepts: both tools run the same commands
// on copies of one image, and their first output lines must be equal.
#include <gtest/gtest.h>

#include <string>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

std::string FirstLine(const RunResult& r) {
  const std::string all = r.out + r.err;
  return all.substr(0, all.find('\n'));
}

TEST(IoArgs, ReadWriteOperandErrorsAreQemuIos) {
  TempDir d;
  const std::string ours = d.Path("ours.qcow2"), theirs = d.Path("theirs.qcow2");
  ASSERT_TRUE(test::Run("qemu-img create -q -f qcow2 " + Quote(theirs) + " 4G").ok());
  ASSERT_TRUE(test::Run("cp " + Quote(theirs) + " " + Quote(ours)).ok());
  const char* cmds[] = {
      "read 0",                 // too few operands
      "read 0 3g",              // over the request limit
      "write 0 3g",             // the limit, with write's hint about -n
      "write -z 0 3g",          // -z alone does not lift it
      "write -z -n 0 3g",       // -z -n does
      "write -n 0 4k",          // -n needs -z
      "write -u 0 4k",          // -u needs -z
      "write -z -P 1 0 4k",     // -z and -P exclude each other
      "readv 0 3g",             // one buffer over the limit
      "writev -P 5 0 2g 1k",    // likewise, not the first
      "readv 0 1g 1g 1g",       // buffers that add up past the limit
      "writev -P 5 0 4k 512",   // fine
      "readv -P 5 0 4k 512",    // and reads back
  };
  for (const char* c : cmds) {
    RunResult q = test::Run("qemu-io -c " + Quote(c) + " " + Quote(theirs));
    RunResult o = test::Run(Quote(Cli()) + " io -c " + Quote(c) + " " + Quote(ours));
    EXPECT_EQ(FirstLine(o), FirstLine(q)) << c << "\nqemu-io: " << q.Describe() << "\nours: " << o.Describe();
    EXPECT_EQ(o.exit_code, q.exit_code) << c;
  }
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
