// Default implementations shared by every File backend.
#include <algorithm>
#include <vector>

#include "qcow2j/file.h"

namespace qcow2j {

Status File::Readv(uint64_t offset, std::span<const iovec> iov) {
  for (const iovec& v : iov) {
    QCOW2J_RETURN_IF_ERROR(Read(offset, v.iov_base, v.iov_len));
    offset += v.iov_len;
  }
  return Status::OK();
}

Status File::Writev(uint64_t offset, std::span<const iovec> iov) {
  for (const iovec& v : iov) {
    QCOW2J_RETURN_IF_ERROR(Write(offset, v.iov_base, v.iov_len));
    offset += v.iov_len;
  }
  return Status::OK();
}

Status File::Allocate(uint64_t, uint64_t, bool) {
  return Status::NotSupported("allocate is not supported by this file backend");
}

Status File::ZeroRange(uint64_t offset, uint64_t len) {
  static constexpr size_t kChunk = 1 << 20;
  std::vector<char> zeros(std::min<uint64_t>(len, kChunk), 0);
  while (len > 0) {
    size_t n = std::min<uint64_t>(len, kChunk);
    QCOW2J_RETURN_IF_ERROR(Write(offset, zeros.data(), n));
    offset += n;
    len -= n;
  }
  return Status::OK();
}

// Bytes past EOF already read as zeros, so only the part below the size needs
// zeroing, and the size stays as it was (as with FALLOC_FL_KEEP_SIZE).
Status File::PunchHole(uint64_t offset, uint64_t len) {
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, Size());
  if (offset >= size) return Status::OK();
  return ZeroRange(offset, std::min(len, size - offset));
}

Result<uint64_t> File::AllocatedBytes() { return Size(); }

Result<File::Run> File::ProbeRun(uint64_t, uint64_t max_len) { return Run{true, max_len}; }

}  // namespace qcow2j
