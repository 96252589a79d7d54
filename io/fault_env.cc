// FaultEnv: count operations, fail the armed one (see fault_env.h).
#include "io/fault_env.h"

#include <cstdio>

namespace qcow2j {
namespace {

std::string Where(const char* op, uint64_t offset, uint64_t len, const std::string& path) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s %llu bytes at 0x%llx of ", op,
                static_cast<unsigned long long>(len), static_cast<unsigned long long>(offset));
  return buf + path;
}

uint64_t IovBytes(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const iovec& v : iov) n += v.iov_len;
  return n;
}

class FaultFile final : public File {
 public:
  FaultFile(FaultEnv* env, std::unique_ptr<File> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}

  Status Read(uint64_t offset, void* buf, size_t n) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kRead, Where("read", offset, n, path_)));
    return base_->Read(offset, buf, n);
  }
  Status Readv(uint64_t offset, std::span<const iovec> iov) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kRead, Where("read", offset, IovBytes(iov), path_)));
    return base_->Readv(offset, iov);
  }
  Status Write(uint64_t offset, const void* buf, size_t n) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kWrite, Where("write", offset, n, path_)));
    return base_->Write(offset, buf, n);
  }
  Status Writev(uint64_t offset, std::span<const iovec> iov) override {
    QCOW2J_RETURN_IF_ERROR(
        env_->Hit(FaultEnv::kWrite, Where("write", offset, IovBytes(iov), path_)));
    return base_->Writev(offset, iov);
  }
  Status Sync() override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kSync, "sync of " + path_));
    return base_->Sync();
  }
  Result<uint64_t> Size() override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kMeta, "size of " + path_));
    return base_->Size();
  }
  Status Truncate(uint64_t size) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kTruncate, Where("truncate to", size, 0, path_)));
    return base_->Truncate(size);
  }
  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kSpace, Where("allocate", offset, len, path_)));
    return base_->Allocate(offset, len, keep_size);
  }
  Status ZeroRange(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kSpace, Where("zero", offset, len, path_)));
    return base_->ZeroRange(offset, len);
  }
  Status PunchHole(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kSpace, Where("punch", offset, len, path_)));
    return base_->PunchHole(offset, len);
  }
  Result<uint64_t> AllocatedBytes() override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kMeta, "allocated bytes of " + path_));
    return base_->AllocatedBytes();
  }
  Result<Run> ProbeRun(uint64_t offset, uint64_t max_len) override {
    QCOW2J_RETURN_IF_ERROR(env_->Hit(FaultEnv::kMeta, Where("probe", offset, max_len, path_)));
    return base_->ProbeRun(offset, max_len);
  }
  size_t alignment() const override { return base_->alignment(); }
  bool direct() const override { return base_->direct(); }

 private:
  FaultEnv* const env_;
  std::unique_ptr<File> base_;
  const std::string path_;
};

}  // namespace

FaultEnv::FaultEnv(Env* base) : base_(base) {}

Result<std::unique_ptr<File>> FaultEnv::Open(const std::string& path, unsigned flags) {
  QCOW2J_RETURN_IF_ERROR(Hit(kOpen, "open of " + path));
  QCOW2J_ASSIGN_OR_RETURN(auto f, base_->Open(path, flags));
  return std::unique_ptr<File>(new FaultFile(this, std::move(f), path));
}

bool FaultEnv::Exists(const std::string& path) { return base_->Exists(path); }

Status FaultEnv::Remove(const std::string& path) { return base_->Remove(path); }

void FaultEnv::Arm(uint64_t nth, int err, unsigned kinds, bool sticky) {
  std::lock_guard lock(mu_);
  count_ = 0;
  nth_ = nth;
  err_ = err;
  kinds_ = kinds;
  sticky_ = sticky;
  fired_ = false;
  fired_at_.clear();
}

void FaultEnv::set_paused(bool paused) {
  std::lock_guard lock(mu_);
  paused_ = paused;
}

uint64_t FaultEnv::ops() const {
  std::lock_guard lock(mu_);
  return count_;
}

bool FaultEnv::fired() const {
  std::lock_guard lock(mu_);
  return fired_;
}

std::string FaultEnv::fired_at() const {
  std::lock_guard lock(mu_);
  return fired_at_;
}

Status FaultEnv::Hit(OpKind kind, const std::string& what) {
  std::lock_guard lock(mu_);
  if (paused_ || !(kinds_ & kind)) return Status::OK();
  ++count_;
  if (nth_ == 0) return Status::OK();
  bool fail = count_ == nth_ || (sticky_ && count_ > nth_);
  if (!fail) return Status::OK();
  if (!fired_) {
    fired_ = true;
    fired_at_ = what;
  }
  return Status::FromErrno(err_, "injected fault at operation " + std::to_string(count_) + " (" +
                                     what + ")");
}

}  // namespace qcow2j
