// Checking and repairing a qcow2 image file: the library side of
// `qcow2j check`, after qemu-img check. The checker reads the file itself
// (through an Env) rather than opening an Image, because an image worth
// checking may be too broken for the engine to open.
#ifndef QCOW2J_CHECK_H_
#define QCOW2J_CHECK_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

enum class RepairMode {
  kNone,   // check only; the file is opened read-only
  kLeaks,  // qemu-img check -r leaks: lower refcounts that are too high
  kAll,    // qemu-img check -r all: everything that can be repaired
};

struct CheckOptions {
  RepairMode repair = RepairMode::kNone;
  Env* env = nullptr;  // nullptr: Env::Default()
  // Called with every problem line as it is found (QEMU prints these on
  // stderr: "ERROR cluster 5 refcount=1 reference=2").
  std::function<void(const std::string& line)> on_message;
  // Called with the percentage done (0..100) as the check goes (qemu-img's
  // -p): the first pass is all of it without repair; with repair it is the
  // first half and the double check the second.
  std::function<void(double percent)> on_progress;
};

// One inconsistency: what is wrong and where.
struct CheckProblem {
  // A short stable name: "refcount-mismatch", "leak", "copied-flag",
  // "reserved-bits", "unaligned", "past-eof", "overlap", "refcount-overflow",
  // "refcount-table", "refcount-block", "snapshot", "bitmap", "subcluster-bitmap",
  // "header".
  std::string kind;
  uint64_t offset = 0;  // host offset the problem is about (0 when none)
  std::string message;  // the line printed for it
  bool leak = false;    // counted as a leak rather than a corruption
  bool counted = true;  // false for notes (dirty bit, corrupt bit)
};

// A guest range whose mapping a repair dropped (the data there is lost).
struct LostRange {
  uint64_t guest_offset = 0;
  uint64_t length = 0;
  std::string snapshot;  // "" for the active image, else the snapshot's id
  std::string reason;    // salvage: why the range could not be read ("" from repair)
};

// The result of a check, with qemu-img check's fields (ImageCheck in QAPI).
struct CheckReport {
  std::string filename;
  std::string format = "qcow2";
  uint64_t check_errors = 0;
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t total_clusters = 0;
  uint64_t allocated_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  uint64_t image_end_offset = 0;
  // Problems of the final pass (after a repair: of the double check).
  std::vector<CheckProblem> problems;
  // Problems the first pass found before a repair (empty without repair).
  std::vector<CheckProblem> repaired_problems;
  std::vector<LostRange> lost;
  bool repaired = false;  // a repair ran and the image was checked again
};

// Checks (and with opts.repair, repairs) the qcow2 image at `path`.
// A Status error means the check could not be completed (qemu-img's exit
// code 1): the file cannot be read or its header is not a usable qcow2
// header. Problems in the image are reported in the CheckReport.
Result<CheckReport> CheckImage(const std::string& path, const CheckOptions& opts);

// ---- salvage ----
// For an image whose metadata is too broken to repair in place: every guest
// byte of the active image that can still be read is copied into a new
// qcow2 image. Only the damaged image is read; it is never written.

struct SalvageOptions {
  Env* env = nullptr;  // nullptr: Env::Default(); used for both files
  // Called with notes as they arise (snapshots left behind, a failed walk).
  std::function<void(const std::string& line)> on_message;
  // Over a backing file, lost ranges are written as zero clusters up to this
  // many clusters (one L2 entry each: 1 Mi is 64 GiB of 64 KiB clusters);
  // past it they stay unallocated and read from the backing file (noted).
  uint64_t max_zeroed_lost_clusters = uint64_t{1} << 20;
};

struct SalvageReport {
  std::string filename;  // the damaged image
  std::string output;    // the new image
  uint64_t virtual_size = 0;
  uint64_t cluster_size = 0;
  uint64_t data_clusters = 0;  // guest clusters whose data was copied (all or in part)
  uint64_t zero_clusters = 0;  // guest clusters that read as zeros by their L2 entry
  uint64_t lost_clusters = 0;  // guest clusters that could not be read (all or in part)
  // Guest ranges of the active image that could not be read, adjacent ones
  // merged (`reason` is the first one's). They read as zeros in the output.
  std::vector<LostRange> lost;
  std::vector<std::string> notes;
};

// Creates `output` (which must not exist): a qcow2 image with the virtual
// size, cluster size, extended-L2 setting and backing file name of `path`,
// holding every guest cluster of `path` whose L2 entry, compressed
// descriptor and data are valid and readable. A cluster is lost when its L1
// or L2 entry is unreadable, has reserved bits set, is unaligned, points
// past the end of the file or at metadata, or its compressed data does not
// decompress. Internal snapshots and persistent bitmaps are not copied.
// A Status error means nothing usable was produced (the header is not a
// usable qcow2 header, the output cannot be created or written); the
// output is then removed.
Result<SalvageReport> SalvageImage(const std::string& path, const std::string& output,
                                   const SalvageOptions& opts);

}  // namespace qcow2j

#endif  // QCOW2J_CHECK_H_
