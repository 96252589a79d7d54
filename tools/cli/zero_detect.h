// Finding the all-zero parts of a buffer, so convert can leave holes (or
// write zeroes cheaply) where qemu-img would.
#ifndef QCOW2J_TOOLS_CLI_ZERO_DETECT_H_
#define QCOW2J_TOOLS_CLI_ZERO_DETECT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qcow2j::cli {

bool IsZero(const uint8_t* buf, size_t len);

struct ByteRun {
  size_t offset, length;
  bool zero;
};

// Splits buf into maximal runs of `granularity`-sized blocks (the last may be
// shorter) that are all zeros or not. granularity 0: one data run. When
// drop_zero_runs, only the data runs are returned.
std::vector<ByteRun> NonZeroRuns(const uint8_t* buf, size_t len, uint64_t granularity,
                                 bool drop_zero_runs);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_ZERO_DETECT_H_
