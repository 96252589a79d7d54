// Internal snapshots of a closed qcow2 image file: the library side of
// `qcow2j snapshot -c/-a/-d/-l`, after `qemu-img snapshot`. Like qemu-img,
// these work on an image that nothing else has open: they edit the file's
// L1/L2 tables, refcounts and snapshot table directly (no engine). On an
// image that uses qcow2j's journal each operation is one journal
// transaction: a crash leaves all of it or none of it (the next read-write
// open replays it), with no leak and no COPIED mismatch. Otherwise they
// write in an order that never loses data if the process dies part way:
// the worst a crash leaves is leaked clusters and OFLAG_COPIED flags that
// disagree with a refcount of 1 (both reported by check, both repaired by
// `check -r all`; docs/crash-safety.md).
#ifndef QCOW2J_SNAPSHOT_H_
#define QCOW2J_SNAPSHOT_H_

#include <string>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "qcow2j/status.h"

namespace qcow2j {

// Creates a snapshot of the active image named `name`. Its id is the highest
// numeric id in the table plus one, as QEMU assigns ids; an existing name is
// allowed (qemu-img allows it too). The date is now, the VM clock and the
// VM state size 0, the disk size the current virtual size.
// Every change is computed and checked in memory before the first write, so
// a failure changes nothing visible (at most a few clusters leak):
//   InvalidArgument  a refcount would exceed refcount_bits (refcount_bits=1
//                    cannot share a cluster: no snapshot of a non-empty image)
//   NotSupported     not qcow2, external data file, table limits
//   Corruption       inconsistent tables (the message names field and offset)
//                    or the corrupt bit
//   Busy             dirty bit or un-checkpointed journal: recover it first
// The same refusals apply to ApplySnapshot and DeleteSnapshot.
Status CreateSnapshot(const std::string& path, const std::string& name, Env* env = nullptr);

// Reverts the active image to snapshot `name_or_id` (matched by id first,
// then by the first entry with that name, as qcow2's goto does). The
// virtual size becomes the snapshot's disk size. NotFound when there is no
// such snapshot.
Status ApplySnapshot(const std::string& path, const std::string& name_or_id, Env* env = nullptr);

// Deletes snapshot `name_or_id` (id first, then name) and frees the clusters
// only it referenced (their ranges are punched out of the file).
Status DeleteSnapshot(const std::string& path, const std::string& name_or_id, Env* env = nullptr);

// The snapshot table, in table order.
Result<std::vector<SnapshotInfo>> ListSnapshots(const std::string& path, Env* env = nullptr);

}  // namespace qcow2j

#endif  // QCOW2J_SNAPSHOT_H_
