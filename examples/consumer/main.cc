// Creates a qcow2 image, writes a pattern, reopens it and reads it back.
//   consumer IMAGE
#include <cstdio>
#include <string>
#include <vector>

#include <qcow2j/qcow2j.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  qcow2j::CreateOptions create;
  create.size = 16 << 20;
  if (qcow2j::Status s = qcow2j::Image::Create(path, create); !s.ok()) {
    std::fprintf(stderr, "create: %s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<unsigned char> data(100000), back(data.size());
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i % 251);

  qcow2j::OpenOptions open;
  open.read_only = false;
  auto image = qcow2j::Image::Open(path, open);
  if (!image.ok()) {
    std::fprintf(stderr, "open: %s\n", image.status().ToString().c_str());
    return 1;
  }
  qcow2j::Status s = (*image)->Write(12345, data.data(), data.size());
  if (s.ok()) s = (*image)->Close();
  if (!s.ok()) {
    std::fprintf(stderr, "write/close: %s\n", s.ToString().c_str());
    return 1;
  }

  auto again = qcow2j::Image::Open(path, qcow2j::OpenOptions{});
  if (!again.ok()) {
    std::fprintf(stderr, "reopen: %s\n", again.status().ToString().c_str());
    return 1;
  }
  s = (*again)->Read(12345, back.data(), back.size());
  if (s.ok()) s = (*again)->Close();
  if (!s.ok() || back != data) {
    std::fprintf(stderr, "read back: %s\n", s.ok() ? "data differs" : s.ToString().c_str());
    return 1;
  }
  std::printf("consumer: ok (%s)\n", path.c_str());
  return 0;
}
