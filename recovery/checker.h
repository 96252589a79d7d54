// One pass of the image checker: reads every metadata structure of a qcow2
// file straight from the File (no engine), counts the references to each
// host cluster, compares them with the refcounts on disk and records each
// inconsistency together with the edit that would repair it. Repair
// (repair.h) applies those edits and runs another pass.
#ifndef QCOW2J_RECOVERY_CHECKER_H_
#define QCOW2J_RECOVERY_CHECKER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "metadata/header.h"
#include "metadata/huge_page_allocator.h"
#include "qcow2j/check.h"
#include "qcow2j/file.h"
#include "recovery/refcount_map.h"

namespace qcow2j {

// What a host cluster holds, as the first reference to it says. Metadata is
// counted before L2 tables and L2 tables before data, so that when two uses
// collide the later, suspicious one (an L2 entry pointing into a refcount
// block, say) is the one reported and dropped by repair.
enum class ClusterUse : uint8_t {
  kFree,
  kHeader,
  kL1,
  kRefcountTable,
  kRefcountBlock,
  kSnapshotTable,
  kBitmapDirectory,
  kBitmapTable,
  kBitmapData,
  kJournal,
  kL2,
  kData,
  kCompressed,
};
const char* ClusterUseName(ClusterUse use);

// One ClusterUse per host cluster of the file, packed two to a byte: 8 MiB
// for a 1 TiB image of 64 KiB clusters.
class ClusterOwners {
 public:
  uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // n clusters, all kFree. Throws std::bad_alloc.
  void Reset(uint64_t n) {
    const uint64_t bytes = (n + 1) / 2;
    if (packed_.empty() && packed_.capacity() < bytes) {
      packed_.resize(bytes);  // zeroed memory (kFree): no page touched
    } else {
      packed_.assign(bytes, 0);
    }
    size_ = n;
  }
  ClusterUse operator[](uint64_t k) const {
    return static_cast<ClusterUse>((packed_[k >> 1] >> Shift(k)) & 0xf);
  }
  void Set(uint64_t k, ClusterUse use) {
    uint8_t& b = packed_[k >> 1];
    b = static_cast<uint8_t>((b & ~(0xf << Shift(k))) | static_cast<uint8_t>(use) << Shift(k));
  }

 private:
  static_assert(static_cast<int>(ClusterUse::kFree) == 0);
  static_assert(static_cast<int>(ClusterUse::kCompressed) < 16, "a ClusterUse fits 4 bits");
  static int Shift(uint64_t k) { return (k & 1) * 4; }

  std::vector<uint8_t, HugePageAllocator<uint8_t>> packed_;
  uint64_t size_ = 0;
};

// An 8-byte big-endian word of the file that repair rewrites (an L1 or L2
// entry, an extended L2 bitmap word).
struct WordFix {
  uint64_t offset = 0;
  uint64_t value = 0;
  LostRange lost;  // length 0 when no guest data is dropped
};

// The snapshot table as found, entry by entry.
struct SnapshotRecord {
  uint32_t index = 0;
  std::string id, name;
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::vector<uint8_t> raw;  // the whole entry as stored, padding included
  bool bad = false;          // repair drops the entry
  bool drop_extra = false;   // repair keeps the entry without its extra data
  bool fill_extra = false;   // version 3 entry without the 16 bytes of extra data it needs
};

struct ScanOptions {
  // Count the refcount table and blocks as references (false when computing
  // the refcounts a rebuilt structure must hold: the old one goes away).
  bool count_refcount_structures = true;
  std::function<void(const std::string&)> on_message;
  // Problems get their message text. Without it (and without on_message)
  // they carry only kind, offset and counts: enough for a repair.
  bool keep_messages = true;
  // Called with the fraction (0..1] of the pass's L2 tables read so far.
  std::function<void(double)> on_progress;
};

struct ScanResult {
  Header header;          // parsed; table fields hold the file's values
  uint64_t file_size = 0;
  uint64_t nb_clusters = 0;  // clusters of the file (plus a partial last one)
  CheckReport report;
  RefcountMap computed;  // references found
  RefcountMap ondisk;    // refcounts the refcount structure holds

  // The refcount structure cannot be patched in place: rebuild it.
  bool rebuild_needed = false;
  bool reftable_usable = false;
  // Per refcount table index: the block's offset when it is usable, else 0.
  std::vector<uint64_t> refblocks;

  // Repairs of -r all, in the order repair applies them.
  std::vector<WordFix> entry_fixes;   // bad L1/L2 entries, reserved bits, bitmaps
  std::vector<WordFix> copied_fixes;  // OFLAG_COPIED only
  std::vector<SnapshotRecord> snapshots;
  bool snapshot_table_fix = false;  // some entries are dropped or trimmed
  bool drop_all_snapshots = false;  // the table itself is unusable
  bool drop_bitmaps = false;        // clear the bitmaps autoclear bit
  uint64_t min_file_size = 0;       // grow the file to this (tables past EOF)

  // Per host cluster, what its first reference says it holds (salvage uses
  // it to tell data from metadata).
  ClusterOwners owners;
};

// Runs one pass. A Status error means the check cannot be done at all
// (unreadable file, header that is not qcow2).
Result<std::unique_ptr<ScanResult>> ScanImage(File* file, const ScanOptions& opts);

// Reads and parses the header (and its extensions) with the table fields
// (L1, refcount table, snapshot table) as stored, unvalidated: the caller
// judges them. An error when the file is not a usable qcow2 image at all.
Result<Header> ReadHeaderAsStored(File* file, uint64_t file_size);

// "0x1f0000" formatting shared by the recovery files.
std::string HexStr(uint64_t v);

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_CHECKER_H_
