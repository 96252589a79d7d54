// A crash-simulating Env (after SQLite's test6.c): it passes every operation
// through to a base Env, so the engine sees the latest bytes, and it records
// every write, truncate and sync per file. Afterwards, for any crash point
// (a count of recorded operations), it builds what the disk could hold had
// the machine lost power right there:
//
//   kPrefix  everything each file synced survives, nothing after its last
//            completed Sync (the page cache is simply lost);
//   kSubset  as kPrefix, plus any subset of the later writes (they reached
//            the disk in some order before the crash); size-changing
//            operations survive as a prefix of themselves, as a file system
//            journal orders them;
//   kTorn    as kSubset, plus torn writes: a surviving write keeps only some
//            of its atoms (512 B or 4 KiB, aligned to file offsets).
//
// Overlapping surviving writes are applied in the order they were made: a
// disk never puts older bytes over newer ones it already holds, while "old
// survives, new lost" is the subset itself.
//
// Built states are deterministic given the seed. A "crash now" switch makes
// every later operation fail, so the engine can be abandoned (its destructor
// closes, and that close must not reach the disk).
#ifndef QCOW2J_IO_CRASH_ENV_H_
#define QCOW2J_IO_CRASH_ENV_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "io/memory_env.h"
#include "qcow2j/crashtest.h"
#include "qcow2j/file.h"

namespace qcow2j {

// One recorded operation.
struct CrashOp {
  enum Kind : uint8_t { kWrite, kSync, kTruncate, kZeroRange, kPunchHole, kAllocate, kRemove };
  Kind kind = kWrite;
  uint32_t file = 0;    // index into CrashEnv::file_names()
  uint64_t offset = 0;  // kTruncate: the new size
  uint64_t length = 0;
  std::vector<uint8_t> data;  // kWrite
};

struct CrashStateOptions {
  CrashModel model = CrashModel::kPrefix;
  uint64_t seed = 0;
  uint32_t atom = 512;  // kTorn: bytes written atomically (512 or 4096)
  // No crash at all: every operation up to the point is kept, synced or not
  // (the files as they are, for checks after a fault). Overrides `model`.
  bool keep_all = false;
};

// What a built crash state kept and dropped (for messages and counters).
struct CrashStateSummary {
  uint64_t pending = 0;  // operations after the last sync of their file
  uint64_t kept = 0;     // of those, applied (wholly or torn)
  uint64_t torn = 0;     // writes applied in part
};

class CrashEnv final : public Env {
 public:
  // `base` must outlive this Env. Files already in `base` when first opened
  // here are taken as durable as they are then.
  explicit CrashEnv(Env* base);
  ~CrashEnv() override;

  Result<std::unique_ptr<File>> Open(const std::string& path, unsigned flags) override;
  bool Exists(const std::string& path) override;
  Status Remove(const std::string& path) override;

  // Operations recorded so far; crash points are 0 .. op_count().
  uint64_t op_count() const;
  // Every later operation through this Env or its files fails with IOError
  // and nothing more is recorded.
  void CrashNow();
  bool crashed() const;

  // A copy of the log (ops_[0 .. op_count())) and the files' names.
  std::vector<std::string> file_names() const;
  const CrashOp& op(uint64_t i) const;  // i < op_count(); stable while no new ops run

  // The files as the disk could hold them after the first `point` operations,
  // written as fresh files into `out` (which should be empty). Replays from
  // the start; CrashStateBuilder is cheaper for many points.
  Status BuildCrashState(uint64_t point, const CrashStateOptions& opts, MemoryEnv* out,
                         CrashStateSummary* summary = nullptr) const;

 private:
  friend class CrashStateBuilder;
  friend class CrashFile;
  struct Initial {
    std::string name;
    bool existed = false;
    std::vector<uint8_t> bytes;
  };

  Status Record(CrashOp op);  // requires mu_
  Result<uint32_t> FileIndex(const std::string& path);  // requires mu_

  Env* const base_;
  mutable std::mutex mu_;
  bool crashed_ = false;
  std::vector<Initial> files_;
  std::map<std::string, uint32_t> index_;
  std::vector<CrashOp> ops_;
};

// Builds crash states for non-decreasing points of one CrashEnv's log,
// keeping the durable state of every file up to the last point, so a run of
// points costs one pass over the log; each state shares the durable pages
// copy-on-write and pays only for the pages its unsynced writes change.
class CrashStateBuilder {
 public:
  explicit CrashStateBuilder(const CrashEnv* env);
  // `point` below the previous call's point restarts from the beginning.
  Status Build(uint64_t point, const CrashStateOptions& opts, MemoryEnv* out,
               CrashStateSummary* summary = nullptr);

 private:
  void Reset();
  void Advance(uint64_t point);

  const CrashEnv* env_;
  uint64_t pos_ = 0;
  std::vector<PagedBytes> durable_;  // per file
  std::vector<bool> exists_;
  std::vector<std::vector<uint64_t>> pending_;  // per file: op indexes since its last sync
};

// Applies one recorded operation to a file image (exposed for tests).
void ApplyCrashOp(const CrashOp& op, std::vector<uint8_t>* bytes);
void ApplyCrashOp(const CrashOp& op, PagedBytes* bytes);

}  // namespace qcow2j

#endif  // QCOW2J_IO_CRASH_ENV_H_
