// The C API (include/qcow2j/qcow2j.h) over qcow2j::Image: Status becomes a
// negative errno plus a per-thread message; nothing throws across the boundary.
#include "qcow2j/qcow2j.h"

#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <string_view>

#include "qcow2j/image.h"
#include "qcow2j/status.h"

struct qcow2j_image {
  std::unique_ptr<qcow2j::Image> image;
};

namespace qcow2j {
namespace {

thread_local std::string g_last_error;

int ErrnoOf(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return 0;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kCorruption: return EUCLEAN;
    case Code::kNotSupported: return ENOTSUP;
    case Code::kIOError: return s.sys_errno() > 0 ? s.sys_errno() : EIO;
    case Code::kNoSpace: return ENOSPC;
    case Code::kNotFound: return ENOENT;
    case Code::kReadOnly: return EROFS;
    case Code::kBusy: return EBUSY;
    case Code::kAborted: return ECANCELED;
  }
  return EIO;
}

int Report(const Status& s) {
  if (s.ok()) {
    g_last_error.clear();
    return 0;
  }
  g_last_error = s.ToString();
  return -ErrnoOf(s);
}

int Fail(int err, std::string message) {
  g_last_error = std::move(message);
  return -err;
}

// Runs fn, turning any exception (std::bad_alloc from a huge buffer, ...) into
// an error code: the C caller cannot catch it.
template <class Fn>
auto Guard(Fn&& fn) noexcept -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Fail(ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return Fail(EIO, std::string("internal error: ") + e.what());
  } catch (...) {
    return Fail(EIO, "internal error");
  }
}

Result<uint64_t> ParseSize(std::string_view key, std::string_view v) {
  uint64_t n = 0;
  size_t i = 0;
  for (; i < v.size() && v[i] >= '0' && v[i] <= '9'; ++i) {
    if (n > (UINT64_MAX - 9) / 10) break;
    n = n * 10 + static_cast<uint64_t>(v[i] - '0');
  }
  int shift = 0;
  if (i + 1 == v.size()) {
    switch (v[i]) {
      case 'b': case 'B': shift = 0; break;
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'p': case 'P': shift = 50; break;
      default: shift = -1;
    }
    ++i;
  }
  if (i == 0 || i != v.size() || shift < 0 || (shift && n > (UINT64_MAX >> shift))) {
    return Status::InvalidArgument("option '" + std::string(key) + "': '" + std::string(v) +
                                   "' is not a size");
  }
  return n << shift;
}

Result<bool> ParseBool(std::string_view key, std::string_view v) {
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  return Status::InvalidArgument("option '" + std::string(key) + "' expects on or off, not '" +
                                 std::string(v) + "'");
}

Status ApplyOption(std::string_view key, std::string_view value, CreateOptions* o) {
  auto as_u32 = [&](uint32_t* dst) -> Status {
    QCOW2J_ASSIGN_OR_RETURN(uint64_t v, ParseSize(key, value));
    if (v > UINT32_MAX) return Status::InvalidArgument("option '" + std::string(key) + "' is too large");
    *dst = static_cast<uint32_t>(v);
    return Status::OK();
  };
  auto as_bool = [&](bool* dst) -> Status {
    QCOW2J_ASSIGN_OR_RETURN(*dst, ParseBool(key, value));
    return Status::OK();
  };
  if (key == "format") {
    if (value != "qcow2" && value != "raw") {
      return Status::InvalidArgument("option 'format': '" + std::string(value) + "' (qcow2 or raw)");
    }
    o->format = value;
  } else if (key == "size") {
    QCOW2J_ASSIGN_OR_RETURN(o->size, ParseSize(key, value));
  } else if (key == "cluster_size") {
    return as_u32(&o->cluster_size);
  } else if (key == "refcount_bits") {
    return as_u32(&o->refcount_bits);
  } else if (key == "compat") {
    if (value == "0.10" || value == "v2") {
      o->version = 2;
    } else if (value == "1.1" || value == "v3") {
      o->version = 3;
    } else {
      return Status::InvalidArgument("option 'compat': '" + std::string(value) + "' (1.1 or 0.10)");
    }
  } else if (key == "extended_l2") {
    return as_bool(&o->extended_l2);
  } else if (key == "lazy_refcounts") {
    return as_bool(&o->lazy_refcounts);
  } else if (key == "data_file_raw") {
    return as_bool(&o->data_file_raw);
  } else if (key == "journal") {
    return as_bool(&o->journal);
  } else if (key == "journal_size") {
    QCOW2J_ASSIGN_OR_RETURN(o->journal_size, ParseSize(key, value));
  } else if (key == "compression_type") {
    if (value != "zlib" && value != "zstd") {
      return Status::InvalidArgument("option 'compression_type': '" + std::string(value) +
                                     "' (zlib or zstd)");
    }
    o->compression_type = value;
  } else if (key == "preallocation") {
    if (value == "off") {
      o->preallocation = Preallocation::kOff;
    } else if (value == "metadata") {
      o->preallocation = Preallocation::kMetadata;
    } else if (value == "falloc") {
      o->preallocation = Preallocation::kFalloc;
    } else if (value == "full") {
      o->preallocation = Preallocation::kFull;
    } else {
      return Status::InvalidArgument("option 'preallocation': '" + std::string(value) +
                                     "' (off, metadata, falloc or full)");
    }
  } else if (key == "backing_file") {
    o->backing_file = value;
  } else if (key == "backing_fmt") {
    o->backing_format = value;
  } else if (key == "data_file") {
    o->data_file = value;
  } else {
    return Status::InvalidArgument("unknown option '" + std::string(key) + "'");
  }
  return Status::OK();
}

// "key=value,key=value"; as in qemu, ",," stands for a comma inside a value.
Status ParseCreateOptions(const char* text, CreateOptions* o) {
  if (!text) return Status::OK();
  std::string_view s(text);
  size_t i = 0;
  while (i < s.size()) {
    std::string item;
    while (i < s.size()) {
      if (s[i] == ',') {
        if (i + 1 < s.size() && s[i + 1] == ',') {
          item += ',';
          i += 2;
          continue;
        }
        ++i;
        break;
      }
      item += s[i++];
    }
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Status::InvalidArgument("option '" + item + "' is not key=value");
    }
    QCOW2J_RETURN_IF_ERROR(
        ApplyOption(std::string_view(item).substr(0, eq), std::string_view(item).substr(eq + 1), o));
  }
  return Status::OK();
}

int CheckImage(qcow2j_image* img) {
  if (!img || !img->image) return Fail(EINVAL, "image is NULL or closed");
  return 0;
}

}  // namespace
}  // namespace qcow2j

using qcow2j::CheckImage;
using qcow2j::Fail;
using qcow2j::Guard;
using qcow2j::Report;

extern "C" {

int qcow2j_open(const char* path, unsigned flags, qcow2j_image** out) {
  return Guard([&]() -> int {
    if (!out) return Fail(EINVAL, "qcow2j_open: out is NULL");
    *out = nullptr;
    if (!path) return Fail(EINVAL, "qcow2j_open: path is NULL");
    constexpr unsigned kKnown = QCOW2J_OPEN_RDWR | QCOW2J_OPEN_DIRECT | QCOW2J_OPEN_WRITETHROUGH |
                                QCOW2J_OPEN_NO_BACKING | QCOW2J_OPEN_FORCE_SHARE |
                                QCOW2J_OPEN_FORMAT_RAW | QCOW2J_OPEN_FORMAT_QCOW2 |
                                QCOW2J_OPEN_IO_URING;
    if (flags & ~kKnown) return Fail(EINVAL, "qcow2j_open: unknown flags " + std::to_string(flags & ~kKnown));
    if ((flags & QCOW2J_OPEN_FORMAT_RAW) && (flags & QCOW2J_OPEN_FORMAT_QCOW2)) {
      return Fail(EINVAL, "qcow2j_open: both FORMAT_RAW and FORMAT_QCOW2");
    }
    qcow2j::OpenOptions opts;
    opts.read_only = !(flags & QCOW2J_OPEN_RDWR);
    opts.direct = flags & QCOW2J_OPEN_DIRECT;
    opts.writethrough = flags & QCOW2J_OPEN_WRITETHROUGH;
    opts.no_backing = flags & QCOW2J_OPEN_NO_BACKING;
    opts.force_share = flags & QCOW2J_OPEN_FORCE_SHARE;
    if (flags & QCOW2J_OPEN_FORMAT_RAW) opts.format = "raw";
    if (flags & QCOW2J_OPEN_FORMAT_QCOW2) opts.format = "qcow2";
    if (flags & QCOW2J_OPEN_IO_URING) {
      auto env = qcow2j::Env::IoUring();
      if (!env.ok()) return Report(env.status());
      opts.env = *env;
    }
    auto image = qcow2j::Image::Open(path, opts);
    if (!image.ok()) return Report(image.status());
    *out = new qcow2j_image{std::move(image).value()};
    return Report(qcow2j::Status::OK());
  });
}

int qcow2j_create(const char* path, uint64_t size, const char* options) {
  return Guard([&]() -> int {
    if (!path) return Fail(EINVAL, "qcow2j_create: path is NULL");
    qcow2j::CreateOptions opts;
    opts.size = size;
    qcow2j::Status s = qcow2j::ParseCreateOptions(options, &opts);
    if (!s.ok()) return Report(s.Annotate("qcow2j_create"));
    return Report(qcow2j::Image::Create(path, opts));
  });
}

int qcow2j_read(qcow2j_image* img, uint64_t offset, void* buf, size_t len) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    if (!buf && len) return Fail(EINVAL, "qcow2j_read: buf is NULL");
    return Report(img->image->Read(offset, buf, len));
  });
}

int qcow2j_write(qcow2j_image* img, uint64_t offset, const void* buf, size_t len) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    if (!buf && len) return Fail(EINVAL, "qcow2j_write: buf is NULL");
    return Report(img->image->Write(offset, buf, len));
  });
}

int qcow2j_write_zeroes(qcow2j_image* img, uint64_t offset, uint64_t len, int may_unmap) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    return Report(img->image->WriteZeroes(offset, len, may_unmap != 0));
  });
}

int qcow2j_discard(qcow2j_image* img, uint64_t offset, uint64_t len) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    return Report(img->image->Discard(offset, len));
  });
}

int qcow2j_flush(qcow2j_image* img) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    return Report(img->image->Flush());
  });
}

int qcow2j_close(qcow2j_image* img) {
  return Guard([&]() -> int {
    if (!img) return Report(qcow2j::Status::OK());
    // Own it first so the handle is freed whatever Close reports.
    std::unique_ptr<qcow2j_image> owned(img);
    if (!owned->image) return Report(qcow2j::Status::OK());
    return Report(owned->image->Close());
  });
}

int64_t qcow2j_size(qcow2j_image* img) {
  return Guard([&]() -> int64_t {
    if (int r = CheckImage(img)) return r;
    qcow2j::g_last_error.clear();
    return static_cast<int64_t>(img->image->size());
  });
}

int qcow2j_block_status(qcow2j_image* img, uint64_t offset, uint64_t max_len, uint64_t* len,
                        unsigned* status) {
  return Guard([&]() -> int {
    if (int r = CheckImage(img)) return r;
    if (!len || !status) return Fail(EINVAL, "qcow2j_block_status: len or status is NULL");
    auto bs = img->image->GetBlockStatus(offset, max_len);
    if (!bs.ok()) return Report(bs.status());
    *len = bs->length;
    unsigned flags = 0;
    if (bs->present) flags |= QCOW2J_STATUS_ALLOCATED;
    if (bs->zero) flags |= QCOW2J_STATUS_ZERO;
    if (bs->data) flags |= QCOW2J_STATUS_DATA;
    *status = flags;
    return Report(qcow2j::Status::OK());
  });
}

const char* qcow2j_last_error(void) { return qcow2j::g_last_error.c_str(); }

const char* qcow2j_strerror(int err) {
  switch (-err) {
    case 0: return "Success";
    case EUCLEAN: return "Image is corrupt";
    case ECANCELED: return "Image is in a failed state after an earlier error";
    default: {
      // strerrordesc_np, unlike strerror, never writes a shared buffer.
      const char* d = strerrordesc_np(-err);
      return d ? d : "Unknown error";
    }
  }
}

}  // extern "C"
