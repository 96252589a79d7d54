// Refcount blocks and the refcount table: entries of 1 to 64 bits
// (refcount_order 0-6). Sub-byte widths pack the lowest entry in the lowest
// bits of each byte; 8 bits and wider are big-endian.
#ifndef QCOW2J_METADATA_REFCOUNT_BLOCK_H_
#define QCOW2J_METADATA_REFCOUNT_BLOCK_H_

#include <cstdint>
#include <span>

namespace qcow2j {

inline constexpr uint64_t kRefcountTableOffsetMask = 0xfffffffffffffe00ull;
inline constexpr uint64_t kRefcountTableReservedMask = 0x1ffull;

// Reads entry `index` of a refcount block with 2^order bits per entry.
uint64_t GetRefcount(std::span<const uint8_t> block, uint32_t order, uint64_t index);
// Writes it; `value` must be <= MaxRefcount(order).
void SetRefcount(std::span<uint8_t> block, uint32_t order, uint64_t index, uint64_t value);
inline uint64_t MaxRefcount(uint32_t order) {
  return order >= 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}
// Entries per refcount block of `cluster_bits`.
inline uint64_t RefcountBlockEntries(uint32_t cluster_bits, uint32_t order) {
  return (1ull << (cluster_bits + 3)) >> order;
}

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_REFCOUNT_BLOCK_H_
