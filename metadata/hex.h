// "0x1f400": how offsets and raw entries appear in error messages.
#ifndef QCOW2J_METADATA_HEX_H_
#define QCOW2J_METADATA_HEX_H_

#include <cstdint>
#include <cstdio>
#include <string>

namespace qcow2j {

inline std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_HEX_H_
