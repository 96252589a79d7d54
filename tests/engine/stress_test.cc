// The write engine under concurrency, through the library API: 64 requests
// in flight of random, overlapping writes (each with its own random bytes),
// write-zeroes, discards, reads and flushes, against an in-memory model.
//
// The model accepts every order the requests could legally take: request r
// "happened before" s when r completed before s was submitted. After each
// round (all requests completed), a byte covered by several modifications
// must hold the value of one that no other covering modification happened
// after; where more than one is possible the image is read and the value it
// chose becomes the model's (after checking it is one of them). Reads check
// each byte against what they may have seen. At the end the whole image is
// compared with the model through the library and, after Close, through
// `qemu-img compare` against a raw file built from the model, and `qemu-img
// check` must find it clean.
//
// Discard semantics (as QEMU on v3 images): whole clusters inside the range
// read as zeros afterwards, partial clusters at its ends are unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kRounds = 3;
#else
constexpr int kRounds = 5;
#endif
constexpr int kRequestsPerRound = 256;
constexpr int kDepth = 64;

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void FillRandom(uint64_t seed, uint8_t* p, size_t n) {
  uint64_t s = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = SplitMix(s);
    std::memcpy(p + i, &v, 8);
  }
  uint64_t v = SplitMix(s);
  for (; i < n; i++, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

struct Req {
  enum class Kind { kWrite, kZero, kDiscard, kRead, kFlush };
  Kind kind = Kind::kWrite;
  uint64_t off = 0, len = 0;
  bool unmap = false;
  std::vector<uint8_t> buf;  // write: the data; read: the result
  uint64_t ea = 0, eb = 0;   // the bytes a modification changes
  uint64_t submit_seq = 0, done_seq = 0;
  Status status;

  bool modifies() const {
    return kind == Kind::kWrite || kind == Kind::kZero || kind == Kind::kDiscard;
  }
  uint8_t ValueAt(uint64_t p) const { return kind == Kind::kWrite ? buf[p - off] : 0; }
  // r happened before s: r completed before s was submitted.
  bool Before(const Req& s) const { return done_seq < s.submit_seq; }
};

// Keeps up to `depth` requests in flight through the *Async API.
class Pipeline {
 public:
  Pipeline(Image* img, int depth) : img_(img), depth_(depth) {}

  void Submit(Req* r) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return inflight_ < depth_; });
      inflight_++;
    }
    r->submit_seq = seq_.fetch_add(1);
    Completion done = [this, r](Status s) {
      r->status = std::move(s);
      r->done_seq = seq_.fetch_add(1);
      std::lock_guard<std::mutex> lk(mu_);
      inflight_--;
      cv_.notify_all();
    };
    switch (r->kind) {
      case Req::Kind::kWrite:
        img_->WriteAsync(r->off, r->buf.data(), r->len, std::move(done));
        break;
      case Req::Kind::kZero:
        img_->WriteZeroesAsync(r->off, r->len, r->unmap, std::move(done));
        break;
      case Req::Kind::kDiscard:
        img_->DiscardAsync(r->off, r->len, std::move(done));
        break;
      case Req::Kind::kRead:
        img_->ReadAsync(r->off, r->buf.data(), r->len, std::move(done));
        break;
      case Req::Kind::kFlush:
        img_->FlushAsync(std::move(done));
        break;
    }
  }
  void Drain() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return inflight_ == 0; });
  }

 private:
  Image* img_;
  int depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  int inflight_ = 0;
  std::atomic<uint64_t> seq_{1};
};

// Splits [a, b) at every edge of the modifications' effect ranges and calls
// fn(seg_a, seg_b, covering) for each piece.
template <class Fn>
void ForEachSegment(uint64_t a, uint64_t b, const std::vector<const Req*>& mods, Fn fn) {
  std::vector<uint64_t> edges = {a, b};
  std::vector<const Req*> near;
  for (const Req* m : mods) {
    if (m->eb <= a || m->ea >= b) continue;
    near.push_back(m);
    if (m->ea > a) edges.push_back(m->ea);
    if (m->eb < b) edges.push_back(m->eb);
  }
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  std::vector<const Req*> cover;
  for (size_t i = 0; i + 1 < edges.size(); i++) {
    cover.clear();
    for (const Req* m : near)
      if (m->ea <= edges[i] && m->eb >= edges[i + 1]) cover.push_back(m);
    fn(edges[i], edges[i + 1], cover);
  }
}

std::string Describe(const Req& r) {
  static const char* kNames[] = {"write", "zero", "discard", "read", "flush"};
  return std::string(kNames[static_cast<int>(r.kind)]) + "(" + std::to_string(r.off) + ", " +
         std::to_string(r.len) + ") seq " + std::to_string(r.submit_seq) + ".." +
         std::to_string(r.done_seq);
}

struct StressConfig {
  bool backing = false;
  bool extended_l2 = false;
  uint32_t cluster_size = 65536;
  // Small clusters punch many holes, which makes the file slow to check
  // and delete: they get a smaller image.
  uint64_t size = 64ull << 20;
  int rounds = kRounds;
};

class StressRun {
 public:
  StressRun(const StressConfig& cfg, uint64_t seed)
      : cfg_(cfg), rng_(seed), size_(cfg.size), backing_size_(cfg.size / 4 * 3) {}

  void Run() {
    ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
    model_.assign(size_, 0);
    std::string img_path = dir_.Path("stress.qcow2");
    CreateOptions co;
    co.size = size_;
    co.cluster_size = cfg_.cluster_size;
    co.extended_l2 = cfg_.extended_l2;
    if (cfg_.backing) {
      ASSERT_NO_FATAL_FAILURE(MakeBacking());
      co.backing_file = dir_.Path("base.qcow2");
      co.backing_format = "qcow2";
    }
    ASSERT_TRUE(Image::Create(img_path, co).ok());
    OpenOptions oo;
    oo.read_only = false;
    auto opened = Image::Open(img_path, oo);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    std::unique_ptr<Image> img = std::move(*opened);

    for (int round = 0; round < cfg_.rounds; round++) {
      SCOPED_TRACE("round " + std::to_string(round));
      ASSERT_NO_FATAL_FAILURE(RunRound(img.get()));
    }
    ASSERT_TRUE(img->Flush().ok());
    ASSERT_NO_FATAL_FAILURE(CompareAll(img.get()));
    Status s = img->Close();
    ASSERT_TRUE(s.ok()) << s.ToString();
    img.reset();

    RunResult r = test::Run("qemu-img check " + Quote(img_path));
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    std::string raw = dir_.Path("model.raw");
    WriteFile(raw, std::string(model_.begin(), model_.end()));
    r = test::Run("qemu-img compare -f raw -F qcow2 " + Quote(raw) + " " + Quote(img_path));
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    EXPECT_NE(r.out.find("Images are identical."), std::string::npos) << r.Describe();
  }

 private:
  uint64_t Rand() { return SplitMix(rng_); }
  uint64_t Uniform(uint64_t n) { return Rand() % n; }

  void MakeBacking() {
    std::string base = dir_.Path("base.qcow2");
    CreateOptions co;
    co.size = backing_size_;
    co.cluster_size = cfg_.cluster_size;
    ASSERT_TRUE(Image::Create(base, co).ok());
    OpenOptions oo;
    oo.read_only = false;
    auto img = Image::Open(base, oo);
    ASSERT_TRUE(img.ok()) << img.status().ToString();
    // Data in most of it, holes and zeroed clusters in between.
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t off = 0; off < backing_size_; off += buf.size()) {
      if (off / buf.size() % 8 == 5) continue;  // a hole
      FillRandom(Rand(), buf.data(), buf.size());
      ASSERT_TRUE((*img)->Write(off, buf.data(), buf.size()).ok());
      std::memcpy(model_.data() + off, buf.data(), buf.size());
    }
    ASSERT_TRUE((*img)->WriteZeroes(3 << 20, 256 << 10, false).ok());
    std::memset(model_.data() + (3 << 20), 0, 256 << 10);
    ASSERT_TRUE((*img)->Close().ok());
  }

  // 512 B .. 1 MiB, log-uniform; half the offsets sector aligned.
  void RandomRange(uint64_t* off, uint64_t* len) {
    double l = 9 + (Rand() % 1000) / 1000.0 * 11;  // 2^9 .. 2^20
    *len = std::max<uint64_t>(512, static_cast<uint64_t>(std::exp2(l)));
    if (Uniform(2)) *len = (*len + 511) & ~511ull;
    *len = std::min<uint64_t>(*len, 1 << 20);
    *off = Uniform(size_ - *len + 1);
    if (Uniform(2)) *off &= ~511ull;
    // Crowd part of the traffic into a small area so that requests overlap.
    if (Uniform(4) == 0) *off = (*off % (size_ / 16)) & ~(Uniform(2) ? 0ull : 4095ull);
    if (*off + *len > size_) *off = size_ - *len;
  }

  void RunRound(Image* img) {
    std::vector<Req> reqs(kRequestsPerRound);
    const uint64_t cs = cfg_.cluster_size;
    for (Req& r : reqs) {
      // About one flush per round: each one syncs, which is slow.
      uint64_t k = Uniform(1000);
      r.kind = k < 600   ? Req::Kind::kWrite
               : k < 740 ? Req::Kind::kZero
               : k < 860 ? Req::Kind::kDiscard
               : k < 996 ? Req::Kind::kRead
                         : Req::Kind::kFlush;
      if (r.kind == Req::Kind::kFlush) continue;
      RandomRange(&r.off, &r.len);
      r.unmap = Uniform(2);
      if (r.kind == Req::Kind::kWrite) {
        r.buf.resize(r.len);
        FillRandom(Rand(), r.buf.data(), r.len);
      } else if (r.kind == Req::Kind::kRead) {
        r.buf.assign(r.len, 0xee);
      }
      r.ea = r.off;
      r.eb = r.off + r.len;
      if (r.kind == Req::Kind::kDiscard) {
        r.ea = (r.off + cs - 1) / cs * cs;
        r.eb = (r.off + r.len) / cs * cs;
        if (r.eb < r.ea) r.eb = r.ea;
      }
    }
    {
      Pipeline p(img, kDepth);
      for (Req& r : reqs) p.Submit(&r);
      p.Drain();
    }
    std::vector<const Req*> mods;
    for (const Req& r : reqs) {
      ASSERT_TRUE(r.status.ok()) << Describe(r) << ": " << r.status.ToString();
      if (r.modifies() && r.eb > r.ea) mods.push_back(&r);
    }
    for (const Req& r : reqs) {
      if (r.kind == Req::Kind::kRead) {
        ASSERT_NO_FATAL_FAILURE(CheckRead(r, mods));
      }
    }
    ASSERT_NO_FATAL_FAILURE(ApplyMods(img, mods));
  }

  // What a read may return: per byte, the model's value unless a covering
  // modification completed before the read began, or the value of a covering
  // modification that might have preceded it and was not overwritten by one
  // that completed before the read began.
  void CheckRead(const Req& q, const std::vector<const Req*>& mods) {
    ForEachSegment(
        q.off, q.off + q.len, mods,
        [&](uint64_t a, uint64_t b, const std::vector<const Req*>& cover) {
          if (::testing::Test::HasFatalFailure()) return;
          std::vector<const Req*> seen, allowed;
          for (const Req* m : cover)
            if (m->Before(q)) seen.push_back(m);
          for (const Req* m : cover) {
            if (q.Before(*m)) continue;  // started after the read ended
            bool superseded = false;
            for (const Req* s : seen) superseded |= m->Before(*s);
            if (!superseded) allowed.push_back(m);
          }
          bool old_ok = seen.empty();
          for (uint64_t p = a; p < b; p++) {
            uint8_t got = q.buf[p - q.off];
            bool ok = old_ok && got == model_[p];
            for (size_t i = 0; i < allowed.size() && !ok; i++) ok = got == allowed[i]->ValueAt(p);
            if (!ok) {
              std::string why = Describe(q) + " returned " + std::to_string(got) + " at offset " +
                                std::to_string(p) + "; model " + std::to_string(model_[p]) +
                                (old_ok ? " (allowed)" : " (overwritten)");
              for (const Req* m : cover)
                why += "\n  covering " + Describe(*m) + " value " + std::to_string(m->ValueAt(p));
              FAIL() << why;
            }
          }
        });
  }

  void ApplyMods(Image* img, const std::vector<const Req*>& mods) {
    std::vector<uint8_t> buf;
    ForEachSegment(
        0, size_, mods, [&](uint64_t a, uint64_t b, const std::vector<const Req*>& cover) {
          if (cover.empty() || ::testing::Test::HasFatalFailure()) return;
          std::vector<const Req*> last;  // covering modifications nothing covering came after
          for (const Req* m : cover) {
            bool superseded = false;
            for (const Req* s : cover) superseded |= m->Before(*s);
            if (!superseded) last.push_back(m);
          }
          if (last.size() == 1) {
            for (uint64_t p = a; p < b; p++) model_[p] = last[0]->ValueAt(p);
            return;
          }
          // Concurrent overlapping modifications: the engine may pick either.
          buf.resize(b - a);
          Status s = img->Read(a, buf.data(), b - a);
          ASSERT_TRUE(s.ok()) << s.ToString();
          for (uint64_t p = a; p < b; p++) {
            uint8_t got = buf[p - a];
            bool ok = false;
            for (size_t i = 0; i < last.size() && !ok; i++) ok = got == last[i]->ValueAt(p);
            if (!ok) {
              std::string why = "offset " + std::to_string(p) + " reads " + std::to_string(got) +
                                ", none of the concurrent modifications wrote it:";
              for (const Req* m : last)
                why += "\n  " + Describe(*m) + " value " + std::to_string(m->ValueAt(p));
              FAIL() << why;
            }
            model_[p] = got;
          }
        });
  }

  void CompareAll(Image* img) {
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t off = 0; off < size_; off += buf.size()) {
      ASSERT_TRUE(img->Read(off, buf.data(), buf.size()).ok());
      if (std::memcmp(buf.data(), model_.data() + off, buf.size()) == 0) continue;
      size_t i = 0;
      while (buf[i] == model_[off + i]) i++;
      FAIL() << "image and model differ at offset " << off + i << ": image " << int{buf[i]}
             << ", model " << int{model_[off + i]};
    }
  }

  StressConfig cfg_;
  uint64_t rng_;
  const uint64_t size_;
  const uint64_t backing_size_;  // the overlay's tail has no backing data
  TempDir dir_;
  std::vector<uint8_t> model_;
};

uint64_t Seed() {
  const char* s = std::getenv("QCOW2J_STRESS_SEED");
  return s ? std::strtoull(s, nullptr, 0) : 0x5eed2024ull;
}

void RunStress(const StressConfig& cfg) {
  uint64_t seed = Seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (QCOW2J_STRESS_SEED)");
  StressRun(cfg, seed).Run();
}

TEST(EngineStressTest, Standard) { RunStress({false, false, 65536}); }
TEST(EngineStressTest, StandardBacking) { RunStress({true, false, 65536}); }
TEST(EngineStressTest, ExtendedL2) { RunStress({false, true, 65536}); }
TEST(EngineStressTest, ExtendedL2Backing) { RunStress({true, true, 65536}); }
TEST(EngineStressTest, SmallClusters) {
  RunStress({false, false, 4096, 16ull << 20, std::max(1, kRounds / 2)});
}

// 4 KiB sequential writes at depth 32 on an empty image must get a
// sequential host layout: host offsets grow with guest offsets.
void SequentialLayout(uint32_t cluster_size) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  TempDir dir;
  std::string path = dir.Path("seq.qcow2");
  constexpr uint64_t kTotal = 16ull << 20, kBlock = 4096;
  CreateOptions co;
  co.size = 64ull << 20;
  co.cluster_size = cluster_size;
  ASSERT_TRUE(Image::Create(path, co).ok());
  OpenOptions oo;
  oo.read_only = false;
  auto img = Image::Open(path, oo);
  ASSERT_TRUE(img.ok()) << img.status().ToString();
  std::vector<Req> reqs(kTotal / kBlock);
  {
    Pipeline p(img->get(), 32);
    for (size_t i = 0; i < reqs.size(); i++) {
      reqs[i].off = i * kBlock;
      reqs[i].len = kBlock;
      reqs[i].buf.resize(kBlock);
      FillRandom(i + 1, reqs[i].buf.data(), kBlock);
      p.Submit(&reqs[i]);
    }
    p.Drain();
  }
  for (const Req& r : reqs)
    ASSERT_TRUE(r.status.ok()) << Describe(r) << ": " << r.status.ToString();
  ASSERT_TRUE((*img)->Close().ok());

  RunResult r = Run("qemu-img map --output=json " + Quote(path));
  ASSERT_TRUE(r.ok()) << r.Describe();
  std::string err;
  auto doc = ParseJson(r.out, &err);
  ASSERT_TRUE(doc && doc->is_array()) << err << "\n" << r.out;
  uint64_t guest_end = 0, last_host_end = 0;
  int extents = 0;
  for (const Json& e : doc->arr) {
    const Json* data = e.Get("data");
    if (!data || !data->b) continue;
    uint64_t start = std::stoull(e.Get("start")->str);
    uint64_t length = std::stoull(e.Get("length")->str);
    ASSERT_NE(e.Get("offset"), nullptr) << r.out;
    uint64_t host = std::stoull(e.Get("offset")->str);
    EXPECT_GE(host, last_host_end) << "guest " << start << " is at host " << host
                                   << ", before the previous extent's end " << last_host_end << "\n"
                                   << r.out.substr(0, 3000);
    last_host_end = host + length;
    guest_end = std::max(guest_end, start + length);
    extents++;
  }
  EXPECT_EQ(guest_end, kTotal) << r.out.substr(0, 3000);
  // Only metadata (L2 tables) may interrupt the data: at most one break per
  // L2 table's worth of clusters.
  uint64_t per_l2 = uint64_t{cluster_size} / 8 * cluster_size;
  EXPECT_LE(extents, static_cast<int>(kTotal / per_l2 + 2)) << r.out.substr(0, 3000);
  r = Run("qemu-img check " + Quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
}

TEST(EngineStressTest, SequentialLayout64k) { SequentialLayout(65536); }
TEST(EngineStressTest, SequentialLayout4k) { SequentialLayout(4096); }

}  // namespace
}  // namespace test
}  // namespace qcow2j
