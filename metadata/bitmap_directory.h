// The persistent-bitmap directory (qcow2.txt, "Bitmap directory"): one entry
// per dirty bitmap, naming its bitmap table. A pure codec; the bitmap data
// itself is read through the bitmap table by whoever needs it.
#ifndef QCOW2J_METADATA_BITMAP_DIRECTORY_H_
#define QCOW2J_METADATA_BITMAP_DIRECTORY_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j {

inline constexpr uint32_t kBitmapFlagInUse = 1u << 0;
inline constexpr uint32_t kBitmapFlagAuto = 1u << 1;
inline constexpr uint32_t kBitmapFlagExtraDataCompatible = 1u << 2;
inline constexpr uint32_t kBitmapFlagsKnown =
    kBitmapFlagInUse | kBitmapFlagAuto | kBitmapFlagExtraDataCompatible;
inline constexpr uint8_t kBitmapTypeDirtyTracking = 1;
inline constexpr uint32_t kMaxBitmapNameSize = 1023;          // QEMU's limit
inline constexpr uint64_t kMaxBitmapTableEntries = 0x8000000;  // QEMU's BME_MAX_TABLE_SIZE

struct BitmapDirectoryEntry {
  uint64_t bitmap_table_offset = 0;
  uint32_t bitmap_table_size = 0;  // entries (u64 each)
  uint32_t flags = 0;
  uint8_t type = kBitmapTypeDirtyTracking;
  uint8_t granularity_bits = 16;
  std::string name;
  std::string extra_data;  // kept verbatim (no extra data is defined yet)

  uint64_t granularity() const { return 1ull << granularity_bits; }
  bool in_use() const { return flags & kBitmapFlagInUse; }
  bool auto_enabled() const { return flags & kBitmapFlagAuto; }
  // Extra data that we do not understand forbids using the bitmap unless the
  // writer marked it compatible.
  bool usable() const {
    return type == kBitmapTypeDirtyTracking &&
           (extra_data.empty() || (flags & kBitmapFlagExtraDataCompatible));
  }
};

// Parses exactly `nb_bitmaps` entries that must fill `dir` (read from
// bitmap_directory_offset, bitmap_directory_size bytes). Checks per entry:
// reserved flags zero, granularity_bits <= 63, name non-empty, at most
// kMaxBitmapNameSize and unique, extra data and name inside the directory,
// padding zero, bitmap table cluster-aligned, at most kMaxBitmapTableEntries
// and inside the file. Type is not checked (reserved types are reported by
// usable()). Errors name the bitmap index, field and value.
Result<std::vector<BitmapDirectoryEntry>> ParseBitmapDirectory(std::span<const uint8_t> dir,
                                                               uint32_t nb_bitmaps,
                                                               uint32_t cluster_bits,
                                                               uint64_t file_size);

// Entries back to bytes, each padded to 8 with zeros.
std::vector<uint8_t> SerializeBitmapDirectory(const std::vector<BitmapDirectoryEntry>& entries);

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_BITMAP_DIRECTORY_H_
