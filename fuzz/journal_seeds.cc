// Writes seed inputs for fuzz_journal into the folder given as argv[1]:
// formatted rings holding a few committed transactions (one wrapped), in
// the journal target's input layout (geometry byte, then the area with its
// trailing zeros dropped).
#include <cstdio>
#include <string>
#include <vector>

#include "io/memory_env.h"
#include "journal/journal_format.h"
#include "journal/journal_record.h"
#include "journal/journal_ring.h"

namespace qcow2j {
namespace {

int WriteSeed(const std::string& dir, const std::string& name, uint32_t sector, uint32_t ring_sectors,
              int transactions) {
  JournalExtension ext;
  ext.sector_size = sector;
  ext.area_size = uint64_t{sector} * (kJournalSuperblockSlots + ring_sectors);
  auto env = NewMemoryEnvForTest();
  auto f = env->Open("/j", kOpenCreate);
  if (!f.ok()) return 1;
  auto sb = FormatJournal(f->get(), ext, 1);
  if (!sb.ok()) {
    std::fprintf(stderr, "%s\n", sb.status().ToString().c_str());
    return 1;
  }
  JournalWriter w(f->get(), ext, *sb);
  for (int t = 0; t < transactions; ++t) {
    TransactionBuilder b;
    L2Update l2;
    l2.table_offset = 0x30000;
    l2.first_index = static_cast<uint32_t>(t);
    l2.entries = {0x8000000000050000ull + 0x10000ull * t};
    (void)b.Add(l2);
    (void)b.Add(RefcountUpdate{static_cast<uint64_t>(5 + t), 1});
    if (t == 1) (void)b.Add(RefcountRun{10, 4, 1});
    if (t == 2) (void)b.Add(L1Update{0x20000, 0, 0x8000000000030000ull});
    if (t == 3) (void)b.Add(HeaderUpdate{48, {0, 0, 0, 0, 0, 1, 0, 0}});
    auto frame = b.Finish(w.next_sequence(), w.synced_through(), w.generation(), sector);
    if (!frame.ok()) return 1;
    uint64_t at = 0;
    if (!w.Append(*frame, &at).ok()) {
      // Full: release what is synced and go on (exercises the wrap).
      if (!w.AdvanceTail(w.synced_through() + 1).ok() || !w.Append(*frame, &at).ok()) return 1;
    }
    if (!w.Sync().ok()) return 1;
  }
  auto bytes = env->Contents("/j");
  if (!bytes.ok()) return 1;
  std::vector<uint8_t> v = *bytes;
  while (!v.empty() && v.back() == 0) v.pop_back();
  uint8_t geometry = static_cast<uint8_t>((sector == 4096 ? 1 : 0) | ((ring_sectors - 1) << 1));
  std::string path = dir + "/" + name;
  FILE* out = std::fopen(path.c_str(), "wb");
  if (!out) return 1;
  std::fwrite(&geometry, 1, 1, out);
  std::fwrite(v.data(), 1, v.size(), out);
  std::fclose(out);
  return 0;
}

}  // namespace
}  // namespace qcow2j

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_journal_seeds DIR\n");
    return 2;
  }
  int rc = 0;
  rc |= qcow2j::WriteSeed(argv[1], "ring512-empty", 512, 8, 0);
  rc |= qcow2j::WriteSeed(argv[1], "ring512-4txn", 512, 8, 4);
  rc |= qcow2j::WriteSeed(argv[1], "ring512-wrap", 512, 3, 5);
  rc |= qcow2j::WriteSeed(argv[1], "ring4k-1txn", 4096, 1, 1);
  return rc;
}
