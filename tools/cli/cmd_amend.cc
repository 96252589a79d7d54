// qcow2j amend: qemu-img amend -o for qcow2 (compat, lazy_refcounts,
// refcount_bits when unchanged, backing_file/backing_fmt), with qemu-img's
// messages for what it refuses.
#include <getopt.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "qcow2/image_ops.h"
#include "tools/cli/args.h"
#include "tools/cli/cli.h"
#include "tools/cli/progress.h"

namespace qcow2j::cli {

namespace {

constexpr const char* kAmendHelp =
    "Amend options for 'qcow2':\n"
    "  backing_file=<str>     - File name of a base image\n"
    "  backing_fmt=<str>      - Image format of the base image\n"
    "  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
    "  refcount_bits=<num>    - Width of a reference count entry in bits\n"
    "  size=<size>            - Virtual disk size\n";

// Options qemu-img knows only at creation: it names them so.
bool CreateOnly(const std::string& key) {
  static const char* const kKeys[] = {"cluster_size", "preallocation", "compression_type",
                                      "extended_l2", "encryption", "nocow", "extent_size_hint"};
  for (const char* k : kKeys)
    if (key == k) return true;
  return false;
}

}  // namespace

// Maps the -o list onto an AmendRequest (each option a field that
// AmendImage applies).
Status ParseAmendOptions(const OptionList& list, AmendRequest* req) {
  for (const auto& [key, value] : list) {
    if (key == "compat") {
      if (value == "0.10" || value == "v2") {
        req->version = 2;
      } else if (value == "1.1" || value == "v3") {
        req->version = 3;
      } else {
        return Status::InvalidArgument("Unknown compatibility level " + value);
      }
    } else if (key == "lazy_refcounts") {
      auto b = ParseBool(value);
      if (!b.ok()) return Status::InvalidArgument("Parameter 'lazy_refcounts' expects 'on' or 'off'");
      req->lazy_refcounts = *b;
    } else if (key == "journal") {
      auto b = ParseBool(value);
      if (!b.ok()) return Status::InvalidArgument("Parameter 'journal' expects 'on' or 'off'");
      req->journal = *b;
    } else if (key == "refcount_bits") {
      auto v = ParseUint(value);
      if (!v.ok()) return Status::InvalidArgument("Parameter 'refcount_bits' expects a number");
      if (*v == 0 || *v > 64 || (*v & (*v - 1)))
        return Status::InvalidArgument("Refcount width must be a power of two and may not exceed "
                                       "64 bits");
      req->refcount_bits = static_cast<uint32_t>(*v);
    } else if (key == "backing_file") {
      req->backing_file = value;
    } else if (key == "backing_fmt") {
      req->backing_format = value;
    } else if (key == "size") {
      auto v = ParseSize(value);
      if (!v.ok() || *v > static_cast<uint64_t>(INT64_MAX))
        return Status::InvalidArgument("Parameter 'size' expects a non-negative number below 2^64");
      req->size = *v;
    } else if (key == "data_file" || key == "data_file_raw" ||
               key.rfind("encrypt.", 0) == 0) {
      return Status::NotSupported("Amending '" + key + "' is not supported by qcow2j");
    } else if (CreateOnly(key)) {
      return Status::InvalidArgument("Invalid parameter '" + key +
                                     "'\nThis option is only supported for image creation");
    } else {
      return Status::InvalidArgument("Invalid parameter '" + key + "'");
    }
  }
  return Status::OK();
}

int CmdAmend(int argc, char** argv) {
  std::string fmt, options, cache = "writeback";
  bool have_options = false, progress = false, quiet = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"object", required_argument, nullptr, 'O'},
                                 {"image-opts", no_argument, nullptr, 'I'},
                                 {"force", no_argument, nullptr, 'F'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":ho:f:t:pq", kLong, nullptr)) != -1) {
    switch (c) {
      case 'o':
        // Several -o lists join, as in qemu-img.
        options = have_options ? options + "," + optarg : std::string(optarg);
        have_options = true;
        break;
      case 'f': fmt = optarg; break;
      case 't': cache = optarg; break;
      case 'p': progress = true; break;
      case 'q': quiet = true; break;
      case 'F': break;
      case 'O': PrintError("--object is not supported"); return 1;
      case 'I': PrintError("--image-opts is not supported"); return 1;
      case 'h':
        std::printf("usage: qcow2j amend [-p] [-q] [-f fmt] [-t cache] -o options filename\n");
        return 0;
      default: PrintOptionError(c, argv); return 1;
    }
  }
  if (quiet) progress = false;
  if (!have_options) {
    PrintError("Must specify options (-o)");
    return 1;
  }
  auto list = ParseOptionString(options);
  if (!list.ok()) {
    PrintError(list.status().message());
    return 1;
  }
  for (const auto& kv : *list) {
    if (kv.first == "help" || kv.first == "?") {
      std::printf("%s", kAmendHelp);
      return 0;
    }
  }
  if (!ExpectOneImage(argc)) return 1;
  const std::string file = argv[optind];

  AmendRequest req;
  if (Status s = ParseAmendOptions(*list, &req); !s.ok()) {
    PrintError(s.message());
    return 1;
  }
  // Open and close through the engine first: that recovers an image left
  // dirty or with a journal to replay, which the header edit refuses. A new
  // size is applied here too.
  OpenOptions o;
  o.format = fmt;
  o.read_only = false;
  o.no_backing = true;
  if (Status s = ApplyCacheMode(cache, &o); !s.ok()) {
    PrintError(s.message());
    return 1;
  }
  {
    auto img = OpenImage(file, o);
    if (!img.ok()) {
      PrintError(img.status().message());
      return 1;
    }
    std::string format = (*img)->Info().format;
    if (format != "qcow2") {
      PrintErrorF("Format driver '%s' does not support option amendment", format.c_str());
      return 1;
    }
    Status s;
    if (req.size && *req.size != (*img)->size()) s = (*img)->Resize(*req.size, true);
    Status closed = (*img)->Close();
    if (s.ok()) s = closed;
    if (!s.ok()) {
      PrintError(s.message());
      return 1;
    }
  }
  Progress bar(progress, 1.0);
  bar.Start();
  Status s = AmendImage(file, req, [&](double p) { bar.Set(p); });
  bar.End();
  if (!s.ok()) {
    PrintError(s.message());
    return 1;
  }
  return 0;
}

}  // namespace qcow2j::cli
