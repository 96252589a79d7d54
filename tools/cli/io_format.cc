#include "tools/cli/io_format.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "tools/cli/args.h"

namespace qcow2j::cli {

std::vector<std::string> TokenizeIoCommand(std::string_view line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= line.size()) {
    size_t sp = line.find(' ', i);
    if (sp == std::string_view::npos) sp = line.size();
    if (sp > i) out.emplace_back(line.substr(i, sp - i));
    i = sp + 1;
  }
  return out;
}

std::string IoCvtStr(double value) {
  static const struct {
    double scale;
    const char* suffix;
  } kUnits[] = {{1152921504606846976.0, " EiB"}, {1125899906842624.0, " PiB"},
                {1099511627776.0, " TiB"},       {1073741824.0, " GiB"},
                {1048576.0, " MiB"},             {1024.0, " KiB"}};
  const char* suffix = " bytes";
  for (const auto& u : kUnits) {
    if (value >= u.scale) {
      value /= u.scale;
      suffix = u.suffix;
      break;
    }
  }
  // qemu-io prints "%f" and, when that contains ".000", cuts it there; this
  // is why 4.0001 KiB shows as "4 KiB" but 1.5 KiB as "1.500 KiB".
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%f", value);
  if (char* trim = std::strstr(buf, ".000")) {
    *trim = '\0';
    return std::string(buf) + suffix;
  }
  std::snprintf(buf, sizeof(buf), "%.3f%s", value, suffix);
  return buf;
}

std::string IoTimeStr(double seconds) {
  char buf[64];
  auto whole = static_cast<uint64_t>(seconds);
  double frac = seconds - static_cast<double>(whole);
  if (whole == 0) {
    std::snprintf(buf, sizeof(buf), "%05.2f sec", frac);
  } else {
    std::snprintf(buf, sizeof(buf), "%u:%02u:%05.2f", static_cast<unsigned>(whole / 3600),
                  static_cast<unsigned>(whole / 60 % 60),
                  static_cast<double>(whole % 60) + frac);
  }
  return buf;
}

std::string IoReport(const char* op, double seconds, int64_t offset, int64_t count,
                     int64_t total, int ops) {
  char buf[512];
  int n = std::snprintf(buf, sizeof(buf), "%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n",
                        op, total, count, offset);
  std::string out(buf, n);
  double per_sec = seconds > 0 ? static_cast<double>(total) / seconds : 0;
  double ops_sec = seconds > 0 ? ops / seconds : 0;
  std::snprintf(buf, sizeof(buf), "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
                IoCvtStr(static_cast<double>(total)).c_str(), ops, IoTimeStr(seconds).c_str(),
                IoCvtStr(per_sec).c_str(), ops_sec);
  return out + buf;
}

std::string IoReportTerse(const char* op, double seconds, int64_t total, int ops) {
  (void)op;  // qemu-io's -C line does not name the operation
  char buf[256];
  double per_sec = seconds > 0 ? static_cast<double>(total) / seconds : 0;
  double ops_sec = seconds > 0 ? ops / seconds : 0;
  auto whole = static_cast<uint64_t>(seconds);
  char ts[64];
  std::snprintf(ts, sizeof(ts), "%u:%02u:%05.2f", static_cast<unsigned>(whole / 3600),
                static_cast<unsigned>(whole / 60 % 60),
                static_cast<double>(whole % 60) + (seconds - static_cast<double>(whole)));
  std::snprintf(buf, sizeof(buf), "%" PRId64 ",%d,%s,%.3f,%.3f\n", total, ops, ts, per_sec,
                ops_sec);
  return buf;
}

std::string IoDumpBuffer(const uint8_t* buf, size_t len, int64_t offset) {
  std::string out;
  char tmp[32];
  for (size_t i = 0; i < len; i += 16) {
    std::snprintf(tmp, sizeof(tmp), "%08" PRIx64 ":  ", static_cast<uint64_t>(offset) + i);
    out += tmp;
    size_t end = i + 16 < len ? i + 16 : len;
    for (size_t j = i; j < end; j++) {
      std::snprintf(tmp, sizeof(tmp), "%02x ", buf[j]);
      out += tmp;
    }
    out += " ";
    for (size_t j = i; j < end; j++) out += std::isalnum(buf[j]) ? static_cast<char>(buf[j]) : '.';
    out += "\n";
  }
  return out;
}

Result<uint8_t> ParseIoPattern(std::string_view text) {
  const Status bad = Status::InvalidArgument(std::string(text) + " is not a valid pattern byte");
  if (text.empty()) return bad;
  // strtol with base 0: "0x" hex, leading "0" octal, else decimal.
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 0);
  if (errno || *end != '\0' || v < 0 || v > 255) return bad;
  return static_cast<uint8_t>(v);
}

Result<int64_t> ParseIoNumber(std::string_view text) {
  Result<uint64_t> r = ParseSize(text);
  if (!r.ok() || *r > static_cast<uint64_t>(INT64_MAX)) {
    if (r.ok() || r.status().message() == "size out of range") {
      return Status::InvalidArgument("Parsing error: argument too large -- " + std::string(text));
    }
    return Status::InvalidArgument(
        "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- " +
        std::string(text));
  }
  return static_cast<int64_t>(*r);
}

}  // namespace qcow2j::cli
