// qcow2j: the command line, compatible with qemu-img and qemu-io.
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  std::fprintf(stderr, "qcow2j: no command given\n");
  return 1;
}
