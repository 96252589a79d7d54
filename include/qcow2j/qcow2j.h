/* The C API of qcow2j: open, create, read, write, zero, discard, flush.
 *
 * A thin layer over the C++ qcow2j::Image (include/qcow2j/image.h) for C
 * programs and foreign-function interfaces. Every call returns 0 (or a
 * non-negative value) on success and a negative errno-style code on failure;
 * qcow2j_last_error() then gives a message that names the offending field,
 * offset or file. The message is per thread and describes the most recent
 * call made on that thread ("" after a success).
 *
 * A qcow2j_image is thread-safe: several threads may read, write, zero,
 * discard and flush the same image at once. qcow2j_close must not race with
 * any other call on that image.
 */
#ifndef QCOW2J_QCOW2J_H_
#define QCOW2J_QCOW2J_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QCOW2J_C_API __attribute__((visibility("default")))
#else
#define QCOW2J_C_API
#endif

typedef struct qcow2j_image qcow2j_image;

/* qcow2j_open flags. Without QCOW2J_OPEN_RDWR the image is read-only. */
enum {
  QCOW2J_OPEN_RDWR = 1u << 0,
  QCOW2J_OPEN_DIRECT = 1u << 1,        /* O_DIRECT on the image file (cache=none) */
  QCOW2J_OPEN_WRITETHROUGH = 1u << 2,  /* every write is durable before it returns */
  QCOW2J_OPEN_NO_BACKING = 1u << 3,    /* do not open the backing chain */
  QCOW2J_OPEN_FORCE_SHARE = 1u << 4,   /* ignore a lock held by another process */
  QCOW2J_OPEN_FORMAT_RAW = 1u << 5,    /* open as raw instead of probing */
  QCOW2J_OPEN_FORMAT_QCOW2 = 1u << 6,  /* open as qcow2 instead of probing */
  /* Reads, writes and syncs through io_uring (qemu's aio=io_uring) instead of
   * the system calls; fails ("Unable to use io_uring: ...", -ENOSYS or
   * -EPERM) where the kernel or a seccomp filter does not allow it. */
  QCOW2J_OPEN_IO_URING = 1u << 7
};

/* Error codes are negated errno values:
 *   -EINVAL     invalid argument (bad offset, option, flag ...)
 *   -EUCLEAN    the image is corrupt (the message names the field / offset)
 *   -ENOTSUP    valid image using a feature qcow2j does not handle
 *   -EIO, ...   I/O failure; the errno of the failing system call when known
 *   -ENOSPC     no space left on the host
 *   -ENOENT     file not found
 *   -EROFS      write to an image opened read-only
 *   -EBUSY      image locked by another process
 *   -ECANCELED  the image is in a failed state after an earlier error
 *   -ENOMEM     out of memory
 */

/* Opens an image (qcow2 or raw, probed unless a FORMAT flag says). On success
 * *out is the image, which qcow2j_close releases. */
QCOW2J_C_API int qcow2j_open(const char* path, unsigned flags, qcow2j_image** out);

/* Creates an image of `size` bytes. `options` may be NULL or a comma-separated
 * list of qemu-img -o style keys:
 *   format=qcow2|raw, cluster_size=65536, refcount_bits=16, compat=1.1|0.10,
 *   extended_l2=on|off, lazy_refcounts=on|off, compression_type=zlib|zstd,
 *   preallocation=off|metadata|falloc|full, backing_file=F, backing_fmt=FMT,
 *   data_file=F, data_file_raw=on|off, journal=on|off, journal_size=N
 * Sizes take k/M/G/T suffixes (powers of 1024). */
QCOW2J_C_API int qcow2j_create(const char* path, uint64_t size, const char* options);

/* Blocking I/O. Offsets and lengths need no alignment. */
QCOW2J_C_API int qcow2j_read(qcow2j_image* img, uint64_t offset, void* buf, size_t len);
QCOW2J_C_API int qcow2j_write(qcow2j_image* img, uint64_t offset, const void* buf, size_t len);
/* Afterwards the range reads as zeros; may_unmap != 0 lets the engine free clusters. */
QCOW2J_C_API int qcow2j_write_zeroes(qcow2j_image* img, uint64_t offset, uint64_t len,
                                     int may_unmap);
QCOW2J_C_API int qcow2j_discard(qcow2j_image* img, uint64_t offset, uint64_t len);
/* Makes every write that completed before the call durable. */
QCOW2J_C_API int qcow2j_flush(qcow2j_image* img);

/* Flushes, checkpoints and closes the image, then frees it (also on failure:
 * img is invalid afterwards). NULL is allowed and returns 0. */
QCOW2J_C_API int qcow2j_close(qcow2j_image* img);

/* The virtual size in bytes, or a negative error code. */
QCOW2J_C_API int64_t qcow2j_size(qcow2j_image* img);

/* Block status flags (qemu-img map semantics across the backing chain). */
enum {
  QCOW2J_STATUS_ALLOCATED = 1u << 0, /* allocated in this image or a backing file */
  QCOW2J_STATUS_ZERO = 1u << 1,      /* reads as zeros */
  QCOW2J_STATUS_DATA = 1u << 2       /* data is stored (not a zero cluster / hole) */
};

/* The extent that starts at `offset`, at most `max_len` long, whose every byte
 * has the same status: *len gets its length (> 0), *status its flags. */
QCOW2J_C_API int qcow2j_block_status(qcow2j_image* img, uint64_t offset, uint64_t max_len,
                                     uint64_t* len, unsigned* status);

/* The message of the most recent call on this thread; "" if it succeeded.
 * Valid until the next qcow2j call on this thread. Never NULL. */
QCOW2J_C_API const char* qcow2j_last_error(void);

/* A static description of a negative error code, like strerror(-err). */
QCOW2J_C_API const char* qcow2j_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2J_QCOW2J_H_ */
