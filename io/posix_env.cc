// The default Env: POSIX files with positional I/O (pread/pwrite/preadv/pwritev),
// fdatasync, and fallocate for preallocation, zeroing and hole punching.
//
// The reads, writes and syncs themselves go through a PositionalIo
// (io/posix_env.h): plain system calls here, io_uring in io/uring_env.cc.
// Everything around them (retries of short transfers, EOF as zeros, IOV_MAX
// windows, O_DIRECT bounce buffers) is this file's, whichever does the I/O.
//
// With kOpenDirect the file is opened O_DIRECT (cache=none). The kernel then
// insists that offset, length and buffer address are multiples of the
// device's direct-I/O alignment. Callers that cannot align (headers, 512-byte
// clusters, user buffers) still work: such requests go through an aligned
// bounce buffer, and an unaligned write becomes a read-modify-write of the
// partial blocks at its head and tail. Two unaligned writes that touch
// different bytes of the same block must not lose each other's bytes, so the
// read-modify-write holds a striped lock on each partial block it rewrites.
// (An aligned write covers whole blocks, so it can only race with a write that
// overlaps it, which is the caller's business as with any file.)
//
// An unaligned direct write that ends past EOF extends the file to the next
// alignment boundary; the padding reads as zeros, as bytes past EOF do anyway.
// QEMU's block layer behaves the same way with cache=none.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "io/posix_env.h"
#include "qcow2j/file.h"

namespace qcow2j {
namespace {

// Used when the kernel cannot tell us the direct-I/O alignment; every Linux
// file system and block device accepts 4 KiB-aligned direct I/O.
constexpr size_t kFallbackDirectAlignment = 4096;
// Bounce buffers never exceed this; larger unaligned requests go in windows.
constexpr size_t kMaxBounce = 1 << 20;
constexpr size_t kLockStripes = 64;
// preadv/pwritev take at most IOV_MAX segments per call.
constexpr size_t kMaxIov = IOV_MAX;

std::string At(const std::string& path, const char* op, uint64_t offset) {
  return path + ": " + op + " at offset " + std::to_string(offset);
}

std::string AtRange(const std::string& path, const char* op, uint64_t offset, uint64_t len) {
  return At(path, op, offset) + " length " + std::to_string(len);
}

bool Unsupported(int err) { return err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS; }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<uint8_t, FreeDeleter>;

Result<AlignedBuffer> AllocateAligned(size_t size, size_t alignment) {
  void* p = nullptr;
  int err = ::posix_memalign(&p, alignment, size);
  if (err != 0) return Status::FromErrno(err, "allocate " + std::to_string(size) + " byte bounce buffer");
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

// Walks a caller's iovec array as one flat byte sequence, for copying between
// it and a bounce buffer.
class IovCursor {
 public:
  explicit IovCursor(std::span<const iovec> iov) : iov_(iov) {}

  void CopyFrom(const uint8_t* src, size_t n) {  // bounce -> caller (reads)
    Walk(n, [&](uint8_t* p, size_t len) {
      std::memcpy(p, src, len);
      src += len;
    });
  }
  void CopyTo(uint8_t* dst, size_t n) {  // caller -> bounce (writes)
    Walk(n, [&](uint8_t* p, size_t len) {
      std::memcpy(dst, p, len);
      dst += len;
    });
  }

 private:
  template <class Fn>
  void Walk(size_t n, Fn fn) {
    while (n > 0 && idx_ < iov_.size()) {
      const iovec& v = iov_[idx_];
      size_t len = std::min(n, v.iov_len - off_);
      if (len > 0) fn(static_cast<uint8_t*>(v.iov_base) + off_, len);
      n -= len;
      off_ += len;
      if (off_ == v.iov_len) {
        ++idx_;
        off_ = 0;
      }
    }
  }

  std::span<const iovec> iov_;
  size_t idx_ = 0;
  size_t off_ = 0;
};

size_t TotalLength(std::span<const iovec> iov) {
  size_t total = 0;
  for (const iovec& v : iov) total += v.iov_len;
  return total;
}

// Drops the first n bytes from a mutable iovec array (after a short transfer).
void Advance(std::vector<iovec>& iov, size_t& first, size_t n) {
  while (n > 0 && first < iov.size()) {
    size_t take = std::min(n, iov[first].iov_len);
    iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + take;
    iov[first].iov_len -= take;
    n -= take;
    if (iov[first].iov_len == 0) ++first;
  }
  while (first < iov.size() && iov[first].iov_len == 0) ++first;
}

// The plain system calls.
class SyscallIo final : public PositionalIo {
 public:
  ssize_t Preadv(int fd, const iovec* iov, int cnt, uint64_t offset) override {
    ssize_t r = ::preadv(fd, iov, cnt, static_cast<off_t>(offset));
    return r < 0 ? -errno : r;
  }
  ssize_t Pwritev(int fd, const iovec* iov, int cnt, uint64_t offset) override {
    ssize_t r = ::pwritev(fd, iov, cnt, static_cast<off_t>(offset));
    return r < 0 ? -errno : r;
  }
  int Fdatasync(int fd) override { return ::fdatasync(fd) != 0 ? -errno : 0; }
};

// EINTR and EAGAIN (io_uring's "try again") mean the call did nothing: retry.
bool Retry(ssize_t r) { return r == -EINTR || r == -EAGAIN; }

class PosixFile final : public File {
 public:
  PosixFile(int fd, std::string path, bool direct, size_t alignment, PositionalIo* io)
      : fd_(fd), path_(std::move(path)), direct_(direct), alignment_(alignment), io_(io) {}
  ~PosixFile() override { ::close(fd_); }

  Status Read(uint64_t offset, void* buf, size_t n) override {
    iovec v{buf, n};
    return Readv(offset, std::span<const iovec>(&v, 1));
  }

  Status Write(uint64_t offset, const void* buf, size_t n) override {
    iovec v{const_cast<void*>(buf), n};
    return Writev(offset, std::span<const iovec>(&v, 1));
  }

  Status Readv(uint64_t offset, std::span<const iovec> iov) override {
    if (!direct_ || IsAligned(offset, iov)) return PreadvAll(offset, iov);
    return ReadBounced(offset, iov);
  }

  Status Writev(uint64_t offset, std::span<const iovec> iov) override {
    if (!direct_ || IsAligned(offset, iov)) return PwritevAll(offset, iov);
    return WriteBounced(offset, iov);
  }

  Status Sync() override {
    int r;
    while ((r = io_->Fdatasync(fd_)) != 0) {
      if (!Retry(r)) return Status::FromErrno(-r, path_ + ": fdatasync");
    }
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    if (S_ISBLK(st.st_mode)) {
      uint64_t bytes = 0;
      if (::ioctl(fd_, BLKGETSIZE64, &bytes) != 0)
        return Status::FromErrno(errno, path_ + ": ioctl BLKGETSIZE64");
      return bytes;
    }
    return static_cast<uint64_t>(st.st_size);
  }

  Status Truncate(uint64_t size) override {
    while (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      if (errno != EINTR)
        return Status::FromErrno(errno, path_ + ": truncate to " + std::to_string(size));
    }
    return Status::OK();
  }

  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    if (len == 0) return Status::OK();
    int err = Fallocate(keep_size ? FALLOC_FL_KEEP_SIZE : 0, offset, len);
    if (err == 0) return Status::OK();
    if (Unsupported(err))
      return Status::NotSupported(AtRange(path_, "fallocate", offset, len) +
                                  ": not supported by the file system");
    return Status::FromErrno(err, AtRange(path_, "fallocate", offset, len));
  }

  // Like writing zeros: the file grows to offset+len if it was shorter (as
  // QEMU's write_zeroes does), whichever of the three ways succeeds.
  Status ZeroRange(uint64_t offset, uint64_t len) override {
    if (len == 0) return Status::OK();
    int err = Fallocate(FALLOC_FL_ZERO_RANGE, offset, len);
    if (err == 0) return Status::OK();
    if (!Unsupported(err)) return Status::FromErrno(err, AtRange(path_, "zero range", offset, len));

    err = Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (Unsupported(err)) return File::ZeroRange(offset, len);
    if (err != 0) return Status::FromErrno(err, AtRange(path_, "punch hole", offset, len));
    // The hole kept the size; extend over the rest without ever shrinking
    // (fallocate mode 0 only grows, so a concurrent extending write is safe).
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, Size());
    uint64_t end = offset + len;
    if (end <= size) return Status::OK();
    uint64_t from = std::max(offset, size);
    err = Fallocate(0, from, end - from);
    if (err == 0) return Status::OK();
    if (Unsupported(err)) return File::ZeroRange(from, end - from);
    return Status::FromErrno(err, AtRange(path_, "fallocate", from, end - from));
  }

  // Never changes the size: bytes past EOF read as zeros already.
  Status PunchHole(uint64_t offset, uint64_t len) override {
    if (len == 0) return Status::OK();
    int err = Fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (err == 0) return Status::OK();
    if (!Unsupported(err)) return Status::FromErrno(err, AtRange(path_, "punch hole", offset, len));
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, Size());
    if (offset >= size) return Status::OK();
    return ZeroRange(offset, std::min(len, size - offset));
  }

  Result<Run> ProbeRun(uint64_t offset, uint64_t max_len) override {
    off_t data = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) {
      // ENXIO: no data at or after offset (a hole up to EOF, or past EOF).
      if (errno == ENXIO) return Run{false, max_len};
      return Run{true, max_len};  // SEEK_DATA unsupported: everything is data
    }
    if (static_cast<uint64_t>(data) > offset)
      return Run{false, std::min<uint64_t>(max_len, static_cast<uint64_t>(data) - offset)};
    off_t hole = ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
    if (hole < 0 || static_cast<uint64_t>(hole) <= offset) return Run{true, max_len};
    return Run{true, std::min<uint64_t>(max_len, static_cast<uint64_t>(hole) - offset)};
  }

  Result<uint64_t> AllocatedBytes() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

  size_t alignment() const override { return alignment_; }
  bool direct() const override { return direct_; }

 private:
  int Fallocate(int mode, uint64_t offset, uint64_t len) {
    while (::fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(len)) != 0) {
      if (errno != EINTR) return errno;
    }
    return 0;
  }

  bool IsAligned(uint64_t offset, std::span<const iovec> iov) const {
    const uint64_t mask = alignment_ - 1;
    if (offset & mask) return false;
    for (const iovec& v : iov) {
      if ((reinterpret_cast<uintptr_t>(v.iov_base) & mask) || (v.iov_len & mask)) return false;
    }
    return true;
  }

  // Reads everything, retrying on EINTR and short reads; past EOF reads zeros.
  Status PreadvAll(uint64_t offset, std::span<const iovec> in) {
    std::vector<iovec> iov(in.begin(), in.end());
    size_t first = 0;
    Advance(iov, first, 0);
    while (first < iov.size()) {
      int cnt = static_cast<int>(std::min(kMaxIov, iov.size() - first));
      ssize_t r = io_->Preadv(fd_, &iov[first], cnt, offset);
      if (r < 0) {
        if (Retry(r)) continue;
        return Status::FromErrno(static_cast<int>(-r), At(path_, "read", offset));
      }
      // r == 0 is EOF. A direct read that stops off the alignment also hit
      // EOF, and the next attempt from an unaligned offset would be refused.
      bool eof = r == 0 || (direct_ && (static_cast<uint64_t>(r) & (alignment_ - 1)) != 0);
      Advance(iov, first, static_cast<size_t>(r));
      offset += static_cast<uint64_t>(r);
      if (eof) {
        for (size_t i = first; i < iov.size(); ++i) std::memset(iov[i].iov_base, 0, iov[i].iov_len);
        return Status::OK();
      }
    }
    return Status::OK();
  }

  Status PwritevAll(uint64_t offset, std::span<const iovec> in) {
    std::vector<iovec> iov(in.begin(), in.end());
    size_t first = 0;
    Advance(iov, first, 0);
    while (first < iov.size()) {
      int cnt = static_cast<int>(std::min(kMaxIov, iov.size() - first));
      ssize_t r = io_->Pwritev(fd_, &iov[first], cnt, offset);
      if (r < 0) {
        if (Retry(r)) continue;
        return Status::FromErrno(static_cast<int>(-r), At(path_, "write", offset));
      }
      if (r == 0) return Status::FromErrno(EIO, At(path_, "write (no progress)", offset));
      Advance(iov, first, static_cast<size_t>(r));
      offset += static_cast<uint64_t>(r);
    }
    return Status::OK();
  }

  Status PreadAligned(uint64_t offset, uint8_t* buf, size_t n) {
    iovec v{buf, n};
    return PreadvAll(offset, std::span<const iovec>(&v, 1));
  }

  size_t BounceSize(uint64_t offset, size_t n) const {
    uint64_t head = offset & (alignment_ - 1);
    uint64_t need = (head + n + alignment_ - 1) & ~static_cast<uint64_t>(alignment_ - 1);
    return static_cast<size_t>(std::min<uint64_t>(need, kMaxBounce));
  }

  Status ReadBounced(uint64_t offset, std::span<const iovec> iov) {
    size_t remaining = TotalLength(iov);
    if (remaining == 0) return Status::OK();
    const size_t cap = BounceSize(offset, remaining);
    QCOW2J_ASSIGN_OR_RETURN(AlignedBuffer bounce, AllocateAligned(cap, alignment_));
    IovCursor cursor(iov);
    const uint64_t mask = alignment_ - 1;
    uint64_t pos = offset;
    while (remaining > 0) {
      uint64_t ws = pos & ~mask;
      uint64_t we = std::min<uint64_t>((pos + remaining + mask) & ~mask, ws + cap);
      QCOW2J_RETURN_IF_ERROR(PreadAligned(ws, bounce.get(), we - ws));
      size_t take = static_cast<size_t>(std::min<uint64_t>(remaining, we - pos));
      cursor.CopyFrom(bounce.get() + (pos - ws), take);
      pos += take;
      remaining -= take;
    }
    return Status::OK();
  }

  Status WriteBounced(uint64_t offset, std::span<const iovec> iov) {
    size_t remaining = TotalLength(iov);
    if (remaining == 0) return Status::OK();
    const uint64_t mask = alignment_ - 1;
    const uint64_t end = offset + remaining;

    // Lock the stripes of the (at most two) partially written blocks, in
    // stripe order so two writers can never wait on each other.
    std::array<size_t, 2> stripes;
    size_t nstripes = 0;
    if (offset & mask) stripes[nstripes++] = (offset / alignment_) % kLockStripes;
    if (end & mask) {
      size_t s = (end / alignment_) % kLockStripes;
      if (nstripes == 0 || stripes[0] != s) stripes[nstripes++] = s;
    }
    if (nstripes == 2 && stripes[0] > stripes[1]) std::swap(stripes[0], stripes[1]);
    std::array<std::unique_lock<std::mutex>, 2> locks;
    for (size_t i = 0; i < nstripes; ++i) locks[i] = std::unique_lock(stripe_mu_[stripes[i]]);

    const size_t cap = BounceSize(offset, remaining);
    QCOW2J_ASSIGN_OR_RETURN(AlignedBuffer bounce, AllocateAligned(cap, alignment_));
    IovCursor cursor(iov);
    uint64_t pos = offset;
    while (remaining > 0) {
      uint64_t ws = pos & ~mask;
      uint64_t we = std::min<uint64_t>((pos + remaining + mask) & ~mask, ws + cap);
      size_t take = static_cast<size_t>(std::min<uint64_t>(remaining, we - pos));
      bool partial_head = pos > ws;
      bool partial_tail = pos + take < we;
      if (partial_head) QCOW2J_RETURN_IF_ERROR(PreadAligned(ws, bounce.get(), alignment_));
      if (partial_tail && !(partial_head && we - alignment_ == ws)) {
        QCOW2J_RETURN_IF_ERROR(
            PreadAligned(we - alignment_, bounce.get() + (we - alignment_ - ws), alignment_));
      }
      cursor.CopyTo(bounce.get() + (pos - ws), take);
      iovec v{bounce.get(), static_cast<size_t>(we - ws)};
      QCOW2J_RETURN_IF_ERROR(PwritevAll(ws, std::span<const iovec>(&v, 1)));
      pos += take;
      remaining -= take;
    }
    return Status::OK();
  }

  const int fd_;
  const std::string path_;
  const bool direct_;
  const size_t alignment_;  // 1 unless direct_
  PositionalIo* const io_;
  std::array<std::mutex, kLockStripes> stripe_mu_;
};

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The alignment O_DIRECT needs for fd: statx's STATX_DIOALIGN when the kernel
// knows it (Linux 6.1+), the logical sector size for block devices, else 4 KiB.
Result<size_t> DirectAlignment(int fd, const std::string& path) {
  struct statx sx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_DIOALIGN, &sx) == 0) {
    if (sx.stx_mask & STATX_DIOALIGN) {
      if (sx.stx_dio_offset_align == 0) {
        return Status::NotSupported("Could not open '" + path +
                                    "' with O_DIRECT (cache=none): the file system does not "
                                    "support direct I/O on this file");
      }
      size_t a = std::max<size_t>(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
      if (IsPowerOfTwo(a)) return a;
    }
    if (S_ISBLK(sx.stx_mode)) {
      int sector = 0;
      if (::ioctl(fd, BLKSSZGET, &sector) == 0 && sector > 0 && IsPowerOfTwo(sector))
        return static_cast<size_t>(sector);
    }
  }
  return kFallbackDirectAlignment;
}

class PosixEnv final : public Env {
 public:
  explicit PosixEnv(PositionalIo* io) : io_(io) {}

  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    const bool direct = flags & kOpenDirect;
    int oflags = O_CLOEXEC | ((flags & kOpenReadOnly) ? O_RDONLY : O_RDWR);
    if (flags & kOpenCreate) oflags |= O_CREAT;
    if (flags & kOpenTruncate) oflags |= O_TRUNC;
    if (flags & kOpenExclusive) oflags |= O_EXCL;
    if (flags & kOpenSync) oflags |= O_DSYNC;
    if (direct) oflags |= O_DIRECT;
    int fd;
    do {
      fd = ::open(path.c_str(), oflags, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      if (direct && errno == EINVAL) {
        return Status::FromErrno(errno, "Could not open '" + path +
                                            "' with O_DIRECT (cache=none): the file system "
                                            "refuses direct I/O");
      }
      return Status::FromErrno(errno, "Could not open '" + path + "'");
    }
    size_t alignment = 1;
    if (direct) {
      Result<size_t> a = DirectAlignment(fd, path);
      if (!a.ok()) {
        ::close(fd);
        return a.status();
      }
      alignment = *a;
    }
    return std::unique_ptr<File>(new PosixFile(fd, path, direct, alignment, io_));
  }

  bool Exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, "remove '" + path + "'");
    return Status::OK();
  }

 private:
  PositionalIo* const io_;
};

}  // namespace

std::unique_ptr<Env> NewPosixEnv(PositionalIo* io) { return std::make_unique<PosixEnv>(io); }

Env* Env::Default() {
  static SyscallIo* io = new SyscallIo();
  static Env* env = NewPosixEnv(io).release();
  return env;
}

}  // namespace qcow2j
