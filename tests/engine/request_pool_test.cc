// The request threads behind the asynchronous calls (qcow2/request_pool.cc).
// A request submitted from a completion is queued for the completing thread
// itself, without waking another; these tests hold the pool to what that
// must not break: a completion that blocks until the request it submitted
// has completed still sees it complete, and long chains of requests, each
// submitted by the completion of the one before, run in order and land.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kSize = 4 << 20;

class RequestPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CreateOptions co;
    co.size = kSize;
    ASSERT_TRUE(Image::Create(dir_.Path("a.qcow2"), co).ok());
    OpenOptions oo;
    oo.read_only = false;
    auto opened = Image::Open(dir_.Path("a.qcow2"), oo);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    img_ = std::move(*opened);
  }
  void TearDown() override {
    if (img_) {
      EXPECT_TRUE(img_->Close().ok());
    }
  }

  TempDir dir_;
  std::unique_ptr<Image> img_;
};

TEST_F(RequestPoolTest, CompletionMayWaitForTheRequestItSubmits) {
  // Each completion submits a read and blocks until it completes, with no
  // other request in flight to bring a request thread back to the queue.
  // A read stranded behind its blocked submitter fails after 20 s; the
  // pool's watchdog must hand it to another thread well before.
  std::vector<uint8_t> data(4096, 0x5a);
  for (int round = 0; round < 5; round++) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto got = std::make_shared<std::vector<uint8_t>>(4096);
    std::promise<Status> outer;
    auto start = std::chrono::steady_clock::now();
    img_->WriteAsync(4096 * round, data.data(), data.size(), [&, got, round](Status st) {
      if (!st.ok()) {
        outer.set_value(st);
        return;
      }
      auto inner = std::make_shared<std::promise<Status>>();
      auto f = inner->get_future();
      img_->ReadAsync(4096 * round, got->data(), got->size(),
                      [inner, got](Status s) { inner->set_value(s); });
      if (f.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
        outer.set_value(Status::Aborted("the read submitted by a blocked completion never ran"));
        return;
      }
      outer.set_value(f.get());
    });
    Status st = outer.get_future().get();
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    EXPECT_EQ(std::memcmp(got->data(), data.data(), data.size()), 0);
  }
}

TEST_F(RequestPoolTest, ChainsOfRequestsSubmittedFromCompletions) {
  // 8 chains of 500 writes: each completion submits its chain's next write
  // (to the next 4 KiB of the chain's own 512 KiB region, with the next
  // byte value), then every byte is read back.
  constexpr int kChains = 8, kLinks = 500;
  constexpr uint64_t kRegion = kSize / kChains;
  struct Chain {
    int next = 0;
    std::vector<uint8_t> buf = std::vector<uint8_t>(4096);
  };
  std::vector<Chain> chains(kChains);
  std::mutex mu;
  std::condition_variable cv;
  int finished = 0;
  Status error;
  std::function<void(int)> issue = [&](int c) {
    Chain& ch = chains[c];
    const int link = ch.next++;
    std::memset(ch.buf.data(), link & 0xff, ch.buf.size());
    const uint64_t off = c * kRegion + (link * 4096ull) % kRegion;
    img_->WriteAsync(off, ch.buf.data(), ch.buf.size(), [&, c](Status st) {
      if (st.ok() && chains[c].next < kLinks) {
        issue(c);
        return;
      }
      std::lock_guard<std::mutex> g(mu);
      if (!st.ok() && error.ok()) error = st;
      finished++;
      cv.notify_all();
    });
  };
  for (int c = 0; c < kChains; c++) issue(c);
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(120), [&] { return finished == kChains; }));
  }
  ASSERT_TRUE(error.ok()) << error.ToString();
  std::vector<uint8_t> back(kSize);
  ASSERT_TRUE(img_->Read(0, back.data(), back.size()).ok());
  constexpr int kPerRegion = static_cast<int>(kRegion / 4096);
  for (int c = 0; c < kChains; c++) {
    for (int block = 0; block < kPerRegion; block++) {
      // The last link to write this block.
      int link = block + ((kLinks - 1 - block) / kPerRegion) * kPerRegion;
      const uint8_t* p = back.data() + c * kRegion + block * 4096ull;
      ASSERT_EQ(p[0], link & 0xff) << "chain " << c << " block " << block;
      ASSERT_EQ(p[4095], link & 0xff) << "chain " << c << " block " << block;
    }
  }
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
