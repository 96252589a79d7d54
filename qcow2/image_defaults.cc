// Defaults for optional Image operations, so that an engine (or a test
// double) that lacks them still links and reports NotSupported cleanly.
#include "qcow2j/image.h"

namespace qcow2j {

Status Image::Resize(uint64_t new_size, bool shrink) {
  return Status::NotSupported("resize is not supported by this image");
}

Status Image::WriteCompressed(uint64_t offset, const void* buf, size_t len) {
  return Status::NotSupported("compressed writes are not supported by this image");
}

}  // namespace qcow2j
