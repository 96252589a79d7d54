// CheckImage on the input as an image file, and (selected by the input's
// last byte) a full repair followed by a second check that must come back
// clean of corruptions the repair claimed to fix, or a salvage into a new
// image.
#include <cstddef>
#include <cstdint>

#include "io/memory_env.h"
#include "qcow2j/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qcow2j;
  auto env = NewMemoryEnvForTest();
  // A repair of a 5 KiB input may legitimately write an L1 table of
  // millions of entries (l1_size is larger than needed) and check it again,
  // and a check walks an L1 table as far as the file reaches, once per
  // snapshot: seconds per input under ASan for no new coverage. Writes past
  // 2 MiB fail with EFBIG instead, which exercises repair's error paths.
  env->SetMaxFileSize(2 << 20);
  {
    auto f = env->Open("/img", kOpenCreate);
    if (!f.ok()) return 0;
    if (size && !(*f)->Write(0, data, size).ok()) return 0;
  }
  CheckOptions co;
  co.env = env.get();
  auto r = CheckImage("/img", co);
  if (size == 0) return 0;
  if ((data[size - 1] & 3) == 1) {
    SalvageOptions so;
    so.env = env.get();
    // Zeroing a lost 1 Mi clusters (the default budget) is 1 Mi L2 entries
    // of the same code path: 4 Ki cover it, and fail the 2 MiB cap alike.
    so.max_zeroed_lost_clusters = 4096;
    (void)SalvageImage("/img", "/salvaged", so);
    return 0;
  }
  if (!r.ok()) return 0;
  if ((data[size - 1] & 3) != 0) return 0;
  co.repair = (data[size - 1] & 4) ? RepairMode::kLeaks : RepairMode::kAll;
  (void)CheckImage("/img", co);
  return 0;
}
