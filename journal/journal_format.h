// The metadata journal's fixed structures as pure codecs: the header
// extension payload that locates the journal area, and the superblock that
// holds the tail. docs/journal-format.md is the authoritative description of
// every byte; this file and journal_record.h implement it.
#ifndef QCOW2J_JOURNAL_JOURNAL_FORMAT_H_
#define QCOW2J_JOURNAL_JOURNAL_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j {

inline constexpr uint32_t kJournalSuperblockMagic = 0x716a5342;  // "qjSB"
inline constexpr uint32_t kJournalFrameMagic = 0x716a5458;       // "qjTX"
inline constexpr uint32_t kJournalFormatVersion = 1;

// Sizes of the fixed encodings.
inline constexpr size_t kJournalExtensionBytes = 24;
inline constexpr size_t kJournalSuperblockBytes = 72;
inline constexpr size_t kJournalFrameHeaderBytes = 64;

// The two superblock slots occupy sectors 0 and 1 of the area; the ring of
// transactions starts at sector 2.
inline constexpr uint32_t kJournalSuperblockSlots = 2;

// Extension flags.
inline constexpr uint32_t kJournalFlagDirtyRefcounts = 1u << 0;
inline constexpr uint32_t kJournalKnownFlags = kJournalFlagDirtyRefcounts;

// Bounds that keep a hostile image from making us allocate or loop much.
inline constexpr uint64_t kJournalMaxAreaBytes = 1ull << 32;   // 4 GiB
inline constexpr uint64_t kJournalMaxOffset = 1ull << 56;      // qcow2 host offsets are 56-bit
inline constexpr uint32_t kJournalMaxFrameBytes = 64u << 20;   // one transaction

// Every journal has a random 128-bit generation, written into the superblock
// and every frame. A reset picks a new one, so frames left in the ring by an
// earlier generation can never be mistaken for live ones.
using JournalGeneration = std::array<uint8_t, 16>;
JournalGeneration NewJournalGeneration();

// XXH64 with seed 0, the one checksum of the journal.
uint64_t JournalChecksum(std::span<const uint8_t> bytes);

// The kExtJournal header extension payload.
struct JournalExtension {
  uint64_t area_offset = 0;  // host offset of the area, cluster aligned
  uint64_t area_size = 0;    // bytes, multiple of the cluster size and the sector size
  uint32_t sector_size = 4096;
  uint32_t flags = 0;

  bool dirty_refcounts() const { return flags & kJournalFlagDirtyRefcounts; }
  // area_offset == 0: the image uses the journal, but no area is allocated
  // (between sessions; the engine allocates one when it first commits, and
  // frees it at a clean close). area_size is then the size to allocate
  // (0: the engine's default).
  bool has_area() const { return area_offset != 0; }
  // Offsets below are relative to area_offset.
  uint64_t superblock_offset(uint32_t slot) const { return uint64_t{slot} * sector_size; }
  uint64_t ring_start() const { return uint64_t{kJournalSuperblockSlots} * sector_size; }
  uint64_t ring_bytes() const { return area_size - ring_start(); }

  bool operator==(const JournalExtension&) const = default;
};

// Encodes the payload (kJournalExtensionBytes; the header codec pads it).
std::string EncodeJournalExtension(const JournalExtension& ext);

// Decodes and validates the payload against the image's cluster size.
// Longer payloads are accepted (bytes past ours are for newer versions).
// Errors name the field: "journal extension field area_offset 0x1234 is not
// aligned to the cluster size 65536". Unknown flags give NotSupported.
Result<JournalExtension> DecodeJournalExtension(std::string_view payload, uint32_t cluster_bits);

// Validates an extension built in memory (same rules as the decoder).
Status ValidateJournalExtension(const JournalExtension& ext, uint32_t cluster_bits);

// The superblock: where replay starts. Two copies (slots 0 and 1) so a torn
// superblock write cannot lose the tail; the valid copy with the higher
// checkpoint_number wins, and a new copy always goes to the other slot.
struct JournalSuperblock {
  uint32_t version = kJournalFormatVersion;
  uint32_t sector_size = 4096;  // must match the extension
  uint64_t area_size = 0;       // must match the extension
  uint64_t tail_offset = 0;     // inside the area, in [ring_start, area_size), sector aligned
  uint64_t tail_sequence = 1;   // sequence of the transaction at tail_offset (>= 1)
  uint64_t checkpoint_number = 0;  // slot = checkpoint_number % 2
  JournalGeneration generation{};
  // Transactions [tail_sequence, tail_sequence + verified_count) are
  // confirmed: a read-write recovery verified the data checksums of the
  // unconfirmed ones among them and synced that data before writing this
  // superblock, and may then have written their tables in place (over bytes
  // those checksums describe). 0 outside such a recovery.
  uint32_t verified_count = 0;

  // The highest sequence this superblock confirms (tail_sequence - 1 if none).
  uint64_t verified_through() const { return tail_sequence - 1 + verified_count; }

  uint32_t slot() const { return static_cast<uint32_t>(checkpoint_number & 1); }
  bool operator==(const JournalSuperblock&) const = default;
};

// One sector: the superblock followed by zeros.
std::vector<uint8_t> EncodeJournalSuperblock(const JournalSuperblock& sb);

// Decodes one slot's sector and validates it against the extension. Errors
// name the field ("journal superblock field tail_offset 0x...: ...");
// a wrong magic or checksum is Corruption, an unknown version NotSupported.
Result<JournalSuperblock> DecodeJournalSuperblock(std::span<const uint8_t> sector,
                                                  const JournalExtension& ext);

// Of two decoded slots (either may have failed), the one replay must use:
// the valid one with the higher checkpoint_number. Corruption naming both
// reasons when neither is valid; NotSupported wins over Corruption.
Result<JournalSuperblock> ChooseJournalSuperblock(const Result<JournalSuperblock>& slot0,
                                                  const Result<JournalSuperblock>& slot1);

// "0x1f00": how journal errors print offsets and values.
std::string JournalHex(uint64_t v);

}  // namespace qcow2j

#endif  // QCOW2J_JOURNAL_JOURNAL_FORMAT_H_
