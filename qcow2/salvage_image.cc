// SalvageImage: the engine's half of salvage. recovery/salvage.cc decides
// what can be read; this creates the new image it is copied into and lends
// it the engine's compression codecs (both live in this layer, above
// recovery).
#include "qcow2/compression.h"
#include "qcow2/qcow2_image.h"
#include "qcow2j/check.h"
#include "recovery/salvage.h"

namespace qcow2j {

namespace {

Status CopyInto(Salvager& salvager, const std::string& output, Env* env, SalvageReport* report) {
  const Header& h = salvager.header();
  CreateOptions co;
  co.env = env;
  co.size = h.size;
  co.cluster_size = static_cast<uint32_t>(h.cluster_size());
  co.extended_l2 = h.extended_l2();
  co.compression_type = h.compression_type == kCompressionZstd ? "zstd" : "zlib";
  // Unallocated clusters keep reading from the same backing file.
  co.backing_file = h.backing_file;
  co.backing_format = h.backing_format.value_or("");
  QCOW2J_RETURN_IF_ERROR(Image::Create(output, co));
  OpenOptions oo;
  oo.env = env;
  oo.read_only = false;
  oo.format = "qcow2";
  oo.no_backing = true;  // never read: salvage writes whole clusters or zeros
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<Image> out, Image::Open(output, oo));
  ClusterDecompressor inflate = [](uint8_t type, std::span<const uint8_t> src,
                                   std::span<uint8_t> dst) {
    if (type > kCompressionZstd) {
      return Status::NotSupported("unknown compression type " + std::to_string(type));
    }
    return DecompressCluster(static_cast<CompressionType>(type), src, dst);
  };
  Status s = salvager.CopyTo(out.get(), inflate, report);
  Status closed = out->Close();
  return s.ok() ? closed : s;
}

}  // namespace

Result<SalvageReport> SalvageImage(const std::string& path, const std::string& output,
                                   const SalvageOptions& opts) {
  Env* env = opts.env ? opts.env : Env::Default();
  if (output == path) return Status::InvalidArgument("the salvage output must be a new file");
  if (env->Exists(output)) {
    return Status::InvalidArgument("'" + output + "' exists: salvage writes a new image only");
  }
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<File> src, env->Open(path, kOpenReadOnly));
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<Salvager> salvager, Salvager::Open(src.get(), opts));
  SalvageReport report;
  report.filename = path;
  report.output = output;
  Status s = CopyInto(*salvager, output, env, &report);
  if (!s.ok()) {
    (void)env->Remove(output);
    return s.Annotate("salvaging '" + path + "' into '" + output + "'");
  }
  return report;
}

}  // namespace qcow2j
