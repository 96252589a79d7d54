// Cluster compression codecs: raw deflate (zlib, window bits -12 as QEMU uses)
// and zstd (a sequence of frames, as QEMU's qcow2 writes them).
#ifndef QCOW2J_QCOW2_COMPRESSION_H_
#define QCOW2J_QCOW2_COMPRESSION_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include "qcow2j/status.h"

namespace qcow2j {

enum class CompressionType : uint8_t { kZlib = 0, kZstd = 1 };

// Decompresses `src` (which may carry trailing garbage up to the sector end,
// as compressed clusters on disk do) into exactly dst.size() bytes.
// Corruption if the stream is invalid or yields fewer bytes.
Status DecompressCluster(CompressionType type, std::span<const uint8_t> src, std::span<uint8_t> dst);

// Compresses `src` into `dst`; returns the compressed size, or 0 when the
// result would not be smaller than dst.size() (store the cluster
// uncompressed then). zlib also returns 0, without deflating, for a cluster
// that a probe of samples finds incompressible (LooksIncompressible).
Result<size_t> CompressCluster(CompressionType type, std::span<const uint8_t> src, std::span<uint8_t> dst);

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_COMPRESSION_H_
