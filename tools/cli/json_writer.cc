#include "tools/cli/json_writer.h"

#include <algorithm>
#include <cstdio>

namespace qcow2j::cli {

unsigned QdictBucket(const std::string& key) {
  // The TDB hash that QEMU's qdict uses; only the bucket order matters to us.
  uint32_t value = 0x238F13AFu * static_cast<uint32_t>(key.size());
  for (size_t i = 0; i < key.size(); i++) {
    value += static_cast<uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
  }
  return (1103515243u * value + 12345u) % 512u;
}

namespace {

void AppendCodePoint(std::string* out, uint32_t cp) {
  char buf[16];
  if (cp >= 0x10000) {
    cp -= 0x10000;
    std::snprintf(buf, sizeof(buf), "\\u%04X\\u%04X", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
  } else {
    std::snprintf(buf, sizeof(buf), "\\u%04X", cp);
  }
  out->append(buf);
}

// Decodes one UTF-8 sequence at s[*i]; returns 0xFFFD for invalid input and
// advances past it (QEMU substitutes U+FFFD for bad sequences too).
uint32_t DecodeUtf8(const std::string& s, size_t* i) {
  unsigned char c = static_cast<unsigned char>(s[*i]);
  int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len == 0 || c >= 0xF8) {
    (*i)++;
    return 0xFFFD;
  }
  uint32_t cp = c & (0x7F >> len);
  for (int k = 1; k < len; k++) {
    if (*i + k >= s.size() || (static_cast<unsigned char>(s[*i + k]) & 0xC0) != 0x80) {
      (*i)++;
      return 0xFFFD;
    }
    cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  }
  *i += len;
  static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0xFFFD;
  return cp;
}

void NewLine(std::string* out, int indent) {
  out->push_back('\n');
  out->append(4 * indent, ' ');
}

void Write(const JsonValue& v, bool pretty, int indent, std::string* out);

}  // namespace

std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      AppendCodePoint(&out, DecodeUtf8(s, &i));
      continue;
    }
    i++;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          AppendCodePoint(&out, c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

JsonValue& JsonValue::Set(const std::string& key, JsonValue value) {
  auto& obj = std::get<Object>(v_);
  for (auto& kv : obj) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return kv.second;
    }
  }
  obj.emplace_back(key, std::move(value));
  return obj.back().second;
}

JsonValue& JsonValue::Append(JsonValue value) {
  auto& arr = std::get<Array>(v_);
  arr.push_back(std::move(value));
  return arr.back();
}

std::vector<const std::pair<std::string, JsonValue>*> JsonValue::OrderedEntries() const {
  const auto& obj = std::get<Object>(v_);
  std::vector<std::pair<size_t, unsigned>> order;  // (insertion index, bucket)
  for (size_t i = 0; i < obj.size(); i++) order.emplace_back(i, QdictBucket(obj[i].first));
  // Bucket ascending; inside a bucket the newest insertion comes first.
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.second != b.second) return a.second < b.second;
    return a.first > b.first;
  });
  std::vector<const std::pair<std::string, JsonValue>*> out;
  for (const auto& o : order) out.push_back(&obj[o.first]);
  return out;
}

std::string JsonValue::Scalar() const {
  if (std::holds_alternative<std::nullptr_t>(v_)) return "null";
  if (const bool* b = std::get_if<bool>(&v_)) return *b ? "true" : "false";
  if (const int64_t* i = std::get_if<int64_t>(&v_)) return std::to_string(*i);
  if (const uint64_t* u = std::get_if<uint64_t>(&v_)) return std::to_string(*u);
  return std::get<std::string>(v_);
}

namespace {

void Write(const JsonValue& v, bool pretty, int indent, std::string* out) {
  if (v.is_object() || v.is_array()) {
    out->push_back(v.is_object() ? '{' : '[');
    bool first = true;
    auto member = [&](const JsonValue& child, const std::string* name) {
      if (!first) out->push_back(',');
      if (pretty) {
        NewLine(out, indent + 1);
      } else if (!first) {
        out->push_back(' ');
      }
      first = false;
      if (name) *out += JsonQuote(*name) + ": ";
      Write(child, pretty, indent + 1, out);
    };
    if (v.is_object()) {
      for (const auto* kv : v.OrderedEntries()) member(kv->second, &kv->first);
    } else {
      for (const auto& child : v.array()) member(child, nullptr);
    }
    if (pretty) NewLine(out, indent);
    out->push_back(v.is_object() ? '}' : ']');
    return;
  }
  *out += v.Compact();
}

}  // namespace

std::string JsonValue::Pretty(int indent) const {
  std::string out;
  Write(*this, true, indent, &out);
  return out;
}

std::string JsonValue::Compact() const {
  if (const std::string* s = std::get_if<std::string>(&v_)) return JsonQuote(*s);
  if (is_composite()) {
    std::string out;
    Write(*this, false, 0, &out);
    return out;
  }
  return Scalar();
}

std::string JsonValue::Human(int indent) const {
  std::string out;
  auto item = [&](const std::string& label, const JsonValue& child) {
    out.append(4 * indent, ' ');
    out += label + ":";
    if (child.is_composite()) {
      out += "\n" + child.Human(indent + 1);
    } else {
      out += " " + child.Human(indent + 1) + "\n";
    }
  };
  if (is_object()) {
    for (const auto* kv : OrderedEntries()) {
      std::string key = kv->first;
      std::replace(key.begin(), key.end(), '-', ' ');
      item(key, kv->second);
    }
    return out;
  }
  if (is_array()) {
    for (size_t i = 0; i < array().size(); i++) item("[" + std::to_string(i) + "]", array()[i]);
    return out;
  }
  return Scalar();
}

}  // namespace qcow2j::cli
