// The backing-chain edits of qemu-img rebase and commit on a closed file:
// the backing name in the header, and emptying the active image.
#include <string>
#include <vector>

#include "metadata/header.h"
#include "qcow2/image_ops.h"
#include "qcow2/offline_image.h"

namespace qcow2j {

Status ChangeBackingFile(const std::string& path, const std::string& name,
                         const std::string& format, Env* env) {
  if (name.size() > kMaxBackingFileNameLength)
    return Status::InvalidArgument("backing file name of " + std::to_string(name.size()) +
                                   " bytes is longer than 1023");
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenOffline(path, env, true));
  if (!name.empty() && (im.h.autoclear_features & kAutoclearDataFileRaw))
    return Status::InvalidArgument("image '" + path +
                                   "' has a raw external data file, which cannot have a backing "
                                   "file (data_file_raw)");
  Header h = im.h;
  h.backing_file = name;
  if (name.empty() || format.empty()) {
    h.backing_format.reset();
  } else {
    h.backing_format = format;
  }
  return RewriteHeader(im, h);
}

Status MakeEmpty(const std::string& path, Env* env) {
  QCOW2J_ASSIGN_OR_RETURN(OfflineImage im, OpenOffline(path, env, true));
  if (im.h.has_data_file())
    return Status::NotSupported("image '" + path +
                                "' has an external data file; emptying it is not supported");
  // Every decrement is computed (and the tree validated) before the first
  // write.
  QCOW2J_ASSIGN_OR_RETURN(RefcountModel rc, NewModel(im));
  QCOW2J_RETURN_IF_ERROR(AddTree(im, rc, im.l1, -1, "active L1 table", nullptr));
  // The empty L1 first: from then on the old tree's clusters are only
  // leaks until their refcounts are written, never referenced with a
  // refcount that is too low.
  std::vector<uint64_t> empty(im.l1.size(), 0);
  if (!empty.empty()) {
    std::vector<uint8_t> raw = EncodeL1(empty);
    QCOW2J_RETURN_IF_ERROR(im.file->Write(im.h.l1_table_offset, raw.data(), raw.size()));
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  }
  im.l1 = std::move(empty);
  QCOW2J_RETURN_IF_ERROR(rc.WriteDirty(im.file.get()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  // Clusters an internal snapshot shared with the active tree keep their
  // (now lower) refcount; the rest are free and their space goes back.
  PunchFreed(im, rc);
  return Status::OK();
}

}  // namespace qcow2j
