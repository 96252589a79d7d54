// The default Env: POSIX files with pread/pwrite and fdatasync.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "qcow2j/file.h"

namespace qcow2j {
namespace {

class PosixFile final : public File {
 public:
  PosixFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixFile() override { ::close(fd_); }

  Status Read(uint64_t offset, void* buf, size_t n) override {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, path_ + ": read at offset " + std::to_string(offset));
      }
      if (r == 0) {  // past EOF: zeros
        std::memset(p, 0, n);
        return Status::OK();
      }
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
    }
    return Status::OK();
  }

  Status Write(uint64_t offset, const void* buf, size_t n) override {
    const auto* p = static_cast<const char*>(buf);
    while (n > 0) {
      ssize_t r = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, path_ + ": write at offset " + std::to_string(offset));
      }
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
    }
    return Status::OK();
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return Status::FromErrno(errno, path_ + ": fdatasync");
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    return static_cast<uint64_t>(st.st_size);
  }

  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
      return Status::FromErrno(errno, path_ + ": truncate to " + std::to_string(size));
    return Status::OK();
  }

  Result<uint64_t> AllocatedBytes() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, path_ + ": fstat");
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

 private:
  int fd_;
  std::string path_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    int oflags = O_CLOEXEC | ((flags & kOpenReadOnly) ? O_RDONLY : O_RDWR);
    if (flags & kOpenCreate) oflags |= O_CREAT;
    if (flags & kOpenTruncate) oflags |= O_TRUNC;
    if (flags & kOpenExclusive) oflags |= O_EXCL;
    if (flags & kOpenSync) oflags |= O_DSYNC;
    int fd = ::open(path.c_str(), oflags, 0644);
    if (fd < 0) return Status::FromErrno(errno, "Could not open '" + path + "'");
    return std::unique_ptr<File>(new PosixFile(fd, path));
  }
  bool Exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }
  Status Remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno(errno, "remove '" + path + "'");
    return Status::OK();
  }
};

}  // namespace

Env* Env::Default() {
  static PosixEnv* env = new PosixEnv();
  return env;
}

}  // namespace qcow2j
