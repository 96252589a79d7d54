// The storage under an image: every byte qcow2j reads or writes goes through a
// File opened by an Env (after LevelDB's Env). Tests swap in an in-memory Env,
// a crash-simulating Env or a fault-injecting Env; embedders may supply their own.
#ifndef QCOW2J_FILE_H_
#define QCOW2J_FILE_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "qcow2j/status.h"

namespace qcow2j {

// A byte-addressed file. All methods are safe to call from many threads at
// once (positional I/O: there is no shared file offset).
class File {
 public:
  virtual ~File() = default;

  // Reads n bytes at offset. Bytes past the end of the file read as zeros
  // (as QEMU's file-posix driver does), so a short file is not an error here;
  // the qcow2 layer validates offsets against Size() itself.
  virtual Status Read(uint64_t offset, void* buf, size_t n) = 0;
  virtual Status Write(uint64_t offset, const void* buf, size_t n) = 0;
  // Vectored forms; the defaults loop over Read/Write.
  virtual Status Readv(uint64_t offset, std::span<const iovec> iov);
  virtual Status Writev(uint64_t offset, std::span<const iovec> iov);

  // Makes every completed write durable (fdatasync).
  virtual Status Sync() = 0;
  virtual Result<uint64_t> Size() = 0;
  virtual Status Truncate(uint64_t size) = 0;
  // Reserves space without changing contents (fallocate mode 0 / KEEP_SIZE
  // when keep_size). Default: NotSupported.
  virtual Status Allocate(uint64_t offset, uint64_t len, bool keep_size);
  // Afterwards [offset, offset+len) reads as zeros; blocks may stay allocated.
  // Like writing zeros, it grows the file to offset+len if it was shorter.
  // Default: writes zeros.
  virtual Status ZeroRange(uint64_t offset, uint64_t len);
  // Afterwards [offset, offset+len) reads as zeros and is deallocated where the
  // file system can. Never changes the size. Default: ZeroRange of the part
  // below the current size.
  virtual Status PunchHole(uint64_t offset, uint64_t len);
  // Bytes the file occupies on its storage (st_blocks * 512 for posix).
  virtual Result<uint64_t> AllocatedBytes();
  // Whether [offset, offset + max_len) starts with data or with a hole, and
  // how long that run is (at least 1 byte, at most max_len). Used to report
  // holes as zeros, like QEMU's SEEK_DATA/SEEK_HOLE probing. Default: data.
  struct Run {
    bool data = true;
    uint64_t length = 0;
  };
  virtual Result<Run> ProbeRun(uint64_t offset, uint64_t max_len);
  // Required alignment of offset, length and buffer for Read/Write (O_DIRECT);
  // 1 when anything goes. Callers that cannot align use the File's own
  // bounce buffering, which every implementation must provide.
  virtual size_t alignment() const { return 1; }
  // Whether data is written with O_DIRECT (cache=none).
  virtual bool direct() const { return false; }
};

// Open flags for Env::Open.
enum OpenFlag : unsigned {
  kOpenReadOnly = 1u << 0,
  kOpenCreate = 1u << 1,     // create if missing
  kOpenTruncate = 1u << 2,   // truncate to 0 on open
  kOpenExclusive = 1u << 3,  // fail if it exists (with kOpenCreate)
  kOpenDirect = 1u << 4,     // O_DIRECT: bypass the page cache
  kOpenSync = 1u << 5,       // O_DSYNC: every write is durable (cache=writethrough/directsync)
};

// Opens files by name. Thread-safe.
class Env {
 public:
  virtual ~Env() = default;
  virtual Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) = 0;
  virtual bool Exists(const std::string& path) = 0;
  virtual Status Remove(const std::string& path) = 0;
  // The process-wide POSIX environment (pread/pwrite/fdatasync). Never deleted.
  static Env* Default();
  // The same POSIX files with their reads, writes and syncs submitted through
  // io_uring (one ring per calling thread). Process-wide, never deleted. An
  // error ("Unable to use io_uring: ...") where the kernel lacks io_uring or
  // a seccomp filter or sysctl forbids it.
  static Result<Env*> IoUring();
};

// An Env whose files live in memory; for tests. Files survive Open/close cycles
// for the lifetime of the Env.
std::unique_ptr<Env> NewMemoryEnv();

}  // namespace qcow2j

#endif  // QCOW2J_FILE_H_
