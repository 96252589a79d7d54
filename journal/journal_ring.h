// The journal area on a File: formatting it, appending frames to the ring,
// advancing the tail, and scanning committed transactions back (after
// LevelDB's log::Writer / log::Reader). Every read and write is
// sector-aligned and a sector multiple, so it works on an O_DIRECT File.
//
// Ring geometry (offsets relative to the area start):
//   [0, 2*sector)            superblock slots 0 and 1
//   [ring_start, area_size)  frames, back to back; a frame never wraps
// When a frame does not fit before area_size, a one-sector wrap marker is
// written where it would have started (unless that is exactly area_size)
// and the frame goes to ring_start.
#ifndef QCOW2J_JOURNAL_JOURNAL_RING_H_
#define QCOW2J_JOURNAL_JOURNAL_RING_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "journal/journal_format.h"
#include "journal/journal_record.h"
#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

// Writes a fresh, empty journal of a new generation: both superblock slots
// (checkpoint numbers 0 and 1, tail at ring_start with first_sequence), then
// syncs. Frames of the previous generation left in the ring are dead from
// here on. Returns the superblock now in force.
Result<JournalSuperblock> FormatJournal(File* file, const JournalExtension& ext,
                                        uint64_t first_sequence = 1);

// Reads both superblock slots and returns the one in force (see
// ChooseJournalSuperblock). I/O errors are returned as they are.
Result<JournalSuperblock> ReadJournalSuperblock(File* file, const JournalExtension& ext);

// Recovery's confirmation of transactions it kept on the strength of their
// data checksums: writes `sb` with verified_count covering every sequence
// up to `through` into the other slot, then syncs. The caller must have made
// that data durable first (a sync), or a crash could leave a superblock
// vouching for data that never landed. Returns the superblock now in force.
Result<JournalSuperblock> MarkJournalVerified(File* file, const JournalExtension& ext,
                                              const JournalSuperblock& sb, uint64_t through);

// Appends transactions to the ring. Starts on an empty ring (after
// FormatJournal, or after recovery checkpointed everything it replayed):
// head = tail = sb.tail_offset. Not thread-safe: the group-commit layer
// serialises commits.
class JournalWriter {
 public:
  JournalWriter(File* file, const JournalExtension& ext, const JournalSuperblock& sb);

  JournalWriter(const JournalWriter&) = delete;
  JournalWriter& operator=(const JournalWriter&) = delete;

  const JournalGeneration& generation() const { return sb_.generation; }
  uint32_t sector_size() const { return ext_.sector_size; }
  // Sequence the next frame must carry.
  uint64_t next_sequence() const { return next_sequence_; }
  // Highest sequence made durable by Sync() (tail_sequence - 1 at start:
  // whatever the superblock released was durable).
  uint64_t synced_through() const { return synced_through_; }
  // Sequence of the oldest transaction not yet checkpointed.
  uint64_t tail_sequence() const { return sb_.tail_sequence; }
  // Area offset where the next frame goes if it fits before the area end.
  uint64_t head_offset() const { return head_; }
  // Ring bytes not holding live frames (wasted tails before a wrap count as used).
  uint64_t free_bytes() const { return ext_.ring_bytes() - used_; }
  // True when nothing awaits a checkpoint.
  bool empty() const { return used_ == 0; }

  // Whether a frame of frame_bytes could be appended now.
  bool Fits(uint64_t frame_bytes) const;

  // Writes `frame` (from TransactionBuilder::Finish with next_sequence() and
  // this generation) into the ring and sets *offset to its area offset.
  // Does not sync: the transaction is committed once Sync() returns.
  // NoSpace ("journal full") when it does not fit: checkpoint, then retry.
  // InvalidArgument when the frame is not the expected next frame. A write
  // error leaves the head where it was (the frame may be appended again: it
  // overwrites whatever part landed); a failed Sync stops the writer for
  // good (Aborted), since what reached the disk is unknown.
  Status Append(std::span<const uint8_t> frame, uint64_t* offset);

  // Makes every appended frame durable (File::Sync) and raises synced_through().
  Status Sync();

  // Releases the transactions below first_live_sequence: writes the
  // superblock (other slot, tail at that transaction, or at the head when
  // first_live_sequence == next_sequence()) and syncs. The caller must have
  // written those transactions' metadata in place AND synced it before: after
  // this returns, replay will no longer see them. first_live_sequence must be
  // in [tail_sequence(), min(next_sequence(), synced_through() + 1)].
  Status AdvanceTail(uint64_t first_live_sequence);

 private:
  struct Live {
    uint64_t sequence;
    uint64_t offset;  // where the frame itself starts
    uint64_t length;
    uint64_t waste;   // bytes skipped at the area end before it (wrap)
  };

  File* file_;
  JournalExtension ext_;
  JournalSuperblock sb_;
  uint64_t head_;
  uint64_t used_ = 0;
  uint64_t next_sequence_;
  uint64_t synced_through_;
  std::deque<Live> live_;
  bool failed_ = false;
};

// One transaction as read back.
struct JournalTransaction {
  uint64_t sequence = 0;
  uint64_t synced_through = 0;
  uint64_t offset = 0;  // area offset of its frame
  uint32_t length = 0;
  std::vector<JournalRecord> records;
};

// Yields the committed transactions from the superblock's tail, in order,
// stopping at the first frame that is not the next valid one.
class JournalReader {
 public:
  JournalReader(File* file, const JournalExtension& ext, const JournalSuperblock& sb);

  // Fills *txn and returns true, or returns false at the end; status() then
  // tells why: IsEndOfJournal(status()) for a clean end (torn, stale or
  // zeroed frame, or the whole ring read), Corruption for a checksummed frame
  // that breaks the format, IOError for a failed read. Only the clean end
  // means "everything committed has been seen".
  // txn->records is reused: pass the same (or a recycled) transaction to
  // avoid allocating per record.
  bool Next(JournalTransaction* txn);

  const Status& status() const { return status_; }
  // Where a writer would continue, the sequence it would use, and the ring
  // bytes in use from the tail to there.
  uint64_t end_offset() const { return pos_; }
  uint64_t next_sequence() const { return sequence_; }
  uint64_t used_bytes() const { return consumed_; }
  // Highest synced_through among the transactions returned: transactions
  // above it are unconfirmed (their data may not have reached the disk).
  uint64_t max_synced_through() const { return max_synced_through_; }

 private:
  bool Stop(Status s);
  Status Fetch(uint64_t pos, size_t n, const uint8_t** out);

  // Frames are read through a window of at least this many bytes: a long
  // journal takes large reads, not two small ones per frame. Not larger:
  // every page of the window is faulted in once, and on a virtual machine a
  // fault costs about as much as copying 64 KiB (4 MiB windows made the
  // faults a fifth of a 64 MiB replay).
  static constexpr size_t kReadAhead = 512u << 10;

  File* file_;
  JournalExtension ext_;
  JournalGeneration generation_;
  uint64_t pos_;
  uint64_t sequence_;
  uint64_t consumed_ = 0;
  uint64_t max_synced_through_ = 0;
  bool done_ = false;
  Status status_;
  std::unique_ptr<uint8_t[]> buf_;  // the read-ahead window (never zero-filled:
  size_t buf_size_ = 0;             // every byte used was read first)
  uint64_t window_pos_ = 0;   // area offset of buf_[0]
  size_t window_len_ = 0;     // valid bytes in buf_
};

}  // namespace qcow2j

#endif  // QCOW2J_JOURNAL_JOURNAL_RING_H_
