// cache=unsafe for qcow2 targets: an Env whose files ignore Sync, as QEMU's
// cache.no-flush=on does. convert's default target cache is unsafe, and
// qemu-img then never syncs; with this neither do we (the image is complete
// and consistent once closed, only not forced to disk).
#ifndef QCOW2J_TOOLS_CLI_NO_FLUSH_ENV_H_
#define QCOW2J_TOOLS_CLI_NO_FLUSH_ENV_H_

#include "qcow2j/file.h"

namespace qcow2j::cli {

// Opens files through `base`; the files it returns pass everything on but Sync.
class NoFlushEnv : public Env {
 public:
  explicit NoFlushEnv(Env* base) : base_(base) {}
  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override;
  bool Exists(const std::string& path) override { return base_->Exists(path); }
  Status Remove(const std::string& path) override { return base_->Remove(path); }

 private:
  Env* base_;
};

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_NO_FLUSH_ENV_H_
