// The crash-testing kit's entry point: random workloads of write, compressed
// write, zero, discard, flush, resize, close/reopen and snapshot
// create/apply/delete run against an image on a crash-recording Env
// and an in-memory reference model; at random crash points the on-disk state
// is rebuilt under a fault model, reopened and checked:
//   - every write acknowledged before the last completed flush reads back;
//   - every other byte reads as its value at that flush or as a value some
//     later request wrote to it (zero and discard count as writing zeros);
//   - CheckImage finds no corruption, and no leak with the journal on
//     (except for a crash inside an offline snapshot operation, which is
//     documented to leak at worst);
//   - the virtual size is one the disk had at that flush or was resized
//     to since;
//   - on a sample, qemu-img check agrees, and the engine can keep writing;
//   - on a sample, a crash during the recovery itself changes none of this.
// `qcow2j crashtest` and tests/crash drive this.
#ifndef QCOW2J_CRASHTEST_H_
#define QCOW2J_CRASHTEST_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qcow2j/file.h"
#include "qcow2j/status.h"

namespace qcow2j {

// How much of what was not synced survives a crash (see io/crash_env.h).
enum class CrashModel {
  kPrefix,  // nothing after the last completed sync of each file
  kSubset,  // any subset of the unsynced writes
  kTorn,    // any subset, and multi-sector writes torn at 512 B or 4 KiB
};
const char* CrashModelName(CrashModel m);
// "prefix", "subset" or "torn".
bool ParseCrashModel(const std::string& name, CrashModel* out);

struct CrashTestOptions {
  uint64_t states = 1000;  // crash states to explore in all
  uint64_t seed = 0;       // 0: pick one (reported in the result)
  std::vector<CrashModel> models = {CrashModel::kPrefix, CrashModel::kSubset, CrashModel::kTorn};
  // Replay exactly one workload run by its run seed (as printed on failure);
  // 0: derive run seeds from `seed`.
  uint64_t replay_run_seed = 0;
  // Cluster sizes to draw from; empty: every power of two 512 .. 64 KiB.
  std::vector<uint32_t> cluster_sizes;
  uint32_t ops_per_run = 40;      // guest requests per workload run
  uint32_t states_per_run = 40;   // crash points sampled from each run
  // Run `qemu_img check` on every Nth crash state (0: never). Skipped when
  // the program is missing.
  uint64_t qemu_check_every = 0;
  std::string qemu_img = "qemu-img";
  std::string temp_dir = "/var/tmp";
  // Every Nth state is also opened read-write, written, flushed, closed and
  // checked again (0: never).
  uint64_t reuse_every = 8;
  // Every Nth state of an image with the journal also has its recovery
  // crash: the read-write open that replays the journal runs on a
  // crash-recording Env, and the disk as a crash at a random point of that
  // open's own I/O (same fault model) could leave it is what is recovered
  // again and checked (0: never).
  uint64_t recovery_crash_every = 4;
  uint64_t max_violations = 1;  // stop after this many (per job)
  // Worker threads, each with its own stream of runs (job 0 is the
  // single-job stream of `seed`, job j > 0 a seed derived from it) and an
  // equal share of `states`; the counts are summed. Deterministic for a
  // given (seed, jobs). Ignored with replay_run_seed.
  uint32_t jobs = 1;
  // The first failing crash state's files are written into this existing
  // folder as img.qcow2 (and backing.qcow2); "": not written.
  std::string dump_dir;
  // Progress and failure lines; nullptr: quiet.
  std::function<void(const std::string&)> log;
};

struct CrashTestResult {
  uint64_t seed = 0;             // the master seed used
  uint64_t runs = 0;             // workload runs
  uint64_t states = 0;           // crash states built and verified
  uint64_t states_by_model[3] = {0, 0, 0};
  uint64_t violations = 0;
  uint64_t leaky_states = 0;     // CheckImage found leaks (allowed without a journal)
  uint64_t qemu_checks = 0;      // qemu-img check runs
  uint64_t reused = 0;           // states reopened read-write and written
  uint64_t recovery_crashes = 0; // states whose recovery crashed and was recovered again
  uint64_t failing_run_seed = 0; // first violation's run seed (replay_run_seed)
  std::string failure;           // first violation: what, where, and the request sequence
};

CrashTestResult RunCrashTest(const CrashTestOptions& opts);

// One image under test on a crash-recording Env, with its reference model:
// the building block of RunCrashTest, exposed for property tests
// (RapidCheck) that generate the request sequence themselves.
class CrashWorkload {
 public:
  struct Config {
    uint64_t size = 8ull << 20;
    uint32_t cluster_size = 65536;
    bool extended_l2 = false;
    bool backing = false;  // a qcow2 backing file with some data
    bool journal = true;   // CreateOptions::journal
    bool lazy_refcounts = false;  // with the journal: dirty-refcount mode
    uint64_t seed = 1;     // backing data layout
    // When set, the engine's I/O goes through the Env this returns (given
    // the crash-recording Env underneath), e.g. a fault-injecting one.
    // Called again after CrashAndContinue.
    std::function<std::unique_ptr<Env>(Env* recording)> wrap_env;
  };
  static Result<std::unique_ptr<CrashWorkload>> Create(const Config& config);
  virtual ~CrashWorkload() = default;

  virtual uint64_t size() const = 0;  // the current virtual size
  // Guest requests. The data written is a pattern unique to the request.
  // A failed request is a violation only in the caller's eyes: the model
  // allows either outcome for its range.
  virtual Status Write(uint64_t offset, uint64_t len) = 0;
  virtual Status WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) = 0;
  virtual Status Discard(uint64_t offset, uint64_t len) = 0;
  // Image::WriteCompressed of a compressible pattern: offset is rounded down
  // to a cluster and the length up to whole clusters (or to the end).
  virtual Status WriteCompressed(uint64_t offset, uint64_t len) = 0;
  // Image::Resize; shrinking (allowed only without snapshots) drops the
  // data past the new end: it reads as zeros if the disk grows again.
  virtual Status Resize(uint64_t new_size) = 0;
  // Internal snapshots, as qemu-img snapshot -c/-a/-d does them: the image
  // is closed, the offline operation runs on its file, the image reopens.
  // Snapshots are named by index in the order they were made (0 ..
  // snapshot_count()); apply restores the model's disk (and size) as it was.
  virtual Status CreateSnapshot() = 0;
  virtual Status ApplySnapshot(size_t index) = 0;
  virtual Status DeleteSnapshot(size_t index) = 0;
  virtual size_t snapshot_count() const = 0;
  virtual Status Flush() = 0;
  virtual Status Reopen() = 0;  // Close, then Open read-write
  virtual Status Close() = 0;   // a flush in the model; requests fail until Open
  virtual Status Open() = 0;    // read-write
  // Reads [offset, offset+len) from the live image and compares it with the
  // model: Corruption describing the first wrong byte.
  virtual Status CheckLive(uint64_t offset, uint64_t len) = 0;

  // Crash points recorded so far (0 .. crash_points()).
  virtual uint64_t crash_points() const = 0;
  // Builds the state at `point` under `model`, reopens and verifies it.
  // OK, or Corruption with the violation (and the request sequence). Sets
  // *leaked when CheckImage found leaks.
  virtual Status VerifyCrash(uint64_t point, CrashModel model, uint64_t seed, bool* leaked) = 0;
  // Crashes at `point` (as VerifyCrash builds it) and continues on that
  // state: the model becomes what the recovered image reads.
  virtual Status CrashAndContinue(uint64_t point, CrashModel model, uint64_t seed) = 0;
  // Verifies the files as they are now, without a crash (every operation
  // that reached the Env kept): the checks of VerifyCrash, with the floor at
  // the last successful flush. For fault-injection tests.
  virtual Status VerifyNow(bool* leaked) = 0;
  // The requests so far, one per line, with their crash-point ranges.
  virtual std::string History() const = 0;
};

}  // namespace qcow2j

#endif  // QCOW2J_CRASHTEST_H_
