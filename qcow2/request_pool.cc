// Default asynchronous request handling: a small shared pool of request
// threads runs the blocking calls. Engines with a native async path override
// the *Async methods.
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "qcow2/request_pool.h"
#include "qcow2j/image.h"

namespace qcow2j {
namespace {

class RequestPool {
 public:
  explicit RequestPool(size_t threads) {
    for (size_t i = 0; i < threads; i++) workers_.emplace_back([this] { Loop(); });
  }
  void Submit(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  static RequestPool& Shared() {
    // Leaked on purpose: request threads may still run while static destructors do.
    static RequestPool* pool = new RequestPool(64);
    return *pool;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return !queue_.empty(); });
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
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
