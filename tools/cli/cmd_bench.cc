// qcow2j bench: qemu-img bench, `depth` asynchronous requests in flight.
#include <getopt.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "tools/cli/args.h"
#include "tools/cli/cli.h"

namespace qcow2j::cli {

namespace {

// The run's state, shared with the completion callbacks (which run on engine
// threads). As in qemu-img bench, each completion issues the next requests
// itself: the main thread only starts the run and waits for its end, so a
// request's slot is reused without a hop through the main thread.
class BenchRun {
 public:
  BenchRun(Image* img, uint8_t* buf, size_t slot, uint64_t count, uint64_t depth, uint64_t offset,
           uint64_t size, uint64_t step, uint64_t flush_interval, bool drain, bool write)
      : img_(img), buf_(buf), slot_(slot), count_(count), size_(size), step_(step),
        flush_interval_(flush_interval), drain_(drain), write_(write), image_size_(img->size()),
        pos_(offset % img->size()) {
    for (int i = static_cast<int>(depth) - 1; i >= 0; i--) free_slots_.push_back(i);
  }

  // Issues the first requests and waits until every request (and flush) has
  // completed, or until the first error has drained the rest.
  Status Run() {
    Pump(std::unique_lock<std::mutex>(mu_));
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return in_flight_ == 0 && (issued_ == count_ || !error_.ok()); });
    return error_;
  }

 private:
  struct Start {
    int slot;  // -1: a flush
    uint64_t pos;
  };

  // Decides, under the lock, which requests to start, then starts them
  // without it (a backend may complete a request before its call returns).
  void Pump(std::unique_lock<std::mutex> l) {
    std::vector<Start> starts;
    while (error_.ok() && !in_flush_ && issued_ < count_) {
      if (flush_interval_ && issued_ > 0 && issued_ % flush_interval_ == 0 && flushed_at_ != issued_) {
        // Time for a flush: with draining, only once the writes before it
        // are done, and no write starts until it has completed.
        if (drain_ && in_flight_ > 0) break;
        flushed_at_ = issued_;
        in_flush_ = drain_;
        in_flight_++;
        starts.push_back({-1, 0});
        continue;
      }
      if (free_slots_.empty()) break;
      int s = free_slots_.back();
      free_slots_.pop_back();
      // Offsets wrap modulo the image size, as in qemu-img 7.2. A request that
      // would still run past the end starts at 0 instead (qemu-img 7.2 fails
      // it with EIO; later versions wrap modulo size - request size).
      if (pos_ + size_ > image_size_) pos_ = 0;
      starts.push_back({s, pos_});
      pos_ = (pos_ + step_) % image_size_;
      issued_++;
      in_flight_++;
    }
    l.unlock();
    for (const Start& st : starts) {
      if (st.slot < 0) {
        img_->FlushAsync([this](Status s) { Done(-1, s); });
        continue;
      }
      uint8_t* p = buf_ + static_cast<size_t>(st.slot) * slot_;
      auto done = [this, slot = st.slot](Status s) { Done(slot, s); };
      if (write_) {
        img_->WriteAsync(st.pos, p, size_, done);
      } else {
        img_->ReadAsync(st.pos, p, size_, done);
      }
    }
  }

  void Done(int slot, Status st) {
    std::unique_lock<std::mutex> l(mu_);
    if (!st.ok() && error_.ok()) error_ = st;
    if (slot >= 0) {
      free_slots_.push_back(slot);
    } else if (in_flush_) {
      in_flush_ = false;
    }
    in_flight_--;
    if (in_flight_ == 0 && (issued_ == count_ || !error_.ok())) {
      cv_.notify_all();
      return;
    }
    Pump(std::move(l));
  }

  Image* const img_;
  uint8_t* const buf_;
  const size_t slot_;
  const uint64_t count_, size_, step_, flush_interval_;
  const bool drain_, write_;
  const uint64_t image_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t pos_;
  uint64_t issued_ = 0;
  uint64_t in_flight_ = 0;
  uint64_t flushed_at_ = 0;  // the request count at the last flush started
  bool in_flush_ = false;    // a draining flush is running
  std::vector<int> free_slots_;
  Status error_;
};

bool ParseCount(const char* arg, uint64_t max, uint64_t* out) {
  auto v = ParseUint(arg);
  if (!v.ok() || *v > max) return false;
  *out = *v;
  return true;
}

}  // namespace

int CmdBench(int argc, char** argv) {
  std::string fmt, cache = "writeback", aio = "threads";
  uint64_t count = 75000, depth = 64, offset = 0, size = 4096, step = 0, flush_interval = 0;
  bool write = false, quiet = false, drain = true, step_given = false, force_share = false;
  int pattern = 0;
  enum { kFlushInterval = 256, kNoDrain, kPattern, kImageOpts, kObject };
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"flush-interval", required_argument, nullptr, kFlushInterval},
                                 {"no-drain", no_argument, nullptr, kNoDrain},
                                 {"pattern", required_argument, nullptr, kPattern},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'c':
        if (!ParseCount(optarg, INT32_MAX, &count)) {
          PrintErrorF("Invalid request count specified");
          return 1;
        }
        break;
      case 'd':
        if (!ParseCount(optarg, INT32_MAX, &depth) || depth == 0) {
          PrintErrorF("Invalid queue depth specified");
          return 1;
        }
        break;
      case 'f': fmt = optarg; break;
      case 'n': break;  // native AIO: our backends choose for themselves
      case 'i':
        if (!ParseAioMode(optarg, &aio)) return 1;
        break;
      case 'o': {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v > static_cast<uint64_t>(INT64_MAX)) {
          PrintError("Invalid offset specified");
          return 1;
        }
        offset = *v;
        break;
      }
      case 'q': quiet = true; break;
      case 's': {
        auto v = ParseSize(optarg);
        // 0 is allowed, as qemu-img allows it: requests that move no data.
        if (!v.ok() || *v > INT32_MAX) {
          PrintError("Invalid buffer size specified");
          return 1;
        }
        size = *v;
        break;
      }
      case 'S': {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v > INT32_MAX) {
          PrintError("Invalid step size specified");
          return 1;
        }
        step = *v;
        step_given = true;
        break;
      }
      case 't': cache = optarg; break;
      case 'w': write = true; break;
      case 'U': force_share = true; break;
      case kFlushInterval:
        if (!ParseCount(optarg, INT32_MAX, &flush_interval)) {
          PrintErrorF("Invalid flush interval specified");
          return 1;
        }
        break;
      case kNoDrain: drain = false; break;
      case kPattern: {
        uint64_t p;
        if (!ParseCount(optarg, 0xff, &p)) {
          PrintError("Invalid pattern byte specified");
          return 1;
        }
        pattern = static_cast<int>(p);
        break;
      }
      case 'h':
        std::printf("usage: qcow2j bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] "
                    "[--no-drain] [-i aio] [-n] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                    "[-S step_size] [-t cache] [-w] [-U] filename\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  (void)quiet;  // qemu-img bench prints its two lines even with -q
  if (!ExpectOneImage(argc)) return 1;
  if (!step_given) step = size;
  if (flush_interval && flush_interval < depth) {
    PrintError("Flush interval can't be smaller than depth");
    return 1;
  }
  // --no-drain without --flush-interval does nothing; qemu-img accepts it too.
  if (flush_interval && !write) {
    PrintError("--flush-interval is only available in write tests");
    return 1;
  }

  OpenOptions opts;
  opts.format = fmt;
  opts.read_only = !write;
  opts.force_share = force_share;
  if (Status st = ApplyCacheMode(cache, &opts); !st.ok()) {
    PrintErrorF("Invalid cache mode");
    return 1;
  }
  if (Status st = ApplyAioMode(aio, &opts); !st.ok()) {
    PrintError("Could not open '" + std::string(argv[optind]) + "': " + st.message());
    return 1;
  }
  auto img = OpenImage(argv[optind], opts);
  if (!img.ok()) {
    PrintError(img.status().message());
    return 1;
  }
  const uint64_t image_size = (*img)->size();
  if (image_size == 0 || size > image_size) {
    PrintError("Request size is larger than the image");
    return 1;
  }

  // One aligned slot per request in flight (O_DIRECT wants 4 KiB alignment).
  const size_t slot = (size + 4095) & ~size_t{4095};
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, std::max<size_t>(slot * depth, 1)) != 0) {
    PrintError("Out of memory");
    return 1;
  }
  std::unique_ptr<uint8_t, decltype(&std::free)> buf(static_cast<uint8_t*>(mem), &std::free);
  std::memset(buf.get(), write ? pattern : 0, slot * depth);

  std::printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %llu, "
              "step size %d)\n",
              static_cast<int>(count), write ? "write" : "read", static_cast<int>(size),
              static_cast<int>(depth), static_cast<unsigned long long>(offset),
              static_cast<int>(step));
  if (flush_interval) {
    std::printf("Sending flush every %d requests\n", static_cast<int>(flush_interval));
  }
  std::fflush(stdout);

  auto start = std::chrono::steady_clock::now();
  BenchRun run(img->get(), buf.get(), slot, count, depth, offset, size, step, flush_interval, drain,
               write);
  Status run_st = run.Run();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!run_st.ok()) {
    PrintErrorF("Failed request: %s", run_st.message().c_str());
    return 1;
  }
  std::printf("Run completed in %3.3f seconds.\n", secs);
  Status st = (*img)->Close();
  if (!st.ok()) {
    PrintError(st.message());
    return 1;
  }
  return 0;
}

}  // namespace qcow2j::cli
