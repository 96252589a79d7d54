#include "tools/cli/no_flush_env.h"

namespace qcow2j::cli {
namespace {

class NoFlushFile : public File {
 public:
  explicit NoFlushFile(std::unique_ptr<File> f) : f_(std::move(f)) {}
  Status Read(uint64_t offset, void* buf, size_t n) override { return f_->Read(offset, buf, n); }
  Status Write(uint64_t offset, const void* buf, size_t n) override { return f_->Write(offset, buf, n); }
  Status Readv(uint64_t offset, std::span<const iovec> iov) override { return f_->Readv(offset, iov); }
  Status Writev(uint64_t offset, std::span<const iovec> iov) override { return f_->Writev(offset, iov); }
  Status Sync() override { return Status::OK(); }
  Result<uint64_t> Size() override { return f_->Size(); }
  Status Truncate(uint64_t size) override { return f_->Truncate(size); }
  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    return f_->Allocate(offset, len, keep_size);
  }
  Status ZeroRange(uint64_t offset, uint64_t len) override { return f_->ZeroRange(offset, len); }
  Status PunchHole(uint64_t offset, uint64_t len) override { return f_->PunchHole(offset, len); }
  Result<uint64_t> AllocatedBytes() override { return f_->AllocatedBytes(); }
  Result<Run> ProbeRun(uint64_t offset, uint64_t max_len) override { return f_->ProbeRun(offset, max_len); }
  size_t alignment() const override { return f_->alignment(); }
  bool direct() const override { return f_->direct(); }

 private:
  std::unique_ptr<File> f_;
};

}  // namespace

Result<std::unique_ptr<File>> NoFlushEnv::Open(const std::string& path, unsigned flags) {
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<File> f, base_->Open(path, flags));
  return std::unique_ptr<File>(new NoFlushFile(std::move(f)));
}

}  // namespace qcow2j::cli
