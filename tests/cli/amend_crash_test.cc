// Crash safety of amend -o refcount_bits=N: the operation runs on a
// CrashEnv, and every crash state (prefix, subset of the unsynced writes,
// torn writes) must be the old image or the new one: qemu-img check finds
// nothing at all (not even a leak), the width is the old or the new one, and
// the active image and the snapshot read as before.
#include <gtest/gtest.h>

#include <string>

#include "qcow2/image_ops.h"
#include "util/offline_crash.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

TEST(AmendCrash, RefcountWidthChangeIsAllOrNothing) {
  ASSERT_TRUE(HaveProgram("qemu-img") && HaveProgram("qemu-io"));
  TempDir dir;
  std::string img = dir.Path("a.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 -o cluster_size=4k " + Quote(img) + " 2M"));
  Must(test::Run("qemu-io -c 'write -P 0x11 0 256k' -c 'write -c -P 0x12 1M 64k' " + Quote(img)));
  Must(test::Run("qemu-img snapshot -c s1 " + Quote(img)));
  Must(test::Run("qemu-io -c 'write -P 0x13 32k 8k' " + Quote(img)));
  const std::string active = QemuRead(dir, img, "");
  const std::string s1 = QemuRead(dir, img, "s1");

  OfflineCrashRun run(img);
  AmendRequest req;
  req.refcount_bits = 8;
  Status s = run.Run([&](const std::string& path, Env* env) {
    return AmendImage(path, req, nullptr, env);
  });
  ASSERT_TRUE(s.ok()) << s.ToString();

  const std::string state = dir.Path("state.qcow2");
  bool saw_new = false;
  run.ForEachState(state, [&](uint64_t, CrashModel) {
    RunResult check = test::Run("qemu-img check " + Quote(state));
    ASSERT_EQ(check.exit_code, 0) << check.Describe();
    RunResult info = test::Run("qemu-img info " + Quote(state));
    const bool is_new = info.out.find("refcount bits: 8") != std::string::npos;
    ASSERT_TRUE(is_new || info.out.find("refcount bits: 16") != std::string::npos) << info.out;
    saw_new |= is_new;
    ASSERT_TRUE(QemuRead(dir, state, "") == active) << "active image changed";
    ASSERT_TRUE(QemuRead(dir, state, "s1") == s1) << "s1 changed";
  });
  EXPECT_TRUE(saw_new);
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
