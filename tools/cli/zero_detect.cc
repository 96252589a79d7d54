#include "tools/cli/zero_detect.h"

#include <cstring>

#include "metadata/zero_bytes.h"

namespace qcow2j::cli {

bool IsZero(const uint8_t* buf, size_t len) { return BufferIsZero(buf, len); }

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
