#include "util/test_util.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

extern char** environ;

namespace qcow2j {
namespace test {

TempDir::TempDir() {
  char tmpl[] = "/var/tmp/qcow2j-test-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return;
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string RunResult::Describe() const {
  std::ostringstream os;
  os << "`" << cmd << "` exited " << exit_code << (signaled ? " (signal)" : "") << "\n--- stdout:\n"
     << out.substr(0, 4000) << "\n--- stderr:\n" << err.substr(0, 4000);
  return os.str();
}

RunResult Run(const std::string& cmd) {
  RunResult r;
  r.cmd = cmd;
  char out_tmpl[] = "/var/tmp/qcow2j-run-out-XXXXXX";
  char err_tmpl[] = "/var/tmp/qcow2j-run-err-XXXXXX";
  int out_fd = ::mkstemp(out_tmpl);
  int err_fd = ::mkstemp(err_tmpl);
  if (out_fd < 0 || err_fd < 0) {
    ADD_FAILURE() << "mkstemp: " << std::strerror(errno);
    if (out_fd >= 0) ::close(out_fd), ::unlink(out_tmpl);
    if (err_fd >= 0) ::close(err_fd), ::unlink(err_tmpl);
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  int rc = posix_spawn(&pid, "/bin/sh", &fa, nullptr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    ADD_FAILURE() << "posix_spawn: " << std::strerror(rc);
  } else {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) {
      r.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      r.signaled = true;
      r.exit_code = 128 + WTERMSIG(status);
    }
  }
  ::close(out_fd);
  ::close(err_fd);
  r.out = ReadFile(out_tmpl);
  r.err = ReadFile(err_tmpl);
  ::unlink(out_tmpl);
  ::unlink(err_tmpl);
  return r;
}

std::string Cli() {
#ifdef QCOW2J_CLI_PATH
  return QCOW2J_CLI_PATH;
#else
  return "qcow2j";
#endif
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

bool HaveProgram(const std::string& prog) {
  return Run("command -v " + Quote(prog)).exit_code == 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    ADD_FAILURE() << "cannot open " << path;
    return "";
  }
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

std::string QemuRead(const TempDir& dir, const std::string& img, const std::string& snapshot) {
  std::string out = dir.Path("read.raw");
  std::string l = snapshot.empty() ? "" : " -l " + Quote("snapshot.name=" + snapshot);
  RunResult r = Run("qemu-img convert -U" + l + " -O raw " + Quote(img) + " " + Quote(out));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  return ReadFile(out);
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) ADD_FAILURE() << "cannot write " << path;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    ADD_FAILURE() << "stat " << path << ": " << std::strerror(errno);
    return 0;
  }
  return static_cast<uint64_t>(st.st_size);
}

void TruncateFile(const std::string& path, uint64_t size) {
  if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0) {
    ADD_FAILURE() << "truncate " << path << ": " << std::strerror(errno);
  }
}

std::string CompareFiles(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa) return "cannot open " + a;
  if (!fb) return "cannot open " + b;
  uint64_t sa = FileSize(a), sb = FileSize(b);
  if (sa != sb) {
    return "sizes differ: " + a + " has " + std::to_string(sa) + " bytes, " + b + " has " +
           std::to_string(sb);
  }
  std::vector<char> ba(1 << 20), bb(1 << 20);
  uint64_t off = 0;
  while (off < sa) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(ba.size(), sa - off));
    fa.read(ba.data(), static_cast<std::streamsize>(n));
    fb.read(bb.data(), static_cast<std::streamsize>(n));
    if (!fa || !fb) return "short read at offset " + std::to_string(off);
    if (std::memcmp(ba.data(), bb.data(), n) != 0) {
      for (size_t i = 0; i < n; i++) {
        if (ba[i] != bb[i]) {
          char buf[160];
          std::snprintf(buf, sizeof buf,
                        "first difference at offset %llu (0x%llx): 0x%02x vs 0x%02x",
                        static_cast<unsigned long long>(off + i),
                        static_cast<unsigned long long>(off + i),
                        static_cast<unsigned>(static_cast<uint8_t>(ba[i])),
                        static_cast<unsigned>(static_cast<uint8_t>(bb[i])));
          return buf;
        }
      }
    }
    off += n;
  }
  return "";
}

void PokeBytes(const std::string& path, uint64_t offset, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY);
  if (fd < 0) {
    ADD_FAILURE() << "open " << path << ": " << std::strerror(errno);
    return;
  }
  ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
  if (n != static_cast<ssize_t>(bytes.size())) ADD_FAILURE() << "pwrite " << path;
  ::close(fd);
}

namespace {

std::string BigEndian(uint64_t v, int bytes) {
  std::string s(static_cast<size_t>(bytes), '\0');
  for (int i = bytes - 1; i >= 0; i--) {
    s[static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return s;
}

uint64_t PeekBe(const std::string& path, uint64_t offset, int bytes) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    ADD_FAILURE() << "open " << path << ": " << std::strerror(errno);
    return 0;
  }
  uint8_t buf[8] = {};
  ssize_t n = ::pread(fd, buf, static_cast<size_t>(bytes), static_cast<off_t>(offset));
  ::close(fd);
  if (n != bytes) {
    ADD_FAILURE() << "pread " << path << " at " << offset;
    return 0;
  }
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v = (v << 8) | buf[i];
  return v;
}

}  // namespace

void PokeBe8(const std::string& path, uint64_t offset, uint8_t v) {
  PokeBytes(path, offset, BigEndian(v, 1));
}
void PokeBe16(const std::string& path, uint64_t offset, uint16_t v) {
  PokeBytes(path, offset, BigEndian(v, 2));
}
void PokeBe32(const std::string& path, uint64_t offset, uint32_t v) {
  PokeBytes(path, offset, BigEndian(v, 4));
}
void PokeBe64(const std::string& path, uint64_t offset, uint64_t v) {
  PokeBytes(path, offset, BigEndian(v, 8));
}
uint16_t PeekBe16(const std::string& path, uint64_t offset) {
  return static_cast<uint16_t>(PeekBe(path, offset, 2));
}
uint32_t PeekBe32(const std::string& path, uint64_t offset) {
  return static_cast<uint32_t>(PeekBe(path, offset, 4));
}
uint64_t PeekBe64(const std::string& path, uint64_t offset) { return PeekBe(path, offset, 8); }

ImageLayout ReadImageLayout(const std::string& path) {
  ImageLayout l;
  l.path = path;
  l.l1 = PeekBe64(path, 40);
  l.rt = PeekBe64(path, 48);
  l.rb = PeekBe64(path, l.rt) & ImageLayout::kOffsetMask;
  l.l2 = PeekBe64(path, l.l1) & ImageLayout::kOffsetMask;
  l.l2b = PeekBe64(path, l.l1 + 16) & ImageLayout::kOffsetMask;
  return l;
}

// ---- JSON ----

const Json* Json::Get(const std::string& key) const {
  if (type != Type::kObject) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &it->second;
}

const Json* Json::At(const std::string& dotted) const {
  const Json* j = this;
  size_t start = 0;
  while (j != nullptr) {
    size_t dot = dotted.find('.', start);
    j = j->Get(dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return j;
}

namespace {

void AppendQuoted(const std::string& s, std::string* out) {
  *out += '"';
  for (char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\t': *out += "\\t"; break;
      case '\r': *out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          *out += buf;
        } else {
          *out += c;
        }
    }
  }
  *out += '"';
}

void AppendJson(const Json& j, std::string* out) {
  switch (j.type) {
    case Json::Type::kNull: *out += "null"; break;
    case Json::Type::kBool: *out += j.b ? "true" : "false"; break;
    case Json::Type::kNumber: *out += j.str; break;
    case Json::Type::kString: AppendQuoted(j.str, out); break;
    case Json::Type::kArray: {
      *out += '[';
      for (size_t i = 0; i < j.arr.size(); i++) {
        if (i) *out += ", ";
        AppendJson(j.arr[i], out);
      }
      *out += ']';
      break;
    }
    case Json::Type::kObject: {
      *out += '{';
      bool first = true;
      for (const auto& [k, v] : j.obj) {
        if (!first) *out += ", ";
        first = false;
        AppendQuoted(k, out);
        *out += ": ";
        AppendJson(v, out);
      }
      *out += '}';
      break;
    }
  }
}

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  bool ParseDocument(Json* out) {
    if (!ParseValue(out, 0)) return false;
    SkipSpace();
    if (pos_ != s_.size()) return Fail("trailing characters");
    return true;
  }
  const std::string& error() const { return error_; }

 private:
  bool Fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at offset " + std::to_string(pos_);
    return false;
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' ||
                                s_[pos_] == '\r')) {
      pos_++;
    }
  }
  bool Literal(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) return Fail(std::string("expected ") + word);
    pos_ += n;
    return true;
  }
  bool ParseValue(Json* out, int depth) {
    if (depth > 64) return Fail("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Fail("unexpected end");
    char c = s_[pos_];
    if (c == '{') return ParseObject(out, depth);
    if (c == '[') return ParseArray(out, depth);
    if (c == '"') {
      out->type = Json::Type::kString;
      return ParseString(&out->str);
    }
    if (c == 't') {
      out->type = Json::Type::kBool;
      out->b = true;
      return Literal("true");
    }
    if (c == 'f') {
      out->type = Json::Type::kBool;
      out->b = false;
      return Literal("false");
    }
    if (c == 'n') {
      out->type = Json::Type::kNull;
      return Literal("null");
    }
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    return Fail(std::string("unexpected character '") + c + "'");
  }
  bool ParseNumber(Json* out) {
    size_t start = pos_;
    if (s_[pos_] == '-') pos_++;
    auto digits = [&] {
      size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') pos_++;
      return pos_ > d;
    };
    if (!digits()) return Fail("bad number");
    if (pos_ < s_.size() && s_[pos_] == '.') {
      pos_++;
      if (!digits()) return Fail("bad number");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      pos_++;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) pos_++;
      if (!digits()) return Fail("bad number");
    }
    out->type = Json::Type::kNumber;
    out->str = s_.substr(start, pos_ - start);
    return true;
  }
  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      *out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      *out += static_cast<char>(0xc0 | (cp >> 6));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      *out += static_cast<char>(0xe0 | (cp >> 12));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      *out += static_cast<char>(0xf0 | (cp >> 18));
      *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  bool ParseHex4(uint32_t* v) {
    if (pos_ + 4 > s_.size()) return Fail("short \\u escape");
    *v = 0;
    for (int i = 0; i < 4; i++) {
      char c = s_[pos_++];
      *v <<= 4;
      if (c >= '0' && c <= '9') {
        *v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        *v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        *v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Fail("bad \\u escape");
      }
    }
    return true;
  }
  bool ParseString(std::string* out) {
    pos_++;  // opening quote
    out->clear();
    while (true) {
      if (pos_ >= s_.size()) return Fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return Fail("control character in string");
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (pos_ >= s_.size()) return Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': *out += '"'; break;
        case '\\': *out += '\\'; break;
        case '/': *out += '/'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'n': *out += '\n'; break;
        case 'r': *out += '\r'; break;
        case 't': *out += '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!ParseHex4(&cp)) return false;
          if (cp >= 0xd800 && cp < 0xdc00 && s_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            uint32_t lo = 0;
            if (!ParseHex4(&lo)) return false;
            if (lo < 0xdc00 || lo >= 0xe000) return Fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          AppendUtf8(cp, out);
          break;
        }
        default: return Fail("bad escape");
      }
    }
  }
  bool ParseArray(Json* out, int depth) {
    out->type = Json::Type::kArray;
    pos_++;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      pos_++;
      return true;
    }
    while (true) {
      Json v;
      if (!ParseValue(&v, depth + 1)) return false;
      out->arr.push_back(std::move(v));
      SkipSpace();
      if (pos_ >= s_.size()) return Fail("unterminated array");
      char c = s_[pos_++];
      if (c == ']') return true;
      if (c != ',') return Fail("expected , or ]");
    }
  }
  bool ParseObject(Json* out, int depth) {
    out->type = Json::Type::kObject;
    pos_++;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      pos_++;
      return true;
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a key");
      std::string key;
      if (!ParseString(&key)) return false;
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected :");
      pos_++;
      Json v;
      if (!ParseValue(&v, depth + 1)) return false;
      if (out->obj.count(key)) return Fail("duplicate key " + key);
      out->obj.emplace(std::move(key), std::move(v));
      SkipSpace();
      if (pos_ >= s_.size()) return Fail("unterminated object");
      char c = s_[pos_++];
      if (c == '}') return true;
      if (c != ',') return Fail("expected , or }");
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace

std::string Json::ToString() const {
  std::string out;
  AppendJson(*this, &out);
  return out;
}

std::optional<Json> ParseJson(const std::string& text, std::string* error) {
  JsonParser p(text);
  Json j;
  if (!p.ParseDocument(&j)) {
    if (error) *error = p.error();
    return std::nullopt;
  }
  return j;
}

}  // namespace test
}  // namespace qcow2j
