// The crash-test property runner (include/qcow2j/crashtest.h).
//
// Every guest request writes a pattern of its own: byte b of pattern p is a
// hash of (p, b), pattern 0 is zeros and pattern 1 is the backing file's
// data. So the reference model need not hold bytes, only, per byte, the set
// of pattern ids the byte may read as; runs of bytes with the same set are
// kept as one entry of an ordered map.
//
// Why the allowed set at a crash point is what it is: a flush that returned
// before the crash made every request that completed before it durable, so
// the model as it stood when that flush began is the floor. Any request that
// started before the crash point may have reached the disk in whole, in part
// or not at all, so its pattern (zeros for write-zeroes and discard) is
// added on its range. Nothing else may appear: not stale data of another
// range, not metadata, not zeros where zeros were never written.
#include <unistd.h>
#include "metadata/hex.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "io/crash_env.h"
#include "io/memory_env.h"
#include "qcow2j/check.h"
#include "qcow2j/crashtest.h"
#include "qcow2j/image.h"
#include "qcow2j/snapshot.h"

namespace qcow2j {
namespace {

constexpr const char* kImage = "/crash/img.qcow2";
constexpr const char* kBacking = "/crash/backing.qcow2";
constexpr uint32_t kZeroPattern = 0;
constexpr uint32_t kBackingPattern = 1;

uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Patterns with this bit compress (compressed writes store random data as
// it is, which would leave the compressed path untested): within each 512 B
// block the words differ only in their low byte, so deflate finds 7-byte
// matches everywhere, while every word of a block, and every block, still
// differs from the others.
constexpr uint32_t kCompressibleBit = 1u << 30;

uint64_t PatternWord(uint32_t p, uint64_t word) {
  if (p & kCompressibleBit) return Mix64(Mix64(p) ^ (word >> 6)) ^ (word & 63);
  return Mix64((uint64_t{p} << 44) ^ word);
}

uint8_t PatternByte(uint32_t p, uint64_t b) {
  if (p == kZeroPattern) return 0;
  return static_cast<uint8_t>(PatternWord(p, b >> 3) >> ((b & 7) * 8));
}

// buf[i] = PatternByte(p, off + i).
void FillPattern(uint32_t p, uint64_t off, uint8_t* buf, size_t n) {
  if (p == kZeroPattern) {
    std::memset(buf, 0, n);
    return;
  }
  size_t i = 0;
  while (i < n && ((off + i) & 7)) {
    buf[i] = PatternByte(p, off + i);
    ++i;
  }
  for (; i + 8 <= n; i += 8) {
    uint64_t w = PatternWord(p, (off + i) >> 3);
    for (int k = 0; k < 8; ++k) buf[i + k] = static_cast<uint8_t>(w >> (8 * k));
  }
  for (; i < n; ++i) buf[i] = PatternByte(p, off + i);
}

// The first i < n with got[i] != PatternByte(p, off + i), or n. Compares
// whole words against the pattern as it is generated (and zeros against
// nothing at all) instead of building the expected bytes first: the full
// read-back of every crash state runs through here.
uint64_t PatternMismatch(uint32_t p, uint64_t off, const uint8_t* got, uint64_t n) {
  uint64_t i = 0;
  if (p == kZeroPattern) {
    // memcmp against a zero block: the library's vector loop, by far the
    // fastest way through the mostly-zero guest disks.
    static const uint8_t kZeros[4096] = {};
    for (; i + sizeof kZeros <= n; i += sizeof kZeros)
      if (std::memcmp(got + i, kZeros, sizeof kZeros) != 0) break;
    for (; i < n; ++i)
      if (got[i]) return i;
    return n;
  }
  for (; i < n && ((off + i) & 7); ++i)
    if (got[i] != PatternByte(p, off + i)) return i;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, got + i, 8);
    uint64_t want = PatternWord(p, (off + i) >> 3);
    if constexpr (std::endian::native != std::endian::little) want = __builtin_bswap64(want);
    if (w != want) break;
  }
  for (; i < n; ++i)
    if (got[i] != PatternByte(p, off + i)) return i;
  return n;
}

// Per byte of [0, size), the pattern ids it may read as (sorted, unique).
class ByteModel {
 public:
  using Cands = std::vector<uint32_t>;

  explicit ByteModel(uint64_t size = 0, uint64_t guest_size = UINT64_MAX)
      : guest_size(std::min(size, guest_size)), size_(size) {
    runs_[0] = Cands{kZeroPattern};
  }

  // The guest disk's size (resize, snapshot apply); the model covers
  // [0, size()) >= guest_size, and bytes past the guest size read as zeros
  // once they come back.
  uint64_t guest_size;

  uint64_t size() const { return size_; }

  // Every byte may also read as what `o` allows for it (a crash part way
  // through replacing this disk with o's, as snapshot apply does).
  void AddModel(const ByteModel& o) {
    for (auto it = o.runs_.begin(); it != o.runs_.end(); ++it) {
      auto next = std::next(it);
      uint64_t to = next == o.runs_.end() ? o.size_ : next->first;
      for (uint32_t id : it->second) Add(it->first, to - it->first, id);
    }
  }

  void Assign(uint64_t off, uint64_t len, uint32_t id) {
    if (!Clip(&off, &len)) return;
    Split(off);
    Split(off + len);
    runs_.erase(runs_.lower_bound(off), runs_.lower_bound(off + len));
    runs_[off] = Cands{id};
    Coalesce(off);
    Coalesce(off + len);
  }

  void Add(uint64_t off, uint64_t len, uint32_t id) {
    if (!Clip(&off, &len)) return;
    Split(off);
    Split(off + len);
    for (auto it = runs_.lower_bound(off); it != runs_.end() && it->first < off + len; ++it) {
      auto pos = std::lower_bound(it->second.begin(), it->second.end(), id);
      if (pos == it->second.end() || *pos != id) it->second.insert(pos, id);
    }
    Coalesce(off);
    Coalesce(off + len);
  }

  // The first byte of buf (guest [off, off+n)) outside its allowed set, or
  // UINT64_MAX.
  uint64_t FirstMismatch(uint64_t off, const uint8_t* buf, uint64_t n) const {
    uint64_t end = off + n;
    auto it = std::prev(runs_.upper_bound(off));
    for (; it != runs_.end() && it->first < end; ++it) {
      uint64_t from = std::max(off, it->first);
      auto next = std::next(it);
      uint64_t to = std::min(end, next == runs_.end() ? size_ : next->first);
      if (from >= to) continue;
      const Cands& c = it->second;
      const uint8_t* got = buf + (from - off);
      uint64_t len = to - from;
      if (c.size() == 1) {
        uint64_t bad = PatternMismatch(c[0], from, got, len);
        if (bad != len) return from + bad;
        continue;
      }
      // Several candidates: a byte passes when any of them matches it. Each
      // candidate is tried from where the previous one stopped matching
      // (runs of one pattern stay cheap); a byte no candidate matches fails.
      uint64_t i = 0;
      while (i < len) {
        uint64_t best = i;
        for (uint32_t id : c) {
          if (PatternByte(id, from + i) != got[i]) continue;
          best = std::max(best, i + PatternMismatch(id, from + i, got + i, len - i));
        }
        if (best == i) return from + i;
        i = best;
      }
    }
    return UINT64_MAX;
  }

  const Cands& At(uint64_t b) const { return std::prev(runs_.upper_bound(b))->second; }

  // Makes the model exact where buf (guest [off, off+n)) was read: each byte
  // takes the candidate it matches, preferring the one of the byte before
  // (a match by chance of another candidate does not split runs).
  void Resolve(uint64_t off, const uint8_t* buf, uint64_t n) {
    std::vector<std::pair<uint64_t, uint32_t>> picks;  // run start, id
    uint32_t cur = UINT32_MAX;
    for (uint64_t i = 0; i < n; ++i) {
      const Cands& c = At(off + i);
      uint8_t v = buf[i];
      if (cur != UINT32_MAX && std::binary_search(c.begin(), c.end(), cur) &&
          PatternByte(cur, off + i) == v)
        continue;
      uint32_t pick = c.front();
      for (uint32_t id : c) {
        if (PatternByte(id, off + i) == v) {
          pick = id;
          break;
        }
      }
      if (pick != cur) {
        picks.emplace_back(off + i, pick);
        cur = pick;
      }
    }
    for (size_t k = 0; k < picks.size(); ++k) {
      uint64_t to = k + 1 < picks.size() ? picks[k + 1].first : off + n;
      Assign(picks[k].first, to - picks[k].first, picks[k].second);
    }
  }

  std::string Describe(uint64_t b) const {
    std::string s = "{";
    for (uint32_t id : At(b)) {
      if (s.size() > 1) s += ",";
      s += std::to_string(id);
    }
    return s + "}";
  }

 private:
  bool Clip(uint64_t* off, uint64_t* len) const {
    if (*off >= size_) return false;
    *len = std::min(*len, size_ - *off);
    return *len != 0;
  }
  void Split(uint64_t at) {
    if (at >= size_) return;
    auto it = std::prev(runs_.upper_bound(at));
    if (it->first != at) runs_[at] = it->second;
  }
  // Merges the run at `at` into the one before when their sets are equal.
  void Coalesce(uint64_t at) {
    auto it = runs_.find(at);
    if (it == runs_.end() || it == runs_.begin()) return;
    if (std::prev(it)->second == it->second) runs_.erase(it);
  }

  uint64_t size_;
  std::map<uint64_t, Cands> runs_;
};

enum class ReqKind {
  kWrite, kZero, kDiscard, kFlush, kClose, kOpen, kRead,
  kResize, kSnapCreate, kSnapApply, kSnapDelete,
};

const char* ReqName(ReqKind k) {
  switch (k) {
    case ReqKind::kWrite: return "write";
    case ReqKind::kZero: return "zero";
    case ReqKind::kDiscard: return "discard";
    case ReqKind::kFlush: return "flush";
    case ReqKind::kClose: return "close";
    case ReqKind::kOpen: return "open";
    case ReqKind::kRead: return "read";
    case ReqKind::kResize: return "resize";
    case ReqKind::kSnapCreate: return "snapshot create";
    case ReqKind::kSnapApply: return "snapshot apply";
    case ReqKind::kSnapDelete: return "snapshot delete";
  }
  return "?";
}

struct Req {
  ReqKind kind;
  uint64_t offset = 0, length = 0;
  uint32_t pattern = 0;     // kWrite
  bool compressed = false;  // kWrite through WriteCompressed
  bool unmap = false;       // kZero
  uint64_t new_size = 0;    // kResize
  int snap = -1;            // kSnap*: index into snap_store_
  uint64_t start = 0, end = 0;  // crash points around it
  bool ok = true;
  int snapshot = -1;        // flush/close that returned OK: model when it began
};

struct VerifyExtras {
  bool qemu_check = false;
  bool reuse = false;
  std::string qemu_img = "qemu-img";
  std::string temp_dir = "/var/tmp";
  bool* leaked = nullptr;
  bool* qemu_ran = nullptr;
  bool* reused = nullptr;
  std::string dump_dir;  // a failing state's files go here ("" : nowhere)
  bool keep_all = false;  // no crash: every operation kept
  // With the journal: crash the recovery too (CrashTestOptions::recovery_crash_every).
  bool crash_recovery = false;
  CrashModel model = CrashModel::kPrefix;  // the state's fault model, for the recovery's crash
  bool* recovery_crashed = nullptr;
};

Status Violation(const std::string& m) { return Status::Corruption(m); }

// The corruptions CheckImage counted, less the OFLAG_COPIED mismatches when
// `copied_ok`. A crash inside an offline snapshot operation may leave
// those: between the refcount update and the COPIED update (two writes to
// different clusters) the flag disagrees with the refcount on disk, always
// on a cluster no second table references yet or any more (snapshot create
// clears COPIED before the snapshot table names the new snapshot; apply
// clears it in the snapshot's tree before the L1 points there), so no write
// goes in place into a shared cluster. qemu-img snapshot has the same
// window; check -r all fixes the flags.
uint64_t Corruptions(const CheckReport& rep, bool copied_ok) {
  if (!copied_ok) return rep.corruptions;
  uint64_t copied = 0;
  for (const CheckProblem& p : rep.problems)
    copied += p.counted && !p.leak && p.kind == "copied-flag";
  return rep.corruptions > copied ? rep.corruptions - copied : 0;
}

class WorkloadImpl final : public CrashWorkload {
 public:
  // The model covers twice the configured size: resize may grow that far.
  explicit WorkloadImpl(const Config& c)
      : cfg_(c), initial_(2 * c.size, c.size), live_(2 * c.size, c.size) {}

  ~WorkloadImpl() override { Abandon(); }

  Status Init() {
    base_ = NewMemoryEnvForTest();
    std::mt19937_64 rng(cfg_.seed);
    CreateOptions co;
    co.env = base_.get();
    co.size = cfg_.size;
    co.cluster_size = cfg_.cluster_size;
    co.extended_l2 = cfg_.extended_l2;
    co.journal = cfg_.journal;
    co.lazy_refcounts = cfg_.lazy_refcounts;
    if (cfg_.backing) {
      CreateOptions bo;
      bo.env = base_.get();
      bo.size = cfg_.size;
      bo.journal = false;
      bo.cluster_size = 65536;
      QCOW2J_RETURN_IF_ERROR(Image::Create(kBacking, bo).Annotate("create backing"));
      OpenOptions oo;
      oo.env = base_.get();
      oo.read_only = false;
      QCOW2J_ASSIGN_OR_RETURN(auto b, Image::Open(kBacking, oo));
      int ranges = 2 + static_cast<int>(rng() % 5);
      for (int i = 0; i < ranges; ++i) {
        uint64_t len = 1 + rng() % (512 << 10);
        uint64_t off = rng() % cfg_.size;
        len = std::min(len, cfg_.size - off);
        std::vector<uint8_t> buf(len);
        FillPattern(kBackingPattern, off, buf.data(), len);
        QCOW2J_RETURN_IF_ERROR(b->Write(off, buf.data(), len));
        initial_.Assign(off, len, kBackingPattern);
      }
      QCOW2J_RETURN_IF_ERROR(b->Close());
      co.backing_file = "backing.qcow2";
      co.backing_format = "qcow2";
    }
    QCOW2J_RETURN_IF_ERROR(Image::Create(kImage, co).Annotate("create image"));
    live_ = initial_;
    history_ = "config: " + DescribeConfig() + "\n";
    return StartEnv();
  }

  uint64_t size() const override { return live_.guest_size; }

  Status Write(uint64_t offset, uint64_t len) override {
    if (!Clip(&offset, &len)) return Status::OK();
    Req r{ReqKind::kWrite};
    r.offset = offset;
    r.length = len;
    r.pattern = next_pattern_++;
    std::vector<uint8_t> buf(len);
    FillPattern(r.pattern, offset, buf.data(), len);
    return Run(r, [&] { return image_->Write(offset, buf.data(), len); });
  }

  Status WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) override {
    if (!Clip(&offset, &len)) return Status::OK();
    Req r{ReqKind::kZero};
    r.offset = offset;
    r.length = len;
    r.unmap = may_unmap;
    return Run(r, [&] { return image_->WriteZeroes(offset, len, may_unmap); });
  }

  Status Discard(uint64_t offset, uint64_t len) override {
    if (!Clip(&offset, &len)) return Status::OK();
    Req r{ReqKind::kDiscard};
    r.offset = offset;
    r.length = len;
    return Run(r, [&] { return image_->Discard(offset, len); });
  }

  Status WriteCompressed(uint64_t offset, uint64_t len) override {
    const uint64_t cs = cfg_.cluster_size, vs = live_.guest_size;
    offset &= ~(cs - 1);
    if (offset >= vs || len == 0) return Status::OK();
    len = std::min((len + cs - 1) & ~(cs - 1), vs - offset);
    Req r{ReqKind::kWrite};
    r.offset = offset;
    r.length = len;
    r.compressed = true;
    r.pattern = next_pattern_++ | kCompressibleBit;
    std::vector<uint8_t> buf(len);
    FillPattern(r.pattern, offset, buf.data(), len);
    return Run(r, [&] { return image_->WriteCompressed(offset, buf.data(), len); });
  }

  Status Resize(uint64_t new_size) override {
    if (new_size == 0 || new_size > live_.size())
      return Status::InvalidArgument("resize to " + std::to_string(new_size) +
                                     " is outside the model (at most " + std::to_string(live_.size()) + ")");
    const bool shrink = new_size < live_.guest_size;
    if (shrink && snaps_.size() + unknown_snapshots_ > 0)
      return Status::InvalidArgument("the image has snapshots: it cannot shrink");
    Req r{ReqKind::kResize};
    r.offset = live_.guest_size;
    r.new_size = new_size;
    return Run(r, [&] { return image_->Resize(new_size, shrink); });
  }

  Status CreateSnapshot() override {
    QCOW2J_RETURN_IF_ERROR(Close());
    const std::string name = "s" + std::to_string(snap_store_.size());
    snap_store_.push_back(live_);
    Req r{ReqKind::kSnapCreate};
    r.snap = static_cast<int>(snap_store_.size()) - 1;
    Status s = Run(r, [&] { return qcow2j::CreateSnapshot(kImage, name, SnapEnv()); });
    if (s.ok()) snaps_.push_back(r.snap);
    Status o = Open();
    return s.ok() ? o : s;
  }

  Status ApplySnapshot(size_t index) override {
    if (index >= snaps_.size()) return Status::InvalidArgument("no snapshot " + std::to_string(index));
    QCOW2J_RETURN_IF_ERROR(Close());
    Req r{ReqKind::kSnapApply};
    r.snap = snaps_[index];
    Status s = Run(r, [&] { return qcow2j::ApplySnapshot(kImage, SnapName(r.snap), SnapEnv()); });
    Status o = Open();
    return s.ok() ? o : s;
  }

  Status DeleteSnapshot(size_t index) override {
    if (index >= snaps_.size()) return Status::InvalidArgument("no snapshot " + std::to_string(index));
    QCOW2J_RETURN_IF_ERROR(Close());
    Req r{ReqKind::kSnapDelete};
    r.snap = snaps_[index];
    Status s = Run(r, [&] { return qcow2j::DeleteSnapshot(kImage, SnapName(r.snap), SnapEnv()); });
    if (s.ok()) snaps_.erase(snaps_.begin() + index);
    Status o = Open();
    return s.ok() ? o : s;
  }

  size_t snapshot_count() const override { return snaps_.size(); }

  Status Flush() override {
    Req r{ReqKind::kFlush};
    return Run(r, [&] { return image_->Flush(); });
  }

  Status Reopen() override {
    QCOW2J_RETURN_IF_ERROR(Close());
    return Open();
  }

  Status Close() override {
    Req c{ReqKind::kClose};
    return Run(c, [&] {
      Status s = image_->Close();
      image_.reset();
      return s;
    });
  }

  Status Open() override {
    if (image_) return Status::InvalidArgument("the image is open");
    Req o{ReqKind::kOpen};
    QCOW2J_RETURN_IF_ERROR(Run(o, [&] { return OpenLive(); }));
    // A fresh engine reads what is on disk. After a clean close that is the
    // live model; after a failed one (the engine dropped its cache) it is
    // anything a crash here could leave.
    live_ = Allowed(env_->op_count());
    return Status::OK();
  }

  Status CheckLive(uint64_t offset, uint64_t len) override {
    if (!Clip(&offset, &len)) return Status::OK();
    std::vector<uint8_t> buf(len);
    Req r{ReqKind::kRead};
    r.offset = offset;
    r.length = len;
    QCOW2J_RETURN_IF_ERROR(Run(r, [&] { return image_->Read(offset, buf.data(), len); }));
    uint64_t bad = live_.FirstMismatch(offset, buf.data(), len);
    if (bad == UINT64_MAX) return Status::OK();
    return Violation("live read of [" + Hex(offset) + ", +" + Hex(len) + ") has byte " +
                     Hex(buf[bad - offset]) + " at guest " + Hex(bad) + ", allowed patterns " +
                     live_.Describe(bad) + "\n" + History());
  }

  uint64_t crash_points() const override { return env_->op_count(); }

  Status VerifyCrash(uint64_t point, CrashModel model, uint64_t seed, bool* leaked) override {
    VerifyExtras x;
    x.leaked = leaked;
    return VerifyCrashEx(point, model, seed, x, nullptr);
  }

  Status CrashAndContinue(uint64_t point, CrashModel model, uint64_t seed) override {
    VerifyExtras x;
    std::unique_ptr<MemoryEnv> state;
    ByteModel resolved;
    QCOW2J_RETURN_IF_ERROR(VerifyCrashEx(point, model, seed, x, &state, &resolved));
    Abandon();
    history_ += "crash at " + std::to_string(point) + " (" + CrashModelName(model) + ", seed " +
                std::to_string(seed) + "), continue on that state\n";
    base_ = std::move(state);
    initial_ = resolved;
    live_ = resolved;
    reqs_.clear();
    snapshots_.clear();
    // Snapshots on the recovered image (one whose creation the crash kept,
    // say) are not in the model: they are never applied, but they forbid
    // shrinking.
    snaps_.clear();
    auto listed = ListSnapshots(kImage, base_.get());
    unknown_snapshots_ = listed.ok() ? listed->size() : 0;
    return StartEnv();
  }

  std::string History() const override {
    std::string s = history_;
    for (size_t i = 0; i < reqs_.size(); ++i) s += DescribeReq(reqs_[i]) + "\n";
    return s;
  }

  // The state at `point`, verified; optionally handed back with the model
  // resolved to what it reads.
  Status VerifyNow(bool* leaked) override {
    VerifyExtras x;
    x.leaked = leaked;
    x.keep_all = true;
    return VerifyCrashEx(crash_points(), CrashModel::kPrefix, 0, x, nullptr);
  }

  Status VerifyCrashEx(uint64_t point, CrashModel model, uint64_t seed, const VerifyExtras& x,
                       std::unique_ptr<MemoryEnv>* keep, ByteModel* resolved = nullptr) {
    CrashStateOptions so;
    so.keep_all = x.keep_all;
    so.model = model;
    so.seed = seed;
    so.atom = (Mix64(seed) & 1) ? 4096 : 512;
    auto where = [&] {
      return "crash point " + std::to_string(point) + " of " + std::to_string(crash_points()) +
             ", model " + CrashModelName(model) + (model == CrashModel::kTorn
                                                       ? " (atom " + std::to_string(so.atom) + ")"
                                                       : std::string()) +
             ", state seed " + std::to_string(seed) + (so.keep_all ? " (no crash)" : "");
    };
    auto st = NewMemoryEnvForTest();
    CrashStateSummary sum;
    QCOW2J_RETURN_IF_ERROR(builder_->Build(point, so, st.get(), &sum));
    std::string at = where() + " (" + std::to_string(sum.pending) + " unsynced ops, " +
                     std::to_string(sum.kept) + " kept, " + std::to_string(sum.torn) + " torn)";
    Status v = CheckState(st.get(), point, at, seed, x, resolved);
    if (!v.ok() && !x.dump_dir.empty()) {
      Status d = DumpState(st.get(), x.dump_dir);
      v = Status::Corruption(v.message() + (d.ok() ? "state written to " + x.dump_dir
                                                     : "dump failed: " + d.ToString()));
    }
    if (v.ok() && keep) *keep = std::move(st);
    return v;
  }

  Status CheckState(MemoryEnv* st_ptr, uint64_t point, const std::string& at, uint64_t seed,
                    const VerifyExtras& x, ByteModel* resolved) {
    MemoryEnv* st = st_ptr;
    point_ = point;
    auto History = [&] { return FileOps(point) + this->History(); };

    // 0. Recovery: with a journal, a read-write open replays it (and a
    // clean close leaves plain qcow2), as any user's next open would. On a
    // sample, that recovery is itself cut short by a crash first: whatever
    // of it reached the disk, the next recovery must end in the same place.
    std::unique_ptr<MemoryEnv> after_crashed_recovery;
    if (cfg_.journal && x.crash_recovery) {
      bool crashed = false;
      Status r = CrashRecovery(&st, &after_crashed_recovery, seed, x.model, &crashed);
      if (!r.ok()) return Violation(at + ": " + r.ToString() + "\n" + History());
      if (x.recovery_crashed) *x.recovery_crashed = crashed;
    }
    if (cfg_.journal) {
      const std::string failed = RecoverReadWrite(st, /*background_checkpoints=*/true);
      if (!failed.empty()) return Violation(at + ": " + failed + "\n" + History());
    }

    std::vector<uint64_t> sizes;
    bool leak_ok = false, copied_ok = false;
    ByteModel allowed = Allowed(point, &sizes, &leak_ok, &copied_ok);

    // 1. The checker finds no corruption.
    CheckOptions co;
    co.env = st;
    auto rep = CheckImage(kImage, co);
    if (!rep.ok()) return Violation(at + ": CheckImage failed: " + rep.status().ToString() + "\n" + History());
    if (Corruptions(*rep, copied_ok) || rep->check_errors) {
      std::string m = at + ": CheckImage: " + std::to_string(rep->corruptions) + " corruptions";
      int shown = 0;
      for (const CheckProblem& p : rep->problems) {
        if (p.leak || !p.counted) continue;
        if (shown++ == 6) break;
        m += "\n  " + p.message;
      }
      return Violation(m + "\n" + History());
    }
    if (x.leaked) *x.leaked = rep->leaks != 0;
    // Leaks are the journal-less engine's tolerated cost; with the journal
    // a crash at any instant must leave none, except inside an offline
    // snapshot operation (qcow2j/snapshot.h: at most leaks, by design).
    if (cfg_.journal && rep->leaks && !leak_ok) {
      std::string m = at + ": CheckImage: " + std::to_string(rep->leaks) + " leaked clusters with the journal on";
      int shown = 0;
      for (const CheckProblem& p : rep->problems) {
        if (!p.leak) continue;
        if (shown++ == 6) break;
        m += "\n  " + p.message;
      }
      return Violation(m + "\n" + History());
    }

    // 2. The size is one the disk had, and every byte reads as allowed.
    OpenOptions oo;
    oo.env = st;
    oo.read_only = true;
    oo.format = "qcow2";
    auto img = Image::Open(kImage, oo);
    if (!img.ok()) return Violation(at + ": reopen failed: " + img.status().ToString() + "\n" + History());
    const uint64_t vsize = (*img)->size();
    if (std::find(sizes.begin(), sizes.end(), vsize) == sizes.end()) {
      std::string list;
      for (uint64_t z : sizes) list += (list.empty() ? "" : ", ") + std::to_string(z);
      return Violation(at + ": virtual size " + std::to_string(vsize) + ", allowed {" + list + "}\n" +
                       History());
    }
    // Chunks small enough that the read and the comparison stay in cache.
    std::vector<uint8_t>& buf = read_buf_;
    constexpr uint64_t kChunk = 256 << 10;
    for (uint64_t off = 0; off < vsize; off += kChunk) {
      uint64_t n = std::min(kChunk, vsize - off);
      buf.resize(n);
      Status s = (*img)->Read(off, buf.data(), n);
      if (!s.ok()) return Violation(at + ": read at " + Hex(off) + " failed: " + s.ToString() + "\n" + History());
      uint64_t bad = allowed.FirstMismatch(off, buf.data(), n);
      if (bad != UINT64_MAX) {
        return Violation(at + ": guest byte " + Hex(bad) + " reads " + Hex(buf[bad - off]) +
                         ", allowed patterns " + allowed.Describe(bad) + " (expected bytes:" +
                         ExpectedBytes(allowed, bad) + ")\n" + History());
      }
      if (resolved) {
        if (off == 0) {
          *resolved = allowed;
          resolved->guest_size = vsize;
        }
        resolved->Resolve(off, buf.data(), n);
      }
    }
    (void)(*img)->Close();
    img->reset();

    // 3. qemu-img agrees.
    if (x.qemu_check) QCOW2J_RETURN_IF_ERROR(QemuCheck(st, at, x, copied_ok));

    // 4. The engine can go on from the recovered state.
    if (x.reuse) {
      QCOW2J_RETURN_IF_ERROR(Reuse(st, seed, at, copied_ok));
      if (x.reused) *x.reused = true;
    }
    return Status::OK();
  }

  // What any user's next open does to a crashed image: a read-write open
  // (which replays the journal) and a clean close. Returns "" or what
  // failed, as a violation names it.
  static std::string RecoverReadWrite(Env* env, bool background_checkpoints) {
    OpenOptions ro;
    ro.env = env;
    ro.format = "qcow2";
    ro.read_only = false;
    ro.background_checkpoints = background_checkpoints;
    auto rec = Image::Open(kImage, ro);
    if (!rec.ok()) return "recovery (read-write open) failed: " + rec.status().ToString();
    Status cs = (*rec)->Close();
    if (!cs.ok()) return "close after recovery failed: " + cs.ToString();
    return "";
  }

  // Runs the read-write recovery of the state in *st on a crash-recording
  // Env, then replaces *st (held by *holder) with the disk as it could be
  // after a crash at a point of that recovery's own I/O, drawn from `seed`,
  // under `model`. *crashed: whether the recovery did any I/O to cut short.
  static Status CrashRecovery(MemoryEnv** st, std::unique_ptr<MemoryEnv>* holder, uint64_t seed,
                              CrashModel model, bool* crashed) {
    CrashEnv rec_env(*st);
    // Background checkpoints off: its I/O in one order, so a seed replays it.
    const std::string failed = RecoverReadWrite(&rec_env, /*background_checkpoints=*/false);
    if (!failed.empty()) return Status::Aborted(failed);
    const uint64_t ops = rec_env.op_count();
    *crashed = ops > 0;
    if (!*crashed) return Status::OK();
    auto out = NewMemoryEnvForTest();
    // Files the recovery did not open (the backing file) stay as they are.
    for (const char* name : {kImage, kBacking}) {
      if (!(*st)->Exists(name)) continue;
      QCOW2J_ASSIGN_OR_RETURN(PagedBytes bytes, (*st)->Share(name));
      QCOW2J_RETURN_IF_ERROR(out->Install(name, std::move(bytes)));
    }
    CrashStateOptions so;
    so.model = model;
    so.seed = Mix64(seed ^ 3);
    so.atom = (Mix64(seed ^ 4) & 1) ? 4096 : 512;
    // A crash inside: anywhere before its last operation, or (every other
    // time) just before one of its syncs, where the most is written and not
    // yet durable.
    std::vector<uint64_t> syncs;
    for (uint64_t i = 0; i < ops; i++)
      if (rec_env.op(i).kind == CrashOp::kSync) syncs.push_back(i);
    const uint64_t pick = Mix64(seed ^ 5);
    const uint64_t point = (pick & 1) && !syncs.empty() ? syncs[(pick >> 1) % syncs.size()] : (pick >> 1) % ops;
    QCOW2J_RETURN_IF_ERROR(rec_env.BuildCrashState(point, so, out.get())
                               .Annotate("building the state of a crash at operation " + std::to_string(point) +
                                         " of " + std::to_string(ops) + " of the recovery"));
    *holder = std::move(out);
    *st = holder->get();
    return Status::OK();
  }

  std::string DescribeConfig() const {
    return "size " + std::to_string(cfg_.size >> 20) + " MiB, cluster " +
           std::to_string(cfg_.cluster_size) + (cfg_.extended_l2 ? ", extended L2" : "") +
           (cfg_.backing ? ", backing file" : "") + (cfg_.journal ? ", journal" : ", no journal") +
           (cfg_.lazy_refcounts ? ", lazy refcounts" : "");
  }

 private:
  bool Clip(uint64_t* off, uint64_t* len) const {
    if (*off >= live_.guest_size) return false;
    *len = std::min(*len, live_.guest_size - *off);
    return *len != 0;
  }

  Env* SnapEnv() { return wrapped_ ? wrapped_.get() : env_.get(); }
  static std::string SnapName(int store) { return "s" + std::to_string(store); }
  static bool IsSnapOp(ReqKind k) {
    return k == ReqKind::kSnapCreate || k == ReqKind::kSnapApply || k == ReqKind::kSnapDelete;
  }

  Status OpenLive() {
    OpenOptions oo;
    oo.env = wrapped_ ? wrapped_.get() : env_.get();
    oo.read_only = false;
    oo.format = "qcow2";
    oo.background_checkpoints = false;  // one thread of I/O: a seed replays exactly
    QCOW2J_ASSIGN_OR_RETURN(image_, Image::Open(kImage, oo));
    return Status::OK();
  }

  Status StartEnv() {
    wrapped_.reset();
    env_ = std::make_unique<CrashEnv>(base_.get());
    if (cfg_.wrap_env) wrapped_ = cfg_.wrap_env(env_.get());
    builder_ = std::make_unique<CrashStateBuilder>(env_.get());
    Status s = OpenLive();
    if (!s.ok()) return s.Annotate("open image");
    return Status::OK();
  }

  // The process dies: nothing more reaches the disk, the engine is dropped.
  void Abandon() {
    if (env_) env_->CrashNow();
    image_.reset();
  }

  template <class Fn>
  Status Run(Req r, Fn fn) {
    if (!image_ && r.kind != ReqKind::kOpen && !IsSnapOp(r.kind)) return Status::Aborted("no image open");
    r.start = env_->op_count();
    if (r.kind == ReqKind::kFlush || r.kind == ReqKind::kClose) {
      snapshots_.push_back(live_);
      r.snapshot = static_cast<int>(snapshots_.size()) - 1;
    }
    Status s = fn();
    r.end = env_->op_count();
    r.ok = s.ok();
    if (!r.ok) r.snapshot = -1;
    switch (r.kind) {
      case ReqKind::kWrite:
        if (r.ok) live_.Assign(r.offset, r.length, r.pattern);
        else live_.Add(r.offset, r.length, r.pattern);
        break;
      case ReqKind::kZero:
        if (r.ok) live_.Assign(r.offset, r.length, kZeroPattern);
        else live_.Add(r.offset, r.length, kZeroPattern);
        break;
      case ReqKind::kDiscard:
        // Discarded bytes read as zeros or keep their data (partial clusters).
        live_.Add(r.offset, r.length, kZeroPattern);
        break;
      case ReqKind::kResize:
        // r.offset: the size before. What a shrink cuts off is gone: it
        // reads as zeros if the disk grows again.
        if (r.new_size < r.offset) {
          if (r.ok) live_.Assign(r.new_size, live_.size() - r.new_size, kZeroPattern);
          else live_.Add(r.new_size, live_.size() - r.new_size, kZeroPattern);
        }
        if (r.ok) live_.guest_size = r.new_size;
        break;
      case ReqKind::kSnapApply:
        if (r.ok) live_ = snap_store_[r.snap];
        else live_.AddModel(snap_store_[r.snap]);
        break;
      default:
        break;
    }
    // An offline snapshot operation that returned synced everything it
    // changed (and the image was closed around it): a floor, like a flush,
    // at the model as it left it.
    if (r.ok && IsSnapOp(r.kind)) {
      snapshots_.push_back(live_);
      r.snapshot = static_cast<int>(snapshots_.size()) - 1;
    }
    reqs_.push_back(r);
    if (!s.ok()) return s.Annotate(std::string(ReqName(r.kind)) + " request");
    return s;
  }

  // What each byte may read as after a crash at `point` (see the file
  // comment); the virtual sizes the disk may have then; whether leaks are
  // allowed with the journal on, and OFLAG_COPIED mismatches (see
  // Corruptions): both only for a crash inside an offline snapshot
  // operation (a resize is one journal transaction: no leak allowed).
  ByteModel Allowed(uint64_t point, std::vector<uint64_t>* sizes = nullptr,
                    bool* leak_ok = nullptr, bool* copied_ok = nullptr) const {
    if (leak_ok) *leak_ok = false;
    if (copied_ok) *copied_ok = false;
    for (const Req& r : reqs_) {
      if (!(r.start < point && point <= r.end)) continue;
      if (IsSnapOp(r.kind) && copied_ok) *copied_ok = true;
      if (IsSnapOp(r.kind) && leak_ok) *leak_ok = true;
    }
    int floor = -1;
    for (size_t i = 0; i < reqs_.size(); ++i) {
      if (reqs_[i].snapshot >= 0 && reqs_[i].end <= point) floor = static_cast<int>(i);
    }
    ByteModel m = floor >= 0 ? snapshots_[reqs_[floor].snapshot] : initial_;
    if (sizes) *sizes = {m.guest_size};
    for (size_t i = floor + 1; i < reqs_.size(); ++i) {
      const Req& r = reqs_[i];
      if (r.start >= point && !(r.start == r.end && r.start == point)) continue;
      switch (r.kind) {
        case ReqKind::kWrite: m.Add(r.offset, r.length, r.pattern); break;
        case ReqKind::kZero:
        case ReqKind::kDiscard: m.Add(r.offset, r.length, kZeroPattern); break;
        case ReqKind::kResize:
          if (r.new_size < r.offset) m.Add(r.new_size, m.size() - r.new_size, kZeroPattern);
          if (sizes) sizes->push_back(r.new_size);
          break;
        case ReqKind::kSnapApply:
          m.AddModel(snap_store_[r.snap]);
          if (sizes) sizes->push_back(snap_store_[r.snap].guest_size);
          break;
        default: break;
      }
    }
    return m;
  }

  // The file operations since the last sync before `point` (the ones a
  // model may drop or tear), for violation messages.
  std::string FileOps(uint64_t point) const {
    uint64_t from = point;
    std::vector<std::string> names = env_->file_names();
    uint32_t image_file = UINT32_MAX;
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == kImage) image_file = static_cast<uint32_t>(i);
    while (from > 0) {
      const CrashOp& op = env_->op(from - 1);
      if (op.kind == CrashOp::kSync && op.file == image_file) break;
      --from;
    }
    // QCOW2J_CRASH_ALLOPS=1 prints the whole log instead (for debugging).
    const bool all = std::getenv("QCOW2J_CRASH_ALLOPS") != nullptr;
    if (all) {
      from = 0;
      point = env_->op_count();
    } else if (point - from > 60) {
      from = point - 60;
    }
    static const char* kKinds[] = {"write", "sync", "truncate", "zero", "punch", "allocate", "remove"};
    std::string s = "file operations " + std::to_string(from) + ".." + std::to_string(point) +
                    " (after the last sync of the image):\n";
    for (uint64_t i = from; i < point; ++i) {
      const CrashOp& op = env_->op(i);
      s += "  #" + std::to_string(i) + " " + kKinds[op.kind] + " " + names[op.file];
      if (op.kind != CrashOp::kSync && op.kind != CrashOp::kRemove)
        s += " " + Hex(op.offset) + " +" + Hex(op.length);
      s += "\n";
    }
    return s;
  }

  std::string ExpectedBytes(const ByteModel& m, uint64_t b) const {
    std::string s;
    for (uint32_t id : m.At(b)) s += " " + Hex(PatternByte(id, b));
    return s;
  }

  std::string DescribeReq(const Req& r) const {
    std::string s = "  [" + std::to_string(r.start) + "," + std::to_string(r.end) + ") " +
                    ReqName(r.kind);
    if (r.kind == ReqKind::kWrite || r.kind == ReqKind::kZero || r.kind == ReqKind::kDiscard ||
        r.kind == ReqKind::kRead) {
      s += " " + Hex(r.offset) + " +" + Hex(r.length);
    }
    if (r.kind == ReqKind::kWrite) s += " pattern " + std::to_string(r.pattern & ~kCompressibleBit);
    if (r.compressed) s += " compressed";
    if (r.kind == ReqKind::kZero && r.unmap) s += " unmap";
    if (r.kind == ReqKind::kResize) s += " " + Hex(r.offset) + " -> " + Hex(r.new_size);
    if (IsSnapOp(r.kind)) s += " " + SnapName(r.snap);
    if (!r.ok) s += " FAILED";
    return s;
  }

  // Writes the state's files into the real folder `dir` (img.qcow2 and,
  // when there is one, backing.qcow2).
  static Status DumpState(MemoryEnv* st, const std::string& dir) {
    auto dump = [&](const char* mem, const std::string& disk) -> Status {
      if (!st->Exists(mem)) return Status::OK();
      QCOW2J_ASSIGN_OR_RETURN(auto bytes, st->Contents(mem));
      FILE* f = std::fopen(disk.c_str(), "wb");
      if (!f) return Status::FromErrno(errno, "create " + disk);
      size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fclose(f);
      if (n != bytes.size()) return Status::FromErrno(EIO, "write " + disk);
      return Status::OK();
    };
    QCOW2J_RETURN_IF_ERROR(dump(kImage, dir + "/img.qcow2"));
    return dump(kBacking, dir + "/backing.qcow2");
  }

  Status QemuCheck(MemoryEnv* st, const std::string& at, const VerifyExtras& x, bool copied_ok) {
    std::string tmpl = x.temp_dir + "/qcow2j-crash-XXXXXX";
    std::vector<char> dir(tmpl.begin(), tmpl.end());
    dir.push_back(0);
    if (!::mkdtemp(dir.data())) return Status::FromErrno(errno, "mkdtemp " + tmpl);
    std::string d = dir.data();
    Status s = DumpState(st, d);
    std::string out;
    int code = -1;
    if (s.ok()) {
      std::string cmd = x.qemu_img + " check -f qcow2 '" + d + "/img.qcow2' 2>&1";
      FILE* p = ::popen(cmd.c_str(), "r");
      if (p) {
        char line[512];
        while (std::fgets(line, sizeof line, p)) out += line;
        int st_code = ::pclose(p);
        code = WIFEXITED(st_code) ? WEXITSTATUS(st_code) : 128;
      }
    }
    std::remove((d + "/img.qcow2").c_str());
    std::remove((d + "/backing.qcow2").c_str());
    ::rmdir(d.c_str());
    QCOW2J_RETURN_IF_ERROR(s);
    if (x.qemu_ran) *x.qemu_ran = true;
    // 0 clean, 3 leaks only. 1 (not checked) is fine only for an image QEMU
    // cannot open for a feature it does not know.
    if (code == 0 || code == 3) return Status::OK();
    if (code == 2 && copied_ok) {
      // Only OFLAG_COPIED errors (see Corruptions)?
      bool other = false;
      std::istringstream lines(out);
      for (std::string l; std::getline(lines, l);)
        other |= l.rfind("ERROR", 0) == 0 && l.find("OFLAG_COPIED") == std::string::npos;
      if (!other) return Status::OK();
    }
    if (code == 1 && out.find("nsupported") != std::string::npos) return Status::OK();
    return Violation(at + ": qemu-img check exited " + std::to_string(code) + ":\n" + out +
                     FileOps(point_) + History());
  }

  Status Reuse(MemoryEnv* st, uint64_t seed, const std::string& at, bool copied_ok) {
    // Work on a copy (copy-on-write pages): the state itself may be handed
    // on unchanged.
    auto copy = NewMemoryEnvForTest();
    for (const char* name : {kImage, kBacking}) {
      if (!st->Exists(name)) continue;
      QCOW2J_ASSIGN_OR_RETURN(auto bytes, st->Share(name));
      QCOW2J_RETURN_IF_ERROR(copy->Install(name, std::move(bytes)));
    }
    std::mt19937_64 rng(Mix64(seed ^ 0x5eed));
    uint64_t len = 1 + rng() % (256 << 10);
    uint64_t off = rng();
    uint32_t pattern = 0x7fffffff;
    std::vector<uint8_t> buf, back;
    OpenOptions oo;
    oo.env = copy.get();
    oo.read_only = false;
    oo.format = "qcow2";
    oo.background_checkpoints = false;
    std::string what = at + ": after reopening read-write";
    {
      auto img = Image::Open(kImage, oo);
      if (!img.ok()) return Violation(what + ": open failed: " + img.status().ToString() + "\n" + FileOps(point_) + History());
      const uint64_t vsize = (*img)->size();
      off %= vsize;
      len = std::min(len, vsize - off);
      buf.resize(len);
      back.resize(len);
      FillPattern(pattern, off, buf.data(), len);
      what += " and writing [" + Hex(off) + ", +" + Hex(len) + ")";
      Status s = (*img)->Write(off, buf.data(), len);
      if (s.ok()) s = (*img)->Close();
      if (!s.ok()) return Violation(what + ": " + s.ToString() + "\n" + FileOps(point_) + History());
    }
    CheckOptions co;
    co.env = copy.get();
    auto rep = CheckImage(kImage, co);
    if (!rep.ok() || Corruptions(*rep, copied_ok) || rep->check_errors) {
      std::string m = what + ": CheckImage: " +
                      (rep.ok() ? std::to_string(rep->corruptions) + " corruptions" : rep.status().ToString());
      if (rep.ok()) {
        int shown = 0;
        for (const CheckProblem& p : rep->problems) {
          if (p.leak || !p.counted) continue;
          if (shown++ == 6) break;
          m += "\n  " + p.message;
        }
      }
      return Violation(m + "\n" + FileOps(point_) + History());
    }
    oo.read_only = true;
    auto img = Image::Open(kImage, oo);
    if (!img.ok()) return Violation(what + ": reopen failed: " + img.status().ToString() + "\n" + FileOps(point_) + History());
    Status s = (*img)->Read(off, back.data(), len);
    if (!s.ok() || back != buf) {
      return Violation(what + ": the write does not read back" +
                       (s.ok() ? std::string() : ": " + s.ToString()) + "\n" + FileOps(point_) + History());
    }
    return Status::OK();
  }

  Config cfg_;
  std::unique_ptr<MemoryEnv> base_;
  std::unique_ptr<CrashEnv> env_;
  std::unique_ptr<Env> wrapped_;  // over env_, when cfg_.wrap_env
  std::unique_ptr<CrashStateBuilder> builder_;
  std::unique_ptr<Image> image_;
  ByteModel initial_;
  ByteModel live_;
  std::vector<ByteModel> snapshots_;
  std::vector<Req> reqs_;
  // Internal snapshots: the model of every one made (by creation order,
  // never erased: requests refer to them), the ones that exist now, and
  // how many exist on a recovered image without a model.
  std::vector<ByteModel> snap_store_;
  std::vector<int> snaps_;
  size_t unknown_snapshots_ = 0;
  uint32_t next_pattern_ = 2;
  std::string history_;
  uint64_t point_ = 0;  // of the state being checked, for messages
  std::vector<uint8_t> read_buf_;  // the read-back of CheckState, reused
};

// A request length: tiny and unaligned, sector multiples, cluster
// multiples, or anything up to 256 KiB.
uint64_t PickLength(std::mt19937_64& rng, uint32_t cluster) {
  switch (rng() % 4) {
    case 0: return 1 + rng() % 1024;
    case 1: return 512 * (1 + rng() % 16);
    case 2: return uint64_t{cluster} * (1 + rng() % 4);
    default: return 1 + rng() % (256 << 10);
  }
}

uint64_t PickOffset(std::mt19937_64& rng, uint64_t size, uint32_t cluster, uint64_t len) {
  // Most requests go to a hot first MiB so they overlap.
  uint64_t span = (rng() % 4) ? std::min<uint64_t>(size, 1 << 20) : size;
  uint64_t off = rng() % span;
  switch (rng() % 3) {
    case 0: off &= ~uint64_t{511}; break;
    case 1: off &= ~uint64_t{cluster - 1}; break;
    default: break;
  }
  if (off + len > size) off = size > len ? size - len : 0;
  return off;
}

// A new virtual size for resize: sector multiples (now and then whole
// clusters) from half to twice the configured size, never below the current
// one when the image has snapshots (they forbid shrinking).
uint64_t PickSize(std::mt19937_64& rng, const CrashWorkload::Config& c, uint64_t now, bool may_shrink) {
  uint64_t lo = may_shrink ? c.size / 2 : now;
  uint64_t hi = 2 * c.size;
  uint64_t size = lo + rng() % (hi - lo + 1);
  size &= (rng() % 2) ? ~uint64_t{c.cluster_size - 1} : ~uint64_t{511};
  return std::clamp<uint64_t>(size, may_shrink ? 512 : now, hi);
}

CrashWorkload::Config PickConfig(std::mt19937_64& rng, const std::vector<uint32_t>& clusters) {
  CrashWorkload::Config c;
  static constexpr uint64_t kSizes[] = {8ull << 20, 16ull << 20, 32ull << 20};
  c.size = kSizes[rng() % 3];
  // One draw either way, so the rest of the run is the same stream.
  uint64_t pick = rng();
  c.cluster_size = clusters.empty() ? 512u << (pick % 8) : clusters[pick % clusters.size()];
  c.extended_l2 = c.cluster_size >= 16384 && rng() % 2;
  c.backing = rng() % 2;
  c.seed = rng();
  // From the run's own seed, so that the draw above stays the same stream:
  // three runs in four with the journal, a third of those in dirty-refcount
  // mode; a third of the journal-less ones with lazy refcounts.
  c.journal = Mix64(c.seed ^ 0x6a6f75726e616cull) % 4 != 0;
  c.lazy_refcounts = Mix64(c.seed ^ 0x6c617a79ull) % 3 == 0;
  return c;
}

struct RunStats {
  uint64_t states = 0;
};

}  // namespace

Result<std::unique_ptr<CrashWorkload>> CrashWorkload::Create(const Config& config) {
  if (config.size == 0 || config.size > (1ull << 32))
    return Status::InvalidArgument("crash workload size must be in (0, 4 GiB]");
  auto w = std::make_unique<WorkloadImpl>(config);
  QCOW2J_RETURN_IF_ERROR(w->Init());
  return std::unique_ptr<CrashWorkload>(std::move(w));
}

// One stream of runs from `seed` until `states` crash states are verified
// (RunCrashTest runs one per job).
CrashTestResult RunJob(const CrashTestOptions& opts, uint64_t seed, uint64_t states,
                       const std::string& job, bool have_qemu,
                       const std::function<void(const std::string&)>& log) {
  CrashTestResult res;
  res.seed = seed;
  std::vector<CrashModel> models = opts.models;
  if (models.empty()) models = {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn};

  std::string replay_args;
  for (uint32_t c : opts.cluster_sizes) replay_args += " --cluster-size " + std::to_string(c);
  if (opts.states_per_run != CrashTestOptions().states_per_run)
    replay_args += " --states-per-run " + std::to_string(opts.states_per_run);
  if (opts.ops_per_run != CrashTestOptions().ops_per_run)
    replay_args += " --ops " + std::to_string(opts.ops_per_run);
  auto fail = [&](uint64_t run_seed, const std::string& m) {
    ++res.violations;
    if (res.failure.empty()) {
      res.failure = "replay: qcow2j crashtest --replay " + std::to_string(run_seed) + replay_args + "\n" + m;
      res.failing_run_seed = run_seed;
    }
    log("VIOLATION (run seed " + std::to_string(run_seed) + ", replay: qcow2j crashtest --replay " +
        std::to_string(run_seed) + replay_args + "): " + m);
  };

  auto started = std::chrono::steady_clock::now();
  while (res.states < states && res.violations < std::max<uint64_t>(1, opts.max_violations)) {
    const uint64_t run_seed = opts.replay_run_seed ? opts.replay_run_seed : Mix64(res.seed + res.runs);
    ++res.runs;
    std::mt19937_64 rng(run_seed);
    CrashWorkload::Config cfg = PickConfig(rng, opts.cluster_sizes);
    auto created = CrashWorkload::Create(cfg);
    if (!created.ok()) {
      fail(run_seed, "setting up the workload failed: " + created.status().ToString());
      break;
    }
    auto& w = static_cast<WorkloadImpl&>(**created);
    bool failed = false;
    for (uint32_t i = 0; i < opts.ops_per_run && !failed; ++i) {
      Status s;
      uint64_t len = PickLength(rng, cfg.cluster_size);
      uint64_t off = PickOffset(rng, w.size(), cfg.cluster_size, len);
      unsigned pick = rng() % 100;
      if (pick < 42) s = w.Write(off, len);
      else if (pick < 50) s = w.WriteCompressed(off, len);
      else if (pick < 58) s = w.WriteZeroes(off, len, rng() % 2);
      else if (pick < 66) s = w.Discard(off, len);
      else if (pick < 79) s = w.Flush();
      else if (pick < 83) s = w.Reopen();
      else if (pick < 86) s = w.Resize(PickSize(rng, cfg, w.size(), w.snapshot_count() == 0));
      else if (pick < 89) s = w.CreateSnapshot();
      else if (pick < 91 && w.snapshot_count()) s = w.ApplySnapshot(rng() % w.snapshot_count());
      else if (pick < 92 && w.snapshot_count()) s = w.DeleteSnapshot(rng() % w.snapshot_count());
      else s = w.CheckLive(off, len);
      if (!s.ok()) {
        fail(run_seed, w.DescribeConfig() + ": " + s.ToString() +
                           (s.code() == Code::kCorruption ? "" : "\n" + w.History()));
        failed = true;
      }
    }
    if (failed) break;
    // End cleanly now and then: crash points after a close matter too.
    if (rng() % 3 == 0) {
      Status s = w.Reopen();
      if (!s.ok()) {
        fail(run_seed, w.DescribeConfig() + ": " + s.ToString() + "\n" + w.History());
        break;
      }
    }
    // Everything below depends on the run seed only, so --replay reproduces it.
    const uint64_t points = w.crash_points();
    std::vector<uint64_t> at;
    for (uint64_t i = 0; i < opts.states_per_run; ++i) at.push_back(i == 0 ? points : rng() % (points + 1));
    std::sort(at.begin(), at.end());
    for (size_t i = 0; i < at.size(); ++i) {
      if (!opts.replay_run_seed && res.states >= states) break;
      const uint64_t point = at[i];
      CrashModel model = models[(i + run_seed) % models.size()];
      uint64_t state_seed = Mix64(run_seed ^ Mix64(i + 1));
      VerifyExtras x;
      x.qemu_check = have_qemu && Mix64(state_seed ^ 1) % opts.qemu_check_every == 0;
      x.reuse = opts.reuse_every && Mix64(state_seed ^ 2) % opts.reuse_every == 0;
      x.crash_recovery =
          opts.recovery_crash_every && Mix64(state_seed ^ 6) % opts.recovery_crash_every == 0;
      x.model = model;
      x.qemu_img = opts.qemu_img;
      x.temp_dir = opts.temp_dir;
      if (res.violations == 0) x.dump_dir = opts.dump_dir;
      bool leaked = false, qemu_ran = false, reused = false, recovery_crashed = false;
      x.recovery_crashed = &recovery_crashed;
      x.leaked = &leaked;
      x.qemu_ran = &qemu_ran;
      x.reused = &reused;
      Status s = w.VerifyCrashEx(point, model, state_seed, x, nullptr);
      ++res.states;
      ++res.states_by_model[static_cast<int>(model)];
      res.leaky_states += leaked;
      res.qemu_checks += qemu_ran;
      res.reused += reused;
      res.recovery_crashes += recovery_crashed;
      if (!s.ok()) {
        fail(run_seed, w.DescribeConfig() + ": " + s.message());
        if (res.violations >= std::max<uint64_t>(1, opts.max_violations)) break;
      }
    }
    if (opts.replay_run_seed) break;
    if (res.runs % 20 == 0) {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      log("crashtest" + job + ": " + std::to_string(res.runs) + " runs, " + std::to_string(res.states) +
          " states, " + std::to_string(res.violations) + " violations, " +
          std::to_string(res.leaky_states) + " leaky, " + std::to_string(static_cast<int>(secs)) + " s");
    }
  }
  return res;
}

CrashTestResult RunCrashTest(const CrashTestOptions& opts) {
  uint64_t seed = opts.seed ? opts.seed : std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  if (seed == 0) seed = 1;
  std::mutex log_mu;
  auto log = [&](const std::string& m) {
    if (!opts.log) return;
    std::lock_guard lock(log_mu);
    opts.log(m);
  };
  const bool have_qemu =
      opts.qemu_check_every &&
      std::system((opts.qemu_img + " --version >/dev/null 2>&1").c_str()) == 0;
  const uint32_t jobs = opts.replay_run_seed ? 1 : std::max<uint32_t>(1, opts.jobs);
  log("crashtest: seed " + std::to_string(seed) + ", " + std::to_string(opts.states) + " states" +
      (jobs > 1 ? ", " + std::to_string(jobs) + " jobs" : "") +
      (opts.replay_run_seed ? ", replaying run seed " + std::to_string(opts.replay_run_seed) : ""));
  if (jobs == 1) return RunJob(opts, seed, opts.states, "", have_qemu, log);

  // Job 0 is the single-job stream; job j > 0 derives its own master seed,
  // so a (seed, jobs) pair always explores the same states. Every run seed
  // replays alone with --replay whatever the job count.
  std::vector<CrashTestResult> parts(jobs);
  std::vector<std::thread> threads;
  for (uint32_t j = 0; j < jobs; ++j) {
    const uint64_t job_seed = j == 0 ? seed : Mix64(seed ^ Mix64(0x6a6f62ull + j));
    const uint64_t share = opts.states / jobs + (j < opts.states % jobs ? 1 : 0);
    threads.emplace_back([&, j, job_seed, share] {
      parts[j] = RunJob(opts, job_seed, share, " job " + std::to_string(j), have_qemu, log);
    });
  }
  for (std::thread& t : threads) t.join();
  CrashTestResult res;
  res.seed = seed;
  for (const CrashTestResult& p : parts) {
    res.runs += p.runs;
    res.states += p.states;
    for (int m = 0; m < 3; ++m) res.states_by_model[m] += p.states_by_model[m];
    res.violations += p.violations;
    res.leaky_states += p.leaky_states;
    res.qemu_checks += p.qemu_checks;
    res.reused += p.reused;
    res.recovery_crashes += p.recovery_crashes;
    if (res.failure.empty() && !p.failure.empty()) {
      res.failure = p.failure;
      res.failing_run_seed = p.failing_run_seed;
    }
  }
  return res;
}

}  // namespace qcow2j
