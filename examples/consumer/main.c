/* The same through the C API: create, write, reopen, read back.
 *   consumer_c IMAGE */
#include <stdio.h>
#include <string.h>

#include <qcow2j/qcow2j.h>

static int fail(const char* what, int rc) {
  fprintf(stderr, "%s: %s: %s\n", what, qcow2j_strerror(rc), qcow2j_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
    return 2;
  }
  static unsigned char data[100000], back[100000];
  for (size_t i = 0; i < sizeof data; ++i) data[i] = (unsigned char)(i % 253);

  int rc = qcow2j_create(argv[1], 16 << 20, "cluster_size=65536");
  if (rc < 0) return fail("create", rc);
  qcow2j_image* img = NULL;
  if ((rc = qcow2j_open(argv[1], QCOW2J_OPEN_RDWR, &img)) < 0) return fail("open", rc);
  if ((rc = qcow2j_write(img, 4321, data, sizeof data)) < 0) return fail("write", rc);
  if ((rc = qcow2j_close(img)) < 0) return fail("close", rc);

  if ((rc = qcow2j_open(argv[1], 0, &img)) < 0) return fail("reopen", rc);
  if ((rc = qcow2j_read(img, 4321, back, sizeof back)) < 0) return fail("read", rc);
  if ((rc = qcow2j_close(img)) < 0) return fail("close", rc);
  if (memcmp(data, back, sizeof data) != 0) {
    fprintf(stderr, "read back: data differs\n");
    return 1;
  }
  printf("consumer_c: ok (%s)\n", argv[1]);
  return 0;
}
