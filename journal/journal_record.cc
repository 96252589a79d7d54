#include "journal/journal_record.h"

#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <cstring>
#include <type_traits>

#include "metadata/endian.h"
#include "metadata/zero_bytes.h"

namespace qcow2j {

namespace {

// Frame header layout (big-endian).
constexpr size_t kFhMagic = 0;
constexpr size_t kFhKind = 4;
constexpr size_t kFhReserved16 = 6;
constexpr size_t kFhSequence = 8;
constexpr size_t kFhSyncedThrough = 16;
constexpr size_t kFhLength = 24;
constexpr size_t kFhPayloadBytes = 28;
constexpr size_t kFhRecordCount = 32;
constexpr size_t kFhReserved32 = 36;
constexpr size_t kFhGeneration = 40;
constexpr size_t kFhChecksum = 56;
static_assert(kFhChecksum + 8 == kJournalFrameHeaderBytes);

// Every record starts with: u16 type, u16 reserved (0), u32 body length.
constexpr size_t kRecordPrefixBytes = 8;

constexpr uint64_t kMaxHostOffset = kJournalMaxOffset;
constexpr uint64_t kMaxClusterIndex = kJournalMaxOffset / 512;
constexpr uint64_t kMaxL1Entries = (32ull << 20) / 8;            // QEMU's 32 MiB L1 limit
constexpr uint64_t kMaxRefcountTableEntries = (8ull << 20) / 8;  // QEMU's 8 MiB limit

Status EndOfJournal(const std::string& why) {
  return Status::NotFound("end of journal: " + why);
}

Status FrameCorruption(const std::string& what, size_t at) {
  return Status::Corruption("journal frame: " + what + " at frame offset " + JournalHex(at));
}

uint64_t FrameChecksum(std::span<const uint8_t> frame) {
  static const uint8_t kZeros[8] = {};
  XXH64_state_t state;
  XXH64_reset(&state, 0);
  XXH64_update(&state, frame.data(), kFhChecksum);
  XXH64_update(&state, kZeros, sizeof(kZeros));
  XXH64_update(&state, frame.data() + kJournalFrameHeaderBytes,
               frame.size() - kJournalFrameHeaderBytes);
  return XXH64_digest(&state);
}

bool TableOffsetOk(uint64_t off) { return off != 0 && off % 512 == 0 && off < kMaxHostOffset; }

// The rules a record must meet to be encodable and decodable. Returns an
// empty string when it does, else "field value: why". Called on the concrete
// record by the decoder (no visit per record: replay decodes millions).
template <class T>
inline std::string CheckFields(const T& r) {
  if constexpr (std::is_same_v<T, L2Update>) {
    if (!TableOffsetOk(r.table_offset)) {
      return "L2 update table_offset " + JournalHex(r.table_offset) +
             " is zero, unaligned to 512 or beyond 2^56";
    }
    if (r.extended && r.entries.size() % 2 != 0) {
      return "extended L2 update has an odd number of words " +
             std::to_string(r.entries.size());
    }
    const uint64_t max = r.extended ? kJournalMaxL2Entries / 2 : kJournalMaxL2Entries;
    if (r.count() == 0) return "L2 update count is zero";
    if (uint64_t{r.first_index} + r.count() > max) {
      return "L2 update entries [" + std::to_string(r.first_index) + ", +" +
             std::to_string(r.count()) + ") exceed a table's " + std::to_string(max) +
             " entries";
    }
  } else if constexpr (std::is_same_v<T, L1Update>) {
    if (!TableOffsetOk(r.table_offset)) {
      return "L1 update table_offset " + JournalHex(r.table_offset) +
             " is zero, unaligned to 512 or beyond 2^56";
    }
    if (r.index >= kMaxL1Entries) {
      return "L1 update index " + std::to_string(r.index) + " exceeds the L1 size limit";
    }
  } else if constexpr (std::is_same_v<T, RefcountUpdate>) {
    if (r.cluster_index >= kMaxClusterIndex) {
      return "refcount update cluster_index " + JournalHex(r.cluster_index) +
             " is beyond 2^56 bytes";
    }
  } else if constexpr (std::is_same_v<T, RefcountRun>) {
    if (r.count == 0) return "refcount run count is zero";
    if (r.first_cluster >= kMaxClusterIndex || r.count > kMaxClusterIndex - r.first_cluster) {
      return "refcount run [" + JournalHex(r.first_cluster) + ", +" + JournalHex(r.count) +
             ") is beyond 2^56 bytes";
    }
  } else if constexpr (std::is_same_v<T, NewTable>) {
    if (r.kind != JournalTableKind::kL2Table && r.kind != JournalTableKind::kRefcountBlock) {
      return "new table kind " + std::to_string(static_cast<unsigned>(r.kind)) +
             " is unknown";
    }
    if (!TableOffsetOk(r.host_offset)) {
      return "new table host_offset " + JournalHex(r.host_offset) +
             " is zero, unaligned to 512 or beyond 2^56";
    }
  } else if constexpr (std::is_same_v<T, RefcountTableUpdate>) {
    if (r.index >= kMaxRefcountTableEntries) {
      return "refcount table update index " + std::to_string(r.index) +
             " exceeds the refcount table size limit";
    }
    if (r.block_offset % 512 != 0 || r.block_offset >= kMaxHostOffset) {
      return "refcount table update block_offset " + JournalHex(r.block_offset) +
             " is unaligned to 512 or beyond 2^56";
    }
  } else if constexpr (std::is_same_v<T, HeaderUpdate>) {
    if (r.bytes.empty()) return "header update is empty";
    if (r.bytes.size() > kJournalMaxHeaderBytes ||
        r.offset > kJournalMaxHeaderBytes - r.bytes.size()) {
      return "header update [" + JournalHex(r.offset) + ", +" +
             JournalHex(r.bytes.size()) + ") is beyond the 2 MiB header cluster";
    }
  } else if constexpr (std::is_same_v<T, L2CopiedRun>) {
    if (!TableOffsetOk(r.table_offset)) {
      return "L2 COPIED run table_offset " + JournalHex(r.table_offset) +
             " is zero, unaligned to 512 or beyond 2^56";
    }
    if (r.count == 0) return "L2 COPIED run count is zero";
    if (uint64_t{r.first_index} + r.count > kJournalMaxL2Entries) {
      return "L2 COPIED run entries [" + std::to_string(r.first_index) + ", +" +
             std::to_string(r.count) + ") exceed a table's " +
             std::to_string(kJournalMaxL2Entries) + " entries";
    }
  } else if constexpr (std::is_same_v<T, DataChecksum>) {
    if (r.length == 0 || r.length > kJournalMaxDataChecksumBytes) {
      return "data checksum length " + JournalHex(r.length) + " is not in [1, 4 GiB]";
    }
    if (r.host_offset >= kMaxHostOffset || r.length > kMaxHostOffset - r.host_offset) {
      return "data checksum range [" + JournalHex(r.host_offset) + ", +" +
             JournalHex(r.length) + ") is beyond 2^56";
    }
  }
  return std::string();
}

std::string CheckRecord(const JournalRecord& record) {
  return std::visit([](const auto& r) { return CheckFields(r); }, record);
}

size_t BodyBytes(const JournalRecord& record) {
  return std::visit(
      [](const auto& r) -> size_t {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, L2Update>) {
          return 16 + 8 * r.entries.size();
        } else if constexpr (std::is_same_v<T, L1Update>) {
          return 24;
        } else if constexpr (std::is_same_v<T, RefcountUpdate>) {
          return 16;
        } else if constexpr (std::is_same_v<T, RefcountRun>) {
          return 24;
        } else if constexpr (std::is_same_v<T, NewTable>) {
          return 16;
        } else if constexpr (std::is_same_v<T, RefcountTableUpdate>) {
          return 16;
        } else if constexpr (std::is_same_v<T, HeaderUpdate>) {
          return 8 + r.bytes.size();
        } else if constexpr (std::is_same_v<T, L2CopiedRun>) {
          return 24;
        } else {
          static_assert(std::is_same_v<T, DataChecksum>);
          return 24;
        }
      },
      record);
}

JournalRecordType TypeOf(const JournalRecord& record) {
  switch (record.index()) {
    case 0:
      return std::get<L2Update>(record).extended ? JournalRecordType::kL2UpdateExtended
                                                 : JournalRecordType::kL2Update;
    case 1: return JournalRecordType::kL1Update;
    case 2: return JournalRecordType::kRefcountUpdate;
    case 3: return JournalRecordType::kRefcountRun;
    case 4: return JournalRecordType::kNewTable;
    case 5: return JournalRecordType::kRefcountTableUpdate;
    case 6: return JournalRecordType::kHeaderUpdate;
    case 8: return JournalRecordType::kL2CopiedRun;
    default: return JournalRecordType::kDataChecksum;
  }
}

// Appends the record (prefix and body) at the end of out.
void EncodeRecord(const JournalRecord& record, std::vector<uint8_t>* out) {
  const size_t body = BodyBytes(record);
  const size_t start = out->size();
  out->resize(start + kRecordPrefixBytes + body, 0);
  uint8_t* p = out->data() + start;
  StoreBE16(p, static_cast<uint16_t>(TypeOf(record)));
  StoreBE32(p + 4, static_cast<uint32_t>(body));
  uint8_t* b = p + kRecordPrefixBytes;
  std::visit(
      [b](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, L2Update>) {
          StoreBE64(b, r.table_offset);
          StoreBE32(b + 8, r.first_index);
          StoreBE32(b + 12, r.count());
          for (size_t i = 0; i < r.entries.size(); i++) StoreBE64(b + 16 + 8 * i, r.entries[i]);
        } else if constexpr (std::is_same_v<T, L1Update>) {
          StoreBE64(b, r.table_offset);
          StoreBE32(b + 8, r.index);
          StoreBE64(b + 16, r.value);
        } else if constexpr (std::is_same_v<T, RefcountUpdate>) {
          StoreBE64(b, r.cluster_index);
          StoreBE64(b + 8, r.value);
        } else if constexpr (std::is_same_v<T, RefcountRun>) {
          StoreBE64(b, r.first_cluster);
          StoreBE64(b + 8, r.count);
          StoreBE64(b + 16, r.value);
        } else if constexpr (std::is_same_v<T, NewTable>) {
          b[0] = static_cast<uint8_t>(r.kind);
          StoreBE64(b + 8, r.host_offset);
        } else if constexpr (std::is_same_v<T, RefcountTableUpdate>) {
          StoreBE64(b, r.index);
          StoreBE64(b + 8, r.block_offset);
        } else if constexpr (std::is_same_v<T, HeaderUpdate>) {
          StoreBE32(b, r.offset);
          StoreBE32(b + 4, static_cast<uint32_t>(r.bytes.size()));
          std::memcpy(b + 8, r.bytes.data(), r.bytes.size());
        } else if constexpr (std::is_same_v<T, L2CopiedRun>) {
          StoreBE64(b, r.table_offset);
          StoreBE32(b + 8, r.first_index);
          StoreBE32(b + 12, r.count);
          b[16] = r.set ? 2 : 1;
        } else {
          StoreBE64(b, r.host_offset);
          StoreBE64(b + 8, r.length);
          StoreBE64(b + 16, r.hash);
        }
      },
      record);
}

bool AllZero(const uint8_t* p, size_t n) { return BufferIsZero(p, n); }

// Decodes one record from payload[*pos, end) into *record; `base` is the
// payload's offset inside the frame, for error messages. A slot that already
// holds an L2 or header update keeps its buffer, so replaying thousands of
// similar transactions through one recycled vector allocates next to nothing.
Status DecodeRecord(std::span<const uint8_t> payload, size_t* pos, size_t base,
                    JournalRecord* out) {
  const size_t at = base + *pos;
  const size_t left = payload.size() - *pos;
  if (left < kRecordPrefixBytes) return FrameCorruption("truncated record prefix", at);
  const uint8_t* p = payload.data() + *pos;
  const uint16_t type = LoadBE16(p);
  const uint16_t reserved = LoadBE16(p + 2);
  const uint32_t body = LoadBE32(p + 4);
  if (reserved != 0) return FrameCorruption("record reserved field is not zero", at + 2);
  if (body > left - kRecordPrefixBytes) {
    return FrameCorruption("record body length " + std::to_string(body) +
                               " runs past the payload end",
                           at + 4);
  }
  const uint8_t* b = p + kRecordPrefixBytes;
  auto bad_length = [&](uint64_t n) {
    return FrameCorruption("record type " + std::to_string(type) + " body length " +
                               std::to_string(body) + " is not " + std::to_string(n),
                           at + 4);
  };
  // Fills the slot with a T (reusing it when it holds one already) and
  // checks the codec bounds on the concrete type: no visit, no Status and no
  // string built unless something is wrong.
  Status status;
  auto put = [&]<class T>(T value) -> bool {
    T* r = std::get_if<T>(out);
    if (r) *r = value;
    else r = &out->template emplace<T>(value);
    // Data checksums are most records of a long journal: their bounds are
    // checked inline, CheckFields (out of line) only builds the message.
    if constexpr (std::is_same_v<T, DataChecksum>) {
      if (r->length - 1 < kJournalMaxDataChecksumBytes && r->host_offset < kMaxHostOffset &&
          r->length <= kMaxHostOffset - r->host_offset) {
        return true;
      }
    }
    std::string bad = CheckFields(*r);
    if (bad.empty()) return true;
    status = FrameCorruption(bad, at);
    return false;
  };
  JournalRecord& record = *out;
  switch (static_cast<JournalRecordType>(type)) {
    case JournalRecordType::kL2Update:
    case JournalRecordType::kL2UpdateExtended: {
      if (body < 16) return FrameCorruption("L2 update body too short", at + 4);
      const bool extended = type == static_cast<uint16_t>(JournalRecordType::kL2UpdateExtended);
      const uint32_t count = LoadBE32(b + 12);
      const uint64_t words = uint64_t{count} * (extended ? 2 : 1);
      if (body != 16 + 8 * words) return bad_length(16 + 8 * words);
      L2Update* r = std::get_if<L2Update>(&record);
      if (!r) r = &record.emplace<L2Update>();
      r->extended = extended;
      r->table_offset = LoadBE64(b);
      r->first_index = LoadBE32(b + 8);
      r->entries.resize(words);
      for (size_t i = 0; i < words; i++) r->entries[i] = LoadBE64(b + 16 + 8 * i);
      if (std::string bad = CheckFields(*r); !bad.empty()) return FrameCorruption(bad, at);
      break;
    }
    case JournalRecordType::kL1Update:
      if (body != 24) return bad_length(24);
      if (LoadBE32(b + 12) != 0) {
        return FrameCorruption("L1 update reserved field is not zero", at + 8 + 12);
      }
      if (!put(L1Update{LoadBE64(b), LoadBE32(b + 8), LoadBE64(b + 16)})) return status;
      break;
    case JournalRecordType::kRefcountUpdate:
      if (body != 16) return bad_length(16);
      if (!put(RefcountUpdate{LoadBE64(b), LoadBE64(b + 8)})) return status;
      break;
    case JournalRecordType::kRefcountRun:
      if (body != 24) return bad_length(24);
      if (!put(RefcountRun{LoadBE64(b), LoadBE64(b + 8), LoadBE64(b + 16)})) return status;
      break;
    case JournalRecordType::kNewTable:
      if (body != 16) return bad_length(16);
      if (!AllZero(b + 1, 7)) {
        return FrameCorruption("new table reserved bytes are not zero", at + 8 + 1);
      }
      if (!put(NewTable{static_cast<JournalTableKind>(b[0]), LoadBE64(b + 8)})) return status;
      break;
    case JournalRecordType::kRefcountTableUpdate:
      if (body != 16) return bad_length(16);
      if (!put(RefcountTableUpdate{LoadBE64(b), LoadBE64(b + 8)})) return status;
      break;
    case JournalRecordType::kHeaderUpdate: {
      if (body < 8) return FrameCorruption("header update body too short", at + 4);
      const uint32_t len = LoadBE32(b + 4);
      if (body != 8 + uint64_t{len}) return bad_length(8 + uint64_t{len});
      HeaderUpdate* r = std::get_if<HeaderUpdate>(&record);
      if (!r) r = &record.emplace<HeaderUpdate>();
      r->offset = LoadBE32(b);
      r->bytes.assign(b + 8, b + 8 + len);
      if (std::string bad = CheckFields(*r); !bad.empty()) return FrameCorruption(bad, at);
      break;
    }
    case JournalRecordType::kDataChecksum:
      if (body != 24) return bad_length(24);
      if (!put(DataChecksum{LoadBE64(b), LoadBE64(b + 8), LoadBE64(b + 16)})) return status;
      break;
    case JournalRecordType::kL2CopiedRun: {
      if (body != 24) return bad_length(24);
      if (b[16] != 1 && b[16] != 2) {
        return FrameCorruption("L2 COPIED run action " + std::to_string(b[16]) +
                                   " is neither 1 (clear) nor 2 (set)",
                               at + 8 + 16);
      }
      if (!AllZero(b + 17, 7)) {
        return FrameCorruption("L2 COPIED run reserved bytes are not zero", at + 8 + 17);
      }
      if (!put(L2CopiedRun{LoadBE64(b), LoadBE32(b + 8), LoadBE32(b + 12), b[16] == 2})) {
        return status;
      }
      break;
    }
    default:
      return FrameCorruption("record type " + std::to_string(type) + " is unknown", at);
  }
  *pos += kRecordPrefixBytes + body;
  return Status::OK();
}

std::vector<uint8_t> EncodeFrame(JournalFrameKind kind, uint64_t sequence,
                                 uint64_t synced_through, const JournalGeneration& generation,
                                 uint32_t length, std::span<const uint8_t> payload,
                                 uint32_t record_count) {
  std::vector<uint8_t> frame(length, 0);
  uint8_t* p = frame.data();
  StoreBE32(p + kFhMagic, kJournalFrameMagic);
  StoreBE16(p + kFhKind, static_cast<uint16_t>(kind));
  StoreBE64(p + kFhSequence, sequence);
  StoreBE64(p + kFhSyncedThrough, synced_through);
  StoreBE32(p + kFhLength, length);
  StoreBE32(p + kFhPayloadBytes, static_cast<uint32_t>(payload.size()));
  StoreBE32(p + kFhRecordCount, record_count);
  std::memcpy(p + kFhGeneration, generation.data(), generation.size());
  if (!payload.empty()) std::memcpy(p + kJournalFrameHeaderBytes, payload.data(), payload.size());
  StoreBE64(p + kFhChecksum, FrameChecksum(frame));
  return frame;
}

}  // namespace

size_t EncodedRecordBytes(const JournalRecord& r) { return kRecordPrefixBytes + BodyBytes(r); }

Status TransactionBuilder::Add(const JournalRecord& record) {
  const std::string bad = CheckRecord(record);
  if (!bad.empty()) return Status::InvalidArgument("journal record: " + bad);
  EncodeRecord(record, &payload_);
  record_count_++;
  return Status::OK();
}

void TransactionBuilder::Clear() {
  payload_.clear();
  record_count_ = 0;
}

size_t TransactionBuilder::FrameBytes(uint32_t sector_size) const {
  const size_t n = kJournalFrameHeaderBytes + payload_.size();
  return (n + sector_size - 1) / sector_size * sector_size;
}

Result<std::vector<uint8_t>> TransactionBuilder::Finish(uint64_t sequence, uint64_t synced_through,
                                                        const JournalGeneration& generation,
                                                        uint32_t sector_size) const {
  if (sector_size != 512 && sector_size != 4096) {
    return Status::InvalidArgument("journal sector size " + std::to_string(sector_size) +
                                   " is neither 512 nor 4096");
  }
  if (sequence == 0 || synced_through >= sequence) {
    return Status::InvalidArgument("journal transaction sequence " + std::to_string(sequence) +
                                   " with synced_through " + std::to_string(synced_through) +
                                   ": need 0 <= synced_through < sequence");
  }
  const size_t length = FrameBytes(sector_size);
  if (length > kJournalMaxFrameBytes) {
    return Status::InvalidArgument("journal transaction of " + std::to_string(length) +
                                   " bytes exceeds the frame limit " +
                                   std::to_string(kJournalMaxFrameBytes));
  }
  return EncodeFrame(JournalFrameKind::kTransaction, sequence, synced_through, generation,
                     static_cast<uint32_t>(length), payload_, record_count_);
}

std::vector<uint8_t> EncodeWrapMarker(uint64_t sequence, uint64_t synced_through,
                                      const JournalGeneration& generation, uint32_t sector_size) {
  return EncodeFrame(JournalFrameKind::kWrap, sequence, synced_through, generation, sector_size,
                     {}, 0);
}

bool IsEndOfJournal(const Status& s) { return s.code() == Code::kNotFound; }

Result<JournalFrameHeader> DecodeFrameHeader(std::span<const uint8_t> bytes,
                                             uint64_t expected_sequence,
                                             const JournalGeneration& generation,
                                             uint32_t sector_size, uint64_t max_length) {
  // Nothing here is covered by a verified checksum yet, so every failure is
  // "not the next frame" rather than corruption.
  if (bytes.size() < kJournalFrameHeaderBytes) {
    return EndOfJournal("only " + std::to_string(bytes.size()) + " bytes, no frame header");
  }
  const uint8_t* p = bytes.data();
  JournalFrameHeader h;
  const uint32_t magic = LoadBE32(p + kFhMagic);
  if (magic != kJournalFrameMagic) return EndOfJournal("frame magic " + JournalHex(magic));
  const uint16_t kind = LoadBE16(p + kFhKind);
  if (kind != static_cast<uint16_t>(JournalFrameKind::kTransaction) &&
      kind != static_cast<uint16_t>(JournalFrameKind::kWrap)) {
    return EndOfJournal("frame kind " + std::to_string(kind));
  }
  h.kind = static_cast<JournalFrameKind>(kind);
  std::memcpy(h.generation.data(), p + kFhGeneration, h.generation.size());
  if (h.generation != generation) return EndOfJournal("frame of another journal generation");
  h.sequence = LoadBE64(p + kFhSequence);
  if (h.sequence != expected_sequence) {
    return EndOfJournal("frame sequence " + std::to_string(h.sequence) + " where " +
                        std::to_string(expected_sequence) + " was expected");
  }
  h.synced_through = LoadBE64(p + kFhSyncedThrough);
  h.length = LoadBE32(p + kFhLength);
  h.payload_bytes = LoadBE32(p + kFhPayloadBytes);
  h.record_count = LoadBE32(p + kFhRecordCount);
  if (sector_size == 0 || h.length == 0 || h.length % sector_size != 0 ||
      h.length > kJournalMaxFrameBytes) {
    return EndOfJournal("frame length " + std::to_string(h.length) + " is not a sector multiple");
  }
  if (h.kind == JournalFrameKind::kWrap && h.length != sector_size) {
    return EndOfJournal("wrap marker length " + std::to_string(h.length));
  }
  if (h.length > max_length) {
    return EndOfJournal("frame length " + std::to_string(h.length) + " exceeds the " +
                        std::to_string(max_length) + " bytes available");
  }
  return h;
}

Status DecodeTransactionInto(std::span<const uint8_t> bytes, uint64_t expected_sequence,
                             const JournalGeneration& generation, uint32_t sector_size,
                             JournalFrameHeader* header, std::vector<JournalRecord>* records) {
  QCOW2J_ASSIGN_OR_RETURN(*header, DecodeFrameHeader(bytes, expected_sequence, generation,
                                                     sector_size, bytes.size()));
  const JournalFrameHeader& h = *header;
  const std::span<const uint8_t> whole = bytes.first(h.length);
  const uint64_t stored = LoadBE64(whole.data() + kFhChecksum);
  const uint64_t actual = FrameChecksum(whole);
  if (stored != actual) {
    return EndOfJournal("frame " + std::to_string(h.sequence) + " checksum " +
                        JournalHex(stored) + " does not match the computed " + JournalHex(actual));
  }
  // The checksum holds: from here on a violation was written that way.
  const uint8_t* p = whole.data();
  if (LoadBE16(p + kFhReserved16) != 0) {
    return FrameCorruption("reserved field is not zero", kFhReserved16);
  }
  if (LoadBE32(p + kFhReserved32) != 0) {
    return FrameCorruption("reserved field is not zero", kFhReserved32);
  }
  if (h.synced_through >= h.sequence) {
    return FrameCorruption("synced_through " + std::to_string(h.synced_through) +
                               " is not below the sequence " + std::to_string(h.sequence),
                           kFhSyncedThrough);
  }
  if (h.payload_bytes > h.length - kJournalFrameHeaderBytes) {
    return FrameCorruption("payload_bytes " + std::to_string(h.payload_bytes) +
                               " exceeds the frame length " + std::to_string(h.length),
                           kFhPayloadBytes);
  }
  if (h.kind == JournalFrameKind::kWrap && (h.payload_bytes != 0 || h.record_count != 0)) {
    return FrameCorruption("wrap marker carries records", kFhPayloadBytes);
  }
  const size_t payload_end = kJournalFrameHeaderBytes + h.payload_bytes;
  if (!AllZero(p + payload_end, h.length - payload_end)) {
    return FrameCorruption("padding is not zero", payload_end);
  }
  // Each record takes at least its prefix: bounds the reserve below.
  if (h.record_count > h.payload_bytes / kRecordPrefixBytes) {
    return FrameCorruption("record_count " + std::to_string(h.record_count) +
                               " cannot fit in payload_bytes " + std::to_string(h.payload_bytes),
                           kFhRecordCount);
  }
  const std::span<const uint8_t> payload = whole.subspan(kJournalFrameHeaderBytes, h.payload_bytes);
  records->resize(h.record_count);
  size_t pos = 0;
  for (uint32_t i = 0; i < h.record_count; i++) {
    QCOW2J_RETURN_IF_ERROR(DecodeRecord(payload, &pos, kJournalFrameHeaderBytes, &(*records)[i]));
  }
  if (pos != payload.size()) {
    return FrameCorruption(std::to_string(payload.size() - pos) +
                               " payload bytes follow the last record",
                           kJournalFrameHeaderBytes + pos);
  }
  return Status::OK();
}

Result<JournalFrame> DecodeTransaction(std::span<const uint8_t> bytes, uint64_t expected_sequence,
                                       const JournalGeneration& generation,
                                       uint32_t sector_size) {
  JournalFrame frame;
  QCOW2J_RETURN_IF_ERROR(DecodeTransactionInto(bytes, expected_sequence, generation, sector_size,
                                               &frame.header, &frame.records));
  return frame;
}

}  // namespace qcow2j
