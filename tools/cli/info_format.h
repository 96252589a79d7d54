// What `info` and `snapshot -l` print, built from ImageInfo alone (no I/O) so
// the exact qemu-img text and JSON can be unit-tested.
#ifndef QCOW2J_TOOLS_CLI_INFO_FORMAT_H_
#define QCOW2J_TOOLS_CLI_INFO_FORMAT_H_

#include <string>
#include <vector>

#include "qcow2j/image.h"
#include "tools/cli/json_writer.h"

namespace qcow2j::cli {

// The ImageInfo QAPI object qemu-img prints with --output=json.
JsonValue InfoToJson(const ImageInfo& info);
// The format-specific "data" object (null JsonValue for raw).
JsonValue FormatSpecificData(const ImageInfo& info);
// qemu-img info's human text, ending in '\n'.
std::string InfoToHuman(const ImageInfo& info);
// "Snapshot list:" header plus one line per snapshot (qemu's table layout).
// `local_time` formats the dates in the local time zone like qemu does.
std::string SnapshotTable(const std::vector<SnapshotInfo>& snapshots);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_INFO_FORMAT_H_
