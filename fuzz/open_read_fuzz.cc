// A whole image file from the input: Image::Open (read-only, and
// read-write on a copy), reads of a few ranges and the block status of the
// start, as qemu-img map would walk it. Nothing may crash or hang.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/memory_env.h"
#include "qcow2j/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qcow2j;
  auto env = NewMemoryEnvForTest();
  // A corrupt refcount table can place the append point far past the end of
  // a 5 KiB input; growing the file there costs time, not coverage. Writes
  // past 32 MiB fail with EFBIG instead, which exercises the error paths.
  env->SetMaxFileSize(32 << 20);
  {
    auto f = env->Open("/img", kOpenCreate);
    if (!f.ok()) return 0;
    if (size && !(*f)->Write(0, data, size).ok()) return 0;
  }
  OpenOptions oo;
  oo.env = env.get();
  oo.read_only = true;
  oo.format = "qcow2";
  oo.no_backing = true;
  oo.l2_cache_size = 1 << 20;
  oo.refcount_cache_size = 1 << 20;
  auto img = Image::Open("/img", oo);
  if (!img.ok()) return 0;
  Image& im = **img;
  const uint64_t vsize = im.size();
  std::vector<uint8_t> buf(64 << 10);
  for (uint64_t off : {uint64_t{0}, vsize / 2, vsize > buf.size() ? vsize - buf.size() : 0}) {
    if (off >= vsize) continue;
    (void)im.Read(off, buf.data(), std::min<uint64_t>(buf.size(), vsize - off));
  }
  uint64_t off = 0;
  for (int i = 0; i < 64 && off < vsize; ++i) {
    auto bs = im.GetBlockStatus(off, vsize - off);
    if (!bs.ok() || bs->length == 0) break;
    off += bs->length;
  }
  (void)im.Info();
  (void)im.Close();

  // Read-write: opening may write (feature bits); a small write and flush
  // must fail cleanly or succeed.
  oo.read_only = false;
  auto rw = Image::Open("/img", oo);
  if (!rw.ok()) return 0;
  uint8_t pattern[4096];
  std::fill(std::begin(pattern), std::end(pattern), 0x5a);
  if ((*rw)->size() >= sizeof pattern) (void)(*rw)->Write(0, pattern, sizeof pattern);
  (void)(*rw)->Flush();
  (void)(*rw)->Close();
  return 0;
}
