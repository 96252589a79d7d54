// Crash states of an offline operation (snapshot, amend) on a real image
// file: the file is copied into memory, the operation runs on a CrashEnv
// over it, and each crash state is written back to a real file for QEMU's
// tools to examine.
#ifndef QCOW2J_TESTS_UTIL_OFFLINE_CRASH_H_
#define QCOW2J_TESTS_UTIL_OFFLINE_CRASH_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "io/crash_env.h"
#include "io/memory_env.h"
#include "qcow2j/status.h"

namespace qcow2j {
namespace test {

// In-memory path of the image the operation sees.
inline constexpr const char* kOfflineCrashPath = "/img.qcow2";

// `every` for the scenarios with the most crash states: 1 (all of them) in
// the release build, 2 under a sanitizer, where each state costs several
// times more and what is checked is the memory safety of code that the
// release suite already runs on every state. QCOW2J_OFFLINE_CRASH_EVERY
// overrides.
uint64_t SampleEveryUnderSanitizers();

class OfflineCrashRun {
 public:
  // Copies the file `image` into memory at kOfflineCrashPath.
  explicit OfflineCrashRun(const std::string& image);

  // Runs `op(path, env)` on the crash-recording Env.
  Status Run(const std::function<Status(const std::string&, Env*)>& op);
  CrashEnv& crash() { return crash_; }
  uint64_t Syncs() const;

  // For every crash point 0..op_count() and every model (prefix states only
  // where a sync joins them), writes the state to `state_file` and calls
  // fn(point, model); stops at the first fatal gtest failure. With
  // `every` > 1 only every every-th of those states is checked, and the
  // last one (the operation done).
  void ForEachState(const std::string& state_file,
                    const std::function<void(uint64_t, CrashModel)>& fn, uint64_t every = 1);

 private:
  std::unique_ptr<MemoryEnv> base_;
  CrashEnv crash_;
};

}  // namespace test
}  // namespace qcow2j

#endif  // QCOW2J_TESTS_UTIL_OFFLINE_CRASH_H_
