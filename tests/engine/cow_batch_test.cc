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

class SlowCountingFile final : public File {
 public:
  SlowCountingFile(std::unique_ptr<File> f, IoCounts* c, bool is_backing)
      : f_(std::move(f)), c_(c), backing_(is_backing) {}
  Status Read(uint64_t o, void* b, size_t n) override {
    NoteRead();
    return f_->Read(o, b, n);
  }
  Status Readv(uint64_t o, std::span<const iovec> v) override {
    NoteRead();
    return f_->Readv(o, v);
  }
  Status Write(uint64_t o, const void* b, size_t n) override {
    NoteWrite();
    return f_->Write(o, b, n);
  }
  Status Writev(uint64_t o, std::span<const iovec> v) override {
    NoteWrite();
    return f_->Writev(o, v);
  }
  Status Sync() override { return f_->Sync(); }
  Result<uint64_t> Size() override { return f_->Size(); }
  Status Truncate(uint64_t s) override { return f_->Truncate(s); }
  Status Allocate(uint64_t o, uint64_t l, bool k) override { return f_->Allocate(o, l, k); }
  Status ZeroRange(uint64_t o, uint64_t l) override { return f_->ZeroRange(o, l); }
  Status PunchHole(uint64_t o, uint64_t l) override { return f_->PunchHole(o, l); }
  Result<uint64_t> AllocatedBytes() override { return f_->AllocatedBytes(); }
  Result<Run> ProbeRun(uint64_t o, uint64_t m) override { return f_->ProbeRun(o, m); }

 private:
  void NoteRead() {
    if (backing_) c_->backing_reads++;
  }
  void NoteWrite() {
    if (backing_) return;
    c_->image_writes++;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::unique_ptr<File> f_;
  IoCounts* c_;
  bool backing_;
};

class SlowCountingEnv final : public Env {
 public:
  explicit SlowCountingEnv(std::string backing) : backing_(std::move(backing)) {}
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    QCOW2J_ASSIGN_OR_RETURN(auto f, Env::Default()->Open(path, flags));
    return std::unique_ptr<File>(new SlowCountingFile(std::move(f), &counts, path == backing_));
  }
  bool Exists(const std::string& p) override { return Env::Default()->Exists(p); }
  Status Remove(const std::string& p) override { return Env::Default()->Remove(p); }
  IoCounts counts;

 private:
  std::string backing_;
};

// The 4K written at the start of cluster i.
std::vector<uint8_t> Piece(uint64_t i) { return std::vector<uint8_t>(4096, static_cast<uint8_t>(i + 1)); }

struct Fixture {
  TempDir dir;
  std::string base = dir.Path("base.qcow2"), img = dir.Path("img.qcow2");
};

void MakeImages(const Fixture& f, bool journal) {
  CreateOptions bc;
  bc.size = kClusters * kCluster;
  ASSERT_TRUE(Image::Create(f.base, bc).ok());
  OpenOptions o;
  o.read_only = false;
  auto b = Image::Open(f.base, o);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  std::vector<uint8_t> fill(kClusters * kCluster, kOld);
  ASSERT_TRUE((*b)->Write(0, fill.data(), fill.size()).ok());
  ASSERT_TRUE((*b)->Close().ok());
  CreateOptions c;
  c.size = kClusters * kCluster;
  c.backing_file = f.base;
  c.backing_format = "qcow2";
  c.journal = journal;
  ASSERT_TRUE(Image::Create(f.img, c).ok());
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

class CowBatchTest : public ::testing::TestWithParam<bool> {};  // journal on/off

TEST_P(CowBatchTest, AdjacentClustersShareBackingReadsAndWrites) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  Fixture f;
  MakeImages(f, GetParam());
  if (HasFatalFailure()) return;
  SlowCountingEnv env(f.base);
  OpenOptions o;
  o.read_only = false;
  o.env = &env;
  auto im = Image::Open(f.img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  std::vector<uint64_t> all;
  for (uint64_t i = 0; i < kClusters; i++) all.push_back(i);
  std::vector<std::vector<uint8_t>> pieces;
  env.counts.image_writes = 0;
  env.counts.backing_reads = 0;
  WriteAllAtOnce(im->get(), all, &pieces);
  const uint64_t writes = env.counts.image_writes, reads = env.counts.backing_reads;
  // One write and one backing read per cluster without batching; batches
  // of up to 16 clusters (1 MiB) leave a handful (the first write goes out
  // alone, before the others are planned).
  EXPECT_LE(writes, kClusters / 4) << "image writes";
  EXPECT_LE(reads, kClusters / 4) << "backing reads";
  // Read back through the engine before the flush (the COW is not pending:
  // it went out with the data).
  std::vector<uint8_t> got(kClusters * kCluster);
  ASSERT_TRUE((*im)->Read(0, got.data(), got.size()).ok());
  const std::string want = Expected(all);
  EXPECT_TRUE(std::memcmp(got.data(), want.data(), want.size()) == 0);
  ASSERT_TRUE((*im)->Close().ok());
  RunResult check = test::Run("qemu-img check " + Quote(f.img));
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_TRUE(QemuRead(f.dir, f.img, "") == want) << "QEMU reads other contents";
}

TEST_P(CowBatchTest, ClustersThatAreNotAdjacentAreNotMerged) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  Fixture f;
  MakeImages(f, GetParam());
  if (HasFatalFailure()) return;
  SlowCountingEnv env(f.base);
  OpenOptions o;
  o.read_only = false;
  o.env = &env;
  auto im = Image::Open(f.img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  // Every other cluster: the host clusters are adjacent (appended in
  // order) but the guest clusters are not, so each needs its own backing
  // read and its own write.
  std::vector<uint64_t> even;
  for (uint64_t i = 0; i < kClusters; i += 2) even.push_back(i);
  std::vector<std::vector<uint8_t>> pieces;
  env.counts.image_writes = 0;
  WriteAllAtOnce(im->get(), even, &pieces);
  EXPECT_EQ(env.counts.image_writes, even.size());
  ASSERT_TRUE((*im)->Close().ok());
  RunResult check = test::Run("qemu-img check " + Quote(f.img));
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_TRUE(QemuRead(f.dir, f.img, "") == Expected(even)) << "QEMU reads other contents";
}

TEST_P(CowBatchTest, ConcurrentReadersSeeOldOrNewClusters) {
  Fixture f;
  MakeImages(f, GetParam());
  if (HasFatalFailure()) return;
  SlowCountingEnv env(f.base);
  OpenOptions o;
  o.read_only = false;
  o.env = &env;
  auto im = Image::Open(f.img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  std::vector<uint64_t> all;
  for (uint64_t i = 0; i < kClusters; i++) all.push_back(i);
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
        if (!(*im)->Read(c * kCluster, buf.data(), buf.size()).ok()) {
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
  WriteAllAtOnce(im->get(), all, &pieces);
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(bad, 0u);
  ASSERT_TRUE((*im)->Close().ok());
  EXPECT_TRUE(QemuRead(f.dir, f.img, "") == Expected(all)) << "QEMU reads other contents";
}

INSTANTIATE_TEST_SUITE_P(Journal, CowBatchTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? std::string("Journal") : std::string("NoJournal");
                         });

}  // namespace
}  // namespace test
}  // namespace qcow2j
