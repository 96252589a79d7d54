// nbdkit plugin: serves a qcow2 (or raw) image through qcow2j.
//
//   nbdkit [-r] ./nbdkit-qcow2j-plugin.so file=IMG [readonly=on] [direct=on]
//          [writethrough=on] [format=qcow2|raw] [aio=threads|io_uring]
//
// One qcow2j::Image per nbdkit process, opened once in .after_fork (after
// nbdkit has daemonised, so the engine's threads live in the serving process)
// and closed in .cleanup, which flushes and checkpoints so the file is a clean
// qcow2 that qemu-img check accepts. Every connection shares it.
//
// Thread model PARALLEL: an Image is thread-safe and orders overlapping
// requests itself, so nbdkit may issue any number of requests at once, from
// any connection.
//
// Multi-conn is safe because there is only one Image (one cache, one journal,
// one data path) however many connections there are: a write is visible to
// every connection once it completes, and Flush makes durable every write
// that completed before it, whichever connection sent it. That is exactly
// NBD_FLAG_CAN_MULTI_CONN's promise. (It would not hold with an Image per
// connection: each would have its own cache and journal.)
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qcow2j/image.h"
#include "qcow2j/status.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace qcow2j {
namespace {

struct PluginConfig {
  std::string file;
  std::string format;
  bool readonly = false;
  bool direct = false;
  bool writethrough = false;
  bool io_uring = false;
};

PluginConfig g_config;
std::unique_ptr<Image> g_image;

int ErrnoOf(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return 0;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kCorruption: return EIO;  // the NBD client sees an I/O error
    case Code::kNotSupported: return ENOTSUP;
    case Code::kIOError: return s.sys_errno() > 0 ? s.sys_errno() : EIO;
    case Code::kNoSpace: return ENOSPC;
    case Code::kNotFound: return ENOENT;
    case Code::kReadOnly: return EROFS;
    case Code::kBusy: return EBUSY;
    case Code::kAborted: return EIO;
  }
  return EIO;
}

// Reports s to nbdkit (log + the errno the client sees) and returns -1, or 0 if ok.
int Report(const Status& s) {
  if (s.ok()) return 0;
  nbdkit_set_error(ErrnoOf(s));
  nbdkit_error("qcow2j: %s", s.ToString().c_str());
  return -1;
}

int ParseBool(const char* key, const char* value, bool* out) {
  int b = nbdkit_parse_bool(value);
  if (b == -1) return -1;  // nbdkit_parse_bool has reported it
  *out = b != 0;
  return 0;
}

int Config(const char* key, const char* value) {
  std::string k(key);
  if (k == "file") {
    // nbdkit changes directory to / when it daemonises: keep an absolute path.
    char* abs = nbdkit_absolute_path(value);
    if (!abs) return -1;
    g_config.file = abs;
    free(abs);
    return 0;
  }
  if (k == "format") {
    g_config.format = value;
    if (g_config.format != "qcow2" && g_config.format != "raw") {
      nbdkit_error("format=%s: expected qcow2 or raw", value);
      return -1;
    }
    return 0;
  }
  if (k == "readonly") return ParseBool(key, value, &g_config.readonly);
  if (k == "direct") return ParseBool(key, value, &g_config.direct);
  if (k == "writethrough") return ParseBool(key, value, &g_config.writethrough);
  if (k == "aio") {
    std::string v(value);
    if (v != "threads" && v != "io_uring") {
      nbdkit_error("aio=%s: expected threads or io_uring", value);
      return -1;
    }
    g_config.io_uring = v == "io_uring";
    return 0;
  }
  nbdkit_error("unknown parameter '%s'", key);
  return -1;
}

int ConfigComplete() {
  if (g_config.file.empty()) {
    nbdkit_error("you must supply the file=<IMAGE> parameter");
    return -1;
  }
  return 0;
}

int AfterFork() {
  OpenOptions opts;
  opts.read_only = g_config.readonly;
  opts.format = g_config.format;
  opts.direct = g_config.direct;
  opts.writethrough = g_config.writethrough;
  if (g_config.io_uring) {
    auto env = Env::IoUring();
    if (!env.ok()) return Report(env.status());
    opts.env = *env;
  }
  auto image = Image::Open(g_config.file, opts);
  if (!image.ok()) return Report(image.status().Annotate(g_config.file));
  g_image = std::move(image).value();
  nbdkit_debug("qcow2j: opened %s (%s), %llu bytes", g_config.file.c_str(),
               g_config.readonly ? "read-only" : "read-write",
               static_cast<unsigned long long>(g_image->size()));
  return 0;
}

void Cleanup() {
  if (!g_image) return;
  Status s = g_image->Close();
  if (!s.ok()) nbdkit_error("qcow2j: close failed: %s: %s", g_config.file.c_str(), s.ToString().c_str());
  g_image.reset();
}

// Connections carry no state of their own: they all use g_image.
void* OpenConnection(int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }

int64_t GetSize(void*) { return static_cast<int64_t>(g_image->size()); }

int CanWrite(void*) { return g_config.readonly ? 0 : 1; }
int CanFlush(void*) { return 1; }
int CanTrim(void*) { return g_config.readonly ? 0 : 1; }
int CanZero(void*) { return g_config.readonly ? 0 : 1; }
// NATIVE: we see the FUA flag and honour it with a flush after the write.
int CanFua(void*) { return NBDKIT_FUA_NATIVE; }
int CanMultiConn(void*) { return 1; }  // one shared Image per process: see the top of the file
int CanExtents(void*) { return 1; }

// A write with FUA must be durable when it completes: flush after it.
int FlushIfFua(uint32_t flags) {
  if (!(flags & NBDKIT_FLAG_FUA)) return 0;
  return Report(g_image->Flush());
}

int Pread(void*, void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  return Report(g_image->Read(offset, buf, count));
}

int Pwrite(void*, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  if (Report(g_image->Write(offset, buf, count))) return -1;
  return FlushIfFua(flags);
}

int Zero(void*, uint32_t count, uint64_t offset, uint32_t flags) {
  if (Report(g_image->WriteZeroes(offset, count, (flags & NBDKIT_FLAG_MAY_TRIM) != 0))) return -1;
  return FlushIfFua(flags);
}

int Trim(void*, uint32_t count, uint64_t offset, uint32_t flags) {
  if (Report(g_image->Discard(offset, count))) return -1;
  return FlushIfFua(flags);
}

int Flush(void*, uint32_t flags) { return Report(g_image->Flush()); }

// NBD's block status from qemu-img map's: HOLE when no data is stored for the
// range (unallocated, or a zero cluster), ZERO when it reads as zeros. That
// is how qemu-nbd maps BDRV_BLOCK_DATA / BDRV_BLOCK_ZERO.
int Extents(void*, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents* extents) {
  const uint64_t end = offset + count;
  while (offset < end) {
    auto bs = g_image->GetBlockStatus(offset, end - offset);
    if (!bs.ok()) return Report(bs.status());
    if (bs->length == 0) {
      nbdkit_set_error(EIO);
      nbdkit_error("qcow2j: empty block status extent at offset %llu",
                   static_cast<unsigned long long>(offset));
      return -1;
    }
    uint32_t type = 0;
    if (!bs->present) {
      type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;  // nowhere in the chain: zeros
    } else {
      if (!bs->data) type |= NBDKIT_EXTENT_HOLE;
      if (bs->zero) type |= NBDKIT_EXTENT_ZERO;
    }
    if (nbdkit_add_extent(extents, offset, bs->length, type) == -1) return -1;
    offset += bs->length;
    if (flags & NBDKIT_FLAG_REQ_ONE) break;
  }
  return 0;
}

void DumpPlugin() {
  printf("qcow2j_api=c++20\n");
}

struct nbdkit_plugin MakePlugin() {
  struct nbdkit_plugin p = {};
  p.name = "qcow2j";
  p.longname = "qcow2j qcow2 storage engine";
  p.version = "0.1.0";
  p.description = "Serve a qcow2 or raw image through the qcow2j engine";
  p.config = Config;
  p.config_complete = ConfigComplete;
  p.config_help =
      "file=<IMAGE>          (required) the qcow2 or raw image to serve\n"
      "format=qcow2|raw      skip format probing\n"
      "readonly=on|off       open the image read-only\n"
      "direct=on|off         O_DIRECT on the image file (like cache=none)\n"
      "writethrough=on|off   every write durable before it completes\n"
      "aio=threads|io_uring  reads, writes and syncs through io_uring";
  p.magic_config_key = "file";
  p.after_fork = AfterFork;
  p.cleanup = Cleanup;
  p.dump_plugin = DumpPlugin;
  p.open = OpenConnection;
  p.get_size = GetSize;
  p.can_write = CanWrite;
  p.can_flush = CanFlush;
  p.can_trim = CanTrim;
  p.can_zero = CanZero;
  p.can_fua = CanFua;
  p.can_multi_conn = CanMultiConn;
  p.can_extents = CanExtents;
  p.pread = Pread;
  p.pwrite = Pwrite;
  p.zero = Zero;
  p.trim = Trim;
  p.flush = Flush;
  p.extents = Extents;
  return p;
}

struct nbdkit_plugin g_plugin = MakePlugin();

}  // namespace
}  // namespace qcow2j

// plugin_init must be the module's only exported symbol (see CMakeLists.txt).
static struct nbdkit_plugin& plugin = qcow2j::g_plugin;
NBDKIT_REGISTER_PLUGIN(plugin)
