// Journal records and the frames that carry them. A transaction is one
// sector-padded frame: a 64-byte header, then records, then zero padding;
// one XXH64 covers the whole frame, so a torn or stale frame never decodes.
// Every record holds absolute values (never deltas), so replaying a
// transaction twice leaves the same image as replaying it once.
// Layouts: docs/journal-format.md.
#ifndef QCOW2J_JOURNAL_JOURNAL_RECORD_H_
#define QCOW2J_JOURNAL_JOURNAL_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "journal/journal_format.h"
#include "qcow2j/status.h"

namespace qcow2j {

// Record type codes on disk.
enum class JournalRecordType : uint16_t {
  kL2Update = 1,
  kL2UpdateExtended = 2,
  kL1Update = 3,
  kRefcountUpdate = 4,
  kRefcountRun = 5,
  kNewTable = 6,
  kRefcountTableUpdate = 7,
  kHeaderUpdate = 8,
  kDataChecksum = 9,
  kL2CopiedRun = 10,
};

// Entries [first_index, first_index + count) of the L2 table at host offset
// table_offset take these raw values. Standard L2: entries holds count
// 64-bit entries. Extended L2: entries holds 2 * count words, each entry as
// (L2 entry, subcluster bitmap), in on-disk order.
struct L2Update {
  uint64_t table_offset = 0;
  uint32_t first_index = 0;
  bool extended = false;
  std::vector<uint64_t> entries;

  uint32_t count() const {
    return static_cast<uint32_t>(extended ? entries.size() / 2 : entries.size());
  }
  bool operator==(const L2Update&) const = default;
};

// Entry `index` of the L1 table at host offset table_offset becomes value.
struct L1Update {
  uint64_t table_offset = 0;
  uint32_t index = 0;
  uint64_t value = 0;
  bool operator==(const L1Update&) const = default;
};

// The refcount of host cluster cluster_index becomes value.
struct RefcountUpdate {
  uint64_t cluster_index = 0;
  uint64_t value = 0;
  bool operator==(const RefcountUpdate&) const = default;
};

// The refcounts of host clusters [first_cluster, first_cluster + count)
// all become value.
struct RefcountRun {
  uint64_t first_cluster = 0;
  uint64_t count = 0;
  uint64_t value = 0;
  bool operator==(const RefcountRun&) const = default;
};

enum class JournalTableKind : uint8_t { kL2Table = 1, kRefcountBlock = 2 };

// The cluster at host_offset is a zero-filled table of this kind from now on
// (replay zeroes it before applying later records that update it).
struct NewTable {
  JournalTableKind kind = JournalTableKind::kL2Table;
  uint64_t host_offset = 0;
  bool operator==(const NewTable&) const = default;
};

// Entry `index` of the refcount table becomes block_offset.
struct RefcountTableUpdate {
  uint64_t index = 0;
  uint64_t block_offset = 0;
  bool operator==(const RefcountTableUpdate&) const = default;
};

// Image header bytes [offset, offset + bytes.size()) take these values
// (L1 / refcount-table moves, snapshot-table switches).
struct HeaderUpdate {
  uint32_t offset = 0;
  std::vector<uint8_t> bytes;
  bool operator==(const HeaderUpdate&) const = default;
};

// The data this transaction's L2 updates point at: host bytes
// [host_offset, host_offset + length) hash (XXH64, seed 0) to hash. Replay
// checks it only for unconfirmed transactions (docs/journal-format.md).
struct DataChecksum {
  uint64_t host_offset = 0;
  uint64_t length = 0;
  uint64_t hash = 0;
  bool operator==(const DataChecksum&) const = default;
};

// The OFLAG_COPIED bit of entries [first_index, first_index + count) of the
// L2 table at host offset table_offset: cleared in every entry (set =
// false), or set (set = true) in every entry that maps a host cluster (not
// compressed, host offset non-zero), the others left alone. Only the flag
// changes, so one record covers a whole table whatever its entries hold:
// the offline snapshot operations use it to flip COPIED across the image
// in one transaction (a 1 TiB image: one record per L2 table, not per entry).
struct L2CopiedRun {
  uint64_t table_offset = 0;
  uint32_t first_index = 0;
  uint32_t count = 0;
  bool set = false;
  bool operator==(const L2CopiedRun&) const = default;
};

using JournalRecord = std::variant<L2Update, L1Update, RefcountUpdate, RefcountRun, NewTable,
                                   RefcountTableUpdate, HeaderUpdate, DataChecksum, L2CopiedRun>;

// Bounds checked by the codec (the engine checks offsets against its own
// cluster size and file when applying).
inline constexpr uint32_t kJournalMaxL2Entries = (1u << 21) / 8;  // 2 MiB cluster, 8-byte entries
inline constexpr uint32_t kJournalMaxHeaderBytes = 1u << 21;      // the header cluster
inline constexpr uint64_t kJournalMaxDataChecksumBytes = 1ull << 32;

// Size of a record once encoded (type/length prefix included).
size_t EncodedRecordBytes(const JournalRecord& r);

// Frame kinds.
enum class JournalFrameKind : uint16_t {
  kTransaction = 1,
  // Marks that the ring wraps here: the frame with this sequence is at the
  // start of the ring. Always one sector.
  kWrap = 2,
};

// The 64-byte frame header, as read before the checksum can be verified.
struct JournalFrameHeader {
  JournalFrameKind kind = JournalFrameKind::kTransaction;
  uint64_t sequence = 0;
  uint64_t synced_through = 0;  // highest sequence durable when this frame was written
  uint32_t length = 0;          // whole frame, multiple of the sector size
  uint32_t payload_bytes = 0;   // records, excluding header and padding
  uint32_t record_count = 0;
  JournalGeneration generation{};
};

struct JournalFrame {
  JournalFrameHeader header;
  std::vector<JournalRecord> records;  // empty for a wrap marker
};

// Collects records for one transaction and produces its frame.
class TransactionBuilder {
 public:
  // Validates and appends; InvalidArgument (naming the field) if the record
  // breaks a codec bound, which would make the frame undecodable.
  Status Add(const JournalRecord& record);
  void Clear();

  bool empty() const { return record_count_ == 0; }
  uint32_t record_count() const { return record_count_; }
  size_t payload_bytes() const { return payload_.size(); }
  // Bytes the frame will take: header + payload rounded up to the sector.
  size_t FrameBytes(uint32_t sector_size) const;

  // The frame for `sequence`. synced_through < sequence. InvalidArgument if
  // the frame would exceed kJournalMaxFrameBytes.
  Result<std::vector<uint8_t>> Finish(uint64_t sequence, uint64_t synced_through,
                                      const JournalGeneration& generation,
                                      uint32_t sector_size) const;

 private:
  std::vector<uint8_t> payload_;
  uint32_t record_count_ = 0;
};

// A one-sector wrap marker announcing that frame `sequence` starts the ring.
std::vector<uint8_t> EncodeWrapMarker(uint64_t sequence, uint64_t synced_through,
                                      const JournalGeneration& generation, uint32_t sector_size);

// True for the Status that DecodeFrameHeader/DecodeTransaction return when the
// bytes are simply not the next frame (zeros, a torn write, a frame from an
// earlier lap or generation): the clean end of the journal. Any other error
// is real corruption of a frame whose checksum verified, or an I/O error.
bool IsEndOfJournal(const Status& s);

// Checks what can be checked from the first sector alone: magic, kind,
// generation, sequence == expected_sequence, and a length that is a sector
// multiple no larger than max_length. Failures are end of journal.
Result<JournalFrameHeader> DecodeFrameHeader(std::span<const uint8_t> bytes,
                                             uint64_t expected_sequence,
                                             const JournalGeneration& generation,
                                             uint32_t sector_size, uint64_t max_length);

// Validates a whole frame (bytes may extend past it) and decodes its records.
// End of journal when the header checks fail, the bytes end before the frame
// does, or the checksum does not match. Corruption (naming the field and the
// byte offset inside the frame) when the checksum matches but the contents
// break the format.
Result<JournalFrame> DecodeTransaction(std::span<const uint8_t> bytes, uint64_t expected_sequence,
                                       const JournalGeneration& generation,
                                       uint32_t sector_size);
// The same, into a caller's header and record vector. Slots of *records are
// reused (an L2 update keeps its entry buffer), so a reader that recycles one
// vector decodes a long journal without allocating per record.
Status DecodeTransactionInto(std::span<const uint8_t> bytes, uint64_t expected_sequence,
                             const JournalGeneration& generation, uint32_t sector_size,
                             JournalFrameHeader* header, std::vector<JournalRecord>* records);

}  // namespace qcow2j

#endif  // QCOW2J_JOURNAL_JOURNAL_RECORD_H_
