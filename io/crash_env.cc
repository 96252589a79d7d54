// CrashEnv: record, pass through, and rebuild crash states (see crash_env.h).
//
// Files are identified by name; every handle of one name shares its log.
// A handle opened with kOpenSync (O_DSYNC) records a sync of its file after
// each write, so those writes are durable when they complete.
#include "io/crash_env.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace qcow2j {

const char* CrashModelName(CrashModel m) {
  switch (m) {
    case CrashModel::kPrefix: return "prefix";
    case CrashModel::kSubset: return "subset";
    case CrashModel::kTorn: return "torn";
  }
  return "?";
}

bool ParseCrashModel(const std::string& name, CrashModel* out) {
  for (CrashModel m : {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn}) {
    if (name == CrashModelName(m)) {
      *out = m;
      return true;
    }
  }
  return false;
}

void ApplyCrashOp(const CrashOp& op, std::vector<uint8_t>* bytes) {
  auto grow = [&](uint64_t end) {
    if (bytes->size() < end) bytes->resize(end, 0);
  };
  switch (op.kind) {
    case CrashOp::kWrite:
      if (op.data.empty()) return;
      grow(op.offset + op.data.size());
      std::memcpy(bytes->data() + op.offset, op.data.data(), op.data.size());
      return;
    case CrashOp::kTruncate:
      bytes->resize(op.offset, 0);
      return;
    case CrashOp::kZeroRange:
      if (op.length == 0) return;
      grow(op.offset + op.length);
      std::memset(bytes->data() + op.offset, 0, op.length);
      return;
    case CrashOp::kPunchHole:
      if (op.offset < bytes->size()) {
        uint64_t n = std::min<uint64_t>(op.length, bytes->size() - op.offset);
        std::memset(bytes->data() + op.offset, 0, n);
      }
      return;
    case CrashOp::kAllocate:
      // op.data holds one byte: keep_size.
      if (op.data.empty() || !op.data[0]) grow(op.offset + op.length);
      return;
    case CrashOp::kRemove:
      bytes->clear();
      return;
    case CrashOp::kSync:
      return;
  }
}

void ApplyCrashOp(const CrashOp& op, PagedBytes* bytes) {
  switch (op.kind) {
    case CrashOp::kWrite:
      bytes->Write(op.offset, op.data.data(), op.data.size());
      return;
    case CrashOp::kTruncate:
      bytes->Resize(op.offset);
      return;
    case CrashOp::kZeroRange:
      if (op.length == 0) return;
      bytes->Zero(op.offset, op.length, /*deallocate=*/false);
      if (bytes->size() < op.offset + op.length) bytes->Resize(op.offset + op.length);
      return;
    case CrashOp::kPunchHole:
      bytes->Zero(op.offset, op.length, /*deallocate=*/true);
      return;
    case CrashOp::kAllocate:
      // op.data holds one byte: keep_size.
      if ((op.data.empty() || !op.data[0]) && bytes->size() < op.offset + op.length)
        bytes->Resize(op.offset + op.length);
      return;
    case CrashOp::kRemove:
      bytes->Clear();
      return;
    case CrashOp::kSync:
      return;
  }
}

class CrashFile final : public File {
 public:
  CrashFile(CrashEnv* env, std::unique_ptr<File> base, uint32_t index, bool sync_writes)
      : env_(env), base_(std::move(base)), index_(index), sync_writes_(sync_writes) {}

  Status Read(uint64_t offset, void* buf, size_t n) override {
    QCOW2J_RETURN_IF_ERROR(Alive("read"));
    return base_->Read(offset, buf, n);
  }
  Status Readv(uint64_t offset, std::span<const iovec> iov) override {
    QCOW2J_RETURN_IF_ERROR(Alive("read"));
    return base_->Readv(offset, iov);
  }

  Status Write(uint64_t offset, const void* buf, size_t n) override {
    iovec v{const_cast<void*>(buf), n};
    return Writev(offset, std::span<const iovec>(&v, 1));
  }

  // One vectored write is one recorded write: it may tear, but only as a
  // single request to the disk would.
  Status Writev(uint64_t offset, std::span<const iovec> iov) override {
    std::lock_guard lock(env_->mu_);
    QCOW2J_RETURN_IF_ERROR(AliveLocked("write"));
    QCOW2J_RETURN_IF_ERROR(base_->Writev(offset, iov));
    CrashOp op;
    op.kind = CrashOp::kWrite;
    op.file = index_;
    op.offset = offset;
    for (const iovec& v : iov) {
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      op.data.insert(op.data.end(), p, p + v.iov_len);
    }
    op.length = op.data.size();
    QCOW2J_RETURN_IF_ERROR(env_->Record(std::move(op)));
    if (sync_writes_) return RecordSyncLocked();
    return Status::OK();
  }

  Status Sync() override {
    std::lock_guard lock(env_->mu_);
    QCOW2J_RETURN_IF_ERROR(AliveLocked("sync"));
    QCOW2J_RETURN_IF_ERROR(base_->Sync());
    return RecordSyncLocked();
  }

  Result<uint64_t> Size() override {
    QCOW2J_RETURN_IF_ERROR(Alive("size"));
    return base_->Size();
  }

  Status Truncate(uint64_t size) override {
    return Mutate(CrashOp::kTruncate, size, 0, [&] { return base_->Truncate(size); });
  }
  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    return Mutate(CrashOp::kAllocate, offset, len,
                  [&] { return base_->Allocate(offset, len, keep_size); }, keep_size);
  }
  Status ZeroRange(uint64_t offset, uint64_t len) override {
    return Mutate(CrashOp::kZeroRange, offset, len, [&] { return base_->ZeroRange(offset, len); });
  }
  Status PunchHole(uint64_t offset, uint64_t len) override {
    return Mutate(CrashOp::kPunchHole, offset, len, [&] { return base_->PunchHole(offset, len); });
  }
  Result<uint64_t> AllocatedBytes() override {
    QCOW2J_RETURN_IF_ERROR(Alive("allocated bytes"));
    return base_->AllocatedBytes();
  }
  Result<Run> ProbeRun(uint64_t offset, uint64_t max_len) override {
    QCOW2J_RETURN_IF_ERROR(Alive("probe"));
    return base_->ProbeRun(offset, max_len);
  }
  size_t alignment() const override { return base_->alignment(); }
  bool direct() const override { return base_->direct(); }

 private:
  template <class Fn>
  Status Mutate(CrashOp::Kind kind, uint64_t offset, uint64_t len, Fn fn, bool flag = false) {
    std::lock_guard lock(env_->mu_);
    QCOW2J_RETURN_IF_ERROR(AliveLocked("update"));
    QCOW2J_RETURN_IF_ERROR(fn());
    CrashOp op;
    op.kind = kind;
    op.file = index_;
    op.offset = offset;
    op.length = len;
    if (kind == CrashOp::kAllocate) op.data.assign(1, flag ? 1 : 0);
    QCOW2J_RETURN_IF_ERROR(env_->Record(std::move(op)));
    if (sync_writes_) return RecordSyncLocked();
    return Status::OK();
  }

  Status RecordSyncLocked() {
    CrashOp op;
    op.kind = CrashOp::kSync;
    op.file = index_;
    return env_->Record(std::move(op));
  }

  Status Alive(const char* what) {
    std::lock_guard lock(env_->mu_);
    return AliveLocked(what);
  }
  Status AliveLocked(const char* what) const {
    if (!env_->crashed_) return Status::OK();
    return Status::FromErrno(EIO, std::string("crash-simulated: ") + what + " after the crash");
  }

  CrashEnv* const env_;
  std::unique_ptr<File> base_;
  const uint32_t index_;
  const bool sync_writes_;
};

CrashEnv::CrashEnv(Env* base) : base_(base) {}
CrashEnv::~CrashEnv() = default;

Result<uint32_t> CrashEnv::FileIndex(const std::string& path) {
  auto it = index_.find(path);
  if (it != index_.end()) return it->second;
  Initial init;
  init.name = path;
  if (base_->Exists(path)) {
    QCOW2J_ASSIGN_OR_RETURN(auto f, base_->Open(path, kOpenReadOnly));
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, f->Size());
    init.bytes.resize(size);
    if (size) QCOW2J_RETURN_IF_ERROR(f->Read(0, init.bytes.data(), size));
    init.existed = true;
  }
  uint32_t index = static_cast<uint32_t>(files_.size());
  files_.push_back(std::move(init));
  index_.emplace(path, index);
  return index;
}

Status CrashEnv::Record(CrashOp op) {
  ops_.push_back(std::move(op));
  return Status::OK();
}

Result<std::unique_ptr<File>> CrashEnv::Open(const std::string& path, unsigned flags) {
  std::lock_guard lock(mu_);
  if (crashed_) return Status::FromErrno(EIO, "crash-simulated: open '" + path + "' after the crash");
  // Snapshot before the base open can create or truncate the file.
  QCOW2J_ASSIGN_OR_RETURN(uint32_t index, FileIndex(path));
  QCOW2J_ASSIGN_OR_RETURN(auto f, base_->Open(path, flags));
  if (!files_[index].existed && !(flags & kOpenReadOnly)) files_[index].existed = true;
  if ((flags & kOpenTruncate) && !(flags & kOpenReadOnly)) {
    CrashOp op;
    op.kind = CrashOp::kTruncate;
    op.file = index;
    op.offset = 0;
    QCOW2J_RETURN_IF_ERROR(Record(std::move(op)));
  }
  return std::unique_ptr<File>(
      new CrashFile(this, std::move(f), index, (flags & kOpenSync) && !(flags & kOpenReadOnly)));
}

bool CrashEnv::Exists(const std::string& path) {
  std::lock_guard lock(mu_);
  return base_->Exists(path);
}

Status CrashEnv::Remove(const std::string& path) {
  std::lock_guard lock(mu_);
  if (crashed_) return Status::FromErrno(EIO, "crash-simulated: remove '" + path + "' after the crash");
  QCOW2J_ASSIGN_OR_RETURN(uint32_t index, FileIndex(path));
  QCOW2J_RETURN_IF_ERROR(base_->Remove(path));
  // Durable at once (we do not model directory syncs).
  CrashOp op;
  op.kind = CrashOp::kRemove;
  op.file = index;
  QCOW2J_RETURN_IF_ERROR(Record(std::move(op)));
  CrashOp sync;
  sync.kind = CrashOp::kSync;
  sync.file = index;
  return Record(std::move(sync));
}

uint64_t CrashEnv::op_count() const {
  std::lock_guard lock(mu_);
  return ops_.size();
}

void CrashEnv::CrashNow() {
  std::lock_guard lock(mu_);
  crashed_ = true;
}

bool CrashEnv::crashed() const {
  std::lock_guard lock(mu_);
  return crashed_;
}

std::vector<std::string> CrashEnv::file_names() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (const Initial& f : files_) names.push_back(f.name);
  return names;
}

const CrashOp& CrashEnv::op(uint64_t i) const {
  std::lock_guard lock(mu_);
  return ops_[i];
}

Status CrashEnv::BuildCrashState(uint64_t point, const CrashStateOptions& opts, MemoryEnv* out,
                                 CrashStateSummary* summary) const {
  CrashStateBuilder b(this);
  return b.Build(point, opts, out, summary);
}

CrashStateBuilder::CrashStateBuilder(const CrashEnv* env) : env_(env) { Reset(); }

void CrashStateBuilder::Reset() {
  std::lock_guard lock(env_->mu_);
  pos_ = 0;
  durable_.clear();
  exists_.clear();
  pending_.clear();
  for (const auto& f : env_->files_) {
    durable_.emplace_back().Assign(f.bytes);
    exists_.push_back(f.existed || !f.bytes.empty());
    pending_.emplace_back();
  }
}

// Moves pos_ to `point`: a sync makes its file's pending operations durable.
void CrashStateBuilder::Advance(uint64_t point) {
  std::lock_guard lock(env_->mu_);
  // Files registered after Reset (opened later) start empty, or as they were.
  while (durable_.size() < env_->files_.size()) {
    const auto& f = env_->files_[durable_.size()];
    durable_.emplace_back().Assign(f.bytes);
    exists_.push_back(f.existed || !f.bytes.empty());
    pending_.emplace_back();
  }
  for (; pos_ < point; ++pos_) {
    const CrashOp& op = env_->ops_[pos_];
    if (op.kind == CrashOp::kRemove) {
      // Durable at once: what was pending on the file is gone with it.
      pending_[op.file].clear();
      durable_[op.file].Clear();
      exists_[op.file] = false;
      continue;
    }
    if (op.kind != CrashOp::kSync) {
      pending_[op.file].push_back(pos_);
      continue;
    }
    for (uint64_t i : pending_[op.file]) {
      ApplyCrashOp(env_->ops_[i], &durable_[op.file]);
      exists_[op.file] = true;
    }
    pending_[op.file].clear();
  }
}

Status CrashStateBuilder::Build(uint64_t point, const CrashStateOptions& opts, MemoryEnv* out,
                                CrashStateSummary* summary) {
  if (point > env_->op_count()) {
    return Status::InvalidArgument("crash point " + std::to_string(point) + " is past the " +
                                   std::to_string(env_->op_count()) + " recorded operations");
  }
  if (opts.atom == 0 || (opts.atom & (opts.atom - 1))) {
    return Status::InvalidArgument("torn-write atom " + std::to_string(opts.atom) +
                                   " is not a power of two");
  }
  if (point < pos_) Reset();
  Advance(point);

  std::mt19937_64 rng(opts.seed);
  CrashStateSummary sum;
  std::vector<std::string> names = env_->file_names();
  std::lock_guard lock(env_->mu_);
  for (size_t f = 0; f < durable_.size(); ++f) {
    PagedBytes bytes = durable_[f];  // shares the pages
    bool exists = exists_[f];
    const auto& pend = pending_[f];
    sum.pending += pend.size();
    if (opts.keep_all) {
      for (uint64_t i : pend) ApplyCrashOp(env_->ops_[i], &bytes);
      sum.kept += pend.size();
      if (!pend.empty()) exists = true;
    } else if (opts.model != CrashModel::kPrefix && !pend.empty()) {
      // Writes survive independently with one probability per state (so
      // some states keep almost everything and some almost nothing);
      // size-changing operations survive as a prefix.
      static constexpr double kKeep[] = {0.1, 0.5, 0.9};
      std::bernoulli_distribution keep(kKeep[rng() % 3]);
      uint64_t others = 0;
      for (uint64_t i : pend) others += env_->ops_[i].kind != CrashOp::kWrite;
      uint64_t other_cut = others ? rng() % (others + 1) : 0;
      uint64_t other_seen = 0;
      for (uint64_t i : pend) {
        const CrashOp& op = env_->ops_[i];
        if (op.kind != CrashOp::kWrite) {
          if (other_seen++ < other_cut) {
            ApplyCrashOp(op, &bytes);
            exists = true;
            ++sum.kept;
          }
          continue;
        }
        if (!keep(rng)) continue;
        ++sum.kept;
        exists = true;
        uint64_t atom = opts.atom;
        uint64_t first = op.offset / atom, last = (op.offset + op.data.size() - 1) / atom;
        if (opts.model != CrashModel::kTorn || op.data.empty() || first == last) {
          ApplyCrashOp(op, &bytes);
          continue;
        }
        // Torn: each atom the write touches lands or not on its own.
        ++sum.torn;
        std::bernoulli_distribution atom_lands(0.5);
        for (uint64_t a = first; a <= last; ++a) {
          if (!atom_lands(rng)) continue;
          uint64_t from = std::max(op.offset, a * atom);
          uint64_t to = std::min(op.offset + op.data.size(), (a + 1) * atom);
          bytes.Write(from, op.data.data() + (from - op.offset), to - from);
        }
      }
    }
    if (!exists) continue;
    QCOW2J_RETURN_IF_ERROR(out->Install(names[f], std::move(bytes)));
  }
  if (summary) *summary = sum;
  return Status::OK();
}

}  // namespace qcow2j
