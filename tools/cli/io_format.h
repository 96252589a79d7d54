// qemu-io's text: command-line tokenising, number and pattern parsing, the
// "read N/N bytes at offset X" report with its statistics line, and the -v
// hex dump. Pure functions so every format can be unit-tested.
#ifndef QCOW2J_TOOLS_CLI_IO_FORMAT_H_
#define QCOW2J_TOOLS_CLI_IO_FORMAT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j::cli {

// qemu-io splits a command line at single spaces; empty words are dropped.
std::vector<std::string> TokenizeIoCommand(std::string_view line);

// qemu-io's cvtstr(): "4 KiB", "1.500 KiB", "32 bytes".
std::string IoCvtStr(double value);
// qemu-io's timestr() for the statistics line: "00.12 sec" under a second,
// "H:MM:SS.ss" beyond.
std::string IoTimeStr(double seconds);
// The two report lines, e.g. "read 4096/4096 bytes at offset 0\n4 KiB, 1 ops; ...".
std::string IoReport(const char* op, double seconds, int64_t offset, int64_t count,
                     int64_t total, int ops);
// The -C (machine-readable) report: "bytes,ops,H:MM:SS.ss,bytes/s,ops/s".
std::string IoReportTerse(const char* op, double seconds, int64_t total, int ops);
// `read -v` hex dump of buf, labelled from `offset`.
std::string IoDumpBuffer(const uint8_t* buf, size_t len, int64_t offset);

// A pattern byte "0xab" / "171" / "0253": 0..255 or error.
Result<uint8_t> ParseIoPattern(std::string_view text);
// A qemu-io number (cvtnum): a size with optional suffix; negative -> error.
// The error text is qemu-io's "Parsing error: ..." line.
Result<int64_t> ParseIoNumber(std::string_view text);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_IO_FORMAT_H_
