// RawImage: a raw file as an Image (backing files, convert sources and targets).
#ifndef QCOW2J_QCOW2_RAW_IMAGE_H_
#define QCOW2J_QCOW2_RAW_IMAGE_H_

#include <memory>
#include <string>

#include "qcow2j/image.h"

namespace qcow2j {

class RawImage final : public Image {
 public:
  static Result<std::unique_ptr<Image>> Open(const std::string& path, const OpenOptions& opts);
  static Status Create(const std::string& path, const CreateOptions& opts);

  uint64_t size() const override { return size_; }
  ImageInfo Info() override;
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status Flush() override;
  Status Close() override;
  Status Resize(uint64_t new_size, bool shrink) override;
  Result<BlockStatus> GetBlockStatus(uint64_t offset, uint64_t max_length) override;

 private:
  RawImage() = default;
  Status CheckRange(const char* op, uint64_t offset, uint64_t len) const;

  std::string path_;
  std::unique_ptr<File> file_;
  uint64_t size_ = 0;
  bool read_only_ = true;
};

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_RAW_IMAGE_H_
