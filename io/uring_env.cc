// Env::IoUring(): the POSIX Env (io/posix_env.cc) with its reads, writes and
// syncs submitted through io_uring instead of preadv/pwritev/fdatasync.
//
// The File API is synchronous and called from many threads at once (the
// engine's request threads). Each calling thread gets a ring of its own,
// created on its first request and closed when the thread exits, as QEMU keeps
// one ring per AioContext. A thread has at most one request in flight, so the
// ring needs no lock, no reaper and no bookkeeping of whose completion is
// whose: submit, wait for the one completion, return its result. Short
// transfers, EINTR/EAGAIN, EOF, IOV_MAX and O_DIRECT bounce buffers are
// PosixFile's business, exactly as with the system calls.
//
// Not a speed-up for everything: a direct write that allocates (past EOF or
// into unwritten extents) cannot be issued without blocking on ext4, so the
// kernel punts it to an io-wq worker thread, one more wake-up than pwritev
// would cost; so is one over a range that still has page-cache pages (a file
// written without O_DIRECT earlier). Direct reads and direct overwrites of
// written blocks complete inline, without the worker.
#include <liburing.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "io/posix_env.h"
#include "qcow2j/file.h"

#if defined(__SANITIZE_THREAD__)
#define QCOW2J_URING_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QCOW2J_URING_TSAN 1
#endif
#endif
#ifdef QCOW2J_URING_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace qcow2j {
namespace {

// A ring's memory is mapped from the kernel. Once one thread's ring is
// unmapped (the thread exited), another thread's new ring may be mapped at
// the same addresses; ThreadSanitizer does not see that the munmap and the
// mmap order the two and reports a race on the entries. Tell it.
#ifdef QCOW2J_URING_TSAN
char g_ring_handoff;
void NoteRingMapped() { __tsan_acquire(&g_ring_handoff); }
void NoteRingUnmapped() { __tsan_release(&g_ring_handoff); }
#else
void NoteRingMapped() {}
void NoteRingUnmapped() {}
#endif

// One request at a time per ring; a little slack costs nothing.
constexpr unsigned kRingEntries = 4;

// The ring is only ever used by the thread that owns it, which is what
// SINGLE_ISSUER promises; DEFER_TASKRUN then runs completion work when we
// wait for it instead of interrupting the thread. Kernels before 6.1 refuse
// those flags (EINVAL): plain rings work everywhere since 5.1.
int InitRing(io_uring* ring) {
  int r = io_uring_queue_init(kRingEntries, ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  if (r == -EINVAL) r = io_uring_queue_init(kRingEntries, ring, 0);
  if (r >= 0) NoteRingMapped();
  return r;
}

void ExitRing(io_uring* ring) {
  NoteRingUnmapped();
  io_uring_queue_exit(ring);
}

// Bumped in a child after fork(): the forking thread's ring (inherited, but
// the parent's, and refused to any other task under SINGLE_ISSUER) must be
// dropped and a fresh one made for the child.
std::atomic<unsigned> g_fork_generation{0};

class ThreadRing {
 public:
  ThreadRing() = default;
  ThreadRing(const ThreadRing&) = delete;
  ThreadRing& operator=(const ThreadRing&) = delete;
  ~ThreadRing() { Close(); }

  // Submits the request prep fills in and waits for it: the completion's
  // result (bytes or -errno), or -errno when the ring itself failed.
  template <class Prep>
  int Run(Prep prep) {
    const unsigned generation = g_fork_generation.load(std::memory_order_relaxed);
    if (open_ && generation_ != generation) Close();
    if (!open_) {
      int r = InitRing(&ring_);
      if (r < 0) return r;
      open_ = true;
      generation_ = generation;
    }
    // Never null: the ring is empty between requests.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return -EBUSY;
    prep(sqe);
    for (;;) {
      // Once the request is submitted an interrupted wait still returns the
      // count submitted, so -EINTR/-EAGAIN/-EBUSY here mean "not submitted
      // yet" and the request is still queued for the next attempt.
      int r = io_uring_submit_and_wait(&ring_, 1);
      if (r > 0) break;
      if (r == 0 || r == -EINTR || r == -EAGAIN || r == -EBUSY) continue;
      // The ring is unusable and may still hold our request: drop it, so
      // that a stale request is never submitted later. The next call makes
      // a fresh ring.
      Close();
      return r;
    }
    io_uring_cqe* cqe = nullptr;
    int r;
    while ((r = io_uring_wait_cqe(&ring_, &cqe)) == -EINTR) {
    }
    if (r < 0) {
      Close();
      return r;
    }
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

 private:
  void Close() {
    if (open_) ExitRing(&ring_);
    open_ = false;
  }

  io_uring ring_{};
  bool open_ = false;
  unsigned generation_ = 0;
};

ThreadRing& CallingThreadRing() {
  thread_local ThreadRing ring;
  return ring;
}

class UringIo final : public PositionalIo {
 public:
  ssize_t Preadv(int fd, const iovec* iov, int cnt, uint64_t offset) override {
    return CallingThreadRing().Run(
        [&](io_uring_sqe* sqe) { io_uring_prep_readv(sqe, fd, iov, static_cast<unsigned>(cnt), offset); });
  }
  ssize_t Pwritev(int fd, const iovec* iov, int cnt, uint64_t offset) override {
    return CallingThreadRing().Run(
        [&](io_uring_sqe* sqe) { io_uring_prep_writev(sqe, fd, iov, static_cast<unsigned>(cnt), offset); });
  }
  int Fdatasync(int fd) override {
    return CallingThreadRing().Run(
        [&](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); });
  }
};

// Whether this process may use io_uring at all: kernels without it say
// ENOSYS, seccomp filters (containers) say EPERM or ENOSYS, and
// io_uring_disabled=2 says EPERM.
Status Probe() {
  io_uring ring;
  int r = InitRing(&ring);
  if (r < 0) {
    return Status::FromErrno(-r, "Unable to use io_uring: failed to init linux io_uring ring");
  }
  ExitRing(&ring);
  return Status::OK();
}

}  // namespace

Result<Env*> Env::IoUring() {
  static const Status usable = Probe();
  if (!usable.ok()) return usable;
  static const int atfork = pthread_atfork(nullptr, nullptr, [] {
    g_fork_generation.fetch_add(1, std::memory_order_relaxed);
  });
  (void)atfork;
  static UringIo* io = new UringIo();
  static Env* env = NewPosixEnv(io).release();
  return env;
}

}  // namespace qcow2j
