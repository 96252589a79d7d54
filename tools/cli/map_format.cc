#include "tools/cli/map_format.h"

#include <cinttypes>
#include <cstdio>

namespace qcow2j::cli {

bool CanMerge(const BlockStatus& cur, const BlockStatus& next) {
  if (cur.length == 0) return false;
  if (cur.offset + cur.length != next.offset) return false;
  if (cur.depth != next.depth || cur.present != next.present || cur.zero != next.zero ||
      cur.data != next.data || cur.compressed != next.compressed) {
    return false;
  }
  if (cur.host_offset.has_value() != next.host_offset.has_value()) return false;
  if (cur.host_offset && *cur.host_offset + cur.length != *next.host_offset) return false;
  return cur.filename == next.filename;
}

std::string MapEntryJson(const BlockStatus& e) {
  char buf[256];
  int n = std::snprintf(buf, sizeof(buf),
                        "{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
                        ", \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
                        e.offset, e.length, e.depth, e.present ? "true" : "false",
                        e.zero ? "true" : "false", e.data ? "true" : "false");
  std::string out(buf, n);
  if (e.host_offset) out += ", \"offset\": " + std::to_string(*e.host_offset);
  out += "}";
  return out;
}

std::string MapHumanHeader() {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  return buf;
}

Result<std::string> MapEntryHuman(const BlockStatus& e) {
  if (e.data && !e.host_offset) {
    return Status::NotSupported("File contains external, encrypted or compressed clusters.");
  }
  if (!e.data || e.zero) return std::string();
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.offset,
                e.length, *e.host_offset, e.filename.c_str());
  return std::string(buf);
}

}  // namespace qcow2j::cli
