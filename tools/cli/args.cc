#include "tools/cli/args.h"

#include <cctype>
#include <cmath>
#include <cstdio>

namespace qcow2j::cli {

namespace {

// Power of 1024 for a unit letter; 0 when `c` is not one.
uint64_t UnitMultiplier(char c) {
  switch (std::tolower(static_cast<unsigned char>(c))) {
    case 'b': return 1;
    case 'k': return 1ull << 10;
    case 'm': return 1ull << 20;
    case 'g': return 1ull << 30;
    case 't': return 1ull << 40;
    case 'p': return 1ull << 50;
    case 'e': return 1ull << 60;
    default: return 0;
  }
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text, uint64_t default_unit) {
  const Status invalid = Status::InvalidArgument("invalid size '" + std::string(text) + "'");
  size_t i = 0;
  // qemu_strtosz skips leading blanks (strtoull does) but rejects a sign.
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) i++;
  if (i == text.size() || text[i] == '-' || text[i] == '+') return invalid;

  uint64_t whole = 0;
  bool hex = false;
  size_t digits_start;
  if (text.size() - i > 2 && text[i] == '0' && (text[i + 1] == 'x' || text[i + 1] == 'X')) {
    hex = true;
    i += 2;
    digits_start = i;
    while (i < text.size() && std::isxdigit(static_cast<unsigned char>(text[i]))) {
      int d = std::isdigit(static_cast<unsigned char>(text[i]))
                  ? text[i] - '0'
                  : std::tolower(static_cast<unsigned char>(text[i])) - 'a' + 10;
      if (whole > (UINT64_MAX >> 4)) return Status::InvalidArgument("size out of range");
      whole = whole * 16 + d;
      i++;
    }
  } else {
    digits_start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      uint64_t d = text[i] - '0';
      if (whole > (UINT64_MAX - d) / 10) return Status::InvalidArgument("size out of range");
      whole = whole * 10 + d;
      i++;
    }
  }
  if (i == digits_start) return invalid;

  // A fraction is allowed only in decimal and only before a unit suffix
  // ("1.5k" yes, "1.5" and ".5k" no), as qemu has it.
  double fraction = 0;
  bool has_fraction = false;
  if (!hex && i < text.size() && text[i] == '.') {
    has_fraction = true;
    i++;
    double scale = 0.1;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      fraction += (text[i] - '0') * scale;
      scale /= 10;
      i++;
    }
  }

  uint64_t mul = default_unit;
  if (i < text.size()) {
    mul = UnitMultiplier(text[i]);
    if (mul == 0) return invalid;
    i++;
  } else if (has_fraction) {
    return invalid;
  }
  if (i != text.size()) return invalid;
  if (has_fraction && mul == 1 && fraction != 0) return invalid;

  if (whole > UINT64_MAX / mul) return Status::InvalidArgument("size out of range");
  uint64_t value = whole * mul;
  uint64_t extra = static_cast<uint64_t>(std::floor(fraction * static_cast<double>(mul)));
  if (value > UINT64_MAX - extra) return Status::InvalidArgument("size out of range");
  return value + extra;
}

Result<uint64_t> ParseUint(std::string_view text) {
  if (text.empty()) return Status::InvalidArgument("empty number");
  uint64_t v = 0;
  size_t i = 0;
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    i = 2;
  }
  for (; i < text.size(); i++) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    int d;
    if (std::isdigit(c)) {
      d = c - '0';
    } else if (base == 16 && std::isxdigit(c)) {
      d = std::tolower(c) - 'a' + 10;
    } else {
      return Status::InvalidArgument("invalid number '" + std::string(text) + "'");
    }
    if (v > (UINT64_MAX - d) / base) return Status::InvalidArgument("number out of range");
    v = v * base + d;
  }
  return v;
}

Result<bool> ParseBool(std::string_view text) {
  if (text == "on" || text == "yes" || text == "true" || text == "y") return true;
  if (text == "off" || text == "no" || text == "false" || text == "n") return false;
  return Status::InvalidArgument("Parameter expects 'on' or 'off'");
}

Result<OptionList> ParseOptionString(std::string_view text) {
  OptionList out;
  size_t i = 0;
  while (i < text.size()) {
    std::string key, value;
    bool has_value = false;
    // Both key and value end at a single ','; ",," is an escaped comma.
    auto read_part = [&](std::string* dst, bool stop_at_equals) {
      while (i < text.size()) {
        char c = text[i];
        if (c == ',') {
          if (i + 1 < text.size() && text[i + 1] == ',') {
            dst->push_back(',');
            i += 2;
            continue;
          }
          return;
        }
        if (stop_at_equals && c == '=') return;
        dst->push_back(c);
        i++;
      }
    };
    read_part(&key, true);
    if (i < text.size() && text[i] == '=') {
      has_value = true;
      i++;
      read_part(&value, false);
    }
    if (i < text.size()) i++;  // the separating ','
    if (key.empty()) {
      if (has_value || !value.empty()) {
        return Status::InvalidArgument("Invalid parameter ''");
      }
      continue;  // "a=b," and ",a=b" are accepted, as qemu does
    }
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

std::string SizeToStr(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  // Pick the unit that keeps the shown value under 1000 (so 1000 bytes is
  // "0.977 KiB", not "1e+03 B").
  int exp = 0;
  std::frexp(static_cast<double>(bytes) / (1000.0 / 1024.0), &exp);
  int unit = exp > 0 ? (exp - 1) / 10 : 0;
  if (unit > 6) unit = 6;
  double shown = static_cast<double>(bytes) / static_cast<double>(1ull << (unit * 10));
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%0.3g %s", shown, kUnits[unit]);
  return buf;
}

}  // namespace qcow2j::cli
