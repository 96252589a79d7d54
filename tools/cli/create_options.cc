#include "tools/cli/create_options.h"

#include <algorithm>
#include <vector>

namespace qcow2j::cli {

namespace {

struct OptionDesc {
  const char* name;
  const char* help;
  bool qcow2, raw;
};

// In the order qemu-img prints them on the "Formatting" line.
constexpr OptionDesc kOptions[] = {
    {"cluster_size", "qcow2 cluster size", true, false},
    {"extended_l2", "Extended L2 tables", true, false},
    {"preallocation", "Preallocation mode (allowed values: off, metadata, falloc, full)", true, true},
    {"compression_type", "Compression method used for image cluster compression", true, false},
    {"size", "Virtual disk size", true, true},
    {"compat", "Compatibility level (v2 [0.10] or v3 [1.1])", true, false},
    {"backing_file", "File name of a base image", true, false},
    {"backing_fmt", "Image format of the base image", true, false},
    {"data_file", "File name of an external data file", true, false},
    {"data_file_raw", "The external data file must stay valid as a raw image", true, false},
    {"lazy_refcounts", "Postpone refcount updates", true, false},
    {"refcount_bits", "Width of a reference count entry in bits", true, false},
    {"journal", "qcow2j metadata journal (on/off)", true, false},
    {"journal_size", "qcow2j journal area allocated for each read-write session (default 8M)", true, false},
};

const OptionDesc* Find(const std::string& name, const std::string& format) {
  for (const OptionDesc& d : kOptions) {
    if (name == d.name && (format == "raw" ? d.raw : d.qcow2)) return &d;
  }
  return nullptr;
}

Status Apply(const std::string& key, const std::string& value, CreateSpec* spec) {
  CreateOptions& o = spec->opts;
  auto bad_value = [&](const char* expect) {
    return Status::InvalidArgument("Parameter '" + key + "' expects " + expect);
  };
  auto as_bool = [&](bool* dst) -> Status {
    auto b = ParseBool(value);
    if (!b.ok()) return bad_value("'on' or 'off'");
    *dst = *b;
    spec->given[key] = value;
    return Status::OK();
  };
  auto as_size = [&](uint64_t* dst) -> Status {
    auto s = ParseSize(value);
    if (!s.ok() || *s > static_cast<uint64_t>(INT64_MAX)) {
      return bad_value("a non-negative number below 2^64\n"
                       "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                       "peta-\nand exabytes, respectively.");
    }
    *dst = *s;
    spec->given[key] = std::to_string(*s);
    return Status::OK();
  };
  if (key == "size") {
    QCOW2J_RETURN_IF_ERROR(as_size(&o.size));
    spec->size_given = true;
    return Status::OK();
  }
  if (key == "cluster_size" || key == "refcount_bits") {
    uint64_t v = 0;
    QCOW2J_RETURN_IF_ERROR(as_size(&v));
    if (v > UINT32_MAX) return bad_value("a smaller number");
    (key == "cluster_size" ? o.cluster_size : o.refcount_bits) = static_cast<uint32_t>(v);
    return Status::OK();
  }
  if (key == "extended_l2") return as_bool(&o.extended_l2);
  if (key == "lazy_refcounts") return as_bool(&o.lazy_refcounts);
  if (key == "data_file_raw") return as_bool(&o.data_file_raw);
  if (key == "journal") return as_bool(&o.journal);
  if (key == "journal_size") return as_size(&o.journal_size);
  if (key == "compat") {
    if (value == "0.10" || value == "v2") {
      o.version = 2;
    } else if (value == "1.1" || value == "v3") {
      o.version = 3;
    } else {
      return Status::InvalidArgument("Invalid compatibility level: '" + value + "'");
    }
  } else if (key == "preallocation") {
    static const std::pair<const char*, Preallocation> kModes[] = {
        {"off", Preallocation::kOff}, {"metadata", Preallocation::kMetadata},
        {"falloc", Preallocation::kFalloc}, {"full", Preallocation::kFull}};
    bool found = false;
    for (const auto& m : kModes) {
      if (value == m.first && !(o.format == "raw" && m.second == Preallocation::kMetadata)) {
        o.preallocation = m.second;
        found = true;
      }
    }
    if (!found) return Status::InvalidArgument("Invalid preallocation mode: '" + value + "'");
  } else if (key == "compression_type") {
    if (value != "zlib" && value != "zstd") {
      return Status::InvalidArgument("Parameter 'compression-type' does not accept value '" +
                                     value + "'");
    }
    o.compression_type = value;
  } else if (key == "backing_file") {
    o.backing_file = value;
  } else if (key == "backing_fmt") {
    o.backing_format = value;
  } else if (key == "data_file") {
    o.data_file = value;
  } else {
    return Status::InvalidArgument("Invalid parameter '" + key + "'");
  }
  spec->given[key] = value;
  return Status::OK();
}

}  // namespace

Status ApplyCreateOptions(const OptionList& list, CreateSpec* spec) {
  for (const auto& [key, value] : list) {
    if (!Find(key, spec->opts.format)) return Status::InvalidArgument("Invalid parameter '" + key + "'");
    QCOW2J_RETURN_IF_ERROR(Apply(key, value, spec));
  }
  return Status::OK();
}

std::string FormatCreateLine(const CreateSpec& spec) {
  const CreateOptions& o = spec.opts;
  std::string out = "fmt=" + o.format;
  // qemu prints every option that was given, plus those with a default.
  std::map<std::string, std::string> shown = spec.given;
  shown["size"] = std::to_string(o.size);
  if (o.format == "qcow2") {
    shown.emplace("cluster_size", std::to_string(o.cluster_size));
    shown.emplace("extended_l2", "off");
    shown.emplace("compression_type", "zlib");
    shown.emplace("lazy_refcounts", "off");
    shown.emplace("refcount_bits", std::to_string(o.refcount_bits));
  }
  for (const OptionDesc& d : kOptions) {
    if (!(o.format == "raw" ? d.raw : d.qcow2)) continue;
    if (o.format == "raw" && std::string(d.name) == "preallocation") continue;  // after size
    auto it = shown.find(d.name);
    if (it != shown.end()) out += std::string(" ") + d.name + "=" + it->second;
  }
  if (o.format == "raw") {
    auto it = shown.find("preallocation");
    if (it != shown.end()) out += " preallocation=" + it->second;
  }
  return out;
}

std::string CreateOptionsHelp(const std::string& format) {
  std::string out = "Supported " + format + " options:\n";
  for (const OptionDesc& d : kOptions) {
    if (!(format == "raw" ? d.raw : d.qcow2)) continue;
    std::string name = d.name;
    name.resize(std::max<size_t>(name.size(), 24), ' ');
    out += "  " + name + " - " + d.help + "\n";
  }
  return out;
}

}  // namespace qcow2j::cli
