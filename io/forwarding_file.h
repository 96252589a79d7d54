// A File that passes every call to the File it wraps: wrappers that change,
// count or slow down some operations (the CLI's no-flush Env, tests)
// override only those.
#ifndef QCOW2J_IO_FORWARDING_FILE_H_
#define QCOW2J_IO_FORWARDING_FILE_H_

#include <memory>
#include <span>
#include <utility>

#include "qcow2j/file.h"

namespace qcow2j {

class ForwardingFile : public File {
 public:
  explicit ForwardingFile(std::unique_ptr<File> base) : base_(std::move(base)) {}
  Status Read(uint64_t o, void* b, size_t n) override { return base_->Read(o, b, n); }
  Status Write(uint64_t o, const void* b, size_t n) override { return base_->Write(o, b, n); }
  Status Readv(uint64_t o, std::span<const iovec> v) override { return base_->Readv(o, v); }
  Status Writev(uint64_t o, std::span<const iovec> v) override { return base_->Writev(o, v); }
  Status Sync() override { return base_->Sync(); }
  Result<uint64_t> Size() override { return base_->Size(); }
  Status Truncate(uint64_t s) override { return base_->Truncate(s); }
  Status Allocate(uint64_t o, uint64_t l, bool k) override { return base_->Allocate(o, l, k); }
  Status ZeroRange(uint64_t o, uint64_t l) override { return base_->ZeroRange(o, l); }
  Status PunchHole(uint64_t o, uint64_t l) override { return base_->PunchHole(o, l); }
  Result<uint64_t> AllocatedBytes() override { return base_->AllocatedBytes(); }
  Result<Run> ProbeRun(uint64_t o, uint64_t m) override { return base_->ProbeRun(o, m); }
  size_t alignment() const override { return base_->alignment(); }
  bool direct() const override { return base_->direct(); }

 protected:
  std::unique_ptr<File> base_;
};

}  // namespace qcow2j

#endif  // QCOW2J_IO_FORWARDING_FILE_H_
