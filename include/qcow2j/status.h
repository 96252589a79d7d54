// Status and Result<T>: the one error type that crosses module boundaries.
// No exception escapes the library; every failure is a Status whose message
// names the offending field, offset or file.
#ifndef QCOW2J_STATUS_H_
#define QCOW2J_STATUS_H_

#include <optional>
#include <string>
#include <utility>

namespace qcow2j {

enum class Code {
  kOk = 0,
  kInvalidArgument,  // the caller asked for something impossible
  kCorruption,       // the image violates the format (field, value, offset named)
  kNotSupported,     // valid qcow2 we do not handle (e.g. unknown incompatible bit)
  kIOError,          // the backend failed; sys_errno() has the errno
  kNoSpace,          // ENOSPC
  kNotFound,         // file, snapshot, bitmap ... does not exist
  kReadOnly,         // write to an image opened read-only
  kBusy,             // image locked / in use
  kAborted,          // the engine is in a failed state after an earlier error
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status NotSupported(std::string m) { return Status(Code::kNotSupported, std::move(m)); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status ReadOnly(std::string m) { return Status(Code::kReadOnly, std::move(m)); }
  static Status Busy(std::string m) { return Status(Code::kBusy, std::move(m)); }
  static Status Aborted(std::string m) { return Status(Code::kAborted, std::move(m)); }
  // An errno-carrying failure; ENOSPC becomes kNoSpace. The message gets strerror appended.
  static Status FromErrno(int err, std::string context);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  int sys_errno() const { return errno_; }
  const std::string& message() const { return msg_; }
  std::string ToString() const;
  // Returns a copy whose message is "prefix: message" (keeps code and errno).
  Status Annotate(const std::string& prefix) const;

 private:
  Status(Code c, std::string m, int e = 0) : code_(c), errno_(e), msg_(std::move(m)) {}
  Code code_ = Code::kOk;
  int errno_ = 0;
  std::string msg_;
};

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : value_(std::move(v)) {}                  // NOLINT: implicit by design
  Result(Status s) : status_(std::move(s)) {}            // NOLINT: must be an error
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace qcow2j

#define QCOW2J_CONCAT_INNER_(a, b) a##b
#define QCOW2J_CONCAT_(a, b) QCOW2J_CONCAT_INNER_(a, b)

#define QCOW2J_RETURN_IF_ERROR(expr)           \
  do {                                         \
    ::qcow2j::Status _qs = (expr);             \
    if (!_qs.ok()) return _qs;                 \
  } while (0)

#define QCOW2J_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#define QCOW2J_ASSIGN_OR_RETURN(lhs, expr) \
  QCOW2J_ASSIGN_OR_RETURN_IMPL_(QCOW2J_CONCAT_(_qr_, __LINE__), lhs, expr)

#endif  // QCOW2J_STATUS_H_
