#include <getopt.h>

#include <cstdarg>
#include <cstdio>

#include "tools/cli/cli.h"

namespace qcow2j::cli {

void PrintError(const std::string& message) {
  std::fflush(stdout);  // keep stdout and stderr in the order they happened
  std::fprintf(stderr, "qcow2j: %s\n", message.c_str());
}

void PrintErrorF(const char* fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  PrintError(buf);
}

Status ApplyCacheMode(const std::string& mode, OpenOptions* opts) {
  if (mode == "none" || mode == "off") {
    opts->direct = true;
    opts->writethrough = false;
  } else if (mode == "directsync") {
    opts->direct = true;
    opts->writethrough = true;
  } else if (mode == "writethrough") {
    opts->direct = false;
    opts->writethrough = true;
  } else if (mode == "writeback" || mode == "unsafe") {
    opts->direct = false;
    opts->writethrough = false;
  } else {
    return Status::InvalidArgument("Invalid cache option: " + mode);
  }
  return Status::OK();
}

namespace {
bool KnownAioMode(const std::string& mode) {
  return mode == "threads" || mode == "native" || mode == "io_uring";
}
}  // namespace

bool ParseAioMode(const char* arg, std::string* mode) {
  if (!KnownAioMode(arg)) {
    PrintErrorF("Invalid aio option: %s", arg);
    return false;
  }
  *mode = arg;
  return true;
}

Status ApplyAioMode(const std::string& mode, OpenOptions* opts) {
  if (!KnownAioMode(mode)) return Status::InvalidArgument("Invalid aio option: " + mode);
  if (mode != "io_uring") {
    opts->env = nullptr;
    return Status::OK();
  }
  QCOW2J_ASSIGN_OR_RETURN(opts->env, Env::IoUring());
  return Status::OK();
}

Result<std::unique_ptr<Image>> OpenImage(const std::string& path, const OpenOptions& opts) {
  auto r = Image::Open(path, opts);
  if (!r.ok()) return r.status().Annotate("Could not open '" + path + "'");
  return r;
}

Result<std::unique_ptr<Image>> OpenImageAtSnapshot(const std::string& path, OpenOptions opts,
                                                   const std::string& snapshot) {
  if (snapshot.rfind("snapshot.id=", 0) == 0) {
    opts.snapshot_id = snapshot.substr(12);
  } else if (snapshot.rfind("snapshot.name=", 0) == 0) {
    opts.snapshot_name = snapshot.substr(14);
  } else if (!snapshot.empty()) {
    opts.snapshot_id = snapshot;
    auto r = Image::Open(path, opts);
    if (r.ok() || r.status().code() != Code::kNotFound) return r;
    opts.snapshot_id.clear();
    opts.snapshot_name = snapshot;
  }
  return Image::Open(path, opts);
}

void ResetGetopt() {
  // glibc: optind = 0 re-initialises its internal state too.
  optind = 0;
  opterr = 1;
}

void PrintOptionError(int c, char** argv) {
  if (c == ':') {
    PrintErrorF("option '%s' requires an argument", argv[optind - 1]);
  } else {
    PrintErrorF("unrecognized option '%s'", argv[optind - 1]);
  }
}

bool ExpectOneImage(int argc) {
  if (optind == argc - 1) return true;
  PrintError("Expecting one image file name");
  return false;
}

}  // namespace qcow2j::cli
