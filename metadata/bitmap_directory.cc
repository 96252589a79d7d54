#include "metadata/bitmap_directory.h"
#include "metadata/hex.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "metadata/endian.h"
#include "metadata/header.h"

namespace qcow2j {

namespace {

constexpr size_t kEntryFixedBytes = 24;

uint64_t AlignUp8(uint64_t v) { return (v + 7) & ~7ull; }

}  // namespace

Result<std::vector<BitmapDirectoryEntry>> ParseBitmapDirectory(std::span<const uint8_t> dir,
                                                               uint32_t nb_bitmaps,
                                                               uint32_t cluster_bits,
                                                               uint64_t file_size) {
  if (cluster_bits < kMinClusterBits || cluster_bits > kMaxClusterBits) {
    return Status::InvalidArgument("bitmap directory: cluster_bits " + std::to_string(cluster_bits));
  }
  if (nb_bitmaps > kMaxBitmaps) {
    return Status::NotSupported("bitmap directory: nb_bitmaps " + std::to_string(nb_bitmaps) +
                                " exceeds " + std::to_string(kMaxBitmaps));
  }
  const uint64_t cs = 1ull << cluster_bits;
  std::vector<BitmapDirectoryEntry> entries;
  std::set<std::string> names;
  uint64_t off = 0;
  for (uint32_t i = 0; i < nb_bitmaps; ++i) {
    const std::string where = "bitmap " + std::to_string(i) + " at directory offset " + Hex(off);
    if (dir.size() - off < kEntryFixedBytes) {
      return Status::Corruption(where + ": entry runs past bitmap_directory_size " +
                                std::to_string(dir.size()));
    }
    const uint8_t* p = dir.data() + off;
    BitmapDirectoryEntry e;
    e.bitmap_table_offset = LoadBE64(p);
    e.bitmap_table_size = LoadBE32(p + 8);
    e.flags = LoadBE32(p + 12);
    e.type = p[16];
    e.granularity_bits = p[17];
    const uint16_t name_size = LoadBE16(p + 18);
    const uint32_t extra_size = LoadBE32(p + 20);
    const uint64_t used = kEntryFixedBytes + uint64_t{extra_size} + name_size;
    const uint64_t entry_size = AlignUp8(used);
    if (entry_size > dir.size() - off) {
      return Status::Corruption(where + ": entry of " + std::to_string(entry_size) +
                                " bytes (extra_data_size " + std::to_string(extra_size) +
                                ", name_size " + std::to_string(name_size) +
                                ") runs past bitmap_directory_size " + std::to_string(dir.size()));
    }
    if (e.flags & ~kBitmapFlagsKnown) {
      return Status::Corruption(where + ": field flags " + Hex(e.flags) +
                                " has reserved bits set");
    }
    if (e.granularity_bits > 63) {
      return Status::Corruption(where + ": field granularity_bits " +
                                std::to_string(e.granularity_bits) + " is above 63");
    }
    if (name_size == 0) return Status::Corruption(where + ": field name_size is 0");
    if (name_size > kMaxBitmapNameSize) {
      return Status::NotSupported(where + ": field name_size " + std::to_string(name_size) +
                                  " exceeds " + std::to_string(kMaxBitmapNameSize));
    }
    if (e.bitmap_table_size > kMaxBitmapTableEntries) {
      return Status::NotSupported(where + ": field bitmap_table_size " +
                                  std::to_string(e.bitmap_table_size) + " exceeds " +
                                  std::to_string(kMaxBitmapTableEntries));
    }
    if (e.bitmap_table_offset & (cs - 1)) {
      return Status::Corruption(where + ": field bitmap_table_offset " +
                                Hex(e.bitmap_table_offset) + " is not aligned to cluster_size " +
                                std::to_string(cs));
    }
    const uint64_t table_bytes = uint64_t{e.bitmap_table_size} * 8;
    if (table_bytes != 0 &&
        (e.bitmap_table_offset == 0 || e.bitmap_table_offset > file_size ||
         table_bytes > file_size - e.bitmap_table_offset)) {
      return Status::Corruption(where + ": field bitmap_table_offset " +
                                Hex(e.bitmap_table_offset) + " with bitmap_table_size " +
                                std::to_string(e.bitmap_table_size) + " is outside the file (" +
                                std::to_string(file_size) + " bytes)");
    }
    const char* extra = reinterpret_cast<const char*>(p) + kEntryFixedBytes;
    e.extra_data.assign(extra, extra_size);
    e.name.assign(extra + extra_size, name_size);
    if (!std::all_of(p + used, p + entry_size, [](uint8_t b) { return b == 0; })) {
      return Status::Corruption(where + ": padding after the name is not zero");
    }
    if (!names.insert(e.name).second) {
      return Status::Corruption(where + ": name \"" + e.name + "\" is used twice");
    }
    entries.push_back(std::move(e));
    off += entry_size;
  }
  if (off != dir.size()) {
    return Status::Corruption("bitmap directory: " + std::to_string(nb_bitmaps) +
                              " entries take " + std::to_string(off) +
                              " bytes but bitmap_directory_size is " +
                              std::to_string(dir.size()));
  }
  return entries;
}

std::vector<uint8_t> SerializeBitmapDirectory(const std::vector<BitmapDirectoryEntry>& entries) {
  std::vector<uint8_t> out;
  for (const BitmapDirectoryEntry& e : entries) {
    // Over-long names are cut to what the 16-bit field (and QEMU) allows.
    const size_t name_size = std::min<size_t>(e.name.size(), kMaxBitmapNameSize);
    const size_t at = out.size();
    out.resize(at + AlignUp8(kEntryFixedBytes + e.extra_data.size() + name_size), 0);
    uint8_t* p = out.data() + at;
    StoreBE64(p, e.bitmap_table_offset);
    StoreBE32(p + 8, e.bitmap_table_size);
    StoreBE32(p + 12, e.flags);
    p[16] = e.type;
    p[17] = e.granularity_bits;
    StoreBE16(p + 18, static_cast<uint16_t>(name_size));
    StoreBE32(p + 20, static_cast<uint32_t>(e.extra_data.size()));
    uint8_t* q = std::copy(e.extra_data.begin(), e.extra_data.end(), p + kEntryFixedBytes);
    std::copy_n(e.name.begin(), name_size, q);
  }
  return out;
}

}  // namespace qcow2j
