// Helpers for the black-box tests: temp directories, running commands (the
// qcow2j CLI and QEMU's tools, our oracle), file comparison, byte pokes and a
// small JSON parser for `info --output=json` / `map --output=json` documents.
#ifndef QCOW2J_TESTS_UTIL_TEST_UTIL_H_
#define QCOW2J_TESTS_UTIL_TEST_UTIL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qcow2j {
namespace test {

// A fresh directory under /var/tmp (mkdtemp), removed with its contents when
// the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name
  std::string Path(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;    // the exit status, or 128+signal when killed by a signal
  bool signaled = false; // the shell itself was killed by a signal
  std::string out;
  std::string err;

  bool ok() const { return exit_code == 0; }
  // True when the process died of a signal (directly, or as the shell reports
  // it: 128+N), which a test treats as a crash.
  bool crashed() const { return signaled || exit_code >= 128; }
  // "cmd exited N\nstdout...\nstderr..." for failure messages.
  std::string Describe() const;
  std::string cmd;
};

// Runs `cmd` with /bin/sh -c, capturing stdout, stderr and the exit status.
RunResult Run(const std::string& cmd);

// Path of the built qcow2j CLI (QCOW2J_CLI_PATH).
std::string Cli();
// Single-quotes `s` for the shell.
std::string Quote(const std::string& s);
// Whether `prog` is found on PATH.
bool HaveProgram(const std::string& prog);

std::string ReadFile(const std::string& path);
// What the guest reads from `img` (at internal snapshot `snapshot` unless
// empty), as qemu-img convert gives it, through a file in `dir`.
std::string QemuRead(const TempDir& dir, const std::string& img, const std::string& snapshot);
void WriteFile(const std::string& path, const std::string& data);
uint64_t FileSize(const std::string& path);
void TruncateFile(const std::string& path, uint64_t size);
// "" when the two files hold the same bytes; otherwise a description of the
// first difference (size or offset with both bytes).
std::string CompareFiles(const std::string& a, const std::string& b);

// Big-endian pokes and peeks at an offset of a file (the file must exist).
void PokeBytes(const std::string& path, uint64_t offset, const std::string& bytes);
void PokeBe8(const std::string& path, uint64_t offset, uint8_t v);
void PokeBe16(const std::string& path, uint64_t offset, uint16_t v);
void PokeBe32(const std::string& path, uint64_t offset, uint32_t v);
void PokeBe64(const std::string& path, uint64_t offset, uint64_t v);
uint16_t PeekBe16(const std::string& path, uint64_t offset);
uint32_t PeekBe32(const std::string& path, uint64_t offset);
uint64_t PeekBe64(const std::string& path, uint64_t offset);

// Where the first tables of a qcow2 image are, read from its header and
// tables (not assumed): the active L1 table, the refcount table and its
// first block, and the L2 tables of L1 entries 0 and 2.
struct ImageLayout {
  static constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;
  std::string path;
  uint64_t l1 = 0, rt = 0, rb = 0, l2 = 0, l2b = 0;
  // Entry i of the first L2 table, as stored.
  uint64_t L2(int i) const { return PeekBe64(path, l2 + 8 * i); }
};
ImageLayout ReadImageLayout(const std::string& path);

// A JSON value: enough of JSON for the documents qemu-img prints.
struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool b = false;
  std::string str;  // kString: the decoded text; kNumber: the number as written
  std::vector<Json> arr;
  std::map<std::string, Json> obj;

  bool is_object() const { return type == Type::kObject; }
  bool is_array() const { return type == Type::kArray; }
  // Member `key` of an object, nullptr when absent (or not an object).
  const Json* Get(const std::string& key) const;
  // Member by a dotted path: "format-specific.data.compat".
  const Json* At(const std::string& dotted) const;
  // Canonical text (objects with sorted keys, numbers as written).
  std::string ToString() const;
};

// Parses a whole JSON document; nullopt (and `error` set) on a syntax error.
std::optional<Json> ParseJson(const std::string& text, std::string* error = nullptr);

}  // namespace test
}  // namespace qcow2j

#endif  // QCOW2J_TESTS_UTIL_TEST_UTIL_H_
