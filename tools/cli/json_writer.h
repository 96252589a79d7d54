// A small JSON value that prints exactly like QEMU's QObject output, so that
// `qcow2j info --output=json` is byte-for-byte what `qemu-img info` prints.
//
// QEMU keeps objects in a hash table (512 buckets, the tdb hash, newest entry
// first in a bucket) and prints them in bucket order, so its key order looks
// random but is fully determined by the keys. We reproduce that order rather
// than insertion order; scripts and tests diff our output against QEMU's.
#ifndef QCOW2J_TOOLS_CLI_JSON_WRITER_H_
#define QCOW2J_TOOLS_CLI_JSON_WRITER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace qcow2j::cli {

class JsonValue {
 public:
  using Array = std::vector<JsonValue>;
  using Object = std::vector<std::pair<std::string, JsonValue>>;  // insertion order

  JsonValue() : v_(nullptr) {}
  JsonValue(bool b) : v_(b) {}                                    // NOLINT
  JsonValue(int64_t i) : v_(i) {}                                 // NOLINT
  JsonValue(int i) : v_(static_cast<int64_t>(i)) {}               // NOLINT
  JsonValue(uint32_t u) : v_(static_cast<int64_t>(u)) {}          // NOLINT
  JsonValue(uint64_t u) : v_(u) {}                                // NOLINT
  JsonValue(std::string s) : v_(std::move(s)) {}                  // NOLINT
  JsonValue(const char* s) : v_(std::string(s)) {}                // NOLINT
  static JsonValue MakeArray() { JsonValue j; j.v_ = Array{}; return j; }
  static JsonValue MakeObject() { JsonValue j; j.v_ = Object{}; return j; }

  bool is_array() const { return std::holds_alternative<Array>(v_); }
  bool is_object() const { return std::holds_alternative<Object>(v_); }
  bool is_composite() const { return is_array() || is_object(); }

  // Object: sets key (replacing an existing one, as qdict_put does).
  JsonValue& Set(const std::string& key, JsonValue value);
  // Array: appends.
  JsonValue& Append(JsonValue value);
  const Array& array() const { return std::get<Array>(v_); }
  // Object entries in QEMU's print order.
  std::vector<const std::pair<std::string, JsonValue>*> OrderedEntries() const;

  // qobject_to_json_pretty(): 4-space indent, "key": value, no trailing
  // newline. An empty array prints as "[\n<indent>]".
  std::string Pretty(int indent = 0) const;
  // Compact single-line form ("{"a": 1, "b": [1, 2]}").
  std::string Compact() const;
  // The human dump used by `qemu-img info` for format-specific data:
  // "key: value" lines, '-' in keys shown as ' ', lists as "[i]:".
  std::string Human(int indent) const;

 private:
  std::variant<std::nullptr_t, bool, int64_t, uint64_t, std::string, Array, Object> v_;
  std::string Scalar() const;
};

// QEMU's QDict bucket of a key (tdb hash mod 512).
unsigned QdictBucket(const std::string& key);
// A JSON string literal with QEMU's escaping.
std::string JsonQuote(const std::string& s);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_JSON_WRITER_H_
