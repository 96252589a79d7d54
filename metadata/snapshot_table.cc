#include "metadata/snapshot_table.h"
#include "metadata/hex.h"

#include <algorithm>
#include <cstdio>

#include "metadata/endian.h"
#include "metadata/header.h"

namespace qcow2j {

namespace {

constexpr size_t kEntryFixedBytes = 40;
constexpr size_t kExtraVmStateLarge = 8;  // extra data up to this size holds vm_state_size
constexpr size_t kExtraDiskSize = 16;     // ... and the disk size
constexpr size_t kExtraIcount = 24;       // ... and icount (QEMU 5.2+)
constexpr uint64_t kNoIcount = UINT64_MAX;  // QEMU writes -1 when icount is absent

uint64_t AlignUp8(uint64_t v) { return (v + 7) & ~7ull; }

}  // namespace

Result<std::vector<SnapshotEntry>> ParseSnapshotTable(std::span<const uint8_t> table,
                                                      uint32_t nb_snapshots, uint32_t cluster_bits,
                                                      uint64_t file_size) {
  if (cluster_bits < kMinClusterBits || cluster_bits > kMaxClusterBits) {
    return Status::InvalidArgument("snapshot table: cluster_bits " + std::to_string(cluster_bits));
  }
  if (nb_snapshots > kMaxSnapshots) {
    return Status::NotSupported("snapshot table: nb_snapshots " + std::to_string(nb_snapshots) +
                                " exceeds " + std::to_string(kMaxSnapshots));
  }
  const uint64_t cs = 1ull << cluster_bits;
  const uint64_t limit = std::min<uint64_t>(table.size(), kMaxSnapshotTableBytes);
  std::vector<SnapshotEntry> entries;
  uint64_t off = 0;
  for (uint32_t i = 0; i < nb_snapshots; ++i) {
    const std::string where = "snapshot " + std::to_string(i) + " at table offset " + Hex(off);
    if (limit - off < kEntryFixedBytes) {
      return Status::Corruption(where + ": entry runs past the end of the snapshot table (" +
                                std::to_string(limit) + " bytes)");
    }
    const uint8_t* p = table.data() + off;
    SnapshotEntry e;
    e.l1_table_offset = LoadBE64(p);
    e.l1_size = LoadBE32(p + 8);
    const uint16_t id_size = LoadBE16(p + 12);
    const uint16_t name_size = LoadBE16(p + 14);
    e.date_sec = LoadBE32(p + 16);
    e.date_nsec = LoadBE32(p + 20);
    e.vm_clock_nsec = LoadBE64(p + 24);
    e.vm_state_size = LoadBE32(p + 32);
    const uint32_t extra_size = LoadBE32(p + 36);
    if (extra_size > kMaxSnapshotExtraData) {
      return Status::Corruption(where + ": field extra_data_size " + std::to_string(extra_size) +
                                " exceeds " + std::to_string(kMaxSnapshotExtraData));
    }
    const uint64_t entry_size =
        AlignUp8(kEntryFixedBytes + uint64_t{extra_size} + id_size + name_size);
    // The padding of the last entry may be missing from a table cut at its
    // exact end; the entry's own bytes may not.
    const uint64_t used = kEntryFixedBytes + uint64_t{extra_size} + id_size + name_size;
    if (limit - off < used) {
      return Status::Corruption(where + ": entry of " + std::to_string(used) +
                                " bytes (extra_data_size " + std::to_string(extra_size) +
                                ", id_str_size " + std::to_string(id_size) + ", name_size " +
                                std::to_string(name_size) +
                                ") runs past the end of the snapshot table (" +
                                std::to_string(limit) + " bytes)");
    }
    const uint64_t l1_bytes = uint64_t{e.l1_size} * 8;
    if (l1_bytes > kMaxL1Bytes) {
      return Status::Corruption(where + ": field l1_size " + std::to_string(e.l1_size) +
                                " exceeds the maximum L1 table size " +
                                std::to_string(kMaxL1Bytes) + " bytes");
    }
    if (e.l1_table_offset & (cs - 1)) {
      return Status::Corruption(where + ": field l1_table_offset " + Hex(e.l1_table_offset) +
                                " is not aligned to cluster_size " + std::to_string(cs));
    }
    if (l1_bytes != 0 && (e.l1_table_offset == 0 || e.l1_table_offset > file_size ||
                          l1_bytes > file_size - e.l1_table_offset)) {
      return Status::Corruption(where + ": field l1_table_offset " + Hex(e.l1_table_offset) +
                                " with l1_size " + std::to_string(e.l1_size) +
                                " is outside the file (" + std::to_string(file_size) + " bytes)");
    }
    const uint8_t* extra = p + kEntryFixedBytes;
    if (extra_size >= kExtraVmStateLarge) e.vm_state_size = LoadBE64(extra);
    if (extra_size >= kExtraDiskSize) e.disk_size = LoadBE64(extra + 8);
    if (extra_size >= kExtraIcount) {
      const uint64_t icount = LoadBE64(extra + 16);
      if (icount != kNoIcount) e.icount = icount;
      e.unknown_extra.assign(reinterpret_cast<const char*>(extra) + kExtraIcount,
                             extra_size - kExtraIcount);
    }
    const char* strings = reinterpret_cast<const char*>(extra) + extra_size;
    e.id.assign(strings, id_size);
    e.name.assign(strings + id_size, name_size);
    entries.push_back(std::move(e));
    off += std::min(entry_size, limit - off);
  }
  return entries;
}

std::vector<uint8_t> SerializeSnapshotTable(const std::vector<SnapshotEntry>& entries) {
  std::vector<uint8_t> out;
  for (const SnapshotEntry& e : entries) {
    // Lengths the format cannot hold are cut to fit rather than wrapped: the
    // entry stays self-consistent (callers validate names before this).
    const size_t unknown_size =
        std::min<size_t>(e.unknown_extra.size(), kMaxSnapshotExtraData - kExtraIcount);
    const size_t id_size = std::min<size_t>(e.id.size(), UINT16_MAX);
    const size_t name_size = std::min<size_t>(e.name.size(), UINT16_MAX);
    const size_t extra_size = kExtraIcount + unknown_size;
    const size_t at = out.size();
    out.resize(at + AlignUp8(kEntryFixedBytes + extra_size + id_size + name_size), 0);
    uint8_t* p = out.data() + at;
    StoreBE64(p, e.l1_table_offset);
    StoreBE32(p + 8, e.l1_size);
    StoreBE16(p + 12, static_cast<uint16_t>(id_size));
    StoreBE16(p + 14, static_cast<uint16_t>(name_size));
    StoreBE32(p + 16, e.date_sec);
    StoreBE32(p + 20, e.date_nsec);
    StoreBE64(p + 24, e.vm_clock_nsec);
    // Readers that predate the 64-bit field see the low 32 bits, as QEMU writes it.
    StoreBE32(p + 32, static_cast<uint32_t>(e.vm_state_size));
    StoreBE32(p + 36, static_cast<uint32_t>(extra_size));
    uint8_t* extra = p + kEntryFixedBytes;
    StoreBE64(extra, e.vm_state_size);
    StoreBE64(extra + 8, e.disk_size);
    StoreBE64(extra + 16, e.icount.value_or(kNoIcount));
    uint8_t* q = extra + kExtraIcount;
    q = std::copy_n(e.unknown_extra.begin(), unknown_size, q);
    q = std::copy_n(e.id.begin(), id_size, q);
    std::copy_n(e.name.begin(), name_size, q);
  }
  return out;
}

}  // namespace qcow2j
