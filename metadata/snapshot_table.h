// The internal snapshot table: entries with their extra data, as a codec.
#ifndef QCOW2J_METADATA_SNAPSHOT_TABLE_H_
#define QCOW2J_METADATA_SNAPSHOT_TABLE_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j {

inline constexpr uint32_t kMaxSnapshotExtraData = 1024;  // QEMU's limit
inline constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;

struct SnapshotEntry {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id;
  std::string name;
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t vm_state_size = 0;  // the 64-bit value from extra data when present
  uint64_t disk_size = 0;      // from extra data; 0 = absent (use header size)
  std::optional<uint64_t> icount;
  // Extra data beyond the fields above, kept verbatim.
  std::string unknown_extra;
};

// Parses `nb_snapshots` entries from the table bytes (read from
// snapshots_offset; `table` may be longer than needed). Validates each
// entry: extra data size <= kMaxSnapshotExtraData, L1 offset aligned to the
// cluster and inside the file, l1_size within the max L1 size, no entry past
// the end of `table`. Errors name the snapshot index, field and value.
Result<std::vector<SnapshotEntry>> ParseSnapshotTable(std::span<const uint8_t> table,
                                                      uint32_t nb_snapshots, uint32_t cluster_bits,
                                                      uint64_t file_size);
// Serializes with extra data of 24 bytes (vm_state_size, disk_size, icount)
// plus any unknown_extra, as QEMU 7 writes it.
std::vector<uint8_t> SerializeSnapshotTable(const std::vector<SnapshotEntry>& entries);

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_SNAPSHOT_TABLE_H_
