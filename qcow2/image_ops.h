// Offline edits of a closed qcow2 file that qemu-img's commit, rebase and
// amend need besides reading and writing guest data: rewriting the backing
// file name, emptying the active image, and amending header-level options.
// Like the snapshot operations (include/qcow2j/snapshot.h) they work on a
// file nothing else has open, refuse an image that needs recovery first
// (dirty bit, un-checkpointed journal, corrupt bit), and order their writes
// so that a crash part way leaves at most leaked clusters.
#ifndef QCOW2J_QCOW2_IMAGE_OPS_H_
#define QCOW2J_QCOW2_IMAGE_OPS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "qcow2j/status.h"

namespace qcow2j {

// Sets the backing file name stored in the header (verbatim: a relative
// name is relative to the image's folder) and its format; an empty `name`
// removes the backing file and its format (qemu's bdrv_change_backing_file).
// Only the header changes: the caller makes sure the guest view stays what
// it should be (rebase's safe mode copies the differing clusters first).
//   NoSpace          the header and the name do not fit in the first cluster
//   InvalidArgument  name longer than 1023 bytes, or a raw external data file
//   NotSupported     not a qcow2 image
Status ChangeBackingFile(const std::string& path, const std::string& name,
                         const std::string& format, Env* env = nullptr);

// Drops every cluster of the active image (its L1 table becomes empty), so
// every read falls through to the backing file: what qemu-img commit does to
// the top image after committing it. Clusters still referenced by internal
// snapshots stay; the rest are freed and punched out of the file.
//   NotSupported     not qcow2, or an external data file
Status MakeEmpty(const std::string& path, Env* env = nullptr);

// What `qemu-img amend -o` asks for; an unset field is left as it is.
struct AmendRequest {
  std::optional<int> version;             // compat: 2 (0.10) or 3 (1.1)
  std::optional<bool> lazy_refcounts;
  std::optional<uint32_t> refcount_bits;  // a power of two, 1..64 (v3 only)
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  // size=: applied by the caller through the engine (Image::Resize), before
  // AmendImage, as QEMU resizes before it downgrades.
  std::optional<uint64_t> size;
  // journal=on|off: the metadata journal (qcow2j's header extension; an
  // idle journal on a closed image has no area, so nothing else changes).
  std::optional<bool> journal;
};

// Applies `req` to the header of a closed qcow2 image, in QEMU's order:
// upgrade, lazy refcounts, backing file, downgrade last. A downgrade to
// compat=0.10 first turns v3 zero clusters into what v2 can express
// (unallocated without a backing file, else zero-filled data clusters), and
// is refused where that is not safe offline (zero clusters in tables shared
// with snapshots, zstd compressed clusters, features v2 lacks).
// `progress` (may be empty) gets 0..100.
//   InvalidArgument  a value QEMU refuses too (the message is QEMU's)
//   NotSupported     a change qcow2j does not make (refcount_bits)
Status AmendImage(const std::string& path, const AmendRequest& req,
                  const std::function<void(double)>& progress, Env* env = nullptr);

// The persistent bitmaps of a qcow2 file (none when the bitmaps extension is
// absent or inconsistent), as QEMU loads them: measure sizes them.
Result<std::vector<BitmapInfo>> ListBitmaps(const std::string& path, Env* env = nullptr);

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_IMAGE_OPS_H_
