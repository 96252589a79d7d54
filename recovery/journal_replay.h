// Reading a journal back for replay (docs/journal-format.md, "Replay"): the
// committed transactions from the superblock's tail, minus the unconfirmed
// ones whose data never fully landed. Applying the records is the engine's
// job (qcow2/qcow2_journal.cc); this part only decides what to apply.
#ifndef QCOW2J_RECOVERY_JOURNAL_REPLAY_H_
#define QCOW2J_RECOVERY_JOURNAL_REPLAY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "journal/journal_format.h"
#include "journal/journal_ring.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

struct JournalReplayPlan {
  JournalSuperblock superblock;
  std::vector<JournalTransaction> kept;  // in order: apply these
  uint64_t dropped = 0;                  // unconfirmed transactions whose data did not match
  uint64_t records = 0;                  // records in the kept transactions
  std::string dropped_reason;            // the first data mismatch, for the report
};

// Scans the ring of `ext` in `file` (the image file). Data checksums of
// unconfirmed transactions are verified against `data_file` (the image file
// unless an external data file is used). Corruption naming the field for a
// broken superblock or frame; I/O errors as they are.
Result<JournalReplayPlan> ReadJournalForReplay(File* file, File* data_file,
                                               const JournalExtension& ext);

// "replayed 3 transactions (41 records), dropped 1 unconfirmed" and the like.
std::string DescribeReplay(const JournalReplayPlan& plan);

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_JOURNAL_REPLAY_H_
