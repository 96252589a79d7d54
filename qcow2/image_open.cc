// Image::Open and Image::Create: pick the driver by format (given or probed).
#include "qcow2/qcow2_image.h"
#include "qcow2/raw_image.h"

namespace qcow2j {

Result<std::unique_ptr<Image>> Image::Open(const std::string& path, const OpenOptions& opts) {
  std::string format = opts.format;
  if (format.empty()) {
    Env* env = opts.env ? opts.env : Env::Default();
    QCOW2J_ASSIGN_OR_RETURN(auto f, env->Open(path, kOpenReadOnly));
    QCOW2J_ASSIGN_OR_RETURN(format, ProbeFormat(f.get()));
  }
  if (format == "qcow2") return Qcow2Image::Open(path, opts, 0);
  if (format == "raw") return RawImage::Open(path, opts);
  return Status::NotSupported("unknown image format '" + format + "' (qcow2 or raw)");
}

}  // namespace qcow2j
