// The public engine API: open, create, read, write, zero, discard, flush.
// An Image is thread-safe: many requests may be in flight at once.
#ifndef QCOW2J_IMAGE_H_
#define QCOW2J_IMAGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

struct OpenOptions {
  Env* env = nullptr;          // nullptr: Env::Default()
  bool read_only = true;
  std::string format;          // "qcow2", "raw", or "" to probe
  bool direct = false;         // O_DIRECT on the image file (cache=none)
  bool writethrough = false;   // every write durable before it completes
  bool no_backing = false;     // do not open the backing chain (reads of unallocated: zeros)
  bool force_share = false;    // -U: ignore a lock held by another process
  // Open the read-only view of an internal snapshot (qemu's snapshot.id= / snapshot.name=).
  // At most one of these may be set. Implies read_only.
  std::string snapshot_id;
  std::string snapshot_name;
  // Like qemu's l2-cache-size / refcount-cache-size, in bytes; 0 = default.
  uint64_t l2_cache_size = 0;
  uint64_t refcount_cache_size = 0;
  // Journal checkpoints past the soft threshold run on a background thread.
  // false: the commit that crosses it checkpoints inline, so the I/O sequence
  // depends only on the caller's requests (the crash kit replays seeds).
  bool background_checkpoints = true;
};

enum class Preallocation { kOff, kMetadata, kFalloc, kFull };

struct CreateOptions {
  Env* env = nullptr;
  std::string format = "qcow2";     // "qcow2" or "raw"
  uint64_t size = 0;                // virtual size in bytes; 0 with a backing file = its size
  uint32_t cluster_size = 65536;    // 512 .. 2 MiB, power of two
  uint32_t refcount_bits = 16;      // 1, 2, 4, ..., 64
  int version = 3;                  // 2 (compat=0.10) or 3 (compat=1.1)
  bool extended_l2 = false;
  bool lazy_refcounts = false;
  std::string compression_type = "zlib";  // "zlib" or "zstd"
  Preallocation preallocation = Preallocation::kOff;
  std::string backing_file;
  std::string backing_format;
  std::string data_file;            // external data file
  bool data_file_raw = false;
  bool journal = true;              // metadata journal (qcow2j extension)
  uint64_t journal_size = 0;        // its area for each read-write session; 0 = 8 MiB
};

struct SnapshotInfo {
  std::string id;
  std::string name;
  uint64_t vm_state_size = 0;
  uint64_t disk_size = 0;           // virtual size when taken
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t icount = UINT64_MAX;     // UINT64_MAX: absent
};

struct BitmapInfo {
  std::string name;
  uint32_t granularity = 0;
  uint32_t flags = 0;               // bit 0 in_use, bit 1 auto
};

struct ImageInfo {
  std::string format;               // "qcow2" or "raw"
  std::string filename;
  uint64_t virtual_size = 0;
  uint64_t actual_size = 0;         // bytes allocated on the host
  uint32_t cluster_size = 0;        // 0 for raw
  int version = 0;                  // 2 or 3
  uint32_t refcount_bits = 0;
  std::string compression_type;     // "zlib" or "zstd"
  bool lazy_refcounts = false;
  bool corrupt = false;
  bool dirty = false;
  bool extended_l2 = false;
  bool journal = false;             // the qcow2j journal extension is present
  bool journal_dirty_refcounts = false;  // its dirty-refcount mode (refcounts rebuilt after a crash)
  bool journal_pending = false;     // incompatible bit 16: transactions not yet checkpointed
  // This open's journal activity: transactions committed, checkpoints
  // (tables written in place, ring emptied), and how many of those the
  // background checkpointer ran.
  uint64_t journal_commits = 0, journal_checkpoints = 0, journal_background_checkpoints = 0;
  std::string backing_file;         // as stored in the image
  std::string full_backing_file;    // resolved against the image's folder
  std::string backing_format;
  std::string data_file;
  bool data_file_raw = false;
  std::vector<SnapshotInfo> snapshots;
  std::vector<BitmapInfo> bitmaps;
  uint64_t incompatible_features = 0, compatible_features = 0, autoclear_features = 0;
  // What the open-time recovery did (journal replay, refcount rebuild), "" if nothing.
  std::string recovery_report;
};

// One extent of the guest view, as qemu-img map reports it.
struct BlockStatus {
  uint64_t offset = 0;              // guest offset
  uint64_t length = 0;
  int depth = 0;                    // 0: this image, 1: its backing file, ...
  bool present = false;             // allocated somewhere in the chain
  bool zero = false;                // reads as zeros
  bool data = false;                // data is stored (not a zero cluster)
  bool compressed = false;
  std::optional<uint64_t> host_offset;  // where the data lives in the file at `depth`
  std::string filename;             // the file at `depth` (for map's human output)
};

// Completion of an asynchronous request.
using Completion = std::function<void(Status)>;

class Image {
 public:
  // Opens an image (qcow2 or raw, probed unless opts.format says).
  static Result<std::unique_ptr<Image>> Open(const std::string& path, const OpenOptions& opts);
  // Creates an image. Fails if the file exists and cannot be truncated.
  static Status Create(const std::string& path, const CreateOptions& opts);

  virtual ~Image() = default;

  virtual uint64_t size() const = 0;
  virtual ImageInfo Info() = 0;

  // Blocking I/O. Offsets and lengths need no alignment.
  virtual Status Read(uint64_t offset, void* buf, size_t len) = 0;
  virtual Status Write(uint64_t offset, const void* buf, size_t len) = 0;
  // Afterwards the range reads as zeros. may_unmap lets the engine free clusters.
  virtual Status WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) = 0;
  virtual Status Discard(uint64_t offset, uint64_t len) = 0;
  virtual Status Flush() = 0;
  // Flushes, checkpoints and closes. Further calls fail. Idempotent.
  virtual Status Close() = 0;

  // Asynchronous forms: return at once, call done exactly once from some
  // thread when the request completes. The buffer must stay valid until then.
  // The defaults run the blocking call on the engine's request threads.
  // A completion may submit more requests. One it submits may wait for the
  // completing thread, which takes it as soon as the completion returns (no
  // other thread is woken), so completions should return promptly. One that
  // blocks (say, until a request it submitted completes) still sees that
  // request run, about a millisecond later, on another thread.
  virtual void ReadAsync(uint64_t offset, void* buf, size_t len, Completion done);
  virtual void WriteAsync(uint64_t offset, const void* buf, size_t len, Completion done);
  virtual void WriteZeroesAsync(uint64_t offset, uint64_t len, bool may_unmap, Completion done);
  virtual void DiscardAsync(uint64_t offset, uint64_t len, Completion done);
  virtual void FlushAsync(Completion done);

  // The extent that starts at `offset`, at most `max_length` long, whose
  // every byte has the same status (qemu-img map semantics across the chain).
  virtual Result<BlockStatus> GetBlockStatus(uint64_t offset, uint64_t max_length) = 0;

  // Changes the virtual size (qemu-img resize). Shrinking drops data past the
  // new end and needs shrink = true. Default: NotSupported.
  virtual Status Resize(uint64_t new_size, bool shrink);
  // Writes whole clusters compressed (qemu-img convert -c): offset is cluster
  // aligned, len a multiple of the cluster size or reaching the image end
  // (the last cluster is then zero-padded). A cluster that does not compress
  // is written as it is, as QEMU does. Unlike QEMU, allocated clusters may be
  // overwritten (their old clusters are freed). Compression runs in the
  // calling thread: callers on several threads compress in parallel.
  // Default: NotSupported.
  virtual Status WriteCompressed(uint64_t offset, const void* buf, size_t len);
};

}  // namespace qcow2j

#endif  // QCOW2J_IMAGE_H_
