// Cluster codecs, bit-compatible with what QEMU's qcow2 driver reads and writes:
// - zlib: a raw deflate stream (no zlib header) whose matches reach back at
//   most 4 KiB, as QEMU inflates with window bits 12. We deflate with ISA-L's
//   igzip (hist_bits 12), about ten times faster than zlib at its default
//   level for output some 5% larger; any inflate reads it. We inflate with
//   zlib, as QEMU does.
// - zstd: one or more zstd frames back to back.
// A compressed cluster on disk is followed by whatever fills its last 512-byte
// sector, so both decoders stop as soon as the cluster is full and never look
// at the bytes after the end of the stream.
//
// Before deflating a cluster, a probe of a few samples (compressibility_probe)
// spots incompressible data, which is then stored as it is without being
// deflated whole: on random bytes deflate costs as much as on text and saves
// nothing. zstd needs no probe: it gives up on incompressible blocks quickly
// by itself, about as fast as the probe would.
//
// Codec contexts are per thread and reused: setting up deflate costs far more
// than compressing a 64 KiB cluster.
#include "qcow2/compression.h"

#include <isa-l/igzip_lib.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>
#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "qcow2/compressibility_probe.h"

namespace qcow2j {
namespace {

constexpr int kZlibWindowBits = -12;  // negative: raw deflate, as QEMU writes it
constexpr uint16_t kDeflateHistBits = 12;  // the same 4 KiB window for igzip
constexpr uint32_t kIgzipLevel = 2;   // of 0-3: nearly level 3's ratio, faster

std::string Bytes(size_t n) { return std::to_string(n) + " bytes"; }

// A z_stream set up once per thread for inflate.
class InflateStream {
 public:
  InflateStream() { ok_ = inflateInit2(&z_, kZlibWindowBits) == Z_OK; }
  ~InflateStream() {
    if (ok_) inflateEnd(&z_);
  }
  InflateStream(const InflateStream&) = delete;
  InflateStream& operator=(const InflateStream&) = delete;

  // The stream, reset for a new cluster; nullptr if zlib could not set up.
  z_stream* Fresh() {
    if (!ok_) return nullptr;
    return inflateReset(&z_) == Z_OK ? &z_ : nullptr;
  }

 private:
  z_stream z_{};
  bool ok_ = false;
};

// igzip's stream (its hash tables are large: one per thread, not on the
// stack) and the level buffer its levels above 0 need.
struct IgzipState {
  isal_zstream stream;
  std::vector<uint8_t> level_buf = std::vector<uint8_t>(ISAL_DEF_LVL2_DEFAULT);
};

struct ZstdCCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct ZstdDCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

Result<size_t> CompressZlib(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  if (LooksIncompressible(src)) return size_t{0};  // store uncompressed, as if deflate had not shrunk it
  thread_local std::unique_ptr<IgzipState> state(new IgzipState);
  isal_zstream* s = &state->stream;
  isal_deflate_stateless_init(s);
  s->level = kIgzipLevel;
  s->level_buf = state->level_buf.data();
  s->level_buf_size = static_cast<uint32_t>(state->level_buf.size());
  s->hist_bits = kDeflateHistBits;
  s->end_of_stream = 1;
  s->flush = NO_FLUSH;
  s->gzip_flag = IGZIP_DEFLATE;
  s->next_in = const_cast<uint8_t*>(src.data());
  s->avail_in = static_cast<uint32_t>(src.size());
  s->next_out = dst.data();
  s->avail_out = static_cast<uint32_t>(dst.size());
  int r = isal_deflate_stateless(s);
  if (r == STATELESS_OVERFLOW) return size_t{0};  // did not fit: store uncompressed
  if (r != COMP_OK)
    return Status::InvalidArgument("deflate of " + Bytes(src.size()) + " failed (igzip code " +
                                   std::to_string(r) + ")");
  size_t n = dst.size() - s->avail_out;
  return n < dst.size() ? n : 0;
}

Status DecompressZlib(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  thread_local InflateStream stream;
  z_stream* z = stream.Fresh();
  if (z == nullptr) return Status::FromErrno(ENOMEM, "zlib: set up inflate");
  z->next_in = const_cast<Bytef*>(src.data());
  z->avail_in = static_cast<uInt>(src.size());
  z->next_out = dst.data();
  z->avail_out = static_cast<uInt>(dst.size());
  int r = inflate(z, Z_FINISH);
  // A full cluster is success whether or not the stream says it ended there
  // (Z_BUF_ERROR: output full first), as in QEMU's qcow2_zlib_decompress.
  if (z->avail_out == 0 && (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK)) {
    return Status::OK();
  }
  if (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) {
    return Status::Corruption("zlib: compressed cluster of " + Bytes(src.size()) + " yields " +
                              Bytes(dst.size() - z->avail_out) + ", expected " +
                              Bytes(dst.size()));
  }
  return Status::Corruption("zlib: invalid deflate stream in compressed cluster of " +
                            Bytes(src.size()) + " after " + Bytes(dst.size() - z->avail_out) +
                            " of output: " + (z->msg ? z->msg : "code " + std::to_string(r)));
}

Result<size_t> CompressZstd(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdCCtxFree> cctx(ZSTD_createCCtx());
  if (!cctx) return Status::FromErrno(ENOMEM, "zstd: set up compression");
  ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_only);
  ZSTD_inBuffer in{src.data(), src.size(), 0};
  ZSTD_outBuffer out{dst.data(), dst.size(), 0};
  // One frame for the whole cluster, as QEMU writes it (ZSTD_e_end at once).
  size_t r = ZSTD_compressStream2(cctx.get(), &out, &in, ZSTD_e_end);
  if (ZSTD_isError(r)) {
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall) return size_t{0};
    return Status::InvalidArgument("zstd: compression of " + Bytes(src.size()) +
                                   " failed: " + ZSTD_getErrorName(r));
  }
  if (r != 0) return size_t{0};  // frame not finished: it did not fit
  return out.pos < dst.size() ? out.pos : 0;
}

Status DecompressZstd(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  thread_local std::unique_ptr<ZSTD_DCtx, ZstdDCtxFree> dctx(ZSTD_createDCtx());
  if (!dctx) return Status::FromErrno(ENOMEM, "zstd: set up decompression");
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  ZSTD_inBuffer in{src.data(), src.size(), 0};
  ZSTD_outBuffer out{dst.data(), dst.size(), 0};
  auto invalid = [&](size_t r) {
    return Status::Corruption("zstd: invalid stream in compressed cluster of " +
                              Bytes(src.size()) + " at input byte " + std::to_string(in.pos) +
                              ": " + ZSTD_getErrorName(r));
  };
  // 0 from ZSTD_decompressStream means a frame just ended; the next call
  // starts the next frame. Stop when the cluster is full, never reading on
  // into the padding after the last frame.
  size_t r = 1;
  while (out.pos < out.size) {
    size_t in_before = in.pos;
    size_t out_before = out.pos;
    r = ZSTD_decompressStream(dctx.get(), &out, &in);
    if (ZSTD_isError(r)) return invalid(r);
    if (in.pos == in_before && out.pos == out_before) {
      return Status::Corruption("zstd: compressed cluster of " + Bytes(src.size()) + " yields " +
                                Bytes(out.pos) + ", expected " + Bytes(dst.size()));
    }
  }
  if (r != 0) {
    // The cluster is full but the frame has not said it ended: let zstd read
    // the rest of the frame (block trailer, checksum). Any further output
    // means the stream holds more than one cluster.
    uint8_t spare;
    for (;;) {
      ZSTD_outBuffer extra{&spare, 1, 0};
      size_t in_before = in.pos;
      r = ZSTD_decompressStream(dctx.get(), &extra, &in);
      if (ZSTD_isError(r)) return invalid(r);
      if (extra.pos != 0) {
        return Status::Corruption("zstd: compressed cluster of " + Bytes(src.size()) +
                                  " yields more than " + Bytes(dst.size()));
      }
      if (r == 0) break;
      if (in.pos == in_before) {
        return Status::Corruption("zstd: compressed cluster of " + Bytes(src.size()) +
                                  " ends inside a frame");
      }
    }
  }
  return Status::OK();
}

}  // namespace

Status DecompressCluster(CompressionType type, std::span<const uint8_t> src,
                         std::span<uint8_t> dst) {
  if (src.size() > UINT_MAX || dst.size() > UINT_MAX) {
    return Status::InvalidArgument("decompress: " + Bytes(src.size()) + " into " +
                                   Bytes(dst.size()) + " is too large");
  }
  switch (type) {
    case CompressionType::kZlib: return DecompressZlib(src, dst);
    case CompressionType::kZstd: return DecompressZstd(src, dst);
  }
  return Status::NotSupported("unknown compression type " +
                              std::to_string(static_cast<unsigned>(type)));
}

Result<size_t> CompressCluster(CompressionType type, std::span<const uint8_t> src,
                               std::span<uint8_t> dst) {
  if (src.size() > UINT_MAX || dst.size() > UINT_MAX) {
    return Status::InvalidArgument("compress: " + Bytes(src.size()) + " into " +
                                   Bytes(dst.size()) + " is too large");
  }
  if (dst.empty()) return size_t{0};
  switch (type) {
    case CompressionType::kZlib: return CompressZlib(src, dst);
    case CompressionType::kZstd: return CompressZstd(src, dst);
  }
  return Status::NotSupported("unknown compression type " +
                              std::to_string(static_cast<unsigned>(type)));
}

}  // namespace qcow2j
