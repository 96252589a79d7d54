/* Exercises the C API (include/qcow2j/qcow2j.h) from C: create with options,
 * open, write/read/zero/discard/flush, block status, errors and messages,
 * close and reopen, and qemu-img check on the result when qemu-img exists. */
#define _POSIX_C_SOURCE 200809L
#include "qcow2j/qcow2j.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_failures = 0;

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: '%s')\n", __FILE__, __LINE__, \
              #cond, qcow2j_last_error());                                             \
      ++g_failures;                                                                    \
    }                                                                                  \
  } while (0)

#define CHECK_OK(call)                                                                  \
  do {                                                                                  \
    int rc_ = (call);                                                                   \
    if (rc_ != 0) {                                                                     \
      fprintf(stderr, "%s:%d: %s returned %d (%s): %s\n", __FILE__, __LINE__, #call, rc_, \
              qcow2j_strerror(rc_), qcow2j_last_error());                               \
      ++g_failures;                                                                     \
    }                                                                                   \
  } while (0)

static int all_bytes(const unsigned char* p, size_t n, unsigned char v) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != v) return 0;
  }
  return 1;
}

int main(void) {
  char dir[] = "/var/tmp/qcow2j-capi-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  char path[512], raw_path[512], cmd[1200];
  snprintf(path, sizeof path, "%s/c.qcow2", dir);
  snprintf(raw_path, sizeof raw_path, "%s/c.raw", dir);

  const uint64_t size = 64ull << 20;
  const size_t len = 3 * 65536 + 1234; /* spans clusters, unaligned end */
  unsigned char* buf = malloc(len);
  unsigned char* back = malloc(len);
  if (!buf || !back) return 1;
  for (size_t i = 0; i < len; ++i) buf[i] = (unsigned char)(i * 7 + 3);

  /* Bad options are refused with a message naming the option. */
  int rc = qcow2j_create(path, size, "cluster_size=65536,bogus=1");
  CHECK(rc == -EINVAL);
  CHECK(strstr(qcow2j_last_error(), "bogus") != NULL);
  rc = qcow2j_create(path, size, "cluster_size=abc");
  CHECK(rc == -EINVAL);

  CHECK_OK(qcow2j_create(path, size, "cluster_size=64k,refcount_bits=16,compression_type=zstd"));
  CHECK(strcmp(qcow2j_last_error(), "") == 0);
  CHECK_OK(qcow2j_create(raw_path, 1 << 20, "format=raw"));

  qcow2j_image* img = NULL;
  CHECK_OK(qcow2j_open(path, QCOW2J_OPEN_RDWR, &img));
  if (!img) return 1;
  CHECK(qcow2j_size(img) == (int64_t)size);

  /* Unwritten: reads zeros, block status says unallocated zeros. */
  CHECK_OK(qcow2j_read(img, 0, back, 4096));
  CHECK(all_bytes(back, 4096, 0));
  uint64_t ext = 0;
  unsigned st = 0;
  CHECK_OK(qcow2j_block_status(img, 0, size, &ext, &st));
  CHECK(ext == size);
  CHECK(st == QCOW2J_STATUS_ZERO);

  CHECK_OK(qcow2j_write(img, 1000, buf, len));
  CHECK_OK(qcow2j_read(img, 1000, back, len));
  CHECK(memcmp(buf, back, len) == 0);
  CHECK_OK(qcow2j_block_status(img, 0, size, &ext, &st));
  CHECK(ext > 0 && (st & QCOW2J_STATUS_DATA) && (st & QCOW2J_STATUS_ALLOCATED));

  CHECK_OK(qcow2j_write_zeroes(img, 65536, 65536, 1));
  CHECK_OK(qcow2j_discard(img, 2 * 65536, 65536));
  CHECK_OK(qcow2j_read(img, 65536, back, 2 * 65536));
  CHECK(all_bytes(back, 2 * 65536, 0));
  CHECK_OK(qcow2j_flush(img));

  /* Out of range: an error code and a message, no crash. */
  rc = qcow2j_write(img, size - 10, buf, 100);
  CHECK(rc < 0);
  CHECK(strlen(qcow2j_last_error()) > 0);
  CHECK(strlen(qcow2j_strerror(rc)) > 0);
  CHECK(qcow2j_read(NULL, 0, back, 1) == -EINVAL);
  CHECK(qcow2j_block_status(img, 0, size, NULL, &st) == -EINVAL);
  CHECK_OK(qcow2j_close(img));
  CHECK_OK(qcow2j_close(NULL));

  /* Reopen read-only: the data survived; writes are refused with EROFS. */
  img = NULL;
  CHECK_OK(qcow2j_open(path, 0, &img));
  if (!img) return 1;
  CHECK_OK(qcow2j_read(img, 1000, back, 65536 - 1000));
  CHECK(memcmp(buf, back, 65536 - 1000) == 0);
  CHECK_OK(qcow2j_read(img, 3 * 65536, back, 1000 + 1234));
  CHECK(memcmp(buf + 3 * 65536 - 1000, back, 1000 + 1234) == 0);
  rc = qcow2j_write(img, 0, buf, 512);
  CHECK(rc == -EROFS);
  CHECK_OK(qcow2j_close(img));

  /* Missing file: ENOENT and a message naming it. */
  img = (qcow2j_image*)1;
  rc = qcow2j_open("/nonexistent/qcow2j.qcow2", 0, &img);
  CHECK(rc == -ENOENT);
  CHECK(img == NULL);
  CHECK(strstr(qcow2j_last_error(), "/nonexistent/qcow2j.qcow2") != NULL);
  CHECK(qcow2j_open(path, 0xff00u, &img) == -EINVAL);

  /* Raw images work through the same calls. */
  img = NULL;
  CHECK_OK(qcow2j_open(raw_path, QCOW2J_OPEN_RDWR | QCOW2J_OPEN_FORMAT_RAW, &img));
  if (img) {
    CHECK(qcow2j_size(img) == 1 << 20);
    CHECK_OK(qcow2j_write(img, 4096, buf, 8192));
    CHECK_OK(qcow2j_read(img, 4096, back, 8192));
    CHECK(memcmp(buf, back, 8192) == 0);
    CHECK_OK(qcow2j_close(img));
  }

  /* Through io_uring, O_DIRECT: the same data; or, where the kernel or a
   * sandbox forbids io_uring, a clear error and no image. */
  img = NULL;
  rc = qcow2j_open(path, QCOW2J_OPEN_RDWR | QCOW2J_OPEN_DIRECT | QCOW2J_OPEN_IO_URING, &img);
  if (rc == -ENOSYS || rc == -EPERM) {
    CHECK(img == NULL);
    CHECK(strstr(qcow2j_last_error(), "Unable to use io_uring") != NULL);
  } else {
    CHECK_OK(rc);
  }
  if (img) {
    CHECK_OK(qcow2j_read(img, 1000, back, 65536 - 1000));
    CHECK(memcmp(buf, back, 65536 - 1000) == 0);
    CHECK_OK(qcow2j_write(img, 5 * 65536 + 7, buf, 70000));
    CHECK_OK(qcow2j_flush(img));
    CHECK_OK(qcow2j_read(img, 5 * 65536 + 7, back, 70000));
    CHECK(memcmp(buf, back, 70000) == 0);
    CHECK_OK(qcow2j_close(img));
  }

  /* QEMU agrees the image is clean. */
  if (access("/usr/bin/qemu-img", X_OK) == 0) {
    snprintf(cmd, sizeof cmd, "qemu-img check -q -f qcow2 '%s'", path);
    CHECK(system(cmd) == 0);
  }

  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  free(buf);
  free(back);
  if (g_failures) {
    fprintf(stderr, "capi_c_test: %d failure(s)\n", g_failures);
    return 1;
  }
  printf("capi_c_test: ok\n");
  return 0;
}
