// RefcountManager's journal tracking: whatever order refcounts change in,
// JournalRecords states every changed cluster once, in ascending order, with
// its current value (runs of equal values merged).
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <variant>
#include <vector>

#include "alloc/refcount_manager.h"
#include "io/memory_env.h"

namespace qcow2j {
namespace {

constexpr uint32_t kClusterBits = 9;  // 512-byte clusters: a refcount block covers 256 of them
constexpr uint64_t kCluster = uint64_t{1} << kClusterBits;

class RefcountJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = NewMemoryEnvForTest();
    auto f = env_->Open("/img", kOpenCreate);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    file_ = std::move(*f);
    // Cluster 0: header; cluster 1: a one-cluster refcount table (zeros).
    std::vector<uint8_t> zeros(2 * kCluster, 0);
    ASSERT_TRUE(file_->Write(0, zeros.data(), zeros.size()).ok());
    RefcountManager::Config c;
    c.file = file_.get();
    c.cluster_bits = kClusterBits;
    c.refcount_order = 4;
    c.refcount_table_offset = kCluster;
    c.refcount_table_clusters = 1;
    c.file_size = 2 * kCluster;
    c.update_header = [](uint64_t, uint32_t) { return Status::OK(); };
    rm_ = std::make_unique<RefcountManager>(c);
    ASSERT_TRUE(rm_->Load().ok());
  }

  // cluster index -> value, from the records JournalRecords produced.
  std::map<uint64_t, uint64_t> Journalled() {
    std::vector<JournalRecord> recs;
    Status s = rm_->JournalRecords(&recs);
    EXPECT_TRUE(s.ok()) << s.ToString();
    std::map<uint64_t, uint64_t> out;
    uint64_t last = 0;
    bool any = false;
    auto add = [&](uint64_t ci, uint64_t v) {
      EXPECT_TRUE(!any || ci > last) << "cluster " << ci << " after " << last;
      EXPECT_TRUE(out.emplace(ci, v).second) << "cluster " << ci << " stated twice";
      last = ci;
      any = true;
    };
    for (const JournalRecord& r : recs) {
      if (auto* u = std::get_if<RefcountUpdate>(&r)) add(u->cluster_index, u->value);
      if (auto* run = std::get_if<RefcountRun>(&r))
        for (uint64_t i = 0; i < run->count; i++) add(run->first_cluster + i, run->value);
    }
    return out;
  }

  std::unique_ptr<MemoryEnv> env_;
  std::unique_ptr<File> file_;
  std::unique_ptr<RefcountManager> rm_;
};

// Changes the refcounts of `clusters` (in that order, repeats allowed) and
// checks the journalled set against the manager's own values.
void ExpectJournalled(RefcountManager& rm, const std::vector<uint64_t>& clusters,
                      const std::map<uint64_t, uint64_t>& got) {
  std::map<uint64_t, uint64_t> want;
  for (uint64_t ci : clusters) {
    auto v = rm.Get(ci * kCluster);
    ASSERT_TRUE(v.ok());
    want[ci] = *v;
  }
  // The manager's own refcount blocks (allocated on demand) change too.
  for (const auto& [ci, v] : got)
    if (!want.count(ci)) {
      auto cur = rm.Get(ci * kCluster);
      ASSERT_TRUE(cur.ok());
      EXPECT_EQ(*cur, v) << "cluster " << ci;
    }
  for (const auto& [ci, v] : want) {
    auto it = got.find(ci);
    ASSERT_NE(it, got.end()) << "cluster " << ci << " changed but was not journalled";
    EXPECT_EQ(it->second, v) << "cluster " << ci;
  }
}

TEST_F(RefcountJournalTest, DenseOutOfOrderChangesAreStatedOnceInOrder) {
  rm_->EnableJournal();
  std::mt19937_64 rng(42);
  std::vector<uint64_t> clusters;
  // Ascending runs that restart lower, with repeats: what a salvage or a
  // COW-heavy transaction produces.
  for (int run = 0; run < 20; run++) {
    uint64_t base = 16 + rng() % 3000;
    for (uint64_t i = 0; i < 50; i++) {
      clusters.push_back(base + i);
      if (rng() % 4 == 0) clusters.push_back(base + i);
    }
  }
  for (uint64_t ci : clusters) ASSERT_TRUE(rm_->Update(ci * kCluster, 1).ok());
  ExpectJournalled(*rm_, clusters, Journalled());
}

TEST_F(RefcountJournalTest, SparseOutOfOrderChangesAreStatedOnceInOrder) {
  rm_->EnableJournal();
  // Far apart (a bitmap of their range would be large): sorted instead.
  std::vector<uint64_t> clusters = {9000, 20, 15000, 21, 9000, 5, 12000, 20};
  for (uint64_t ci : clusters) ASSERT_TRUE(rm_->Update(ci * kCluster, 1).ok());
  ExpectJournalled(*rm_, clusters, Journalled());
}

TEST_F(RefcountJournalTest, AscendingChangesWithRepeatsAndForget) {
  rm_->EnableJournal();
  std::vector<uint64_t> clusters;
  for (uint64_t ci = 10; ci < 400; ci++) {
    clusters.push_back(ci);
    clusters.push_back(ci);  // allocated, then referenced again
  }
  for (uint64_t ci : clusters) ASSERT_TRUE(rm_->Update(ci * kCluster, 1).ok());
  ExpectJournalled(*rm_, clusters, Journalled());
  // After ForgetChanges only new changes are journalled, even lower ones.
  rm_->ForgetChanges();
  ASSERT_TRUE(rm_->Update(12 * kCluster, -1).ok());
  ASSERT_TRUE(rm_->Update(11 * kCluster, -1).ok());
  auto got = Journalled();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got.at(11), 1u);
  EXPECT_EQ(got.at(12), 1u);
}

}  // namespace
}  // namespace qcow2j
