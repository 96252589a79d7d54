#include "metadata/refcount_block.h"

#include "metadata/endian.h"

namespace qcow2j {

// Entries past the block's end read as 0 and are not written: callers size
// blocks by RefcountBlockEntries(), so this only guards against a bug turning
// into an out-of-bounds access.
uint64_t GetRefcount(std::span<const uint8_t> block, uint32_t order, uint64_t index) {
  if (order > 6) return 0;
  if (order < 3) {
    // 2^order bits per entry, LSB first within each byte (as QEMU packs them).
    const uint32_t per_byte_shift = 3 - order;
    const uint64_t byte = index >> per_byte_shift;
    if (byte >= block.size()) return 0;
    const uint32_t shift = static_cast<uint32_t>(index & ((1u << per_byte_shift) - 1)) << order;
    return (block[byte] >> shift) & MaxRefcount(order);
  }
  const uint64_t width = 1u << (order - 3);
  if (index >= block.size() / width) return 0;
  const uint8_t* p = block.data() + index * width;
  switch (order) {
    case 3: return *p;
    case 4: return LoadBE16(p);
    case 5: return LoadBE32(p);
    default: return LoadBE64(p);
  }
}

void SetRefcount(std::span<uint8_t> block, uint32_t order, uint64_t index, uint64_t value) {
  if (order > 6) return;
  value &= MaxRefcount(order);
  if (order < 3) {
    const uint32_t per_byte_shift = 3 - order;
    const uint64_t byte = index >> per_byte_shift;
    if (byte >= block.size()) return;
    const uint32_t shift = static_cast<uint32_t>(index & ((1u << per_byte_shift) - 1)) << order;
    const uint32_t mask = static_cast<uint32_t>(MaxRefcount(order)) << shift;
    block[byte] = static_cast<uint8_t>((block[byte] & ~mask) | (value << shift));
    return;
  }
  const uint64_t width = 1u << (order - 3);
  if (index >= block.size() / width) return;
  uint8_t* p = block.data() + index * width;
  switch (order) {
    case 3: *p = static_cast<uint8_t>(value); break;
    case 4: StoreBE16(p, static_cast<uint16_t>(value)); break;
    case 5: StoreBE32(p, static_cast<uint32_t>(value)); break;
    default: StoreBE64(p, value); break;
  }
}

}  // namespace qcow2j
