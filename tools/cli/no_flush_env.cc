#include "tools/cli/no_flush_env.h"

#include "io/forwarding_file.h"

namespace qcow2j::cli {
namespace {

class NoFlushFile : public ForwardingFile {
 public:
  explicit NoFlushFile(std::unique_ptr<File> f) : ForwardingFile(std::move(f)) {}
  Status Sync() override { return Status::OK(); }
};

}  // namespace

Result<std::unique_ptr<File>> NoFlushEnv::Open(const std::string& path, unsigned flags) {
  QCOW2J_ASSIGN_OR_RETURN(std::unique_ptr<File> f, base_->Open(path, flags));
  return std::unique_ptr<File>(new NoFlushFile(std::move(f)));
}

}  // namespace qcow2j::cli
