// Rebuilding the refcount structure from counted references, as QEMU's
// rebuild_refcount_structure() does, but placing every new cluster after
// everything in use so no new block can land on live data or metadata.
#include <algorithm>
#include <vector>

#include "metadata/endian.h"
#include "metadata/refcount_block.h"
#include "recovery/repair.h"

namespace qcow2j {

Status RebuildRefcounts(File* file, const ScanResult& refs) {
  const Header& h = refs.header;
  const uint32_t cb = h.cluster_bits;
  const uint64_t cs = h.cluster_size();
  const uint32_t order = h.refcount_order;
  const uint64_t per_block = RefcountBlockEntries(cb, order);
  const uint64_t refmax = MaxRefcount(order);

  uint64_t highest = 0;
  bool any = false;
  for (uint64_t i = 0; i < refs.computed.size(); ++i) {
    if (refs.computed.Get(i)) {
      highest = i;
      any = true;
    }
  }
  // The new structure starts after the file and after every referenced cluster.
  const uint64_t start = std::max<uint64_t>((refs.file_size + cs - 1) >> cb, any ? highest + 1 : 1);
  const uint64_t data_blocks = (start + per_block - 1) / per_block;
  std::vector<bool> has_data(data_blocks, false);
  for (uint64_t i = 0; i < refs.computed.size() && i < start; ++i) {
    if (refs.computed.Get(i)) has_data[i / per_block] = true;
  }

  // Fixed point: the table and the blocks must describe themselves too.
  uint64_t rt_clusters = 1, nb_blocks = 0;
  std::vector<uint64_t> blocks;
  for (int iter = 0; iter < 64; ++iter) {
    const uint64_t end = start + rt_clusters + nb_blocks;
    const uint64_t first_new = start / per_block, last_new = (end - 1) / per_block;
    blocks.clear();
    for (uint64_t b = 0; b < std::max(data_blocks, last_new + 1); ++b) {
      if ((b < data_blocks && has_data[b]) || (b >= first_new && b <= last_new)) blocks.push_back(b);
    }
    const uint64_t new_rt = std::max<uint64_t>(1, ((blocks.back() + 1) * 8 + cs - 1) / cs);
    if (new_rt == rt_clusters && blocks.size() == nb_blocks) break;
    rt_clusters = new_rt;
    nb_blocks = blocks.size();
  }
  if (rt_clusters * cs > kMaxRefcountTableBytes) {
    return Status::NotSupported("rebuilding refcounts: a refcount table of " +
                                std::to_string(rt_clusters) + " clusters exceeds the maximum");
  }
  const uint64_t new_first = start;
  const uint64_t new_end = start + rt_clusters + nb_blocks;

  std::vector<uint8_t> table(rt_clusters * cs, 0);
  std::vector<uint8_t> block(cs);
  for (size_t k = 0; k < blocks.size(); ++k) {
    const uint64_t b = blocks[k];
    const uint64_t block_off = (start + rt_clusters + k) << cb;
    std::fill(block.begin(), block.end(), 0);
    for (uint64_t j = 0; j < per_block; ++j) {
      const uint64_t c = b * per_block + j;
      uint64_t v = (c >= new_first && c < new_end) ? 1 : refs.computed.Get(c);
      if (v == 0) continue;
      SetRefcount(block, order, j, std::min(v, refmax));
    }
    QCOW2J_RETURN_IF_ERROR(file->Write(block_off, block.data(), cs));
    StoreBE64(table.data() + 8 * b, block_off);
  }
  QCOW2J_RETURN_IF_ERROR(file->Write(start << cb, table.data(), table.size()));
  QCOW2J_RETURN_IF_ERROR(file->Sync());
  uint8_t hdr[12];
  StoreBE64(hdr, start << cb);
  StoreBE32(hdr + 8, static_cast<uint32_t>(rt_clusters));
  QCOW2J_RETURN_IF_ERROR(file->Write(48, hdr, sizeof(hdr)));
  return file->Sync();
}

}  // namespace qcow2j
