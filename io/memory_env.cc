// An Env whose files live in memory, for tests. A file is a size plus a sparse
// ordered map of 4 KiB pages (PagedBytes): pages never written read as zeros
// and cost nothing, range operations (truncate, punch) visit only pages that
// exist, and pages are shared copy-on-write between files made from one
// another (Share / Install).
//
// Invariant: every byte of a page at or past the file size is zero, so growing
// the file (Truncate up, a write past EOF) never exposes stale bytes.
#include <algorithm>
#include <atomic>
#include <cerrno>
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
  PagedBytes bytes;  // guarded by mu
  std::atomic<uint64_t> syncs{0};
  std::atomic<uint64_t> writes{0};
};

class MemoryFile final : public File {
 public:
  MemoryFile(std::shared_ptr<Inode> inode, std::string path, bool read_only,
             std::shared_ptr<const std::atomic<uint64_t>> max_size)
      : inode_(std::move(inode)),
        path_(std::move(path)),
        read_only_(read_only),
        max_size_(std::move(max_size)) {}

  Status Read(uint64_t offset, void* buf, size_t n) override {
    std::shared_lock lock(inode_->mu);
    inode_->bytes.Read(offset, static_cast<uint8_t*>(buf), n);
    return Status::OK();
  }

  Status Write(uint64_t offset, const void* buf, size_t n) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("write", offset, offset + n));
    if (n == 0) return Status::OK();
    std::unique_lock lock(inode_->mu);
    inode_->bytes.Write(offset, static_cast<const uint8_t*>(buf), n);
    inode_->writes.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  }

  Status Sync() override {
    inode_->syncs.fetch_add(1, std::memory_order_relaxed);
    return Status::OK();
  }

  Result<uint64_t> Size() override {
    std::shared_lock lock(inode_->mu);
    return inode_->bytes.size();
  }

  Status Truncate(uint64_t size) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("truncate", size, size));
    std::unique_lock lock(inode_->mu);
    inode_->bytes.Resize(size);
    return Status::OK();
  }

  Status Allocate(uint64_t offset, uint64_t len, bool keep_size) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("allocate", offset, offset + len));
    if (len == 0) return Status::OK();
    std::unique_lock lock(inode_->mu);
    inode_->bytes.Allocate(offset, len);
    if (!keep_size && inode_->bytes.size() < offset + len) inode_->bytes.Resize(offset + len);
    return Status::OK();
  }

  // Like writing zeros (the file grows to offset+len), but pages that exist
  // stay allocated, as FALLOC_FL_ZERO_RANGE leaves them.
  Status ZeroRange(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("zero range", offset, offset + len));
    if (len == 0) return Status::OK();
    std::unique_lock lock(inode_->mu);
    inode_->bytes.Zero(offset, len, /*deallocate=*/false);
    if (inode_->bytes.size() < offset + len) inode_->bytes.Resize(offset + len);
    return Status::OK();
  }

  // Never changes the size.
  Status PunchHole(uint64_t offset, uint64_t len) override {
    QCOW2J_RETURN_IF_ERROR(CheckWritable("punch hole", offset, 0));
    std::unique_lock lock(inode_->mu);
    inode_->bytes.Zero(offset, len, /*deallocate=*/true);
    return Status::OK();
  }

  Result<uint64_t> AllocatedBytes() override {
    std::shared_lock lock(inode_->mu);
    return static_cast<uint64_t>(inode_->bytes.page_count()) * kPage;
  }

 private:
  // `end`: the file size the operation may reach (0: it cannot grow it).
  Status CheckWritable(const char* op, uint64_t offset, uint64_t end) const {
    if (read_only_)
      return Status::ReadOnly(path_ + ": " + op + " at offset " + std::to_string(offset) +
                              ": file is open read-only");
    const uint64_t max = max_size_->load(std::memory_order_relaxed);
    if (max && (end > max || end < offset))
      return Status::FromErrno(EFBIG, path_ + ": " + op + " at offset " + std::to_string(offset) +
                                          " would pass the file size limit of " +
                                          std::to_string(max) + " bytes");
    return Status::OK();
  }

  std::shared_ptr<Inode> inode_;
  const std::string path_;
  const bool read_only_;
  const std::shared_ptr<const std::atomic<uint64_t>> max_size_;
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
      inode.bytes.Clear();
    }
    return std::unique_ptr<File>(new MemoryFile(it->second, path, read_only, max_size_));
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
    return inode->bytes.Dense();
  }

  Result<FileStats> Stats(const std::string& path) override {
    std::shared_ptr<Inode> inode = Find(path);
    if (!inode) return Status::NotFound("'" + path + "': no such file");
    std::shared_lock lock(inode->mu);
    FileStats s;
    s.size = inode->bytes.size();
    s.allocated_pages = inode->bytes.page_count();
    s.syncs = inode->syncs.load(std::memory_order_relaxed);
    s.writes = inode->writes.load(std::memory_order_relaxed);
    return s;
  }

  Result<PagedBytes> Share(const std::string& path) override {
    std::shared_ptr<Inode> inode = Find(path);
    if (!inode) return Status::NotFound("'" + path + "': no such file");
    std::shared_lock lock(inode->mu);
    return inode->bytes;
  }

  Status Install(const std::string& path, PagedBytes bytes) override {
    auto inode = std::make_shared<Inode>();
    inode->bytes = std::move(bytes);
    std::lock_guard lock(mu_);
    files_[path] = std::move(inode);
    return Status::OK();
  }

  void SetMaxFileSize(uint64_t bytes) override { max_size_->store(bytes, std::memory_order_relaxed); }

 private:
  std::shared_ptr<Inode> Find(const std::string& path) {
    std::lock_guard lock(mu_);
    auto it = files_.find(path);
    return it == files_.end() ? nullptr : it->second;
  }

  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Inode>> files_;
  const std::shared_ptr<std::atomic<uint64_t>> max_size_ = std::make_shared<std::atomic<uint64_t>>(0);
};

// A page of the given bytes' ownership. shared_ptr<T[]>(new T[]) frees
// with one delete[]: make_shared<uint8_t[]> destroys element by element,
// a loop that the fuzzers' coverage instrumentation turns into 4096
// callbacks per page freed.
std::shared_ptr<uint8_t[]> NewPage() { return std::shared_ptr<uint8_t[]>(new uint8_t[kPage]); }

// Allocated pages that nobody has written (fallocate, zeroing that keeps
// the allocation) all share this one; Writable() copies it before a write,
// as it does any shared page: the reference held here keeps its count > 1.
const std::shared_ptr<uint8_t[]>& ZeroPage() {
  static const std::shared_ptr<uint8_t[]> zero(new uint8_t[kPage]());
  return zero;
}

}  // namespace

void PagedBytes::Read(uint64_t offset, uint8_t* out, uint64_t n) const {
  // Pages past the size are zero by the invariant: no clipping needed.
  uint64_t done = 0;
  auto it = pages_.lower_bound(offset / kPage);
  while (done < n) {
    uint64_t pos = offset + done;
    uint64_t index = pos / kPage;
    uint64_t in_page = pos % kPage;
    uint64_t len = std::min(n - done, kPage - in_page);
    while (it != pages_.end() && it->first < index) ++it;
    if (it != pages_.end() && it->first == index) {
      std::memcpy(out + done, it->second.get() + in_page, len);
    } else {
      std::memset(out + done, 0, len);
    }
    done += len;
  }
}

uint8_t* PagedBytes::Writable(uint64_t index) {
  auto [it, inserted] = pages_.try_emplace(index);
  if (inserted) {
    it->second = NewPage();
    std::memset(it->second.get(), 0, kPage);
  } else if (it->second.use_count() > 1) {
    // Shared with another file: copy before changing. (A count that drops
    // to 1 behind our back only costs a needless copy; it cannot rise, as
    // copies are made under the owner's lock.)
    auto copy = NewPage();
    std::memcpy(copy.get(), it->second.get(), kPage);
    it->second = std::move(copy);
  }
  return it->second.get();
}

void PagedBytes::Write(uint64_t offset, const uint8_t* in, uint64_t n) {
  if (n == 0) return;
  uint64_t done = 0;
  while (done < n) {
    uint64_t pos = offset + done;
    uint64_t in_page = pos % kPage;
    uint64_t len = std::min<uint64_t>(n - done, kPage - in_page);
    std::memcpy(Writable(pos / kPage) + in_page, in + done, len);
    done += len;
  }
  size_ = std::max(size_, offset + n);
}

void PagedBytes::Zero(uint64_t offset, uint64_t len, bool deallocate) {
  if (len == 0) return;
  uint64_t end = offset + len;
  uint64_t first_full = (offset + kPage - 1) / kPage;
  uint64_t end_full = end / kPage;  // exclusive
  auto clear = [&](uint64_t from, uint64_t to) {  // within one page
    if (pages_.count(from / kPage)) std::memset(Writable(from / kPage) + from % kPage, 0, to - from);
  };
  if (first_full > end_full) {  // inside a single page
    clear(offset, end);
    return;
  }
  if (offset % kPage) clear(offset, first_full * kPage);
  if (end % kPage) clear(end_full * kPage, end);
  auto lo = pages_.lower_bound(first_full);
  auto hi = pages_.lower_bound(end_full);
  if (deallocate) {
    pages_.erase(lo, hi);
  } else {
    // A page that is kept allocated becomes a fresh zero page.
    for (auto it = lo; it != hi; ++it) it->second = ZeroPage();
  }
}

void PagedBytes::Allocate(uint64_t offset, uint64_t n) {
  if (n == 0) return;
  for (uint64_t index = offset / kPage; index <= (offset + n - 1) / kPage; ++index) {
    auto [it, inserted] = pages_.try_emplace(index);
    if (inserted) it->second = ZeroPage();
  }
}

void PagedBytes::Resize(uint64_t size) {
  if (size < size_) {
    // Keep the invariant: drop whole pages past the end, clear the tail of
    // the last page.
    uint64_t first_gone = (size + kPage - 1) / kPage;
    pages_.erase(pages_.lower_bound(first_gone), pages_.end());
    if (size % kPage && pages_.count(size / kPage))
      std::memset(Writable(size / kPage) + size % kPage, 0, kPage - size % kPage);
  }
  size_ = size;
}

void PagedBytes::Assign(const std::vector<uint8_t>& bytes) {
  static const uint8_t kZeros[kPage] = {};
  pages_.clear();
  size_ = bytes.size();
  for (uint64_t pos = 0; pos < bytes.size(); pos += kPage) {
    uint64_t len = std::min<uint64_t>(kPage, bytes.size() - pos);
    if (std::memcmp(bytes.data() + pos, kZeros, len) == 0) continue;
    std::memcpy(Writable(pos / kPage), bytes.data() + pos, len);
  }
}

std::vector<uint8_t> PagedBytes::Dense() const {
  std::vector<uint8_t> out(size_, 0);
  for (const auto& [index, page] : pages_) {
    uint64_t start = index * kPage;
    if (start >= size_) break;
    std::memcpy(out.data() + start, page.get(), std::min(kPage, size_ - start));
  }
  return out;
}

std::unique_ptr<MemoryEnv> NewMemoryEnvForTest() { return std::make_unique<MemoryEnvImpl>(); }

std::unique_ptr<Env> NewMemoryEnv() { return NewMemoryEnvForTest(); }

}  // namespace qcow2j
