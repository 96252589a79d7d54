// Big-endian loads and stores: qcow2 stores every integer big-endian.
#ifndef QCOW2J_METADATA_ENDIAN_H_
#define QCOW2J_METADATA_ENDIAN_H_

#include <cstdint>
#include <cstring>

namespace qcow2j {

inline uint16_t LoadBE16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}
inline uint32_t LoadBE32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t LoadBE64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
inline void StoreBE16(void* p, uint16_t v) {
  v = __builtin_bswap16(v);
  std::memcpy(p, &v, 2);
}
inline void StoreBE32(void* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void StoreBE64(void* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_ENDIAN_H_
