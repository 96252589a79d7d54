// The in-memory Env behind NewMemoryEnv(), exposed for tests that want to look
// at a file's bytes or count syncs without going through File.
#ifndef QCOW2J_IO_MEMORY_ENV_H_
#define QCOW2J_IO_MEMORY_ENV_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qcow2j/file.h"

namespace qcow2j {

// A file's bytes as shared, copy-on-write 4 KiB pages. Copying one shares
// every page; a holder copies a page only when it changes it, so the crash
// kit can hand the same durable file to many crash states for the price of
// the pages each one rewrites. Pages never written read as zeros, and every
// byte of a page at or past size() is zero. Not thread-safe by itself (a
// MemoryEnv file locks its own); sharing is safe across threads because a
// shared page is never written.
class PagedBytes {
 public:
  static constexpr uint64_t kPageSize = 4096;

  uint64_t size() const { return size_; }
  size_t page_count() const { return pages_.size(); }
  // Bytes past size() read as zeros.
  void Read(uint64_t offset, uint8_t* out, uint64_t n) const;
  // Grows the size to offset + n when smaller.
  void Write(uint64_t offset, const uint8_t* in, uint64_t n);
  // [offset, offset+n) reads as zeros afterwards; whole pages are dropped
  // when `deallocate`. Never changes the size.
  void Zero(uint64_t offset, uint64_t n, bool deallocate);
  // Pages of [offset, offset+n) exist afterwards (fallocate); no size change.
  void Allocate(uint64_t offset, uint64_t n);
  // Truncates or extends (with zeros).
  void Resize(uint64_t size);
  void Clear() { pages_.clear(); size_ = 0; }
  // Replaces the contents with `bytes`; all-zero pages are left out.
  void Assign(const std::vector<uint8_t>& bytes);
  std::vector<uint8_t> Dense() const;

 private:
  uint8_t* Writable(uint64_t index);  // the page, created or unshared

  uint64_t size_ = 0;
  std::map<uint64_t, std::shared_ptr<uint8_t[]>> pages_;
};

// Files are sparse: only 4 KiB pages that were written (or allocated) cost
// memory, so a 2 TiB image with a few clusters is cheap. Thread-safe.
class MemoryEnv : public Env {
 public:
  static constexpr uint64_t kPageSize = 4096;

  // What a test may want to know about a file.
  struct FileStats {
    uint64_t size = 0;
    uint64_t allocated_pages = 0;
    uint64_t syncs = 0;   // Sync() calls that succeeded
    uint64_t writes = 0;  // Write/Writev calls that succeeded
  };

  // The whole file (size bytes, holes as zeros); NotFound if missing.
  virtual Result<std::vector<uint8_t>> Contents(const std::string& path) = 0;
  virtual Result<FileStats> Stats(const std::string& path) = 0;
  // The file's bytes, sharing its pages (no data is copied); NotFound if missing.
  virtual Result<PagedBytes> Share(const std::string& path) = 0;
  // Creates or replaces the file `path` with `bytes` (their pages are
  // shared, not copied). Handles open on an old file of that name keep it.
  virtual Status Install(const std::string& path, PagedBytes bytes) = 0;
  // Like RLIMIT_FSIZE: a write, truncate or allocation that would end past
  // `bytes` fails with EFBIG, for every file of this Env (the fuzz targets
  // bound what a corrupt image can make the engine write). 0: no limit.
  virtual void SetMaxFileSize(uint64_t bytes) = 0;
};

std::unique_ptr<MemoryEnv> NewMemoryEnvForTest();

}  // namespace qcow2j

#endif  // QCOW2J_IO_MEMORY_ENV_H_
