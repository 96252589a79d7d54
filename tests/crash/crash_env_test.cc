// CrashEnv and FaultEnv on their own: what each fault model keeps, torn
// writes at both atom sizes, determinism by seed, the crash switch, and
// one-shot / sticky fault injection.
#include "io/crash_env.h"

#include <cerrno>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "io/fault_env.h"
#include "io/memory_env.h"

namespace qcow2j {
namespace {

std::vector<uint8_t> Fill(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

std::vector<uint8_t> Contents(MemoryEnv* env, const std::string& path) {
  auto c = env->Contents(path);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : std::vector<uint8_t>();
}

class CrashEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = NewMemoryEnvForTest();
    auto f = base_->Open("/f", kOpenCreate);
    ASSERT_TRUE(f.ok());
    auto zeros = Fill(8192, 0xaa);
    ASSERT_TRUE((*f)->Write(0, zeros.data(), zeros.size()).ok());  // durable before the env
    env_ = std::make_unique<CrashEnv>(base_.get());
    auto g = env_->Open("/f", 0);
    ASSERT_TRUE(g.ok());
    file_ = std::move(*g);
  }

  Result<std::vector<uint8_t>> State(uint64_t point, CrashModel m, uint64_t seed, uint32_t atom = 512) {
    auto out = NewMemoryEnvForTest();
    CrashStateOptions o;
    o.model = m;
    o.seed = seed;
    o.atom = atom;
    QCOW2J_RETURN_IF_ERROR(env_->BuildCrashState(point, o, out.get()));
    return Contents(out.get(), "/f");
  }

  std::unique_ptr<MemoryEnv> base_;
  std::unique_ptr<CrashEnv> env_;
  std::unique_ptr<File> file_;
};

TEST_F(CrashEnvTest, PrefixKeepsExactlyWhatWasSynced) {
  auto a = Fill(512, 1), b = Fill(512, 2);
  ASSERT_TRUE(file_->Write(0, a.data(), 512).ok());     // op 0
  ASSERT_TRUE(file_->Sync().ok());                      // op 1
  ASSERT_TRUE(file_->Write(512, b.data(), 512).ok());   // op 2
  ASSERT_EQ(env_->op_count(), 3u);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto s0 = State(0, CrashModel::kPrefix, seed);
    ASSERT_TRUE(s0.ok());
    EXPECT_EQ((*s0)[0], 0xaa);
    auto s1 = State(1, CrashModel::kPrefix, seed);  // write made, not synced
    ASSERT_TRUE(s1.ok());
    EXPECT_EQ((*s1)[0], 0xaa);
    auto s3 = State(3, CrashModel::kPrefix, seed);
    ASSERT_TRUE(s3.ok());
    EXPECT_EQ((*s3)[0], 1);
    EXPECT_EQ((*s3)[512], 0xaa);
  }
  // The base saw everything.
  EXPECT_EQ(Contents(base_.get(), "/f")[512], 2);
}

TEST_F(CrashEnvTest, SubsetKeepsAnySubsetInOrder) {
  // Three unsynced writes to distinct sectors, then two to the same one.
  for (uint8_t i = 0; i < 3; ++i) {
    auto d = Fill(512, static_cast<uint8_t>(10 + i));
    ASSERT_TRUE(file_->Write(512 * i, d.data(), 512).ok());
  }
  auto x = Fill(512, 20), y = Fill(512, 21);
  ASSERT_TRUE(file_->Write(4096, x.data(), 512).ok());
  ASSERT_TRUE(file_->Write(4096, y.data(), 512).ok());
  std::set<std::vector<uint8_t>> seen;
  std::set<uint8_t> last_sector;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    auto s = State(env_->op_count(), CrashModel::kSubset, seed);
    ASSERT_TRUE(s.ok());
    std::vector<uint8_t> key;
    for (int i = 0; i < 3; ++i) {
      uint8_t v = (*s)[512 * i];
      EXPECT_TRUE(v == 0xaa || v == 10 + i) << int(v);
      key.push_back(v);
    }
    seen.insert(key);
    last_sector.insert((*s)[4096]);
  }
  EXPECT_EQ(seen.size(), 8u);  // every subset of the three appears
  // Older never lands over newer, but "older kept, newer lost" does.
  EXPECT_EQ(last_sector, (std::set<uint8_t>{0xaa, 20, 21}));
  // Same seed, same state.
  EXPECT_EQ(*State(5, CrashModel::kSubset, 7), *State(5, CrashModel::kSubset, 7));
}

TEST_F(CrashEnvTest, TornWritesSplitAtTheAtom) {
  auto d = Fill(8192, 5);
  ASSERT_TRUE(file_->Write(0, d.data(), d.size()).ok());
  for (uint32_t atom : {512u, 4096u}) {
    bool mixed = false;
    for (uint64_t seed = 0; seed < 200; ++seed) {
      auto s = State(1, CrashModel::kTorn, seed, atom);
      ASSERT_TRUE(s.ok());
      std::set<uint8_t> in_state;
      for (size_t a = 0; a < 8192; a += atom) {
        // Each atom is all old or all new.
        for (size_t i = a; i < a + atom; ++i) ASSERT_EQ((*s)[i], (*s)[a]) << "atom " << atom;
        in_state.insert((*s)[a]);
      }
      mixed |= in_state.size() == 2;
    }
    EXPECT_TRUE(mixed) << "no torn write at atom " << atom;
  }
}

TEST_F(CrashEnvTest, StatesForIncreasingPointsMatchFreshBuilds) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 60; ++i) {
    auto d = Fill(1 + rng() % 3000, static_cast<uint8_t>(i));
    if (rng() % 5 == 0) {
      ASSERT_TRUE(file_->Sync().ok());
    } else if (rng() % 7 == 0) {
      ASSERT_TRUE(file_->Truncate(rng() % 20000).ok());
    } else {
      ASSERT_TRUE(file_->Write(rng() % 16384, d.data(), d.size()).ok());
    }
  }
  CrashStateBuilder b(env_.get());
  for (uint64_t p = 0; p <= env_->op_count(); p += 3) {
    for (CrashModel m : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      auto out = NewMemoryEnvForTest();
      CrashStateOptions o;
      o.model = m;
      o.seed = p * 31 + static_cast<int>(m);
      ASSERT_TRUE(b.Build(p, o, out.get()).ok());
      auto fresh = State(p, m, o.seed);
      ASSERT_TRUE(fresh.ok());
      EXPECT_EQ(Contents(out.get(), "/f"), *fresh) << "point " << p << " " << CrashModelName(m);
    }
  }
}

TEST_F(CrashEnvTest, SyncedHandleMakesEachWriteDurable) {
  auto g = env_->Open("/f", kOpenSync);
  ASSERT_TRUE(g.ok());
  auto d = Fill(512, 9);
  ASSERT_TRUE((*g)->Write(1024, d.data(), 512).ok());
  auto s = State(env_->op_count(), CrashModel::kPrefix, 1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)[1024], 9);
}

TEST_F(CrashEnvTest, CrashNowFailsEverythingAndRecordsNothing) {
  auto d = Fill(512, 3);
  ASSERT_TRUE(file_->Write(0, d.data(), 512).ok());
  uint64_t n = env_->op_count();
  env_->CrashNow();
  EXPECT_EQ(file_->Write(0, d.data(), 512).code(), Code::kIOError);
  EXPECT_EQ(file_->Sync().code(), Code::kIOError);
  EXPECT_EQ(file_->Read(0, d.data(), 512).code(), Code::kIOError);
  EXPECT_FALSE(env_->Open("/f", 0).ok());
  EXPECT_EQ(env_->op_count(), n);
  // Building states still works.
  EXPECT_TRUE(State(n, CrashModel::kTorn, 1).ok());
  EXPECT_FALSE(State(n + 1, CrashModel::kTorn, 1).ok());
}

TEST(FaultEnvTest, FailsTheNthOperationOnce) {
  auto base = NewMemoryEnvForTest();
  FaultEnv env(base.get());
  auto f = env.Open("/x", kOpenCreate);
  ASSERT_TRUE(f.ok());
  uint8_t buf[16] = {};
  env.Arm(3, ENOSPC, FaultEnv::kWrite);
  EXPECT_TRUE((*f)->Write(0, buf, 16).ok());
  EXPECT_TRUE((*f)->Read(0, buf, 16).ok());  // not counted
  EXPECT_TRUE((*f)->Write(0, buf, 16).ok());
  Status s = (*f)->Write(0, buf, 16);
  EXPECT_EQ(s.code(), Code::kNoSpace) << s.ToString();
  EXPECT_EQ(s.sys_errno(), ENOSPC);
  EXPECT_TRUE(env.fired());
  EXPECT_NE(env.fired_at().find("write 16 bytes at 0x0 of /x"), std::string::npos) << env.fired_at();
  EXPECT_TRUE((*f)->Write(0, buf, 16).ok());
  EXPECT_EQ(env.ops(), 4u);
}

TEST(FaultEnvTest, StickyFailsEveryLaterOperation) {
  auto base = NewMemoryEnvForTest();
  FaultEnv env(base.get());
  auto f = env.Open("/x", kOpenCreate);
  ASSERT_TRUE(f.ok());
  uint8_t buf[16] = {};
  env.Arm(2, EIO, FaultEnv::kAll, /*sticky=*/true);
  EXPECT_TRUE((*f)->Write(0, buf, 16).ok());
  EXPECT_EQ((*f)->Sync().code(), Code::kIOError);
  EXPECT_EQ((*f)->Read(0, buf, 16).code(), Code::kIOError);
  EXPECT_FALSE(env.Open("/x", 0).ok());
  env.Disarm();
  EXPECT_TRUE((*f)->Sync().ok());
}

}  // namespace
}  // namespace qcow2j
