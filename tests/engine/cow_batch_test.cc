// Batched immediate COW (qcow2/qcow2_cow_batch.cc): many 4K writes in
// flight, one per cluster over a full backing file (W4's pattern), share
// backing reads and image writes when their clusters are adjacent; the
// result reads back exactly as QEMU's would and checks clean, with or
// without the journal. Writes to clusters that are not adjacent are never
// merged.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/crash_env.h"
#include "io/forwarding_file.h"
#include "io/memory_env.h"
#include "qcow2j/check.h"
#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kCluster = 65536;
constexpr uint64_t kClusters = 64;
constexpr uint8_t kOld = 0xab;  // every byte of the backing file

// Data calls per file, split by image and backing file; every write to
// the image is slowed down, as a busy disk would, so that requests queue
// up behind the ones being written (what batching feeds on).
struct IoCounts {
  std::atomic<uint64_t> image_writes{0}, backing_reads{0};
};

class SlowCountingFile final : public ForwardingFile {
 public:
  SlowCountingFile(std::unique_ptr<File> f, IoCounts* c, bool is_backing)
      : ForwardingFile(std::move(f)), c_(c), backing_(is_backing) {}
  Status Read(uint64_t o, void* b, size_t n) override {
    NoteRead();
    return base_->Read(o, b, n);
  }
  Status Readv(uint64_t o, std::span<const iovec> v) override {
    NoteRead();
    return base_->Readv(o, v);
  }
  Status Write(uint64_t o, const void* b, size_t n) override {
    NoteWrite();
    return base_->Write(o, b, n);
  }
  Status Writev(uint64_t o, std::span<const iovec> v) override {
    NoteWrite();
    return base_->Writev(o, v);
  }

 private:
  void NoteRead() {
    if (backing_) c_->backing_reads++;
  }
  void NoteWrite() {
    if (backing_) return;
    c_->image_writes++;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  IoCounts* c_;
  bool backing_;
};

class SlowCountingEnv final : public Env {
 public:
  explicit SlowCountingEnv(std::string backing, Env* base = Env::Default())
      : backing_(std::move(backing)), base_(base) {}
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    QCOW2J_ASSIGN_OR_RETURN(auto f, base_->Open(path, flags));
    return std::unique_ptr<File>(new SlowCountingFile(std::move(f), &counts, path == backing_));
  }
  bool Exists(const std::string& p) override { return base_->Exists(p); }
  Status Remove(const std::string& p) override { return base_->Remove(p); }
  IoCounts counts;

 private:
  std::string backing_;
  Env* base_;
};

// The 4K written at the start of cluster i.
std::vector<uint8_t> Piece(uint64_t i) { return std::vector<uint8_t>(4096, static_cast<uint8_t>(i + 1)); }

struct Fixture {
  TempDir dir;
  std::string base = dir.Path("base.qcow2"), img = dir.Path("img.qcow2");
};

void MakeImages(const std::string& base, const std::string& img, bool journal, Env* env = nullptr) {
  CreateOptions bc;
  bc.size = kClusters * kCluster;
  bc.env = env;
  ASSERT_TRUE(Image::Create(base, bc).ok());
  OpenOptions o;
  o.read_only = false;
  o.env = env;
  auto b = Image::Open(base, o);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  std::vector<uint8_t> fill(kClusters * kCluster, kOld);
  ASSERT_TRUE((*b)->Write(0, fill.data(), fill.size()).ok());
  ASSERT_TRUE((*b)->Close().ok());
  CreateOptions c;
  c.size = kClusters * kCluster;
  c.backing_file = base;
  c.backing_format = "qcow2";
  c.journal = journal;
  c.env = env;
  ASSERT_TRUE(Image::Create(img, c).ok());
}

// Submits one 4K write at the start of each listed cluster, all at once,
// and waits for them. The caller's pieces stay alive until then.
void WriteAllAtOnce(Image* im, const std::vector<uint64_t>& clusters,
                    std::vector<std::vector<uint8_t>>* pieces) {
  std::mutex mu;
  std::condition_variable cv;
  size_t left = clusters.size();
  std::vector<Status> results(clusters.size());
  pieces->clear();
  for (uint64_t c : clusters) pieces->push_back(Piece(c));
  for (size_t k = 0; k < clusters.size(); k++) {
    im->WriteAsync(clusters[k] * kCluster, (*pieces)[k].data(), 4096, [&, k](Status s) {
      std::lock_guard<std::mutex> g(mu);
      results[k] = s;
      if (--left == 0) cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return left == 0; });
  for (size_t k = 0; k < results.size(); k++) EXPECT_TRUE(results[k].ok()) << "cluster " << clusters[k] << ": " << results[k].ToString();
}

std::string Expected(const std::vector<uint64_t>& written) {
  std::string want(kClusters * kCluster, static_cast<char>(kOld));
  for (uint64_t c : written) {
    std::vector<uint8_t> p = Piece(c);
    std::memcpy(&want[c * kCluster], p.data(), p.size());
  }
  return want;
}

std::vector<uint64_t> AllClusters() {
  std::vector<uint64_t> all;
  for (uint64_t i = 0; i < kClusters; i++) all.push_back(i);
  return all;
}

Result<std::unique_ptr<Image>> OpenOverlay(const std::string& path, Env* env) {
  OpenOptions o;
  o.read_only = false;
  o.background_checkpoints = false;  // the same I/O sequence every run
  o.env = env;
  return Image::Open(path, o);
}

class CowBatchTest : public ::testing::TestWithParam<bool> {  // journal on/off
 protected:
  // Creates the images on disk and opens the overlay through env_.
  void OpenOnDisk() {
    MakeImages(f_.base, f_.img, GetParam());
    if (HasFatalFailure()) return;
    env_ = std::make_unique<SlowCountingEnv>(f_.base);
    auto im = OpenOverlay(f_.img, env_.get());
    ASSERT_TRUE(im.ok()) << im.status().ToString();
    im_ = std::move(*im);
  }
  // Closes the overlay: QEMU must find it clean and read `want` from it.
  void CloseAndAskQemu(const std::string& want) {
    ASSERT_TRUE(im_->Close().ok());
    RunResult check = test::Run("qemu-img check " + Quote(f_.img));
    EXPECT_EQ(check.exit_code, 0) << check.Describe();
    EXPECT_TRUE(QemuRead(f_.dir, f_.img, "") == want) << "QEMU reads other contents";
  }
  Fixture f_;
  std::unique_ptr<SlowCountingEnv> env_;
  std::unique_ptr<Image> im_;  // closed before env_ goes
};

TEST_P(CowBatchTest, AdjacentClustersShareBackingReadsAndWrites) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  OpenOnDisk();
  if (HasFatalFailure()) return;
  const std::vector<uint64_t> all = AllClusters();
  std::vector<std::vector<uint8_t>> pieces;
  env_->counts.image_writes = 0;
  env_->counts.backing_reads = 0;
  WriteAllAtOnce(im_.get(), all, &pieces);
  const uint64_t writes = env_->counts.image_writes, reads = env_->counts.backing_reads;
  // One write and one backing read per cluster without batching; batches
  // of up to 16 clusters (1 MiB) leave a handful (the first write goes out
  // alone, before the others are planned). How many depends on how the
  // threads are scheduled (18-19 were seen under ASan in CI, above the
  // ideal 4-5), so the bound is half of the unbatched count.
  EXPECT_LE(writes, kClusters / 2) << "image writes";
  EXPECT_LE(reads, kClusters / 2) << "backing reads";
  // Read back through the engine before the flush (the COW is not pending:
  // it went out with the data).
  std::vector<uint8_t> got(kClusters * kCluster);
  ASSERT_TRUE(im_->Read(0, got.data(), got.size()).ok());
  const std::string want = Expected(all);
  EXPECT_TRUE(std::memcmp(got.data(), want.data(), want.size()) == 0);
  CloseAndAskQemu(want);
}

TEST_P(CowBatchTest, ClustersThatAreNotAdjacentAreNotMerged) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  OpenOnDisk();
  if (HasFatalFailure()) return;
  // Every other cluster: the host clusters are adjacent (appended in
  // order) but the guest clusters are not, so each needs its own backing
  // read and its own write.
  std::vector<uint64_t> even;
  for (uint64_t i = 0; i < kClusters; i += 2) even.push_back(i);
  std::vector<std::vector<uint8_t>> pieces;
  env_->counts.image_writes = 0;
  WriteAllAtOnce(im_.get(), even, &pieces);
  EXPECT_EQ(env_->counts.image_writes, even.size());
  CloseAndAskQemu(Expected(even));
}

TEST_P(CowBatchTest, ConcurrentReadersSeeOldOrNewClusters) {
  OpenOnDisk();
  if (HasFatalFailure()) return;
  const std::vector<uint64_t> all = AllClusters();
  // Readers sweep the clusters while the batched writes are under way:
  // each cluster reads either wholly old or as the write left it, never
  // a cluster whose old part is missing.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, seen_new{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; t++) {
    readers.emplace_back([&, t] {
      std::vector<uint8_t> buf(kCluster);
      for (uint64_t round = 0; !stop; round++) {
        uint64_t c = (round * 7 + static_cast<uint64_t>(t) * 16) % kClusters;
        if (!im_->Read(c * kCluster, buf.data(), buf.size()).ok()) {
          bad++;
          continue;
        }
        const uint8_t head = buf[0];
        const bool is_new = head == static_cast<uint8_t>(c + 1);
        if (!is_new && head != kOld) bad++;
        for (uint64_t k = 1; k < kCluster; k++) {
          uint8_t want = k < 4096 && is_new ? static_cast<uint8_t>(c + 1) : kOld;
          if (buf[k] != want) {
            bad++;
            break;
          }
        }
        seen_new += is_new;
      }
    });
  }
  std::vector<std::vector<uint8_t>> pieces;
  WriteAllAtOnce(im_.get(), all, &pieces);
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(bad, 0u);
  CloseAndAskQemu(Expected(all));
}

// A batch is one write of many clusters: a crash may keep any part of it
// (or tear it). Every crash state of a session that wrote batches and then
// flushed must recover to clusters that read wholly old or wholly new (all
// new once the flush returned), with no corruption, and with the journal
// no leak either (without it a crash may leak, never corrupt).
TEST_P(CowBatchTest, EveryCrashStateOfBatchedWritesRecovers) {
  const bool journal = GetParam();
  auto mem = NewMemoryEnvForTest();
  MakeImages("base.qcow2", "img.qcow2", journal, mem.get());
  if (HasFatalFailure()) return;
  const std::vector<uint64_t> all = AllClusters();
  CrashEnv crash(mem.get());
  SlowCountingEnv slow("base.qcow2", &crash);
  uint64_t flushed = 0;  // crash points from here on follow the flush
  {
    auto im = OpenOverlay("img.qcow2", &slow);
    ASSERT_TRUE(im.ok()) << im.status().ToString();
    std::vector<std::vector<uint8_t>> pieces;
    WriteAllAtOnce(im->get(), all, &pieces);
    EXPECT_LE(slow.counts.image_writes, kClusters / 4) << "the writes were not batched";
    ASSERT_TRUE((*im)->Flush().ok());
    flushed = crash.op_count();
    crash.CrashNow();  // the close must not reach the disk
  }
  const std::vector<uint8_t> old_cluster(kCluster, kOld);
  int states = 0;
  for (uint64_t point = 0; point <= flushed; point++) {
    for (CrashModel model : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
      for (uint64_t seed = 0; seed < (model == CrashModel::kPrefix ? 1u : 2u); seed++) {
        const std::string where = "crash point " + std::to_string(point) + "/" + std::to_string(flushed) +
                                  " model " + std::to_string(static_cast<int>(model)) + " seed " +
                                  std::to_string(seed);
        auto out = NewMemoryEnvForTest();
        CrashStateOptions so;
        so.model = model;
        so.seed = seed;
        ASSERT_TRUE(crash.BuildCrashState(point, so, out.get()).ok()) << where;
        {
          auto im = OpenOverlay("img.qcow2", out.get());
          ASSERT_TRUE(im.ok()) << where << ": " << im.status().ToString();
          std::vector<uint8_t> got(kCluster), new_cluster(old_cluster);
          for (uint64_t c = 0; c < kClusters; c++) {
            ASSERT_TRUE((*im)->Read(c * kCluster, got.data(), got.size()).ok()) << where;
            std::vector<uint8_t> p = Piece(c);
            std::memcpy(new_cluster.data(), p.data(), p.size());
            const bool is_new = got == new_cluster;
            ASSERT_TRUE(is_new || (got == old_cluster && point < flushed))
                << where << ": cluster " << c << " reads neither its old nor its new contents"
                << (point < flushed ? "" : " after the flush");
          }
          ASSERT_TRUE((*im)->Close().ok()) << where;
        }
        CheckOptions co;
        co.env = out.get();
        auto report = CheckImage("img.qcow2", co);
        ASSERT_TRUE(report.ok()) << where << ": " << report.status().ToString();
        EXPECT_EQ(report->corruptions, 0u) << where;
        if (journal) {
          EXPECT_EQ(report->leaks, 0u) << where;
        }
        if (HasFailure()) return;
        states++;
      }
    }
  }
  EXPECT_GT(states, 10);
}

INSTANTIATE_TEST_SUITE_P(Journal, CowBatchTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? std::string("Journal") : std::string("NoJournal");
                         });

}  // namespace
}  // namespace test
}  // namespace qcow2j
