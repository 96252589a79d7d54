// qcow2j convert: qemu-img convert to raw or qcow2.
//
// The source is cut into jobs (zero extents, and data extents split into
// chunks of up to 2 MiB) from its block status; a few threads each take the
// next job, read it, drop the parts that are all zeros and write the rest.
// Several reads in flight keep the disk and both cores busy, which is how
// qemu-img gets its speed with coroutines.
//
// With -c the jobs are 2 MiB chunks aligned to the target's clusters; each
// worker (-m of them, two per core by default) reads a chunk and hands its
// non-zero clusters to WriteCompressed, which compresses them in that
// worker's thread and packs them through the engine's compressed-write
// cache, in whatever order the chunks finish. Zero clusters stay
// unallocated.
#include <getopt.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/create_options.h"
#include "tools/cli/no_flush_env.h"
#include "tools/cli/progress.h"
#include "tools/cli/zero_detect.h"

namespace qcow2j::cli {

namespace {

constexpr uint64_t kChunk = 2u << 20;

struct Job {
  uint64_t offset, length;
  bool zero;  // reads as zeros: nothing to read
};

// What the source's block status says about a range.
struct Extent {
  uint64_t offset, length;
  bool zero;
};

// -c: data jobs cover the data extents widened to whole target clusters
// (cut at kChunk boundaries, a multiple of any cluster size), so every
// compressed write is cluster aligned; zero jobs cover what remains of the
// zero extents.
std::vector<Job> CompressJobs(const std::vector<Extent>& extents, uint64_t size, uint64_t cs) {
  std::vector<std::pair<uint64_t, uint64_t>> data;  // sorted, disjoint
  for (const Extent& e : extents) {
    if (e.zero) continue;
    uint64_t a = e.offset / cs * cs, b = std::min(size, (e.offset + e.length + cs - 1) / cs * cs);
    if (!data.empty() && a <= data.back().second) {
      data.back().second = std::max(data.back().second, b);
    } else {
      data.emplace_back(a, b);
    }
  }
  std::vector<Job> jobs;
  for (auto [a, b] : data) {
    for (uint64_t p = a; p < b;) {
      uint64_t end = std::min(b, (p / kChunk + 1) * kChunk);
      jobs.push_back({p, end - p, false});
      p = end;
    }
  }
  size_t k = 0;
  for (const Extent& e : extents) {
    if (!e.zero) continue;
    uint64_t p = e.offset, end = e.offset + e.length;
    while (k < data.size() && data[k].second <= p) k++;
    for (size_t i = k; p < end; i++) {
      uint64_t gap_end = i < data.size() ? std::min(end, data[i].first) : end;
      if (gap_end > p) jobs.push_back({p, gap_end - p, true});
      if (i >= data.size()) break;
      p = std::max(p, data[i].second);
    }
  }
  return jobs;
}

// Where converted bytes go.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual Status Write(uint64_t off, const uint8_t* buf, size_t len) = 0;
  // Only called when the target may hold old data (-n).
  virtual Status Zero(uint64_t off, uint64_t len) = 0;
  virtual Status Finish() = 0;
  // The target's cluster size (0: not a cluster format).
  virtual uint64_t cluster_size() { return 0; }
};

class RawSink : public Sink {
 public:
  RawSink(std::unique_ptr<File> f, bool sync) : f_(std::move(f)), sync_(sync) {}
  Status Write(uint64_t off, const uint8_t* buf, size_t len) override { return f_->Write(off, buf, len); }
  Status Zero(uint64_t off, uint64_t len) override { return f_->PunchHole(off, len); }
  // cache=unsafe (convert's default) skips the final sync, as qemu-img does.
  Status Finish() override { return sync_ ? f_->Sync() : Status::OK(); }

 private:
  std::unique_ptr<File> f_;
  bool sync_;
};

class ImageSink : public Sink {
 public:
  ImageSink(std::unique_ptr<Image> img, bool compress) : img_(std::move(img)), compress_(compress) {}
  Status Write(uint64_t off, const uint8_t* buf, size_t len) override {
    return compress_ ? img_->WriteCompressed(off, buf, len) : img_->Write(off, buf, len);
  }
  Status Zero(uint64_t off, uint64_t len) override { return img_->WriteZeroes(off, len, true); }
  Status Finish() override { return img_->Close(); }
  uint64_t cluster_size() override { return img_->Info().cluster_size; }

 private:
  std::unique_ptr<Image> img_;
  bool compress_;
};

// The shared progress line, fed by every worker.
class ConvertProgress {
 public:
  explicit ConvertProgress(bool enabled) : bar_(enabled, 1.0) {}
  void Start(uint64_t total) {
    std::lock_guard<std::mutex> l(mu_);
    total_ = total;
    bar_.Start();
  }
  // Bytes known to need no work (counted before Start).
  void Skip(uint64_t n) { done_ += n; }
  void Add(uint64_t n) {
    std::lock_guard<std::mutex> l(mu_);
    done_ += n;
    bar_.SetFraction(done_, total_);
  }
  void Finish() {
    std::lock_guard<std::mutex> l(mu_);
    bar_.Set(100);
    bar_.End();
  }

 private:
  std::mutex mu_;
  Progress bar_;
  uint64_t total_ = 0, done_ = 0;
};

// Opens the source at an internal snapshot given as -l/-s: "snapshot.id=N",
// "snapshot.name=X" or a bare X (tried as an id first, then as a name).
Result<std::unique_ptr<Image>> OpenSource(const std::string& path, OpenOptions opts,
                                          const std::string& snapshot) {
  if (snapshot.empty()) return OpenImage(path, opts);
  opts.read_only = true;
  if (snapshot.rfind("snapshot.id=", 0) == 0) {
    opts.snapshot_id = snapshot.substr(12);
  } else if (snapshot.rfind("snapshot.name=", 0) == 0) {
    opts.snapshot_name = snapshot.substr(14);
  } else {
    opts.snapshot_id = snapshot;
    auto r = Image::Open(path, opts);
    if (r.ok() || r.status().code() != Code::kNotFound) {
      if (!r.ok()) return r.status().Annotate("Failed to load snapshot");
      return r;
    }
    opts.snapshot_id.clear();
    opts.snapshot_name = snapshot;
  }
  auto r = Image::Open(path, opts);
  if (!r.ok()) return r.status().Annotate("Failed to load snapshot");
  return r;
}

}  // namespace

int CmdConvert(int argc, char** argv) {
  std::string src_fmt, out_fmt = "raw", snapshot, cache = "unsafe", src_cache = "writeback";
  std::string backing, backing_fmt;
  bool threads_given = false;
  std::vector<std::string> option_strings;
  bool compress = false, progress = false, quiet = false, no_create = false, force_share = false;
  uint64_t sparse = 4096;
  uint64_t coroutines = 8;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {"target-is-zero", no_argument, nullptr, 'z'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":hf:O:B:F:Cco:l:S:pt:T:qnm:WrUs:", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': src_fmt = optarg; break;
      case 'O': out_fmt = optarg; break;
      case 'c': compress = true; break;
      case 'o': option_strings.push_back(optarg); break;
      case 'l':
      case 's': snapshot = optarg; break;
      case 'S': {
        auto v = ParseSize(optarg);
        if (!v.ok() || *v > INT64_MAX / 512) {
          PrintError("Invalid buffer size for sparse output specified. You may use k, M, G, T, P "
                     "or E suffixes for");
          return 1;
        }
        sparse = *v;
        break;
      }
      case 'p': progress = true; break;
      case 't': cache = optarg; break;
      case 'T': src_cache = optarg; break;
      case 'q': quiet = true; break;
      case 'n': no_create = true; break;
      case 'm': {
        auto v = ParseUint(optarg);
        if (!v.ok() || *v < 1 || *v > 16) {
          PrintError("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
          return 1;
        }
        coroutines = *v;
        threads_given = true;
        break;
      }
      case 'W': case 'C': case 'r': case 'z': break;  // ordering/copy-range hints: no effect here
      case 'U': force_share = true; break;
      case 'B': backing = optarg; break;
      case 'F': backing_fmt = optarg; break;
      case 'h':
        std::printf("usage: qcow2j convert [-f fmt] [-O output_fmt] [-l snapshot] [-c] [-o options] "
                    "[-B backing_file [-F backing_fmt]] [-t cache] [-T src_cache] [-p] [-q] [-n] "
                    "[-S sparse_size] [-m num] [-W] src dst\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (quiet) progress = false;
  if (argc - optind != 2) {
    PrintError(argc - optind < 2 ? "Expecting one image file name" : "Only one source image is supported");
    return 1;
  }
  const std::string src_path = argv[optind], dst_path = argv[optind + 1];
  if (out_fmt != "raw" && out_fmt != "qcow2") {
    PrintErrorF("Unknown file format '%s'", out_fmt.c_str());
    return 1;
  }
  if (compress && out_fmt != "qcow2") {
    PrintError("Compression not supported for this file format");
    return 1;
  }
  if (!backing.empty() && out_fmt != "qcow2") {
    PrintErrorF("Backing file not supported for file format '%s'", out_fmt.c_str());
    return 1;
  }
  if (!backing.empty() && backing_fmt.empty()) {
    PrintError("Use of backing file requires explicit backing format");
    return 1;
  }

  OpenOptions so;
  so.format = src_fmt;
  so.force_share = force_share;
  if (Status st = ApplyCacheMode(src_cache, &so); !st.ok()) {
    PrintErrorF("Invalid source cache option: %s", src_cache.c_str());
    return 1;
  }
  auto src = OpenSource(src_path, so, snapshot);
  if (!src.ok()) {
    PrintError(src.status().message());
    return 1;
  }
  const uint64_t size = (*src)->size();

  OpenOptions dopts;
  if (Status st = ApplyCacheMode(cache, &dopts); !st.ok()) {
    PrintError(st.message());
    return 1;
  }
  NoFlushEnv no_flush(Env::Default());
  if (cache == "unsafe") dopts.env = &no_flush;
  std::unique_ptr<Sink> sink;
  // A target with a backing file (-B, or -o backing_file=) gets only what
  // the source's top layer holds, as qemu-img assumes the backing file is
  // the source's; zeros must then be written, not left unallocated.
  bool has_backing = !backing.empty();
  if (out_fmt == "raw") {
    if (!option_strings.empty()) {
      CreateSpec spec;
      spec.opts.format = "raw";
      for (const std::string& s : option_strings) {
        auto list = ParseOptionString(s);
        Status st = list.ok() ? ApplyCreateOptions(*list, &spec) : list.status();
        if (!st.ok()) {
          PrintErrorF("%s: %s", dst_path.c_str(), st.message().c_str());
          return 1;
        }
      }
    }
    unsigned flags = no_create ? 0u : (kOpenCreate | kOpenTruncate);
    if (dopts.direct) flags |= kOpenDirect;
    if (dopts.writethrough) flags |= kOpenSync;
    auto f = Env::Default()->Open(dst_path, flags);
    if (!f.ok()) {
      PrintErrorF("Could not open '%s': %s", dst_path.c_str(), f.status().message().c_str());
      return 1;
    }
    if (!no_create) {
      if (Status st = (*f)->Truncate(size); !st.ok()) {
        PrintErrorF("%s: %s", dst_path.c_str(), st.message().c_str());
        return 1;
      }
    }
    sink = std::make_unique<RawSink>(std::move(*f), cache != "unsafe");
  } else {
    if (!no_create) {
      CreateSpec spec;
      spec.opts.format = "qcow2";
      for (const std::string& s : option_strings) {
        auto list = ParseOptionString(s);
        Status st = list.ok() ? ApplyCreateOptions(*list, &spec) : list.status();
        if (!st.ok()) {
          PrintErrorF("%s: %s", dst_path.c_str(), st.message().c_str());
          return 1;
        }
      }
      spec.opts.size = size;
      if (!backing.empty()) {
        spec.opts.backing_file = backing;
        spec.opts.backing_format = backing_fmt;
      }
      has_backing = !spec.opts.backing_file.empty();
      if (Status st = Image::Create(dst_path, spec.opts); !st.ok()) {
        PrintErrorF("%s: %s", dst_path.c_str(), st.message().c_str());
        return 1;
      }
    }
    dopts.read_only = false;
    dopts.format = "qcow2";
    auto d = OpenImage(dst_path, dopts);
    if (!d.ok()) {
      PrintError(d.status().message());
      return 1;
    }
    if (no_create && (*d)->size() < size) {
      PrintError("Target image is smaller than the source");
      return 1;
    }
    sink = std::make_unique<ImageSink>(std::move(*d), compress);
  }

  // The job list, from the source's block status.
  const bool write_zeros = no_create || has_backing;  // else the target reads as zeros already
  ConvertProgress prog(progress);
  std::vector<Extent> extents;
  for (uint64_t off = 0; off < size;) {
    auto bs = (*src)->GetBlockStatus(off, size - off);
    if (!bs.ok() || bs->length == 0) {
      PrintErrorF("error while reading block status at offset %llu: %s",
                  static_cast<unsigned long long>(off),
                  bs.ok() ? "empty extent" : bs.status().message().c_str());
      return 1;
    }
    uint64_t len = std::min(bs->length, size - off);
    if (has_backing && (bs->depth > 0 || !bs->present)) {
      prog.Skip(len);  // from the source's backing file: the target's backing has it
    } else if (!extents.empty() && extents.back().zero == bs->zero &&
               extents.back().offset + extents.back().length == off) {
      extents.back().length += len;
    } else {
      extents.push_back({off, len, bs->zero});
    }
    off += len;
  }
  std::vector<Job> jobs;
  if (compress) {
    jobs = CompressJobs(extents, size, std::max<uint64_t>(sink->cluster_size(), 512));
  } else {
    for (const Extent& e : extents) {
      if (e.zero) {
        jobs.push_back({e.offset, e.length, true});
        continue;
      }
      for (uint64_t p = e.offset; p < e.offset + e.length;) {
        uint64_t n = std::min(e.offset + e.length, (p / kChunk + 1) * kChunk) - p;
        jobs.push_back({p, n, false});
        p += n;
      }
    }
  }
  // Zero jobs that need no write count as done at once.
  if (!write_zeros) {
    std::erase_if(jobs, [&](const Job& j) {
      if (j.zero) prog.Skip(j.length);
      return j.zero;
    });
  }
  const uint64_t granularity = compress ? std::max<uint64_t>(sink->cluster_size(), 512) : sparse;

  prog.Start(size);

  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string error;
  auto fail = [&](const std::string& msg) {
    std::lock_guard<std::mutex> l(err_mu);
    if (!failed.exchange(true)) error = msg;
  };
  auto worker = [&] {
    // Page-aligned, so an O_DIRECT target (-t none) takes the clusters that
    // do not compress straight from it, with no bounce copy.
    std::unique_ptr<uint8_t, decltype(&std::free)> buf(
        static_cast<uint8_t*>(std::aligned_alloc(4096, kChunk)), &std::free);
    if (!buf) {
      fail("out of memory for a " + std::to_string(kChunk) + " byte buffer");
      return;
    }
    while (!failed.load()) {
      size_t i = next.fetch_add(1);
      if (i >= jobs.size()) return;
      const Job& j = jobs[i];
      if (j.zero) {
        if (Status st = sink->Zero(j.offset, j.length); !st.ok()) {
          fail("error while writing at byte " + std::to_string(j.offset) + ": " + st.message());
        }
      } else if (Status st = (*src)->Read(j.offset, buf.get(), j.length); !st.ok()) {
        fail("error while reading at byte " + std::to_string(j.offset) + ": " + st.message());
      } else {
        // Write the runs that are not all zeros (sparse granularity -S; 0
        // disables detection; with -c whole clusters, compressed by the
        // sink). A fresh target already reads as zeros.
        for (const ByteRun& r : NonZeroRuns(buf.get(), j.length, granularity, !write_zeros)) {
          Status ws = r.zero ? sink->Zero(j.offset + r.offset, r.length)
                             : sink->Write(j.offset + r.offset, buf.get() + r.offset, r.length);
          if (!ws.ok()) {
            fail("error while writing at byte " + std::to_string(j.offset + r.offset) + ": " +
                 ws.message());
            break;
          }
        }
      }
      prog.Add(j.length);
    }
  };
  // Compression is CPU bound, but each worker also waits for its reads and
  // (O_DIRECT) writes: two workers per core keep every core compressing,
  // unless -m says otherwise. Plain copies are I/O bound: a few reads in
  // flight are enough.
  size_t nthreads = std::min<size_t>(std::max<size_t>(coroutines / 2, 1), 4);
  if (compress) {
    nthreads = threads_given ? coroutines
                             : std::min(16u, 2 * std::max(1u, std::thread::hardware_concurrency()));
  }
  std::vector<std::thread> threads;
  for (size_t t = 0; t < nthreads; t++) threads.emplace_back(worker);
  for (auto& t : threads) t.join();

  Status fin = sink->Finish();
  (void)(*src)->Close();
  if (failed) {
    PrintError(error);
    return 1;
  }
  if (!fin.ok()) {
    PrintErrorF("error while closing '%s': %s", dst_path.c_str(), fin.message().c_str());
    return 1;
  }
  prog.Finish();
  return 0;
}

}  // namespace qcow2j::cli
