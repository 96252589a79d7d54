// Repairs for `check -r leaks|all`: each round applies one kind of fix found
// by a checker pass (structural entry fixes, then refcounts, then COPIED
// flags) and the caller checks again, so every fix is computed from a
// consistent view of the file.
#ifndef QCOW2J_RECOVERY_REPAIR_H_
#define QCOW2J_RECOVERY_REPAIR_H_

#include <functional>
#include <string>

#include "qcow2j/check.h"
#include "qcow2j/file.h"
#include "recovery/checker.h"

namespace qcow2j {

struct RepairContext {
  File* file = nullptr;
  RepairMode mode = RepairMode::kNone;
  std::function<void(const std::string&)> on_message;
  std::vector<LostRange>* lost = nullptr;  // guest ranges whose mapping was dropped
  bool* rebuilt = nullptr;  // set once the refcounts were rebuilt: never twice
};

// Applies the most urgent kind of fix that `scan` found. True when the file
// was changed (check again and call once more), false when nothing is left
// that this mode repairs.
Result<bool> RepairRound(const RepairContext& ctx, const ScanResult& scan);

// Writes a new refcount table and blocks after the end of the file holding
// `refs` (the references of a pass that did not count the old refcount
// structure), syncs, then points the header at them and syncs again. A crash
// before the header write leaves the old structure in use and the new one as
// leaked clusters past it.
Status RebuildRefcounts(File* file, const ScanResult& refs);

// Clears the dirty and corrupt incompatible bits (after a clean repair).
Status ClearDirtyAndCorrupt(File* file, const ScanResult& scan);

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_REPAIR_H_
