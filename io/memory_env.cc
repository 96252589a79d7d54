// An Env whose files live in memory, for tests. A file is a size plus a sparse
// ordered map of 4 KiB pages: pages never written read as zeros and cost
// nothing, and range operations (truncate, punch) visit only pages that exist.
//
// Invariant: every byte of a page at or past the file size is zero, so growing
// the file (Truncate up, a write past EOF) never exposes stale bytes.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "io/memory_env.h"

namespace qcow2j {
namespace {

constexpr uint64_t kPage = MemoryEnv::kPageSize;

// The file itself; shared by every open handle and the Env's name table, so
// it outlives Remove() while handles are open (like an unlinked inode).
struct Inode {
  std::shared_mutex mu;
  uint64_t size = 0;                                       // guarded by mu
  std::map<uint64_t, std::unique_ptr<uint8_t[]>> pages;    // page index -> page
  std::atomic<uint64_t> syncs{0};
  std::atomic<uint64_t> writes{0};

  // Calls fn(page_or_null, offset_in_page, length, position_in_range) for each
  // page-sized piece of [offset, offset+n), in order. Null when no page exists.
  template <class Fn>
  void ForEachPiece(uint64_t offset, uint64_t n, Fn fn) {
    uint64_t done = 0;
    auto it = pages.lower_bound(offset / kPage);
    while (done < n) {
      uint64_t pos = offset + done;
      uint64_t index = pos / kPage;
      uint64_t in_page = pos % kPage;
      uint64_t len = std::min(n - done, kPage - in_page);
      while (it != pages.end() && it->first < index) ++it;
      uint8_t* page = (it != pages.end() && it->first == index) ? it->second.get() : nullptr;
      fn(page, in_page, len, done);
      done += len;
    }
  }

  uint8_t* PageFor(uint64_t index) {
    auto [it, inserted] = pages.try_emplace(index);
    if (inserted) it->second.reset(new uint8_t[kPage]());
    return it->second.get();
  }

  // Zeros [offset, offset+len): partial pages are cleared, whole pages are
  // dropped when `deallocate`, else cleared. Never allocates.
  void Zero(uint64_t offset, uint64_t len, bool deallocate) {
    if (len == 0) return;
    uint64_t end = offset + len;
    uint64_t first_full = (offset + kPage - 1) / kPage;
    uint64_t end_full = end / kPage;  // exclusive
    auto clear = [&](uint64_t from, uint64_t to) {  // within one page
      auto it = pages.find(from / kPage);
      if (it != pages.end()) std::memset(it->second.get() + from % kPage, 0, to - from);
    };
    if (first_full > end_full) {  // inside a single page
      clear(offset, end);
      return;
    }
    if (offset % kPage) clear(offset, first_full * kPage);
    if (end % kPage) clear(end_full * kPage, end);
    auto lo = pages.lower_bound(first_full);
    auto hi = pages.lower_bound(end_full);
    if (deallocate) {
      pages.erase(lo, hi);
    } else {
      for (auto it = lo; it != hi; ++it) std::memset(it->second.get(), 0, kPage);
    }
  }
};

class MemoryFile final : public File {
 public:
  MemoryFile(std::shared_ptr<Inode> inode, std::string path, bool read_only)
      : inode_(std::move(inode)), path_(std::move(path)), read_only_(read_only) {}

  Status Read(uint64_t offset, void* buf, size_t n) override {
    auto* out = static_cast<uint8_t*>(buf);
    std::shared_lock lock(inode_->mu);
    // Pages past EOF are zero by the invariant, so no clipping to size is needed.
    inode_->ForEachPiece(offset, n, [&](uint8_t* page, uint64_t in_page, uint64_t len,
                                        uint64_t done) {
      if (page) {
        std::memcpy(out + done, page + in_page, len);
      } else {
        std::memset(out + done, 0, len);
      }
    });
    return Status::OK();
  }

  Status Write(uint64_t offset, const void* buf, size_t n) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("write", offset));
    if (n == 0) return Status::OK();
    const auto* in = static_cast<const uint8_t*>(buf);
    std::unique_lock lock(inode_->mu);
    uint64_t done = 0;
    while (done < n) {
      uint64_t pos = offset + done;
      uint64_t in_page = pos % kPage;
      uint64_t len = std::min<uint64_t>(n - done, kPage - in_page);
      std::memcpy(inode_->PageFor(pos / kPage) + in_page, in + done, len);
      done += len;
    }
    inode_->size = std::max(inode_->size, offset + n);
    inode_->writes.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  }

  Status Sync() override {
    inode_->syncs.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    std::shared_lock lock(inode_->mu);
    return inode_->size;
  }

  Status Truncate(uint64_t size) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("truncate", size));
    std::unique_lock lock(inode_->mu);
    if (size < inode_->size) {
      // Keep the invariant: drop whole pages past the end, clear the tail of
      // the last page.
      uint64_t first_gone = (size + kPage - 1) / kPage;
      inode_->pages.erase(inode_->pages.lower_bound(first_gone), inode_->pages.end());
      if (size % kPage) {
        auto it = inode_->pages.find(size / kPage);
        if (it != inode_->pages.end())
          std::memset(it->second.get() + size % kPage, 0, kPage - size % kPage);
      }
    }
    inode_->size = size;
    return Status::OK();
  }

  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("allocate", offset));
    if (len == 0) return Status::OK();
    std::unique_lock lock(inode_->mu);
    for (uint64_t index = offset / kPage; index <= (offset + len - 1) / kPage; ++index)
      inode_->PageFor(index);
    if (!keep_size) inode_->size = std::max(inode_->size, offset + len);
    return Status::OK();
  }

  // Like writing zeros (the file grows to offset+len), but pages that exist
  // stay allocated, as FALLOC_FL_ZERO_RANGE leaves them.
  Status ZeroRange(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("zero range", offset));
    if (len == 0) return Status::OK();
    std::unique_lock lock(inode_->mu);
    inode_->Zero(offset, len, /*deallocate=*/false);
    inode_->size = std::max(inode_->size, offset + len);
    return Status::OK();
  }

  // Never changes the size.
  Status PunchHole(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("punch hole", offset));
    std::unique_lock lock(inode_->mu);
    inode_->Zero(offset, len, /*deallocate=*/true);
    return Status::OK();
  }

  Result<uint64_t> AllocatedBytes() override {
    std::shared_lock lock(inode_->mu);
    return static_cast<uint64_t>(inode_->pages.size()) * kPage;
  }

 private:
  Status CheckWritable(const char* op, uint64_t offset) const {
    if (!read_only_) return Status::OK();
    return Status::ReadOnly(path_ + ": " + op + " at offset " + std::to_string(offset) +
                            ": file is open read-only");
  }

  std::shared_ptr<Inode> inode_;
  const std::string path_;
  const bool read_only_;
};

class MemoryEnvImpl final : public MemoryEnv {
 public:
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override {
    std::lock_guard lock(mu_);
    auto it = files_.find(path);
    if (it == files_.end()) {
      if (!(flags & kOpenCreate)) return Status::NotFound("Could not open '" + path + "': no such file");
      it = files_.emplace(path, std::make_shared<Inode>()).first;
    } else if ((flags & kOpenCreate) && (flags & kOpenExclusive)) {
      return Status::Busy("Could not create '" + path + "': file exists");
    }
    const bool read_only = flags & kOpenReadOnly;
    if ((flags & kOpenTruncate) && !read_only) {
      Inode& inode = *it->second;
      std::unique_lock ilock(inode.mu);
      inode.pages.clear();
      inode.size = 0;
    }
    return std::unique_ptr<File>(new MemoryFile(it->second, path, read_only));
  }

  bool Exists(const std::string& path) override {
    std::lock_guard lock(mu_);
    return files_.count(path) != 0;
  }

  Status Remove(const std::string& path) override {
    std::lock_guard lock(mu_);
    if (files_.erase(path) == 0) return Status::NotFound("remove '" + path + "': no such file");
    return Status::OK();
  }

  Result<std::vector<uint8_t>> Contents(const std::string& path) override {
    std::shared_ptr<Inode> inode = Find(path);
    if (!inode) return Status::NotFound("'" + path + "': no such file");
    std::shared_lock lock(inode->mu);
    std::vector<uint8_t> bytes(inode->size, 0);
    for (const auto& [index, page] : inode->pages) {
      uint64_t start = index * kPage;
      if (start >= inode->size) break;
      std::memcpy(bytes.data() + start, page.get(), std::min(kPage, inode->size - start));
    }
    return bytes;
  }

  Result<FileStats> Stats(const std::string& path) override {
    std::shared_ptr<Inode> inode = Find(path);
    if (!inode) return Status::NotFound("'" + path + "': no such file");
    std::shared_lock lock(inode->mu);
    FileStats s;
    s.size = inode->size;
    s.allocated_pages = inode->pages.size();
    s.syncs = inode->syncs.load(std::memory_order_relaxed);
    s.writes = inode->writes.load(std::memory_order_relaxed);
    return s;
  }

 private:
  std::shared_ptr<Inode> Find(const std::string& path) {
    std::lock_guard lock(mu_);
    auto it = files_.find(path);
    return it == files_.end() ? nullptr : it->second;
  }

  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Inode>> files_;
};

}  // namespace

std::unique_ptr<MemoryEnv> NewMemoryEnvForTest() { return std::make_unique<MemoryEnvImpl>(); }

std::unique_ptr<Env> NewMemoryEnv() { return NewMemoryEnvForTest(); }

}  // namespace qcow2j
