// Argument parsing shared by the commands: sizes with qemu-img's suffixes and
// qemu's "-o a=b,c=d" option strings. Pure functions, no I/O, so they can be
// unit-tested without an engine.
#ifndef QCOW2J_TOOLS_CLI_ARGS_H_
#define QCOW2J_TOOLS_CLI_ARGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j::cli {

// Parses "512", "64k", "1.5G", "0x1000" as qemu_strtosz does: a decimal
// number with an optional fraction (only with a suffix) or a hex integer,
// then one of B/K/M/G/T/P/E (case-insensitive, powers of 1024). A bare number
// is `default_unit` bytes (1 for sizes; qemu-img bench/convert use 1 too).
// Negative values, trailing garbage and overflow past 2^63-1 are errors.
Result<uint64_t> ParseSize(std::string_view text, uint64_t default_unit = 1);

// A plain non-negative decimal or hex integer, no suffix (counts, depths).
Result<uint64_t> ParseUint(std::string_view text);

// qemu's on/off booleans: on|yes|true|y and off|no|false|n.
Result<bool> ParseBool(std::string_view text);

// "a=b,c=d" -> {{a,b},{c,d}}. ",," inside a value or key is a literal comma.
// A key without "=" gets the value "" (qemu treats "help" this way).
using OptionList = std::vector<std::pair<std::string, std::string>>;
Result<OptionList> ParseOptionString(std::string_view text);

// qemu's size_to_str(): three significant digits and a binary unit, "1.26 MiB",
// "64 MiB", "0 B".
std::string SizeToStr(uint64_t bytes);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_ARGS_H_
