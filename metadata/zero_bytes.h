// Whether a buffer holds only zero bytes: journal padding checks, salvage,
// and convert's zero detection all ask this, often of large buffers.
#ifndef QCOW2J_METADATA_ZERO_BYTES_H_
#define QCOW2J_METADATA_ZERO_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace qcow2j {

inline bool BufferIsZero(const void* data, size_t len) {
  const auto* buf = static_cast<const uint8_t*>(data);
  // 64 bytes at a time; the compiler vectorises the OR reduction.
  size_t i = 0;
  for (; i + 64 <= len; i += 64) {
    uint64_t w[8];
    std::memcpy(w, buf + i, 64);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
  }
  for (; i < len; i++) {
    if (buf[i]) return false;
  }
  return true;
}

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_ZERO_BYTES_H_
