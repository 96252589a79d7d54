// qcow2j bench: qemu-img bench, `depth` asynchronous requests in flight.
#include <getopt.h>

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

// Requests in flight and the buffer slots they hold, shared with the
// completion callbacks (which run on engine threads).
struct BenchState {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::vector<int> free_slots;
  Status error;
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
        if (!v.ok() || *v == 0 || *v > INT32_MAX) {
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
  if (!drain && !flush_interval) {
    PrintError("--no-drain requires --flush-interval");
    return 1;
  }
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
  if (posix_memalign(&mem, 4096, slot * depth) != 0) {
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

  BenchState state;
  for (int i = static_cast<int>(depth) - 1; i >= 0; i--) state.free_slots.push_back(i);
  auto start = std::chrono::steady_clock::now();
  uint64_t pos = offset % image_size;
  for (uint64_t n = 0; n < count; n++) {
    std::unique_lock<std::mutex> l(state.mu);
    if (flush_interval && n > 0 && n % flush_interval == 0) {
      if (drain) {
        state.cv.wait(l, [&] { return state.in_flight == 0 || !state.error.ok(); });
        l.unlock();
        Status st = (*img)->Flush();
        l.lock();
        if (!st.ok() && state.error.ok()) state.error = st;
      } else {
        state.in_flight++;
        l.unlock();
        (*img)->FlushAsync([&state](Status st) {
          std::lock_guard<std::mutex> g(state.mu);
          if (!st.ok() && state.error.ok()) state.error = st;
          state.in_flight--;
          state.cv.notify_all();
        });
        l.lock();
      }
    }
    state.cv.wait(l, [&] { return !state.free_slots.empty() || !state.error.ok(); });
    if (!state.error.ok()) break;
    int s = state.free_slots.back();
    state.free_slots.pop_back();
    state.in_flight++;
    l.unlock();
    uint8_t* p = buf.get() + static_cast<size_t>(s) * slot;
    auto done = [&state, s](Status st) {
      std::lock_guard<std::mutex> g(state.mu);
      if (!st.ok() && state.error.ok()) state.error = st;
      state.free_slots.push_back(s);
      state.in_flight--;
      state.cv.notify_all();
    };
    // Requests that would run past the end wrap to the start, as qemu-img's do.
    if (pos + size > image_size) pos = 0;
    if (write) {
      (*img)->WriteAsync(pos, p, size, done);
    } else {
      (*img)->ReadAsync(pos, p, size, done);
    }
    pos = (pos + step) % image_size;
  }
  {
    std::unique_lock<std::mutex> l(state.mu);
    state.cv.wait(l, [&] { return state.in_flight == 0; });
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!state.error.ok()) {
    PrintErrorF("Failed request: %s", state.error.message().c_str());
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
