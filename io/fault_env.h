// A fault-injecting Env: passes everything through to a base Env and fails
// one chosen operation (the Nth of the armed kinds, counted from Arm) with
// an errno, EIO or ENOSPC, as a disk or a full file system would. Sticky
// mode fails that operation and every later one (a dead disk).
//
// A test first runs its workload with nothing armed to learn how many
// operations it makes (ops()), then once per point N with Arm(N, err).
#ifndef QCOW2J_IO_FAULT_ENV_H_
#define QCOW2J_IO_FAULT_ENV_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "qcow2j/file.h"

namespace qcow2j {

class FaultEnv final : public Env {
 public:
  // Kinds of operations, as a mask for Arm.
  enum OpKind : unsigned {
    kRead = 1u << 0,      // Read, Readv
    kWrite = 1u << 1,     // Write, Writev
    kSync = 1u << 2,
    kTruncate = 1u << 3,
    kSpace = 1u << 4,     // Allocate, ZeroRange, PunchHole
    kMeta = 1u << 5,      // Size, AllocatedBytes, ProbeRun
    kOpen = 1u << 6,      // Env::Open
    kAll = 0x7f,
  };

  // `base` must outlive this Env.
  explicit FaultEnv(Env* base);

  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override;
  bool Exists(const std::string& path) override;
  Status Remove(const std::string& path) override;

  // Fails the nth (1-based) operation whose kind is in `kinds`, counted from
  // now, with `err` (EIO, ENOSPC, ...). nth = 0 disarms.
  void Arm(uint64_t nth, int err, unsigned kinds = kAll, bool sticky = false);
  void Disarm() { Arm(0, 0); }
  // Operations of the armed kinds counted since the last Arm (or since
  // construction: all kinds).
  uint64_t ops() const;
  // Whether the armed fault has been injected, and a description of the
  // operation it hit ("write 4096 bytes at 0x30000 of /img.qcow2").
  bool fired() const;
  std::string fired_at() const;

  // While paused, operations are neither counted nor failed (a test's
  // set-up steps, such as reopening, stay out of the fault points).
  void set_paused(bool paused);

  // Counts one operation and says whether it fails (internal to its files).
  Status Hit(OpKind kind, const std::string& what);

 private:
  Env* const base_;
  mutable std::mutex mu_;
  uint64_t count_ = 0;
  uint64_t nth_ = 0;
  int err_ = 0;
  unsigned kinds_ = kAll;
  bool sticky_ = false;
  bool fired_ = false;
  bool paused_ = false;
  std::string fired_at_;
};

}  // namespace qcow2j

#endif  // QCOW2J_IO_FAULT_ENV_H_
