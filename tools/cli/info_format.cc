#include "tools/cli/info_format.h"

#include <cstdio>
#include <ctime>

#include "tools/cli/args.h"

namespace qcow2j::cli {

namespace {

JsonValue SnapshotToJson(const SnapshotInfo& s) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("id", s.id);
  o.Set("name", s.name);
  o.Set("vm-state-size", s.vm_state_size);
  o.Set("date-sec", static_cast<int64_t>(s.date_sec));
  o.Set("date-nsec", static_cast<int64_t>(s.date_nsec));
  o.Set("vm-clock-sec", static_cast<int64_t>(s.vm_clock_nsec / 1000000000ull));
  o.Set("vm-clock-nsec", static_cast<int64_t>(s.vm_clock_nsec % 1000000000ull));
  if (s.icount != UINT64_MAX) o.Set("icount", s.icount);
  return o;
}

}  // namespace

JsonValue FormatSpecificData(const ImageInfo& info) {
  if (info.format != "qcow2") return JsonValue();
  JsonValue d = JsonValue::MakeObject();
  const bool v3 = info.version >= 3;
  d.Set("compat", v3 ? "1.1" : "0.10");
  if (v3) d.Set("lazy-refcounts", info.lazy_refcounts);
  if (v3) d.Set("corrupt", info.corrupt);
  d.Set("refcount-bits", static_cast<int64_t>(info.refcount_bits));
  if (!info.compression_type.empty()) d.Set("compression-type", info.compression_type);
  if (v3) d.Set("extended-l2", info.extended_l2);
  if (!info.bitmaps.empty()) {
    JsonValue list = JsonValue::MakeArray();
    for (const BitmapInfo& b : info.bitmaps) {
      JsonValue bo = JsonValue::MakeObject();
      JsonValue flags = JsonValue::MakeArray();
      if (b.flags & 1) flags.Append("in-use");
      if (b.flags & 2) flags.Append("auto");
      bo.Set("flags", std::move(flags));
      bo.Set("name", b.name);
      bo.Set("granularity", static_cast<int64_t>(b.granularity));
      list.Append(std::move(bo));
    }
    d.Set("bitmaps", std::move(list));
  }
  if (!info.data_file.empty()) {
    d.Set("data-file", info.data_file);
    d.Set("data-file-raw", info.data_file_raw);
  }
  // Our own field; printed only when the extension exists so that plain
  // images print exactly what qemu-img prints.
  if (info.journal) {
    d.Set("journal", true);
    if (info.journal_dirty_refcounts) d.Set("journal-refcounts", "dirty");
    if (info.journal_pending) d.Set("journal-pending", true);
  }
  if (!info.recovery_report.empty()) d.Set("recovery", info.recovery_report);
  return d;
}

JsonValue InfoToJson(const ImageInfo& info) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("virtual-size", info.virtual_size);
  o.Set("filename", info.filename);
  if (info.cluster_size) o.Set("cluster-size", static_cast<int64_t>(info.cluster_size));
  o.Set("format", info.format);
  o.Set("actual-size", info.actual_size);
  if (!info.backing_file.empty()) {
    o.Set("backing-filename", info.backing_file);
    if (!info.full_backing_file.empty()) o.Set("full-backing-filename", info.full_backing_file);
    if (!info.backing_format.empty()) o.Set("backing-filename-format", info.backing_format);
  }
  if (!info.snapshots.empty()) {
    JsonValue list = JsonValue::MakeArray();
    for (const SnapshotInfo& s : info.snapshots) list.Append(SnapshotToJson(s));
    o.Set("snapshots", std::move(list));
  }
  JsonValue data = FormatSpecificData(info);
  if (data.is_object()) {
    JsonValue fs = JsonValue::MakeObject();
    fs.Set("type", info.format);
    fs.Set("data", std::move(data));
    o.Set("format-specific", std::move(fs));
  }
  o.Set("dirty-flag", info.dirty);
  return o;
}

std::string SnapshotTable(const std::vector<SnapshotInfo>& snapshots) {
  std::string out = "Snapshot list:\n";
  char line[512];
  std::snprintf(line, sizeof(line), "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
                "VM CLOCK", "ICOUNT");
  out += line;
  for (const SnapshotInfo& s : snapshots) {
    char date[64] = "";
    time_t t = s.date_sec;
    struct tm tm;
    if (localtime_r(&t, &tm)) std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t ms = s.vm_clock_nsec / 1000000ull;
    char clock[64];
    std::snprintf(clock, sizeof(clock), "%02u:%02u:%02u.%03u",
                  static_cast<unsigned>(ms / 3600000ull), static_cast<unsigned>(ms / 60000 % 60),
                  static_cast<unsigned>(ms / 1000 % 60), static_cast<unsigned>(ms % 1000));
    std::string icount = s.icount == UINT64_MAX ? "" : std::to_string(s.icount);
    std::snprintf(line, sizeof(line), "%-9s %-16s %8s%20s%13s%11s\n", s.id.c_str(),
                  s.name.c_str(), SizeToStr(s.vm_state_size).c_str(), date, clock,
                  icount.c_str());
    out += line;
  }
  return out;
}

std::string InfoToHuman(const ImageInfo& info) {
  std::string out;
  out += "image: " + info.filename + "\n";
  out += "file format: " + info.format + "\n";
  out += "virtual size: " + SizeToStr(info.virtual_size) + " (" +
         std::to_string(info.virtual_size) + " bytes)\n";
  out += "disk size: " + SizeToStr(info.actual_size) + "\n";
  if (info.cluster_size) out += "cluster_size: " + std::to_string(info.cluster_size) + "\n";
  if (info.dirty) out += "cleanly shut down: no\n";
  if (!info.backing_file.empty()) {
    out += "backing file: " + info.backing_file;
    if (info.full_backing_file.empty()) {
      out += " (cannot determine actual path)";
    } else if (info.full_backing_file != info.backing_file) {
      out += " (actual path: " + info.full_backing_file + ")";
    }
    out += "\n";
    if (!info.backing_format.empty()) out += "backing file format: " + info.backing_format + "\n";
  }
  if (!info.snapshots.empty()) out += SnapshotTable(info.snapshots);
  JsonValue data = FormatSpecificData(info);
  if (data.is_object()) {
    out += "Format specific information:\n";
    out += data.Human(1);
  }
  return out;
}

}  // namespace qcow2j::cli
