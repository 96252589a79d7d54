// Default asynchronous request handling: a small shared pool of request
// threads runs the blocking calls. Engines with a native async path override
// the *Async methods.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "qcow2/request_pool.h"
#include "qcow2j/image.h"

namespace qcow2j {
namespace {

// A request's completion often submits the next request (qemu-img bench
// does, and so do block backends that keep a queue full). A request thread
// that submits from inside a task queues the new request without waking
// another thread when nothing else is waiting in the queue: it takes the
// request itself as soon as its task returns. That saves two futex calls and
// a context switch per request at depth 32.
//
// A task that blocks after such a submission (a callback waiting for the
// request it just submitted) must not strand it, so a watchdog thread, awake
// only while submissions are being deferred, wakes a request thread whenever
// a queued request has sat through a whole tick with no thread taking work.
class RequestPool {
 public:
  explicit RequestPool(size_t threads) {
    for (size_t i = 0; i < threads; i++) workers_.emplace_back([this] { Loop(); });
    watchdog_ = std::thread([this] { Watch(); });
  }
  void Submit(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(fn));
      if (tl_request_thread && queue_.size() == 1) {
        deferrals_++;
        if (watchdog_idle_) watchdog_cv_.notify_one();
        return;
      }
    }
    cv_.notify_one();
  }
  static RequestPool& Shared() {
    // Leaked on purpose: request threads may still run while static destructors do.
    static RequestPool* pool = new RequestPool(64);
    return *pool;
  }

 private:
  // How often the watchdog looks, and how many ticks without a deferral
  // put it back to sleep.
  static constexpr auto kTick = std::chrono::milliseconds(1);
  static constexpr int kIdleTicks = 100;

  void Loop() {
    tl_request_thread = true;
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return !queue_.empty(); });
        fn = std::move(queue_.front());
        queue_.pop_front();
        taken_++;
      }
      fn();
    }
  }

  void Watch() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      uint64_t deferrals = deferrals_;
      watchdog_idle_ = true;
      watchdog_cv_.wait(l, [&] { return deferrals_ != deferrals; });
      watchdog_idle_ = false;
      uint64_t taken = taken_;
      for (int quiet = 0; quiet < kIdleTicks;) {
        deferrals = deferrals_;
        watchdog_cv_.wait_for(l, kTick);
        if (!queue_.empty() && taken_ == taken) cv_.notify_one();  // stranded
        taken = taken_;
        quiet = deferrals_ == deferrals ? quiet + 1 : 0;
      }
    }
  }

  static inline thread_local bool tl_request_thread = false;
  std::mutex mu_;
  std::condition_variable cv_;           // request threads wait here for work
  std::condition_variable watchdog_cv_;  // the watchdog waits here for a deferral
  std::deque<std::function<void()>> queue_;
  uint64_t taken_ = 0;      // requests taken from the queue, ever
  uint64_t deferrals_ = 0;  // submissions that woke no thread, ever
  bool watchdog_idle_ = false;
  std::vector<std::thread> workers_;
  std::thread watchdog_;
};

}  // namespace

void SubmitRequest(std::function<void()> fn) { RequestPool::Shared().Submit(std::move(fn)); }

void Image::ReadAsync(uint64_t offset, void* buf, size_t len, Completion done) {
  RequestPool::Shared().Submit([=, this, done = std::move(done)] { done(Read(offset, buf, len)); });
}
void Image::WriteAsync(uint64_t offset, const void* buf, size_t len, Completion done) {
  RequestPool::Shared().Submit([=, this, done = std::move(done)] { done(Write(offset, buf, len)); });
}
void Image::WriteZeroesAsync(uint64_t offset, uint64_t len, bool may_unmap, Completion done) {
  RequestPool::Shared().Submit(
      [=, this, done = std::move(done)] { done(WriteZeroes(offset, len, may_unmap)); });
}
void Image::DiscardAsync(uint64_t offset, uint64_t len, Completion done) {
  RequestPool::Shared().Submit([=, this, done = std::move(done)] { done(Discard(offset, len)); });
}
void Image::FlushAsync(Completion done) {
  RequestPool::Shared().Submit([this, done = std::move(done)] { done(Flush()); });
}

}  // namespace qcow2j
