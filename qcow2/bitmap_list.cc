// Listing the persistent bitmaps of a qcow2 file from its bitmap directory.
#include <vector>

#include "metadata/bitmap_directory.h"
#include "qcow2/image_ops.h"
#include "qcow2/offline_image.h"

namespace qcow2j {

Result<std::vector<BitmapInfo>> ListBitmaps(const std::string& path, Env* env) {
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenOffline(path, env, false));
  std::vector<BitmapInfo> out;
  // The header parser keeps the extension only while the autoclear bit says
  // it is consistent; otherwise QEMU loads no bitmaps either.
  if (!im.h.bitmaps || im.h.bitmaps->nb_bitmaps == 0) return out;
  const BitmapsExtension& ext = *im.h.bitmaps;
  if (ext.bitmap_directory_size > kMaxBitmapDirectoryBytes ||
      ext.bitmap_directory_offset > im.file_size ||
      ext.bitmap_directory_size > im.file_size - ext.bitmap_directory_offset)
    return Status::Corruption("bitmap directory of '" + path + "' lies outside the file");
  std::vector<uint8_t> dir(ext.bitmap_directory_size);
  QCOW2J_RETURN_IF_ERROR(im.file->Read(ext.bitmap_directory_offset, dir.data(), dir.size()));
  QCOW2J_ASSIGN_OR_RETURN(auto entries,
                          ParseBitmapDirectory(dir, ext.nb_bitmaps, im.cb, im.file_size));
  for (const BitmapDirectoryEntry& e : entries) {
    BitmapInfo b;
    b.name = e.name;
    b.granularity = static_cast<uint32_t>(e.granularity());
    b.flags = e.flags;
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace qcow2j
