// L1 and L2 table entries (standard and extended), and compressed-cluster
// descriptors, as pure decode/encode functions.
#ifndef QCOW2J_METADATA_L2_ENTRY_H_
#define QCOW2J_METADATA_L2_ENTRY_H_

#include <cstdint>

#include "qcow2j/status.h"

namespace qcow2j {

inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;
inline constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;     // bits 9-55
inline constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;     // bits 9-55
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;   // bits 0-8, 56-62
inline constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;// bits 1-8, 56-61
inline constexpr uint32_t kSubclustersPerCluster = 32;

// An L1 entry: the offset of an L2 table (0 = unallocated) and COPIED.
struct L1Entry {
  uint64_t l2_offset = 0;
  bool copied = false;
  uint64_t reserved_bits = 0;  // nonzero means corruption

  static L1Entry Decode(uint64_t raw);
  uint64_t Encode() const;
};

enum class ClusterType {
  kUnallocated,      // reads from backing (or zeros)
  kZeroPlain,        // zero flag, no host cluster
  kZeroAllocated,    // zero flag, host cluster preallocated
  kNormal,           // data at host_offset
  kCompressed,       // compressed data, see CompressedDescriptor
};

// Subcluster state in an extended L2 entry.
enum class SubclusterType { kUnallocated, kZero, kNormal, kInvalid };

// A decoded L2 entry. For extended L2, `bitmap` is the second 64-bit word:
// bits 0-31 allocated, bits 32-63 reads-as-zero.
struct L2Entry {
  uint64_t raw = 0;
  uint64_t bitmap = 0;
  bool extended = false;
  // The image has an external data file: host offset 0 with COPIED set is
  // then a normal cluster (guest offset 0 maps to data-file offset 0).
  bool external_data = false;

  static L2Entry Decode(uint64_t raw, uint64_t bitmap, bool extended) {
    return L2Entry{raw, bitmap, extended};
  }
  static L2Entry Decode(uint64_t raw, uint64_t bitmap, bool extended, bool external_data) {
    return L2Entry{raw, bitmap, extended, external_data};
  }
  bool compressed() const { return raw & kOflagCompressed; }
  bool copied() const { return raw & kOflagCopied; }
  // Host cluster offset for non-compressed entries (0 = none).
  uint64_t host_offset() const { return compressed() ? 0 : (raw & kL2OffsetMask); }
  // Reserved bits set in a standard entry (zero flag excluded). Nonzero = corrupt.
  uint64_t reserved_bits() const;
  // For extended entries: 0 if the bitmap is consistent with the type, else
  // the offending bits (allocated & zero overlap, or any bit on a compressed
  // entry, or allocation bits without a host offset).
  uint64_t invalid_bitmap_bits() const;
  ClusterType type() const;
  // State of subcluster `sc` (0..31); standard entries have one state for the
  // whole cluster. A compressed cluster reads as kNormal in every subcluster
  // (its data comes from the descriptor); any inconsistent bitmap, or sc >= 32,
  // gives kInvalid.
  SubclusterType subcluster_type(unsigned sc) const;
};

// Width of the host-offset field of a compressed descriptor (qcow2.txt:
// x = 62 - (cluster_bits - 8)); the sector count takes bits x..61.
inline constexpr uint32_t CompressedOffsetBits(uint32_t cluster_bits) {
  return 62 - (cluster_bits - 8);
}

// Where a compressed cluster's bytes are: `host_offset` (byte granularity)
// and `compressed_size` bytes covering every sector the descriptor names
// ((nb_additional_sectors + 1) * 512 - (host_offset & 511)).
struct CompressedDescriptor {
  uint64_t host_offset = 0;
  uint64_t nb_additional_sectors = 0;
  uint64_t compressed_size() const { return (nb_additional_sectors + 1) * 512 - (host_offset & 511); }

  // `cluster_bits` must be 9..21 (a validated header's). Offset bits above 55
  // are returned as found, so that check can report them.
  static CompressedDescriptor Decode(uint64_t raw, uint32_t cluster_bits);
  // Encodes offset+size (size in bytes of compressed data) with the
  // compressed flag set. Fails if the offset or sector count do not fit.
  static Result<uint64_t> Encode(uint64_t host_offset, uint64_t size, uint32_t cluster_bits);
};

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_L2_ENTRY_H_
