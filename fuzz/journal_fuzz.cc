// Journal replay over an arbitrary ring: the superblock slots are chosen
// and every committed transaction is read back, as recovery would.
// Input layout: byte 0 picks the geometry (bit 0: 4096-byte sectors, else
// 512; bits 1..5: ring sectors - 1), the rest is the journal area from its
// start (superblocks, then frames); bytes past the input read as zeros.
// Also decodes the first 24 bytes as a header-extension payload.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "io/memory_env.h"
#include "journal/journal_format.h"
#include "journal/journal_ring.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qcow2j;
  if (size < 1) return 0;
  const uint8_t geometry = data[0];
  data++;
  size--;
  (void)DecodeJournalExtension(
      std::string_view(reinterpret_cast<const char*>(data), size < 32 ? size : 32), 16);

  JournalExtension ext;
  ext.sector_size = (geometry & 1) ? 4096 : 512;
  ext.area_offset = 0;
  ext.area_size = uint64_t{ext.sector_size} * (kJournalSuperblockSlots + 1 + ((geometry >> 1) & 31));
  auto env = NewMemoryEnvForTest();
  auto f = env->Open("/journal", kOpenCreate);
  if (!f.ok()) return 0;
  if (size && !(*f)->Write(0, data, size).ok()) return 0;
  if (!(*f)->Truncate(ext.area_size).ok()) return 0;

  auto sb = ReadJournalSuperblock(f->get(), ext);
  if (!sb.ok()) return 0;
  JournalReader reader(f->get(), ext, *sb);
  JournalTransaction txn;
  uint64_t bytes = 0;
  for (int i = 0; i < 4096 && reader.Next(&txn); ++i) {
    bytes += txn.length;
    if (bytes > ext.ring_bytes()) __builtin_trap();  // read more than the ring holds
  }
  (void)IsEndOfJournal(reader.status());
  return 0;
}
