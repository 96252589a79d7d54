#include "qcow2j/status.h"

#include <cerrno>
#include <cstring>

namespace qcow2j {

Status Status::FromErrno(int err, std::string context) {
  std::string m = std::move(context);
  m += ": ";
  m += std::strerror(err);
  return Status(err == ENOSPC ? Code::kNoSpace : Code::kIOError, std::move(m), err);
}

static const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "OK";
    case Code::kInvalidArgument: return "Invalid argument";
    case Code::kCorruption: return "Corruption";
    case Code::kNotSupported: return "Not supported";
    case Code::kIOError: return "I/O error";
    case Code::kNoSpace: return "No space left";
    case Code::kNotFound: return "Not found";
    case Code::kReadOnly: return "Read-only";
    case Code::kBusy: return "Busy";
    case Code::kAborted: return "Aborted";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + msg_;
}

Status Status::Annotate(const std::string& prefix) const {
  if (ok()) return *this;
  return Status(code_, prefix + ": " + msg_, errno_);
}

}  // namespace qcow2j
