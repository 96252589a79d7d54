#include "util/offline_crash.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "util/test_util.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define QCOW2J_OFFLINE_CRASH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define QCOW2J_OFFLINE_CRASH_SANITIZED 1
#endif
#endif
#ifndef QCOW2J_OFFLINE_CRASH_SANITIZED
#define QCOW2J_OFFLINE_CRASH_SANITIZED 0
#endif

namespace qcow2j {
namespace test {

uint64_t SampleEveryUnderSanitizers() {
  const char* v = std::getenv("QCOW2J_OFFLINE_CRASH_EVERY");
  if (v && *v) return std::max<uint64_t>(1, std::strtoull(v, nullptr, 10));
  return QCOW2J_OFFLINE_CRASH_SANITIZED ? 2 : 1;
}

namespace {

std::unique_ptr<MemoryEnv> CopyIntoMemory(const std::string& image) {
  std::unique_ptr<MemoryEnv> env = NewMemoryEnvForTest();
  auto f = env->Open(kOfflineCrashPath, kOpenCreate);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (f.ok()) {
    std::string bytes = ReadFile(image);
    EXPECT_TRUE((*f)->Write(0, bytes.data(), bytes.size()).ok());
  }
  return env;
}

}  // namespace

OfflineCrashRun::OfflineCrashRun(const std::string& image)
    : base_(CopyIntoMemory(image)), crash_(base_.get()) {}

Status OfflineCrashRun::Run(const std::function<Status(const std::string&, Env*)>& op) {
  return op(kOfflineCrashPath, &crash_);
}

uint64_t OfflineCrashRun::Syncs() const {
  uint64_t n = 0;
  for (uint64_t i = 0; i < crash_.op_count(); i++) n += crash_.op(i).kind == CrashOp::kSync;
  return n;
}

void OfflineCrashRun::ForEachState(const std::string& state_file,
                                   const std::function<void(uint64_t, CrashModel)>& fn,
                                   uint64_t every) {
  const uint64_t ops = crash_.op_count();
  CrashStateBuilder builder(&crash_);
  uint64_t index = 0;
  for (uint64_t point = 0; point <= ops; point++) {
    for (CrashModel model : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      // A prefix state only changes when a sync joins it.
      if (model == CrashModel::kPrefix && point != 0 && point != ops &&
          crash_.op(point - 1).kind != CrashOp::kSync)
        continue;
      if (every > 1 && index++ % every != 0 && point != ops) continue;
      CrashStateOptions o;
      o.model = model;
      o.seed = point * 3 + static_cast<uint64_t>(model);
      std::unique_ptr<MemoryEnv> out = NewMemoryEnvForTest();
      ASSERT_TRUE(builder.Build(point, o, out.get()).ok());
      auto bytes = out->Contents(kOfflineCrashPath);
      ASSERT_TRUE(bytes.ok());
      WriteFile(state_file, std::string(bytes->begin(), bytes->end()));
      SCOPED_TRACE("crash point " + std::to_string(point) + "/" + std::to_string(ops) + " " +
                   CrashModelName(model));
      fn(point, model);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

}  // namespace test
}  // namespace qcow2j
