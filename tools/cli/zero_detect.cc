#include "tools/cli/zero_detect.h"

#include <cstring>

namespace qcow2j::cli {

bool IsZero(const uint8_t* buf, size_t len) {
  // Word-at-a-time; the compiler vectorises the OR reduction.
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

std::vector<ByteRun> NonZeroRuns(const uint8_t* buf, size_t len, uint64_t granularity,
                                 bool drop_zero_runs) {
  std::vector<ByteRun> runs;
  if (len == 0) return runs;
  if (granularity == 0) {
    runs.push_back({0, len, false});
    return runs;
  }
  for (size_t off = 0; off < len;) {
    size_t n = len - off < granularity ? len - off : static_cast<size_t>(granularity);
    bool zero = IsZero(buf + off, n);
    if (!runs.empty() && runs.back().zero == zero) {
      runs.back().length += n;
    } else {
      runs.push_back({off, n, zero});
    }
    off += n;
  }
  if (drop_zero_runs) {
    std::vector<ByteRun> data;
    for (const ByteRun& r : runs) {
      if (!r.zero) data.push_back(r);
    }
    return data;
  }
  return runs;
}

}  // namespace qcow2j::cli
