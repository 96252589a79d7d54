// Reading a journal back for replay (docs/journal-format.md, "Replay"): the
// committed transactions from the superblock's tail, minus the unconfirmed
// ones whose data never fully landed. Applying the records is the engine's
// job (qcow2/qcow2_journal.cc); this part only decides what to apply.
#ifndef QCOW2J_RECOVERY_JOURNAL_REPLAY_H_
#define QCOW2J_RECOVERY_JOURNAL_REPLAY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "journal/journal_format.h"
#include "journal/journal_ring.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

struct JournalReplayPlan {
  JournalSuperblock superblock;
  uint64_t transactions = 0;    // applied, in order
  uint64_t records = 0;         // records in the applied transactions
  uint64_t bytes = 0;           // ring bytes of the applied transactions
  uint64_t dropped = 0;         // unconfirmed transactions whose data did not match
  uint64_t verified = 0;        // unconfirmed transactions kept because their data matched
  std::string dropped_reason;   // the first data mismatch, for the report
};

// Called once per transaction to keep, in sequence order.
using JournalApplyFn = std::function<Status(const JournalTransaction&)>;

// Called at most once, before the first transaction kept on the strength of
// its data checksums is applied, with the superblock in force, the last
// such sequence and the checksums verified: a writer makes that verdict
// durable (MarkJournalVerified) before it writes in place any byte those
// checksums describe, or a later replay would drop those transactions.
using JournalVerifiedFn = std::function<Status(const JournalSuperblock& sb, uint64_t through,
                                              const std::vector<DataChecksum>& sums)>;

// Scans the ring of `ext` in `file` (the image file) and hands each committed
// transaction to `apply` as soon as it is known to stand: once a later frame
// confirms it, or, for the unconfirmed ones at the end, once the data
// checksums of all of them have been verified against `data_file` (the image
// file unless an external data file is used). Memory stays bounded by the
// read-ahead window and the few transactions awaiting confirmation, whatever
// the journal size. Corruption naming the field for a broken superblock or
// frame; I/O errors as they are. On such an error the transactions already
// applied form a committed prefix of the journal: a consistent state.
// Transactions the superblock's verified_count covers count as confirmed.
Result<JournalReplayPlan> ReplayJournalRing(File* file, File* data_file,
                                            const JournalExtension& ext,
                                            const JournalApplyFn& apply,
                                            const JournalVerifiedFn& verified = nullptr);

// "replayed 3 transactions (41 records), dropped 1 unconfirmed" and the like.
std::string DescribeReplay(const JournalReplayPlan& plan);

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_JOURNAL_REPLAY_H_
