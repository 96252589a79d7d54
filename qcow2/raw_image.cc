#include "qcow2/raw_image.h"

#include <fcntl.h>
#include <unistd.h>

namespace qcow2j {

Result<std::unique_ptr<Image>> RawImage::Open(const std::string& path, const OpenOptions& opts) {
  if (!opts.snapshot_id.empty() || !opts.snapshot_name.empty())
    return Status::NotSupported("raw image '" + path + "' has no internal snapshots");
  std::unique_ptr<RawImage> img(new RawImage());
  Env* env = opts.env ? opts.env : Env::Default();
  unsigned flags = opts.read_only ? unsigned{kOpenReadOnly} : 0u;
  if (opts.direct) flags |= kOpenDirect;
  if (opts.writethrough) flags |= kOpenSync;
  QCOW2J_ASSIGN_OR_RETURN(img->file_, env->Open(path, flags));
  QCOW2J_ASSIGN_OR_RETURN(img->size_, img->file_->Size());
  img->path_ = path;
  img->read_only_ = opts.read_only;
  return std::unique_ptr<Image>(std::move(img));
}

Status RawImage::Create(const std::string& path, const CreateOptions& opts) {
  Env* env = opts.env ? opts.env : Env::Default();
  QCOW2J_ASSIGN_OR_RETURN(auto f, env->Open(path, kOpenCreate | kOpenTruncate));
  QCOW2J_RETURN_IF_ERROR(f->Truncate(opts.size));
  if (opts.preallocation == Preallocation::kFalloc) {
    QCOW2J_RETURN_IF_ERROR(f->Allocate(0, opts.size, false));
  } else if (opts.preallocation == Preallocation::kFull) {
    QCOW2J_RETURN_IF_ERROR(f->Allocate(0, opts.size, false));
    QCOW2J_RETURN_IF_ERROR(f->ZeroRange(0, opts.size));
  }
  return f->Sync();
}

ImageInfo RawImage::Info() {
  ImageInfo info;
  info.format = "raw";
  info.filename = path_;
  info.virtual_size = size_;
  auto a = file_->AllocatedBytes();
  info.actual_size = a.ok() ? *a : 0;
  return info;
}

Status RawImage::CheckRange(const char* op, uint64_t offset, uint64_t len) const {
  if (!file_) return Status::Aborted("image '" + path_ + "' is closed");
  if (offset > size_ || len > size_ - offset)
    return Status::InvalidArgument(std::string(op) + " of " + std::to_string(len) +
                                   " bytes at offset " + std::to_string(offset) +
                                   " is past the end of the image (" + std::to_string(size_) +
                                   " bytes)");
  return Status::OK();
}

Status RawImage::Read(uint64_t offset, void* buf, size_t len) {
  QCOW2J_RETURN_IF_ERROR(CheckRange("read", offset, len));
  return file_->Read(offset, buf, len);
}

Status RawImage::Write(uint64_t offset, const void* buf, size_t len) {
  if (read_only_) return Status::ReadOnly("image '" + path_ + "' is opened read-only");
  QCOW2J_RETURN_IF_ERROR(CheckRange("write", offset, len));
  return file_->Write(offset, buf, len);
}

Status RawImage::WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) {
  if (read_only_) return Status::ReadOnly("image '" + path_ + "' is opened read-only");
  QCOW2J_RETURN_IF_ERROR(CheckRange("write zeroes", offset, len));
  return may_unmap ? file_->PunchHole(offset, len) : file_->ZeroRange(offset, len);
}

Status RawImage::Discard(uint64_t offset, uint64_t len) {
  if (read_only_) return Status::ReadOnly("image '" + path_ + "' is opened read-only");
  QCOW2J_RETURN_IF_ERROR(CheckRange("discard", offset, len));
  return file_->PunchHole(offset, len);
}

Status RawImage::Resize(uint64_t new_size, bool shrink) {
  if (read_only_) return Status::ReadOnly("image '" + path_ + "' is opened read-only");
  if (!file_) return Status::Aborted("image '" + path_ + "' is closed");
  if (new_size < size_ && !shrink)
    return Status::InvalidArgument("Use the --shrink option to perform a shrink operation.");
  QCOW2J_RETURN_IF_ERROR(file_->Truncate(new_size));
  size_ = new_size;
  return Status::OK();
}

Status RawImage::Flush() {
  if (!file_) return Status::Aborted("image '" + path_ + "' is closed");
  return read_only_ ? Status::OK() : file_->Sync();
}

Status RawImage::Close() {
  if (!file_) return Status::OK();
  Status s = Flush();
  file_.reset();
  return s;
}

Result<BlockStatus> RawImage::GetBlockStatus(uint64_t offset, uint64_t max_length) {
  QCOW2J_RETURN_IF_ERROR(CheckRange("block status", offset, 0));
  BlockStatus bs;
  bs.offset = offset;
  bs.length = std::min(max_length, size_ - offset);
  bs.filename = path_;
  // Like QEMU's file driver: holes read as zeros, the rest is data at its own offset.
  // Without SEEK_DATA access through File, report the range as data.
  bs.present = bs.data = true;
  bs.host_offset = offset;
  return bs;
}

}  // namespace qcow2j
