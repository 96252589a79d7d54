// qcow2j io: a qemu-io subset. Commands come from each -c in order, or line
// by line from stdin (with qemu-io's "qemu-io> " prompt). As in qemu-io, a
// failing command does not stop the rest, but makes the exit status 1.
#include <getopt.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "tools/cli/cli.h"
#include "tools/cli/io_format.h"

namespace qcow2j::cli {

namespace {

constexpr int64_t kMaxRequest = 2147483136;  // qemu's BDRV_REQUEST_MAX_BYTES

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// qemu-io prints failures as "<op> failed: <strerror>".
std::string ErrnoText(const Status& st) {
  switch (st.code()) {
    case Code::kIOError: return st.sys_errno() ? std::strerror(st.sys_errno()) : "Input/output error";
    case Code::kNoSpace: return std::strerror(ENOSPC);
    case Code::kInvalidArgument: return std::strerror(EINVAL);
    case Code::kNotSupported: return std::strerror(ENOTSUP);
    case Code::kReadOnly: return std::strerror(EPERM);
    case Code::kBusy: return std::strerror(EBUSY);
    case Code::kNotFound: return std::strerror(ENOENT);
    default: return std::strerror(EIO);
  }
}

// An aio_read/aio_write whose report is printed once it has completed.
struct AioRequest {
  bool write = false, quiet = false, terse = false, verify = false, done = false;
  uint8_t pattern = 0;
  int64_t offset = 0, length = 0;
  std::vector<uint8_t> buf;
  Clock::time_point start;
  double seconds = 0;
  Status status;
};

class IoSession {
 public:
  IoSession(std::string fmt, OpenOptions base) : fmt_(std::move(fmt)), base_(base) {}
  ~IoSession() { WaitAio(); }

  Status Open(const std::string& path, const OpenOptions& opts) {
    auto img = OpenImage(path, opts);
    if (!img.ok()) return img.status();
    img_ = std::move(*img);
    return Status::OK();
  }
  void CloseImage() {
    if (!img_) return;
    WaitAio();
    PrintAio();
    (void)img_->Close();
    img_.reset();
  }
  // Runs one command line; false when it failed.
  bool Run(const std::string& line, bool* quit);

 private:
  bool Read(std::vector<std::string>& args, bool vectored);
  bool Write(std::vector<std::string>& args, bool vectored);
  bool Aio(std::vector<std::string>& args, bool write);
  bool Discard(std::vector<std::string>& args);
  bool Alloc(std::vector<std::string>& args);
  bool Map();
  bool OpenCmd(std::vector<std::string>& args);
  void WaitAio();
  void PrintAio();
  bool RangeOk(const char* op, int64_t off, int64_t len);

  std::string fmt_;
  OpenOptions base_;
  std::unique_ptr<Image> img_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<AioRequest>> aio_;
};

// Parses "off" and "len" words with qemu-io's messages.
bool Number(const std::string& word, int64_t* out) {
  auto v = ParseIoNumber(word);
  if (!v.ok()) {
    std::printf("%s\n", v.status().message().c_str());
    return false;
  }
  *out = *v;
  return true;
}

// getopt over a command's words; returns false (after qemu-io's complaint
// and usage line) for an unknown option.
struct CmdArgs {
  std::vector<char*> argv;
  explicit CmdArgs(std::vector<std::string>& words) {
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    ResetGetopt();
  }
  int argc() const { return static_cast<int>(argv.size()) - 1; }
};

struct CommandHelp {
  const char* name;
  const char* args;
  const char* oneline;
  int min_args;
};

constexpr CommandHelp kHelp[] = {
    {"read", "[-abCqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset", 2},
    {"readv", "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset", 2},
    {"write", "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset", 2},
    {"writev", "[-Cfq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset", 2},
    {"aio_read", "[-Ciqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes", 2},
    {"aio_write", "[-Cfiquz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes", 2},
    {"aio_flush", "", "completes all outstanding aio requests", 0},
    {"discard", "[-Cq] off len", "discards a number of bytes at a specified offset", 2},
    {"flush", "", "flush all in-core file state to disk", 0},
    {"alloc", "offset [count]", "checks if offset is allocated in the file", 1},
    {"map", "", "prints the allocated areas of a file", 0},
    {"length", "", "gets the length of the current file", 0},
    {"open", "[-Crsun] [-c cache] [-o options] [path]", "open the file specified by path", 0},
    {"close", "", "close the current open file", 0},
    {"abort", "", "simulate a program crash using abort(3)", 0},
    {"quit", "", "exit the program", 0},
};

const CommandHelp* FindHelp(const std::string& name) {
  for (const CommandHelp& h : kHelp) {
    if (name == h.name) return &h;
  }
  return nullptr;
}

void Usage(const std::string& name) {
  if (const CommandHelp* h = FindHelp(name)) std::printf("%s %s -- %s\n", h->name, h->args, h->oneline);
}

// The operands after a read or write command's options: an offset and a
// length (readv/writev: several lengths, summed), with qemu-io's messages.
// A total over kMaxRequest is refused unless `unbounded` (write -z -n needs
// no buffer); `hint` ends the refusal (write: " without -n").
bool Operands(const CmdArgs& a, const std::string& name, bool vectored, bool unbounded,
              const char* hint, int64_t* offset, int64_t* count) {
  if (optind + 2 > a.argc() || (!vectored && optind + 2 != a.argc())) {
    Usage(name);
    return false;
  }
  if (!Number(a.argv[optind], offset)) return false;
  *count = 0;
  for (int i = optind + 1; i < a.argc(); i++) {
    int64_t len;
    if (!Number(a.argv[i], &len)) return false;
    if (vectored && len > kMaxRequest) {  // qemu-io checks each buffer, then their sum
      std::printf("Argument '%s' exceeds maximum size %lld\n", a.argv[i], static_cast<long long>(kMaxRequest));
      return false;
    }
    if (vectored && *count > kMaxRequest - len) {
      std::printf("The total number of bytes exceed the maximum size %lld\n", static_cast<long long>(kMaxRequest));
      return false;
    }
    *count += len;
  }
  if (*count > kMaxRequest && !unbounded) {
    std::printf("length cannot exceed %lld%s, given %s\n", static_cast<long long>(kMaxRequest), hint,
                a.argv[optind + 1]);
    return false;
  }
  return true;
}

bool IoSession::RangeOk(const char* op, int64_t off, int64_t len) {
  if (static_cast<uint64_t>(off) > img_->size() ||
      static_cast<uint64_t>(len) > img_->size() - static_cast<uint64_t>(off)) {
    std::printf("%s failed: %s\n", op, std::strerror(EIO));
    return false;
  }
  return true;
}

bool IoSession::Run(const std::string& line, bool* quit) {
  PrintAio();
  std::vector<std::string> words = TokenizeIoCommand(line);
  if (words.empty()) return true;
  std::string name = words[0];
  if (name == "q") name = "quit";
  const CommandHelp* help = FindHelp(name);
  if (!help) {
    std::fflush(stdout);
    std::fprintf(stderr, "command \"%s\" not found\n", words[0].c_str());
    return false;
  }
  if (name == "quit") {
    *quit = true;
    return true;
  }
  if (name == "abort") {
    // qemu-io calls abort(): the image is left exactly as a crash leaves it.
    std::fflush(nullptr);
    _exit(134);
  }
  if (name == "open") return OpenCmd(words);
  if (!img_) {
    std::fflush(stdout);
    std::fprintf(stderr, "no file open, try 'help open'\n");
    return false;
  }
  // Count the words that are not options to check the argument count early,
  // with qemu-io's message.
  int positional = 0;
  // (-c is a flag here: write -c compresses.)
  const char* with_arg = "PslT";
  for (size_t i = 1; i < words.size(); i++) {
    if (words[i][0] != '-' || words[i].size() == 1) {
      positional++;
    } else if (std::strchr(with_arg, words[i].back()) && words[i].size() == 2 && i + 1 < words.size()) {
      i++;  // an option with an argument
    }
  }
  if (positional < help->min_args) {
    std::fflush(stdout);
    std::fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                 static_cast<int>(words.size()) - 1, name.c_str(), help->min_args);
    return false;
  }
  if (name == "read") return Read(words, false);
  if (name == "readv") return Read(words, true);
  if (name == "write") return Write(words, false);
  if (name == "writev") return Write(words, true);
  if (name == "aio_read") return Aio(words, false);
  if (name == "aio_write") return Aio(words, true);
  if (name == "aio_flush") {
    WaitAio();
    PrintAio();
    return true;
  }
  if (name == "discard") return Discard(words);
  if (name == "alloc") return Alloc(words);
  if (name == "map") return Map();
  if (name == "length") {
    std::printf("%s\n", IoCvtStr(static_cast<double>(img_->size())).c_str());
    return true;
  }
  if (name == "flush") {
    Status st = img_->Flush();
    if (!st.ok()) std::printf("flush failed: %s\n", ErrnoText(st).c_str());
    return st.ok();
  }
  if (name == "close") {
    CloseImage();
    return true;
  }
  return false;
}

bool IoSession::Read(std::vector<std::string>& words, bool vectored) {
  CmdArgs a(words);
  bool quiet = false, terse = false, dump = false, verify = false;
  uint8_t pattern = 0;
  int64_t pat_off = 0, pat_len = -1;
  int c;
  while ((c = getopt(a.argc(), a.argv.data(), vectored ? "CP:qv" : "bCl:pP:qs:v")) != -1) {
    switch (c) {
      case 'C': terse = true; break;
      case 'q': quiet = true; break;
      case 'v': dump = true; break;
      case 'p': break;
      case 'P': {
        auto p = ParseIoPattern(optarg);
        if (!p.ok()) {
          std::printf("%s\n", p.status().message().c_str());
          return false;
        }
        pattern = *p;
        verify = true;
        break;
      }
      case 's': if (!Number(optarg, &pat_off)) return false; break;
      case 'l': if (!Number(optarg, &pat_len)) return false; break;
      default: Usage(words[0]); return false;
    }
  }
  int64_t offset, count;
  if (!Operands(a, words[0], vectored, /*unbounded=*/false, "", &offset, &count)) return false;
  if (!verify && (pat_off || pat_len >= 0)) {
    std::printf("-s and -l only make sense with -P\n");  // qemu-io rejects them without -P
    return false;
  }
  if (pat_len < 0) pat_len = count - pat_off;
  if (pat_off < 0 || pat_off + pat_len > count) {
    std::printf("pattern verification range exceeds end of read data\n");
    return false;
  }
  std::vector<uint8_t> buf(count);
  auto start = Clock::now();
  if (!RangeOk("read", offset, count)) return false;
  Status st = img_->Read(offset, buf.data(), count);
  double secs = Since(start);
  if (!st.ok()) {
    std::printf("read failed: %s\n", ErrnoText(st).c_str());
    return false;
  }
  bool ok = true;
  if (verify) {
    for (int64_t i = pat_off; i < pat_off + pat_len; i++) {
      if (buf[i] != pattern) {
        std::printf("Pattern verification failed at offset %lld, %lld bytes\n",
                    static_cast<long long>(offset + pat_off), static_cast<long long>(pat_len));
        ok = false;
        break;
      }
    }
  }
  if (quiet) return ok;
  if (dump) std::fputs(IoDumpBuffer(buf.data(), buf.size(), offset).c_str(), stdout);
  std::fputs(terse ? IoReportTerse("read", secs, count, 1).c_str()
                   : IoReport("read", secs, offset, count, count, 1).c_str(),
             stdout);
  return ok;
}

bool IoSession::Write(std::vector<std::string>& words, bool vectored) {
  CmdArgs a(words);
  bool quiet = false, terse = false, zero = false, unmap = false, compress = false, have_p = false;
  bool no_fallback = false;
  uint8_t pattern = 0xcd;
  int c;
  while ((c = getopt(a.argc(), a.argv.data(), vectored ? "CfqP:" : "bcCfnpP:quzs:")) != -1) {
    switch (c) {
      case 'C': terse = true; break;
      case 'q': quiet = true; break;
      case 'z': zero = true; break;
      case 'u': unmap = true; break;
      case 'c': compress = true; break;
      case 'n': no_fallback = true; break;
      case 'b': case 'f': case 'p': break;
      case 'P': {
        auto p = ParseIoPattern(optarg);
        if (!p.ok()) {
          std::printf("%s\n", p.status().message().c_str());
          return false;
        }
        pattern = *p;
        have_p = true;
        break;
      }
      case 's':
        std::printf("write -s (source file) is not supported\n");
        return false;
      default: Usage(words[0]); return false;
    }
  }
  if (no_fallback && !zero) {
    std::printf("-n requires -z to be specified\n");
    return false;
  }
  if (unmap && !zero) {
    std::printf("-u requires -z to be specified\n");
    return false;
  }
  if (zero && have_p) {
    std::printf("Only one of -z, -P, and -s can be specified at the same time\n");
    return false;
  }
  if (compress && zero) {
    std::printf("Cannot use -c and -z at the same time\n");
    return false;
  }
  int64_t offset, count;
  // As qemu-io: only write -z -n (no fallback to writing zeros) may
  // exceed the request limit.
  if (!Operands(a, words[0], vectored, /*unbounded=*/no_fallback, vectored ? "" : " without -n", &offset,
                &count))
    return false;
  if (!RangeOk("write", offset, count)) return false;
  std::vector<uint8_t> buf;
  if (!zero) buf.assign(count, pattern);
  auto start = Clock::now();
  Status st = zero       ? img_->WriteZeroes(offset, count, unmap)
              : compress ? img_->WriteCompressed(offset, buf.data(), count)
                         : img_->Write(offset, buf.data(), count);
  double secs = Since(start);
  if (!st.ok()) {
    std::printf("write failed: %s\n", ErrnoText(st).c_str());
    return false;
  }
  if (quiet) return true;
  std::fputs(terse ? IoReportTerse("wrote", secs, count, 1).c_str()
                   : IoReport("wrote", secs, offset, count, count, 1).c_str(),
             stdout);
  return true;
}

bool IoSession::Aio(std::vector<std::string>& words, bool write) {
  CmdArgs a(words);
  auto req = std::make_unique<AioRequest>();
  req->write = write;
  req->pattern = write ? 0xcd : 0;
  bool zero = false;
  int c;
  while ((c = getopt(a.argc(), a.argv.data(), write ? "CfiqP:uz" : "CiP:qv")) != -1) {
    switch (c) {
      case 'C': req->terse = true; break;
      case 'q': req->quiet = true; break;
      case 'z': zero = true; break;
      case 'f': case 'i': case 'u': case 'v': break;
      case 'P': {
        auto p = ParseIoPattern(optarg);
        if (!p.ok()) {
          std::printf("%s\n", p.status().message().c_str());
          return false;
        }
        req->pattern = *p;
        req->verify = !write;
        break;
      }
      default: Usage(words[0]); return false;
    }
  }
  if (optind + 2 > a.argc()) {
    Usage(words[0]);
    return false;
  }
  if (!Number(a.argv[optind], &req->offset)) return false;
  for (int i = optind + 1; i < a.argc(); i++) {
    int64_t len;
    if (!Number(a.argv[i], &len)) return false;
    req->length += len;
  }
  if (!RangeOk(write ? "aio_write" : "aio_read", req->offset, req->length)) return false;
  req->buf.assign(zero ? 0 : req->length, write ? req->pattern : 0);
  req->start = Clock::now();
  AioRequest* r = req.get();
  {
    std::lock_guard<std::mutex> l(mu_);
    aio_.push_back(std::move(req));
  }
  auto done = [this, r](Status st) {
    std::lock_guard<std::mutex> l(mu_);
    r->seconds = Since(r->start);
    r->status = st;
    r->done = true;
    cv_.notify_all();
  };
  if (!write) {
    img_->ReadAsync(r->offset, r->buf.data(), r->length, done);
  } else if (zero) {
    img_->WriteZeroesAsync(r->offset, r->length, false, done);
  } else {
    img_->WriteAsync(r->offset, r->buf.data(), r->length, done);
  }
  return true;
}

void IoSession::WaitAio() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] {
    for (const auto& r : aio_) {
      if (!r->done) return false;
    }
    return true;
  });
}

// Prints (in submission order) the reports of requests that have completed.
void IoSession::PrintAio() {
  std::vector<std::unique_ptr<AioRequest>> finished;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = aio_.begin(); it != aio_.end();) {
      if ((*it)->done) {
        finished.push_back(std::move(*it));
        it = aio_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& r : finished) {
    const char* op = r->write ? "aio_write" : "aio_read";
    if (!r->status.ok()) {
      std::printf("%s failed: %s\n", op, ErrnoText(r->status).c_str());
      continue;
    }
    if (r->verify) {
      for (uint8_t b : r->buf) {
        if (b != r->pattern) {
          std::printf("Pattern verification failed at offset %lld, %lld bytes\n",
                      static_cast<long long>(r->offset), static_cast<long long>(r->length));
          break;
        }
      }
    }
    if (r->quiet) continue;
    const char* word = r->write ? "wrote" : "read";
    std::fputs(r->terse ? IoReportTerse(word, r->seconds, r->length, 1).c_str()
                        : IoReport(word, r->seconds, r->offset, r->length, r->length, 1).c_str(),
               stdout);
  }
}

bool IoSession::Discard(std::vector<std::string>& words) {
  CmdArgs a(words);
  bool quiet = false, terse = false;
  int c;
  while ((c = getopt(a.argc(), a.argv.data(), "Cq")) != -1) {
    switch (c) {
      case 'C': terse = true; break;
      case 'q': quiet = true; break;
      default: Usage(words[0]); return false;
    }
  }
  if (optind + 2 != a.argc()) {
    Usage(words[0]);
    return false;
  }
  int64_t offset, count;
  if (!Number(a.argv[optind], &offset) || !Number(a.argv[optind + 1], &count)) return false;
  if (!RangeOk("discard", offset, count)) return false;
  auto start = Clock::now();
  Status st = img_->Discard(offset, count);
  double secs = Since(start);
  if (!st.ok()) {
    std::printf("discard failed: %s\n", ErrnoText(st).c_str());
    return false;
  }
  if (quiet) return true;
  std::fputs(terse ? IoReportTerse("discard", secs, count, 1).c_str()
                   : IoReport("discard", secs, offset, count, count, 1).c_str(),
             stdout);
  return true;
}

bool IoSession::Alloc(std::vector<std::string>& words) {
  int64_t offset, count = 512;
  if (!Number(words[1], &offset)) return false;
  if (words.size() > 2 && !Number(words[2], &count)) return false;
  const uint64_t size = img_->size();
  uint64_t end = std::min<uint64_t>(size, static_cast<uint64_t>(offset) + count);
  if (static_cast<uint64_t>(offset) > size) count = 0;
  int64_t allocated = 0;
  for (uint64_t off = offset; off < end;) {
    auto bs = img_->GetBlockStatus(off, end - off);
    if (!bs.ok() || bs->length == 0) {
      std::printf("is_allocated failed: %s\n", bs.ok() ? "Input/output error" : ErrnoText(bs.status()).c_str());
      return false;
    }
    uint64_t n = std::min(bs->length, end - off);
    // qemu-io asks about this layer only: a backing file's data does not count.
    if (bs->present && bs->depth == 0) allocated += n;
    off += n;
  }
  std::printf("%lld/%lld bytes allocated at offset %s\n", static_cast<long long>(allocated),
              static_cast<long long>(count), IoCvtStr(static_cast<double>(offset)).c_str());
  return true;
}

bool IoSession::Map() {
  const uint64_t size = img_->size();
  uint64_t run_start = 0, run_len = 0;
  bool run_alloc = false;
  auto flush_run = [&] {
    if (!run_len) return;
    std::printf("%s (0x%llx) bytes %s allocated at offset %s (0x%llx)\n",
                IoCvtStr(static_cast<double>(run_len)).c_str(),
                static_cast<unsigned long long>(run_len), run_alloc ? "   " : "not",
                IoCvtStr(static_cast<double>(run_start)).c_str(),
                static_cast<unsigned long long>(run_start));
  };
  for (uint64_t off = 0; off < size;) {
    auto bs = img_->GetBlockStatus(off, size - off);
    if (!bs.ok() || bs->length == 0) {
      std::printf("map failed: %s\n", bs.ok() ? "Input/output error" : ErrnoText(bs.status()).c_str());
      return false;
    }
    uint64_t n = std::min(bs->length, size - off);
    bool alloc = bs->present && bs->depth == 0;
    if (run_len && alloc == run_alloc) {
      run_len += n;
    } else {
      flush_run();
      run_start = off;
      run_len = n;
      run_alloc = alloc;
    }
    off += n;
  }
  flush_run();
  return true;
}

bool IoSession::OpenCmd(std::vector<std::string>& words) {
  if (img_) {
    std::fflush(stdout);
    std::fprintf(stderr, "file open already, try 'help close'\n");
    return false;
  }
  CmdArgs a(words);
  OpenOptions opts = base_;
  opts.format = fmt_;
  int c;
  while ((c = getopt(a.argc(), a.argv.data(), "snCrkt:d:o:U")) != -1) {
    switch (c) {
      case 'r': opts.read_only = true; break;
      case 'n': opts.direct = true; break;
      case 'U': opts.force_share = true; break;
      case 't':
        if (!ApplyCacheMode(optarg, &opts).ok()) {
          std::fflush(stdout);
          std::fprintf(stderr, "Invalid cache option: %s\n", optarg);
          return false;
        }
        break;
      case 's': case 'C': case 'k': case 'd': case 'o': break;
      default: Usage("open"); return false;
    }
  }
  if (optind != a.argc() - 1) {
    Usage("open");
    return false;
  }
  Status st = Open(a.argv[optind], opts);
  if (!st.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "qcow2j: can't open device %s: %s\n", a.argv[optind], st.message().c_str());
    return false;
  }
  return true;
}

}  // namespace

int CmdIo(int argc, char** argv) {
  std::string fmt;
  std::vector<std::string> commands;
  OpenOptions opts;
  opts.read_only = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"format", required_argument, nullptr, 'f'},
                                 {"cmd", required_argument, nullptr, 'c'},
                                 {"read-only", no_argument, nullptr, 'r'},
                                 {"nocache", no_argument, nullptr, 'n'},
                                 {"cache", required_argument, nullptr, 't'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {"aio", required_argument, nullptr, 'i'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  std::string aio = "threads";
  while ((c = getopt_long(argc, argv, ":hc:d:f:i:kmnrst:T:UC", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f': fmt = optarg; break;
      case 'c': commands.push_back(optarg); break;
      case 'r': opts.read_only = true; break;
      case 'n': opts.direct = true; opts.writethrough = false; break;
      case 't':
        if (!ApplyCacheMode(optarg, &opts).ok()) {
          PrintErrorF("Invalid cache option: %s", optarg);
          return 1;
        }
        break;
      case 'U': opts.force_share = true; break;
      case 'i':
        if (!ParseAioMode(optarg, &aio)) return 1;
        break;
      case 'd': case 'k': case 'm': case 's': case 'T': case 'C': break;
      case 'h':
        std::printf("Usage: qcow2j io [OPTIONS]... [-c STRING]... [file]\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (argc - optind > 1) {
    PrintError("Only one image file may be given");
    return 1;
  }
  opts.format = fmt;
  // Applies to every image the session opens (also with the open command).
  if (Status st = ApplyAioMode(aio, &opts); !st.ok()) {
    PrintError(st.message());
    return 1;
  }
  IoSession session(fmt, opts);
  if (optind < argc) {
    Status st = session.Open(argv[optind], opts);
    if (!st.ok()) {
      PrintErrorF("can't open device %s: %s", argv[optind], st.message().c_str());
      return 1;
    }
  }
  bool failed = false, quit = false;
  if (!commands.empty()) {
    for (const std::string& cmd : commands) {
      if (!session.Run(cmd, &quit)) failed = true;
      if (quit) break;
    }
  } else {
    std::string line;
    while (!quit) {
      std::printf("qemu-io> ");
      std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;
      if (!session.Run(line, &quit)) failed = true;
    }
  }
  std::fflush(stdout);
  session.CloseImage();
  return failed ? 1 : 0;
}

}  // namespace qcow2j::cli
