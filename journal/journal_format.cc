#include "journal/journal_format.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <random>

#include "metadata/endian.h"

namespace qcow2j {

std::string JournalHex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

JournalGeneration NewJournalGeneration() {
  std::random_device rd;
  std::mt19937_64 mix((uint64_t{rd()} << 32) ^ rd());
  JournalGeneration g;
  for (size_t i = 0; i < g.size(); i += 8) StoreBE64(&g[i], mix() ^ (uint64_t{rd()} << 32));
  // An all-zero generation is what a zeroed sector holds; never use it.
  if (g == JournalGeneration{}) g[15] = 1;
  return g;
}

uint64_t JournalChecksum(std::span<const uint8_t> bytes) {
  return XXH64(bytes.data(), bytes.size(), 0);
}

namespace {

// Extension payload layout (big-endian).
constexpr size_t kExtAreaOffset = 0;
constexpr size_t kExtAreaSize = 8;
constexpr size_t kExtSectorSize = 16;
constexpr size_t kExtFlags = 20;

// Superblock layout (big-endian).
constexpr size_t kSbMagic = 0;
constexpr size_t kSbVersion = 4;
constexpr size_t kSbSectorSize = 8;
constexpr size_t kSbVerifiedCount = 12;
constexpr size_t kSbAreaSize = 16;
constexpr size_t kSbTailOffset = 24;
constexpr size_t kSbTailSequence = 32;
constexpr size_t kSbCheckpointNumber = 40;
constexpr size_t kSbGeneration = 48;
constexpr size_t kSbChecksum = 64;
static_assert(kSbChecksum + 8 == kJournalSuperblockBytes);

Status ExtError(const std::string& field, uint64_t value, const std::string& why) {
  return Status::Corruption("journal extension field " + field + " " + JournalHex(value) + " " +
                            why);
}

Status SbError(const std::string& field, uint64_t value, const std::string& why) {
  return Status::Corruption("journal superblock field " + field + " " + JournalHex(value) + " " +
                            why);
}

}  // namespace

std::string EncodeJournalExtension(const JournalExtension& ext) {
  std::string out(kJournalExtensionBytes, '\0');
  StoreBE64(&out[kExtAreaOffset], ext.area_offset);
  StoreBE64(&out[kExtAreaSize], ext.area_size);
  StoreBE32(&out[kExtSectorSize], ext.sector_size);
  StoreBE32(&out[kExtFlags], ext.flags);
  return out;
}

Status ValidateJournalExtension(const JournalExtension& ext, uint32_t cluster_bits) {
  if (cluster_bits < 9 || cluster_bits > 21) {
    return Status::InvalidArgument("journal extension: cluster_bits " +
                                   std::to_string(cluster_bits) + " out of range");
  }
  const uint64_t cluster_size = 1ull << cluster_bits;
  if (ext.sector_size != 512 && ext.sector_size != 4096) {
    return ExtError("sector_size", ext.sector_size, "is neither 512 nor 4096");
  }
  if (ext.flags & ~kJournalKnownFlags) {
    return Status::NotSupported("journal extension field flags " + JournalHex(ext.flags) +
                                " has unknown bits " +
                                JournalHex(ext.flags & ~kJournalKnownFlags));
  }
  // No area (an idle journal): area_size is the size the next one gets.
  if (ext.area_offset == 0 && ext.area_size == 0) return Status::OK();
  if (ext.area_offset % cluster_size != 0) {
    return ExtError("area_offset", ext.area_offset,
                    "is not aligned to the cluster size " + std::to_string(cluster_size));
  }
  if (ext.area_offset >= kJournalMaxOffset) {
    return ExtError("area_offset", ext.area_offset, "is beyond the 56-bit offset range");
  }
  if (ext.area_size % cluster_size != 0) {
    return ExtError("area_size", ext.area_size,
                    "is not a multiple of the cluster size " + std::to_string(cluster_size));
  }
  if (ext.area_size % ext.sector_size != 0) {
    return ExtError("area_size", ext.area_size,
                    "is not a multiple of the sector size " + std::to_string(ext.sector_size));
  }
  if (ext.area_size < uint64_t{kJournalSuperblockSlots + 2} * ext.sector_size) {
    return ExtError("area_size", ext.area_size,
                    "is smaller than " + std::to_string(kJournalSuperblockSlots + 2) +
                        " sectors (superblocks and a ring)");
  }
  if (ext.area_size > kJournalMaxAreaBytes) {
    return ExtError("area_size", ext.area_size, "exceeds the maximum of 4 GiB");
  }
  if (ext.area_offset + ext.area_size > kJournalMaxOffset) {
    return ExtError("area_size", ext.area_size, "makes the area end beyond the 56-bit range");
  }
  return Status::OK();
}

Result<JournalExtension> DecodeJournalExtension(std::string_view payload, uint32_t cluster_bits) {
  if (payload.size() < kJournalExtensionBytes) {
    return Status::Corruption("journal extension is " + std::to_string(payload.size()) +
                              " bytes, expected at least " +
                              std::to_string(kJournalExtensionBytes));
  }
  JournalExtension ext;
  ext.area_offset = LoadBE64(payload.data() + kExtAreaOffset);
  ext.area_size = LoadBE64(payload.data() + kExtAreaSize);
  ext.sector_size = LoadBE32(payload.data() + kExtSectorSize);
  ext.flags = LoadBE32(payload.data() + kExtFlags);
  QCOW2J_RETURN_IF_ERROR(ValidateJournalExtension(ext, cluster_bits));
  return ext;
}

std::vector<uint8_t> EncodeJournalSuperblock(const JournalSuperblock& sb) {
  std::vector<uint8_t> out(sb.sector_size >= kJournalSuperblockBytes ? sb.sector_size
                                                                     : kJournalSuperblockBytes,
                           0);
  StoreBE32(&out[kSbMagic], kJournalSuperblockMagic);
  StoreBE32(&out[kSbVersion], sb.version);
  StoreBE32(&out[kSbSectorSize], sb.sector_size);
  StoreBE32(&out[kSbVerifiedCount], sb.verified_count);
  StoreBE64(&out[kSbAreaSize], sb.area_size);
  StoreBE64(&out[kSbTailOffset], sb.tail_offset);
  StoreBE64(&out[kSbTailSequence], sb.tail_sequence);
  StoreBE64(&out[kSbCheckpointNumber], sb.checkpoint_number);
  std::memcpy(&out[kSbGeneration], sb.generation.data(), sb.generation.size());
  StoreBE64(&out[kSbChecksum], JournalChecksum({out.data(), kSbChecksum}));
  return out;
}

Result<JournalSuperblock> DecodeJournalSuperblock(std::span<const uint8_t> sector,
                                                  const JournalExtension& ext) {
  if (sector.size() < kJournalSuperblockBytes) {
    return Status::Corruption("journal superblock is " + std::to_string(sector.size()) +
                              " bytes, expected at least " +
                              std::to_string(kJournalSuperblockBytes));
  }
  const uint8_t* p = sector.data();
  const uint32_t magic = LoadBE32(p + kSbMagic);
  if (magic != kJournalSuperblockMagic) {
    return SbError("magic", magic, "is not " + JournalHex(kJournalSuperblockMagic));
  }
  const uint64_t stored = LoadBE64(p + kSbChecksum);
  const uint64_t actual = JournalChecksum({p, kSbChecksum});
  if (stored != actual) {
    return SbError("checksum", stored, "does not match the computed " + JournalHex(actual));
  }
  JournalSuperblock sb;
  sb.version = LoadBE32(p + kSbVersion);
  sb.sector_size = LoadBE32(p + kSbSectorSize);
  sb.area_size = LoadBE64(p + kSbAreaSize);
  sb.tail_offset = LoadBE64(p + kSbTailOffset);
  sb.tail_sequence = LoadBE64(p + kSbTailSequence);
  sb.checkpoint_number = LoadBE64(p + kSbCheckpointNumber);
  std::memcpy(sb.generation.data(), p + kSbGeneration, sb.generation.size());
  if (sb.version != kJournalFormatVersion) {
    return Status::NotSupported("journal superblock field version " + std::to_string(sb.version) +
                                " is not supported (this build reads version " +
                                std::to_string(kJournalFormatVersion) + ")");
  }
  sb.verified_count = LoadBE32(p + kSbVerifiedCount);
  // Every transaction takes at least one sector of the ring.
  if (sb.verified_count > ext.ring_bytes() / ext.sector_size) {
    return SbError("verified_count", sb.verified_count,
                   "exceeds the transactions the ring can hold (" +
                       std::to_string(ext.ring_bytes() / ext.sector_size) + ")");
  }
  if (sb.sector_size != ext.sector_size) {
    return SbError("sector_size", sb.sector_size,
                   "differs from the extension's " + std::to_string(ext.sector_size));
  }
  if (sb.area_size != ext.area_size) {
    return SbError("area_size", sb.area_size,
                   "differs from the extension's " + JournalHex(ext.area_size));
  }
  if (sb.tail_offset < ext.ring_start() || sb.tail_offset >= ext.area_size) {
    return SbError("tail_offset", sb.tail_offset,
                   "is outside the ring [" + JournalHex(ext.ring_start()) + ", " +
                       JournalHex(ext.area_size) + ")");
  }
  if (sb.tail_offset % ext.sector_size != 0) {
    return SbError("tail_offset", sb.tail_offset,
                   "is not aligned to the sector size " + std::to_string(ext.sector_size));
  }
  if (sb.tail_sequence == 0 || sb.tail_sequence >= (1ull << 62)) {
    return SbError("tail_sequence", sb.tail_sequence, "is out of range [1, 2^62)");
  }
  if (sb.generation == JournalGeneration{}) {
    return SbError("generation", 0, "is all zeros");
  }
  return sb;
}

Result<JournalSuperblock> ChooseJournalSuperblock(const Result<JournalSuperblock>& slot0,
                                                  const Result<JournalSuperblock>& slot1) {
  // A copy in the wrong slot was not written by a checkpoint: ignore it.
  auto check = [](const Result<JournalSuperblock>& r, uint32_t slot) -> Status {
    if (!r.ok()) return r.status();
    if (r->slot() != slot) {
      return SbError("checkpoint_number", r->checkpoint_number,
                     "belongs in slot " + std::to_string(r->slot()) + ", found in slot " +
                         std::to_string(slot));
    }
    return Status::OK();
  };
  const Status s0 = check(slot0, 0);
  const Status s1 = check(slot1, 1);
  if (s0.ok() && s1.ok()) {
    return slot1->checkpoint_number > slot0->checkpoint_number ? *slot1 : *slot0;
  }
  if (s0.ok()) return *slot0;
  if (s1.ok()) return *slot1;
  // A copy written by a newer version may be the live one: do not guess.
  const bool unsupported =
      s0.code() == Code::kNotSupported || s1.code() == Code::kNotSupported;
  std::string msg = "no valid journal superblock: slot 0: " + s0.message() +
                    "; slot 1: " + s1.message();
  return unsupported ? Status::NotSupported(msg) : Status::Corruption(msg);
}

}  // namespace qcow2j
