// Crash safety of amend -o refcount_bits=N: the operation runs on a
// CrashEnv, and every crash state (prefix, subset of the unsynced writes,
// torn writes) must be the old image or the new one: qemu-img check finds
// nothing at all (not even a leak), the width is the old or the new one, and
// the active image and the snapshot read as before.
#include <gtest/gtest.h>

#include <string>

#include "io/crash_env.h"
#include "io/memory_env.h"
#include "qcow2/image_ops.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

std::string Read(const TempDir& dir, const std::string& img, const std::string& l) {
  std::string out = dir.Path("read.raw");
  Must(test::Run("qemu-img convert -U " + l + " -O raw " + Quote(img) + " " + Quote(out)));
  return ReadFile(out);
}

TEST(AmendCrash, RefcountWidthChangeIsAllOrNothing) {
  ASSERT_TRUE(HaveProgram("qemu-img") && HaveProgram("qemu-io"));
  TempDir dir;
  std::string img = dir.Path("a.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 -o cluster_size=4k " + Quote(img) + " 2M"));
  Must(test::Run("qemu-io -c 'write -P 0x11 0 256k' -c 'write -c -P 0x12 1M 64k' " + Quote(img)));
  Must(test::Run("qemu-img snapshot -c s1 " + Quote(img)));
  Must(test::Run("qemu-io -c 'write -P 0x13 32k 8k' " + Quote(img)));
  const std::string active = Read(dir, img, "");
  const std::string s1 = Read(dir, img, "-l snapshot.name=s1");

  std::unique_ptr<MemoryEnv> base = NewMemoryEnvForTest();
  const std::string path = "/img.qcow2";
  {
    auto f = base->Open(path, kOpenCreate);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    std::string bytes = ReadFile(img);
    ASSERT_TRUE((*f)->Write(0, bytes.data(), bytes.size()).ok());
  }
  CrashEnv crash(base.get());
  AmendRequest req;
  req.refcount_bits = 8;
  Status s = AmendImage(path, req, nullptr, &crash);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const uint64_t ops = crash.op_count();

  CrashStateBuilder builder(&crash);
  std::string state = dir.Path("state.qcow2");
  bool saw_new = false;
  for (uint64_t point = 0; point <= ops; point++) {
    for (CrashModel model : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      CrashStateOptions o;
      o.model = model;
      o.seed = point * 3 + static_cast<uint64_t>(model);
      std::unique_ptr<MemoryEnv> out = NewMemoryEnvForTest();
      ASSERT_TRUE(builder.Build(point, o, out.get()).ok());
      auto bytes = out->Contents(path);
      ASSERT_TRUE(bytes.ok());
      WriteFile(state, std::string(bytes->begin(), bytes->end()));
      SCOPED_TRACE("crash point " + std::to_string(point) + "/" + std::to_string(ops) + " " +
                   CrashModelName(model));
      RunResult check = test::Run("qemu-img check " + Quote(state));
      ASSERT_EQ(check.exit_code, 0) << check.Describe();
      RunResult info = test::Run("qemu-img info " + Quote(state));
      const bool is_new = info.out.find("refcount bits: 8") != std::string::npos;
      ASSERT_TRUE(is_new || info.out.find("refcount bits: 16") != std::string::npos) << info.out;
      saw_new |= is_new;
      ASSERT_TRUE(Read(dir, state, "") == active) << "active image changed";
      ASSERT_TRUE(Read(dir, state, "-l snapshot.name=s1") == s1) << "s1 changed";
    }
  }
  EXPECT_TRUE(saw_new);
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
