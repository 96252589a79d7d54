#include "metadata/l2_entry.h"

#include <string>

namespace qcow2j {

namespace {

constexpr uint64_t kAllocBits = 0xffffffffull;  // extended bitmap, bits 0-31

}  // namespace

L1Entry L1Entry::Decode(uint64_t raw) {
  L1Entry e;
  e.l2_offset = raw & kL1OffsetMask;
  e.copied = raw & kOflagCopied;
  e.reserved_bits = raw & kL1ReservedMask;
  return e;
}

uint64_t L1Entry::Encode() const {
  // reserved_bits are written back as found so that a round trip never hides
  // a corruption that check has not repaired yet.
  return (l2_offset & kL1OffsetMask) | (copied ? kOflagCopied : 0) |
         (reserved_bits & kL1ReservedMask);
}

uint64_t L2Entry::reserved_bits() const {
  // A compressed descriptor uses every bit below 62; what is "reserved" there
  // depends on cluster_bits and is CompressedDescriptor's business.
  if (compressed()) return 0;
  uint64_t mask = kL2StdReservedMask;
  // With extended L2 the zero flag does not exist: bit 0 is reserved too
  // (qcow2.txt, "Standard Cluster Descriptor").
  if (extended) mask |= kOflagZero;
  return raw & mask;
}

uint64_t L2Entry::invalid_bitmap_bits() const {
  if (!extended) return 0;
  // Compressed clusters have no subclusters: the whole word is reserved.
  if (compressed()) return bitmap;
  const uint64_t alloc = bitmap & kAllocBits;
  const uint64_t zero = bitmap >> 32;
  uint64_t bad = 0;
  // A subcluster cannot be both allocated and read as zeros.
  const uint64_t both = alloc & zero;
  bad |= both | (both << 32);
  // Allocated subclusters need a host cluster. An external data file maps
  // guest offset 0 to host offset 0, marked by COPIED (see type()).
  if (host_offset() == 0 && !(external_data && copied())) bad |= alloc;
  return bad;
}

ClusterType L2Entry::type() const {
  if (compressed()) return ClusterType::kCompressed;
  const uint64_t offset = raw & kL2OffsetMask;
  // Extended entries have no cluster-wide zero flag; their zero state lives in
  // the bitmap and is reported per subcluster.
  if (!extended && (raw & kOflagZero)) {
    return offset ? ClusterType::kZeroAllocated : ClusterType::kZeroPlain;
  }
  if (offset == 0) {
    // With an external data file, host offset 0 is a valid data cluster; all
    // of them have refcount 1, so COPIED tells the two cases apart (as QEMU).
    return (external_data && copied()) ? ClusterType::kNormal : ClusterType::kUnallocated;
  }
  return ClusterType::kNormal;
}

SubclusterType L2Entry::subcluster_type(unsigned sc) const {
  if (sc >= kSubclustersPerCluster) return SubclusterType::kInvalid;
  const ClusterType t = type();
  if (!extended) {
    switch (t) {
      case ClusterType::kUnallocated: return SubclusterType::kUnallocated;
      case ClusterType::kZeroPlain:
      case ClusterType::kZeroAllocated: return SubclusterType::kZero;
      case ClusterType::kNormal:
      case ClusterType::kCompressed: return SubclusterType::kNormal;
    }
    return SubclusterType::kInvalid;
  }
  if (invalid_bitmap_bits() != 0) return SubclusterType::kInvalid;
  // A compressed cluster is read whole; its data is "normal" for every part.
  if (t == ClusterType::kCompressed) return SubclusterType::kNormal;
  if (bitmap & (1ull << (32 + sc))) return SubclusterType::kZero;
  if (bitmap & (1ull << sc)) return SubclusterType::kNormal;
  return SubclusterType::kUnallocated;
}

CompressedDescriptor CompressedDescriptor::Decode(uint64_t raw, uint32_t cluster_bits) {
  CompressedDescriptor d;
  if (cluster_bits < 9 || cluster_bits > 21) return d;  // never from a validated header
  const uint32_t x = CompressedOffsetBits(cluster_bits);
  d.host_offset = raw & ((1ull << x) - 1);
  d.nb_additional_sectors = (raw >> x) & ((1ull << (62 - x)) - 1);
  return d;
}

Result<uint64_t> CompressedDescriptor::Encode(uint64_t host_offset, uint64_t size,
                                              uint32_t cluster_bits) {
  if (cluster_bits < 9 || cluster_bits > 21) {
    return Status::InvalidArgument("compressed descriptor: cluster_bits " +
                                   std::to_string(cluster_bits) + " out of range 9..21");
  }
  if (size == 0) return Status::InvalidArgument("compressed descriptor: size 0");
  const uint32_t x = CompressedOffsetBits(cluster_bits);
  // Offsets above 56 bits are not allowed even where the field is wider.
  const uint64_t offset_limit = 1ull << (x < 56 ? x : 56);
  if (host_offset >= offset_limit || size > (1ull << 62) - host_offset) {
    return Status::InvalidArgument("compressed descriptor: host offset " +
                                   std::to_string(host_offset) + " does not fit in " +
                                   std::to_string(x < 56 ? x : 56) + " bits");
  }
  const uint64_t sectors = (host_offset + size - 1) / 512 - host_offset / 512;
  if (sectors >= (1ull << (62 - x))) {
    return Status::InvalidArgument("compressed descriptor: " + std::to_string(size) +
                                   " bytes at offset " + std::to_string(host_offset) + " need " +
                                   std::to_string(sectors) + " additional sectors, more than " +
                                   std::to_string((1ull << (62 - x)) - 1));
  }
  return kOflagCompressed | (sectors << x) | host_offset;
}

}  // namespace qcow2j
