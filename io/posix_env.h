// The POSIX Env with a pluggable I/O path. Its files keep all the logic of
// positional I/O (short transfers resumed, bytes past EOF read as zeros,
// IOV_MAX windows, O_DIRECT bounce buffers and read-modify-write, fallocate)
// and hand only the three data calls to a PositionalIo: the plain system
// calls for Env::Default(), an io_uring ring for Env::IoUring().
#ifndef QCOW2J_IO_POSIX_ENV_H_
#define QCOW2J_IO_POSIX_ENV_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>

#include "qcow2j/file.h"

namespace qcow2j {

// One attempt at each call, as the system calls make it: the bytes moved (0
// at EOF; possibly fewer than asked) or -errno. -EINTR and -EAGAIN are
// retried by the caller; so is any short transfer. cnt <= IOV_MAX. Called
// from many threads at once.
class PositionalIo {
 public:
  virtual ~PositionalIo() = default;
  virtual ssize_t Preadv(int fd, const iovec* iov, int cnt, uint64_t offset) = 0;
  virtual ssize_t Pwritev(int fd, const iovec* iov, int cnt, uint64_t offset) = 0;
  // 0 or -errno.
  virtual int Fdatasync(int fd) = 0;
};

// An Env of POSIX files whose data calls go through io, which must outlive
// every file the Env opens.
std::unique_ptr<Env> NewPosixEnv(PositionalIo* io);

}  // namespace qcow2j

#endif  // QCOW2J_IO_POSIX_ENV_H_
