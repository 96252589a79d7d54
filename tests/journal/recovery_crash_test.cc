// A crash during the read-write recovery of a crashed journal. Recovery
// writes the replayed tables in place without a checkpoint's ordering (one
// sync for the tables and the area's release, one for the header that
// clears the journal bit), relying on the ring to replay them again: every
// crash state of that recovery must open, read the acknowledged data and
// check clean.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "io/crash_env.h"
#include "io/memory_env.h"
#include "qcow2j/check.h"
#include "qcow2j/image.h"

namespace qcow2j {
namespace {

constexpr char kPath[] = "img.qcow2";

std::vector<std::tuple<uint64_t, uint64_t, uint8_t>> Workload(Image* img) {
  std::vector<std::tuple<uint64_t, uint64_t, uint8_t>> expect;
  auto write = [&](uint64_t off, uint64_t len, uint8_t v) {
    std::vector<uint8_t> b(len, v);
    EXPECT_TRUE(img->Write(off, b.data(), b.size()).ok());
    expect.emplace_back(off, len, v);
  };
  write(0, 3 * 65536, 0x11);
  write(700ull << 20, 12345, 0x22);  // another L2 table
  EXPECT_TRUE(img->Flush().ok());
  write(5 << 20, 8192, 0x33);
  write(65536, 4096, 0x44);  // in place over a cluster of the first flush
  EXPECT_TRUE(img->Flush().ok());
  for (int i = 0; i < 40; i++) write((1500ull << 20) + i * 65536ull, 4096, static_cast<uint8_t>(0x50 + i));
  EXPECT_TRUE(img->Flush().ok());
  // Later writes overwrite earlier ones: keep only what reads back last.
  return expect;
}

void ExpectReads(Image* img, const std::vector<std::tuple<uint64_t, uint64_t, uint8_t>>& expect,
                 const std::string& where) {
  // Apply the writes in order to a model of the touched ranges.
  for (size_t i = 0; i < expect.size(); i++) {
    auto [off, len, v] = expect[i];
    std::vector<uint8_t> want(len, v);
    for (size_t j = i + 1; j < expect.size(); j++) {
      auto [o2, l2, v2] = expect[j];
      for (uint64_t b = std::max(off, o2); b < std::min(off + len, o2 + l2); b++) want[b - off] = v2;
    }
    std::vector<uint8_t> got(len);
    ASSERT_TRUE(img->Read(off, got.data(), len).ok()) << where;
    ASSERT_EQ(got, want) << where << ": offset " << off;
  }
}

TEST(RecoveryCrashTest, EveryCrashStateOfAReadWriteRecoveryReplaysAgain) {
  auto mem = NewMemoryEnvForTest();
  CreateOptions c;
  c.size = 2ull << 30;
  c.env = mem.get();
  ASSERT_TRUE(Image::Create(kPath, c).ok());

  // A session that commits and then dies without closing.
  std::vector<std::tuple<uint64_t, uint64_t, uint8_t>> expect;
  {
    CrashEnv session(mem.get());
    OpenOptions o;
    o.env = &session;
    o.background_checkpoints = false;
    o.read_only = false;
    auto img = Image::Open(kPath, o);
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    expect = Workload(img->get());
    session.CrashNow();  // the close below must not reach the disk
  }

  // The recovery, recorded.
  CrashEnv rec(mem.get());
  {
    OpenOptions o;
    o.env = &rec;
    o.background_checkpoints = false;
    o.read_only = false;
    auto img = Image::Open(kPath, o);
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    ASSERT_NE((*img)->Info().recovery_report.find("journal: replayed"), std::string::npos)
        << (*img)->Info().recovery_report;
    ExpectReads(img->get(), expect, "first recovery");
    rec.CrashNow();  // stop recording here: the states below cover the open
  }
  const uint64_t ops = rec.op_count();
  ASSERT_GT(ops, 0u);
  RecordProperty("crash_points", static_cast<int>(ops));
  int states = 0;
  for (uint64_t point = 0; point <= ops; point++) {
    for (CrashModel model : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      for (uint64_t seed = 0; seed < (model == CrashModel::kPrefix ? 1u : 4u); seed++) {
        auto out = NewMemoryEnvForTest();
        CrashStateOptions so;
        so.model = model;
        so.seed = seed;
        ASSERT_TRUE(rec.BuildCrashState(point, so, out.get()).ok());
        const std::string where = "crash point " + std::to_string(point) + "/" +
                                  std::to_string(ops) + " model " +
                                  std::to_string(static_cast<int>(model)) + " seed " +
                                  std::to_string(seed);
        {
          OpenOptions o;
          o.env = out.get();
          o.background_checkpoints = false;
          o.read_only = false;
          auto img = Image::Open(kPath, o);
          ASSERT_TRUE(img.ok()) << where << ": " << img.status().ToString();
          ExpectReads(img->get(), expect, where);
          ASSERT_TRUE((*img)->Close().ok()) << where;
        }
        CheckOptions co;
        co.env = out.get();
        auto report = CheckImage(kPath, co);
        ASSERT_TRUE(report.ok()) << where << ": " << report.status().ToString();
        EXPECT_EQ(report->corruptions, 0u) << where;
        EXPECT_EQ(report->leaks, 0u) << where;
        states++;
      }
    }
  }
  EXPECT_GT(states, 3);
}

}  // namespace
}  // namespace qcow2j
