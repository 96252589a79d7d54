// A cheap guess, before deflating a whole cluster, that deflate would not
// make it smaller (random bytes, data compressed or encrypted already).
#ifndef QCOW2J_QCOW2_COMPRESSIBILITY_PROBE_H_
#define QCOW2J_QCOW2_COMPRESSIBILITY_PROBE_H_

#include <cstdint>
#include <span>

namespace qcow2j {

// True when bytes sampled over the whole of `cluster` are spread as evenly
// as random bytes, and a 4 KiB sample from its middle deflates (at igzip's
// fastest level) to almost its own size. Such a cluster is then stored
// uncompressed, exactly as one whose deflate did not shrink it.
//
// A guess, never a correctness question: a true answer for data that would
// have compressed only costs space. It errs that way for data that is
// compressible only through repeats (not through skewed bytes) outside the
// deflated sample. Clusters smaller than kMinProbedCluster are never guessed
// (false): deflating them costs little.
bool LooksIncompressible(std::span<const uint8_t> cluster);

inline constexpr size_t kMinProbedCluster = 32 * 1024;

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_COMPRESSIBILITY_PROBE_H_
