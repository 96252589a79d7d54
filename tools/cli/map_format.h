// qemu-img map's extent merging and its two output formats. Pure, so the
// merge rules can be tested against hand-made extents.
#ifndef QCOW2J_TOOLS_CLI_MAP_FORMAT_H_
#define QCOW2J_TOOLS_CLI_MAP_FORMAT_H_

#include <string>

#include "qcow2j/image.h"
#include "qcow2j/status.h"

namespace qcow2j::cli {

// True when `next` continues `cur` with equal properties, so qemu-img map
// prints them as one extent: same depth, flags and file, and (when the data
// has a host offset) contiguous on the host too.
bool CanMerge(const BlockStatus& cur, const BlockStatus& next);

// One JSON line: "{ "start": 0, ... }" (no leading '[' / trailing ',').
std::string MapEntryJson(const BlockStatus& e);
// The human table header line, with '\n'.
std::string MapHumanHeader();
// The human line for an extent ("" when qemu-img prints nothing for it).
// Data without a host offset (compressed) is an error, as in qemu-img.
Result<std::string> MapEntryHuman(const BlockStatus& e);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_MAP_FORMAT_H_
