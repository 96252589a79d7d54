// Compressed writes (Image::WriteCompressed, `qcow2j io write -c`) and
// `qcow2j convert -O qcow2 [-c]`, against QEMU: whatever qcow2j writes must
// read back identically in qemu-img/qemu-io and pass `qemu-img check` with
// no error and no leak, and what qemu-img writes compressed must convert
// through qcow2j identically.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "qcow2j/image.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB;

void RequireQemu() {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  ASSERT_TRUE(HaveProgram("qemu-io")) << "qemu-io (qemu-utils) is required";
}

bool Must(const std::string& cmd) {
  RunResult r = test::Run(cmd);
  if (!r.ok()) ADD_FAILURE() << "command failed: " << r.Describe();
  return r.ok();
}

// Compressible but not trivial: words from a small vocabulary plus noise.
void AppendText(std::string* s, size_t n, std::mt19937* rng) {
  static const char* kWords[] = {"qcow2 ", "cluster ", "refcount ", "L2 ", "table ", "\n", "deflate "};
  size_t end = s->size() + n;
  while (s->size() < end) {
    const char* w = kWords[(*rng)() % 7];
    for (const char* p = w; *p && s->size() < end; ++p) s->push_back(*p);
    if ((*rng)() % 8 == 0 && s->size() < end) s->push_back(static_cast<char>((*rng)()));
  }
}

void AppendRandom(std::string* s, size_t n, std::mt19937* rng) {
  for (size_t i = 0; i < n; i++) s->push_back(static_cast<char>((*rng)()));
}

// A raw source of `size` bytes: runs of text, random bytes, zeros and a
// repeated byte, of sizes that do not follow cluster boundaries.
std::string MixedData(uint64_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s;
  s.reserve(size);
  while (s.size() < size) {
    size_t n = std::min<size_t>(size - s.size(), 1 + rng() % (300 * kKiB));
    switch (rng() % 4) {
      case 0: AppendText(&s, n, &rng); break;
      case 1: AppendRandom(&s, n, &rng); break;
      case 2: s.append(n, '\0'); break;
      default: s.append(n, static_cast<char>(rng())); break;
    }
  }
  return s;
}

// The parsed `qemu-img check --output=json`; fails the test unless the
// image has no error and no leak.
Json CheckClean(const std::string& img) {
  RunResult r = test::Run("qemu-img check --output=json " + Quote(img));
  EXPECT_EQ(r.exit_code, 0) << "qemu-img check of " << img << ":\n" << r.Describe();
  std::string err;
  std::optional<Json> j = ParseJson(r.out, &err);
  if (!j) {
    ADD_FAILURE() << "check output is not JSON (" << err << "): " << r.Describe();
    return Json();
  }
  const Json* e = j->Get("check-errors");
  EXPECT_TRUE(e && e->str == "0") << r.out;
  EXPECT_EQ(j->Get("leaks"), nullptr) << r.out;
  EXPECT_EQ(j->Get("corruptions"), nullptr) << r.out;
  return *j;
}

uint64_t CompressedClusters(const Json& check) {
  const Json* c = check.Get("compressed-clusters");
  return c ? std::stoull(c->str) : 0;
}

void ExpectIdentical(const std::string& a, const std::string& b) {
  RunResult r = test::Run("qemu-img compare " + Quote(a) + " " + Quote(b));
  EXPECT_EQ(r.exit_code, 0) << a << " vs " << b << ":\n" << r.Describe();
  EXPECT_NE(r.out.find("Images are identical."), std::string::npos) << r.Describe();
}

// The bytes of the extents of `qemu-img map --output=json` that `pick` selects.
template <typename Pick>
uint64_t MappedBytes(const std::string& img, Pick pick) {
  RunResult map = test::Run("qemu-img map --output=json " + Quote(img));
  EXPECT_TRUE(map.ok()) << map.Describe();
  std::optional<Json> j = ParseJson(map.out);
  EXPECT_TRUE(j && j->is_array()) << map.out;
  uint64_t bytes = 0;
  for (const Json& e : j ? j->arr : std::vector<Json>{}) {
    if (pick(e)) bytes += std::stoull(e.Get("length")->str);
  }
  return bytes;
}

// What qemu-img reads out of `img`, as raw bytes.
std::string QemuRaw(const TempDir& d, const std::string& img) {
  std::string out = d.Path("qemu-view.raw");
  if (!Must("qemu-img convert -O raw " + Quote(img) + " " + Quote(out))) return "";
  return ReadFile(out);
}

struct Layout {
  const char* type;
  uint32_t cluster;
  bool extended;
};

std::string CreateOpts(const Layout& l) {
  return "cluster_size=" + std::to_string(l.cluster) + ",compression_type=" + l.type +
         ",extended_l2=" + (l.extended ? "on" : "off");
}

class CompressedLayoutTest : public ::testing::TestWithParam<Layout> {};

// convert -c of a mixed raw file: QEMU reads what we wrote, the image is
// clean, some clusters really are compressed and zero ones stay unallocated.
TEST_P(CompressedLayoutTest, ConvertCompressedReadsBackInQemu) {
  RequireQemu();
  const Layout l = GetParam();
  TempDir d;
  // Not a multiple of any cluster size above 512: the last cluster is partial.
  const uint64_t size = (l.cluster >= 2 * kMiB ? 9 * kMiB : 3 * kMiB) + 1536;
  const std::string data = MixedData(size, l.cluster + (l.extended ? 1 : 0));
  const std::string src = d.Path("src.raw"), img = d.Path("c.qcow2");
  WriteFile(src, data);
  RunResult r = test::Run(Cli() + " convert -c -O qcow2 -o " + CreateOpts(l) + " " + Quote(src) + " " + Quote(img));
  ASSERT_TRUE(r.ok()) << r.Describe();
  ExpectIdentical(src, img);
  EXPECT_EQ(QemuRaw(d, img), data);
  Json check = CheckClean(img);
  EXPECT_GT(CompressedClusters(check), 0u);
  RunResult info = test::Run("qemu-img info --output=json " + Quote(img));
  ASSERT_TRUE(info.ok()) << info.Describe();
  std::optional<Json> ij = ParseJson(info.out);
  ASSERT_TRUE(ij.has_value()) << info.out;
  const Json* ct = ij->At("format-specific.data.compression-type");
  ASSERT_NE(ct, nullptr) << info.out;
  EXPECT_EQ(ct->str, l.type);
  const Json* cs = ij->Get("cluster-size");
  ASSERT_NE(cs, nullptr);
  EXPECT_EQ(cs->str, std::to_string(l.cluster));
  // Exactly the all-zero clusters stay unallocated.
  uint64_t zero_bytes = 0;
  for (uint64_t off = 0; off < size; off += l.cluster) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(l.cluster, size - off));
    if (data.find_first_not_of('\0', off) >= off + n) zero_bytes += n;
  }
  EXPECT_EQ(MappedBytes(img, [](const Json& e) { return !e.Get("present")->b; }), zero_bytes);
  if (l.cluster <= 65536) {
    EXPECT_GT(zero_bytes, 0u) << "the data should have zero clusters";
  }
  // And qcow2j reads it back too.
  std::string back = d.Path("back.raw");
  r = test::Run(Cli() + " convert -O raw " + Quote(img) + " " + Quote(back));
  ASSERT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(CompareFiles(src, back), "");
}

// qemu-io write -c through `qcow2j io`, several clusters per command and the
// image's partial last cluster, then read by qemu-io with the patterns.
TEST_P(CompressedLayoutTest, IoWriteCompressedReadsBackInQemuIo) {
  RequireQemu();
  const Layout l = GetParam();
  TempDir d;
  const uint64_t cs = l.cluster;
  const uint64_t size = 16 * cs + 1536 % cs + (cs == 512 ? 512 : 0);
  const std::string img = d.Path("io.qcow2");
  ASSERT_TRUE(Must(Cli() + " create -f qcow2 -o " + CreateOpts(l) + " " + Quote(img) + " " +
                   std::to_string(size)));
  const uint64_t tail = 16 * cs;
  std::vector<std::string> cmds = {
      "write -c -P 0x11 0 " + std::to_string(cs),
      "write -c -P 0x22 " + std::to_string(cs) + " " + std::to_string(3 * cs),
      "write -c -P 0x33 " + std::to_string(8 * cs) + " " + std::to_string(2 * cs),
      "write -c -P 0x44 " + std::to_string(tail) + " " + std::to_string(size - tail),
      "write -c " + std::to_string(12 * cs) + " " + std::to_string(cs),  // qemu-io's pattern 0xcd
      // Read back in the same process: the clusters may still be in the cache.
      "read -P 0x22 " + std::to_string(cs) + " " + std::to_string(3 * cs),
      "read -P 0x44 " + std::to_string(tail) + " " + std::to_string(size - tail)};
  std::string cmd = Cli() + " io";
  for (const std::string& c : cmds) cmd += " -c " + Quote(c);
  RunResult r = test::Run(cmd + " " + Quote(img));
  ASSERT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.Describe();
  std::string q = "qemu-io -f qcow2";
  for (const std::string& c :
       {"read -P 0x11 0 " + std::to_string(cs), "read -P 0x22 " + std::to_string(cs) + " " + std::to_string(3 * cs),
        "read -P 0 " + std::to_string(4 * cs) + " " + std::to_string(4 * cs),
        "read -P 0x33 " + std::to_string(8 * cs) + " " + std::to_string(2 * cs),
        "read -P 0xcd " + std::to_string(12 * cs) + " " + std::to_string(cs),
        "read -P 0x44 " + std::to_string(tail) + " " + std::to_string(size - tail)})
    q += " -c " + Quote(c);
  r = test::Run(q + " " + Quote(img));
  ASSERT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.Describe();
  Json check = CheckClean(img);
  EXPECT_EQ(CompressedClusters(check), 8u) << "0, 1-3, 8-9, 12 and the partial last cluster";
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CompressedLayoutTest,
    ::testing::Values(Layout{"zlib", 65536, false}, Layout{"zstd", 65536, false},
                      Layout{"zlib", 512, false}, Layout{"zstd", 512, false},
                      Layout{"zlib", 2 * 1024 * 1024, false}, Layout{"zstd", 2 * 1024 * 1024, false},
                      Layout{"zlib", 65536, true}, Layout{"zstd", 16384, true},
                      Layout{"zlib", 4096, false}),
    [](const ::testing::TestParamInfo<Layout>& i) {
      return std::string(i.param.type) + "_" + std::to_string(i.param.cluster) +
             (i.param.extended ? "_ext" : "");
    });

TEST(CompressedWriteTest, UnalignedWritesAreRejectedWithTheOffset) {
  TempDir d;
  const std::string img = d.Path("a.qcow2");
  CreateOptions c;
  c.size = 1 * kMiB;
  ASSERT_TRUE(Image::Create(img, c).ok());
  OpenOptions o;
  o.read_only = false;
  auto im = Image::Open(img, o);
  ASSERT_TRUE(im.ok()) << im.status().ToString();
  std::vector<uint8_t> buf(2 * 65536, 0x5a);
  Status s = (*im)->WriteCompressed(4096, buf.data(), 65536);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("4096"), std::string::npos) << s.ToString();
  s = (*im)->WriteCompressed(0, buf.data(), 65536 + 512);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  s = (*im)->WriteCompressed(1 * kMiB - 65536, buf.data(), 2 * 65536);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  EXPECT_TRUE((*im)->WriteCompressed(65536, buf.data(), 65536).ok());
  EXPECT_TRUE((*im)->Close().ok());
}

// Random compressed writes, plain writes (partial ones decompress a
// compressed cluster into a new cluster), zeroes, discards, flushes and reads
// against a model; QEMU must read the model back and find refcounts exact.
struct ModelCase {
  const char* opts;
  uint32_t cluster;
  uint32_t seed;
  bool journal = false;  // created by qcow2j with its metadata journal, else by qemu-img
};

class CompressedModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(CompressedModelTest, MixedOperationsMatchModel) {
  RequireQemu();
  const ModelCase mc = GetParam();
  TempDir d;
  const std::string img = d.Path("m.qcow2");
  const uint64_t cs = mc.cluster, clusters = 48, size = clusters * cs;
  const std::string opts = std::string(mc.opts) + ",cluster_size=" + std::to_string(cs);
  ASSERT_TRUE(Must(mc.journal ? Cli() + " create -q -f qcow2 -o " + opts + ",journal=on " + Quote(img) + " " +
                                    std::to_string(size)
                              : "qemu-img create -q -f qcow2 -o " + opts + " " + Quote(img) + " " +
                                    std::to_string(size)));
  std::string model(size, '\0');
  std::mt19937 rng(mc.seed);
  {
    OpenOptions o;
    o.read_only = false;
    auto im = Image::Open(img, o);
    ASSERT_TRUE(im.ok()) << im.status().ToString();
    Image& image = **im;
    std::string buf;
    for (int op = 0; op < 300; op++) {
      int kind = static_cast<int>(rng() % 10);
      if (kind < 4) {  // compressed write of 1-4 clusters
        uint64_t c = rng() % clusters, n = std::min<uint64_t>(1 + rng() % 4, clusters - c);
        buf.clear();
        if (rng() % 3) {
          AppendText(&buf, n * cs, &rng);
        } else {
          AppendRandom(&buf, n * cs, &rng);  // stored uncompressed
        }
        Status s = image.WriteCompressed(c * cs, buf.data(), buf.size());
        ASSERT_TRUE(s.ok()) << "op " << op << ": " << s.ToString();
        model.replace(c * cs, buf.size(), buf);
      } else if (kind < 7) {  // plain write anywhere
        uint64_t off = rng() % size, n = std::min<uint64_t>(1 + rng() % (2 * cs), size - off);
        buf.assign(n, static_cast<char>(rng()));
        Status s = image.Write(off, buf.data(), n);
        ASSERT_TRUE(s.ok()) << "op " << op << ": " << s.ToString();
        model.replace(off, n, buf);
      } else if (kind == 7) {  // write zeroes or discard of whole clusters
        uint64_t c = rng() % clusters, n = std::min<uint64_t>(1 + rng() % 3, clusters - c);
        Status s = rng() % 2 ? image.WriteZeroes(c * cs, n * cs, rng() % 2) : image.Discard(c * cs, n * cs);
        ASSERT_TRUE(s.ok()) << "op " << op << ": " << s.ToString();
        model.replace(c * cs, n * cs, std::string(n * cs, '\0'));
      } else if (kind == 8) {  // read, often of clusters still in the cache
        uint64_t off = rng() % size, n = std::min<uint64_t>(1 + rng() % (3 * cs), size - off);
        std::string got(n, '\x7f');
        Status s = image.Read(off, got.data(), n);
        ASSERT_TRUE(s.ok()) << "op " << op << ": " << s.ToString();
        ASSERT_TRUE(got == model.substr(off, n)) << "op " << op << ": read at " << off << " of " << n;
      } else if (rng() % 4 == 0) {
        ASSERT_TRUE(image.Flush().ok());
      }
    }
    ASSERT_TRUE(image.Close().ok());
  }
  CheckClean(img);
  EXPECT_TRUE(QemuRaw(d, img) == model) << "qemu-img reads something else than the model";
}

INSTANTIATE_TEST_SUITE_P(Cases, CompressedModelTest,
                         ::testing::Values(ModelCase{"compression_type=zlib", 65536, 1},
                                           ModelCase{"compression_type=zstd", 65536, 2},
                                           ModelCase{"compression_type=zlib", 512, 3},
                                           ModelCase{"compression_type=zstd,extended_l2=on", 65536, 4},
                                           ModelCase{"compression_type=zlib,refcount_bits=1", 4096, 5},
                                           ModelCase{"compression_type=zstd,refcount_bits=2", 2048, 6},
                                           ModelCase{"compression_type=zlib", 65536, 7, true},
                                           ModelCase{"compression_type=zstd,extended_l2=on", 16384, 8, true}));

// Many threads writing compressed clusters at once while others read them:
// every read sees either zeros or the final data, never garbage.
// mixed: every third cluster is random, stored uncompressed; the clusters
// those take end the compressed run again and again, and each ended run is
// written out by its writer after it drops the lock while readers read it.
void ConcurrentWritersAndReaders(bool mixed) {
  TempDir d;
  const std::string img = d.Path("t.qcow2");
  const uint64_t cs = 65536, clusters = 256;
  CreateOptions c;
  c.size = clusters * cs;
  c.cluster_size = cs;
  ASSERT_TRUE(Image::Create(img, c).ok());
  std::vector<std::string> content(clusters);
  std::mt19937 rng(9);
  uint64_t compressible = 0;
  for (uint64_t i = 0; i < clusters; i++) {
    if (mixed && i % 3 == 1) {
      AppendRandom(&content[i], cs, &rng);
    } else {
      AppendText(&content[i], cs, &rng);
      compressible++;
    }
  }
  {
    OpenOptions o;
    o.read_only = false;
    auto im = Image::Open(img, o);
    ASSERT_TRUE(im.ok()) << im.status().ToString();
    Image& image = **im;
    std::atomic<uint64_t> next{0};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
      threads.emplace_back([&] {
        for (uint64_t i; (i = next.fetch_add(1)) < clusters;) {
          if (!image.WriteCompressed(i * cs, content[i].data(), cs).ok()) errors++;
        }
      });
    }
    for (int t = 0; t < 2; t++) {
      threads.emplace_back([&, t] {
        std::mt19937 r(t);
        std::string got(cs, '\0');
        for (int k = 0; k < 300; k++) {
          uint64_t i = r() % clusters;
          if (!image.Read(i * cs, got.data(), cs).ok()) {
            errors++;
          } else if (got != content[i] && got != std::string(cs, '\0')) {
            errors++;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 0);
    ASSERT_TRUE(image.Close().ok());
  }
  Json check = CheckClean(img);
  EXPECT_EQ(CompressedClusters(check), compressible);
  std::string all;
  for (const auto& s : content) all += s;
  EXPECT_TRUE(QemuRaw(d, img) == all);
}

TEST(CompressedWriteTest, ConcurrentWritersAndReaders) {
  RequireQemu();
  ConcurrentWritersAndReaders(false);
}

TEST(CompressedWriteTest, ConcurrentWritersAndReadersAmongUncompressedClusters) {
  RequireQemu();
  ConcurrentWritersAndReaders(true);
}

// Images qemu-img compressed convert through qcow2j: to raw, and again to
// compressed qcow2.
TEST(ConvertTest, QemuCompressedImagesConvertIdentically) {
  RequireQemu();
  for (const char* type : {"zlib", "zstd"}) {
    SCOPED_TRACE(type);
    TempDir d;
    const std::string src = d.Path("src.raw"), q = d.Path("q.qcow2"), raw = d.Path("out.raw"),
                      again = d.Path("again.qcow2");
    WriteFile(src, MixedData(5 * kMiB + 512, 17));
    ASSERT_TRUE(Must("qemu-img convert -c -O qcow2 -o compression_type=" + std::string(type) + " " +
                     Quote(src) + " " + Quote(q)));
    RunResult r = test::Run(Cli() + " convert -O raw " + Quote(q) + " " + Quote(raw));
    ASSERT_TRUE(r.ok()) << r.Describe();
    EXPECT_EQ(CompareFiles(src, raw), "");
    r = test::Run(Cli() + " convert -c -O qcow2 -o compression_type=" + std::string(type) + " " + Quote(q) +
            " " + Quote(again));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ExpectIdentical(q, again);
    CheckClean(again);
  }
}

// The guest offsets of the clusters `qemu-img map` shows as plain data (with
// a host offset: compressed clusters have none), one per cluster.
std::vector<uint64_t> UncompressedClusters(const std::string& img, uint64_t cs) {
  RunResult map = test::Run("qemu-img map --output=json " + Quote(img));
  EXPECT_TRUE(map.ok()) << map.Describe();
  std::optional<Json> j = ParseJson(map.out);
  EXPECT_TRUE(j && j->is_array()) << map.out;
  std::vector<uint64_t> starts;
  for (const Json& e : j ? j->arr : std::vector<Json>{}) {
    if (!e.Get("data")->b || e.Get("offset") == nullptr) continue;
    const uint64_t start = std::stoull(e.Get("start")->str), len = std::stoull(e.Get("length")->str);
    for (uint64_t off = start; off < start + len; off += cs) starts.push_back(off);
  }
  return starts;
}

// convert -c with zlib probes each cluster before deflating it: clusters of
// random bytes are stored uncompressed, as qemu-img stores them (deflate
// does not shrink them); text, a byte counter (flat byte histogram, but
// repeats) and a cluster half random, half text are compressed, as by
// qemu-img. Same with an O_DIRECT target.
TEST(ConvertTest, IncompressibleClustersAreStoredUncompressedLikeQemu) {
  RequireQemu();
  TempDir d;
  std::mt19937 rng(31);
  std::string data;
  AppendRandom(&data, 64 * kKiB, &rng);  // 0: random
  AppendText(&data, 64 * kKiB, &rng);    // 1: text
  for (size_t i = 0; i < 64 * kKiB; i++) data.push_back(static_cast<char>(i));  // 2: counter
  AppendRandom(&data, 64 * kKiB, &rng);  // 3: random
  AppendRandom(&data, 32 * kKiB, &rng);  // 4: half random, half text
  AppendText(&data, 32 * kKiB, &rng);
  AppendRandom(&data, 128 * kKiB, &rng);  // 5, 6: random
  AppendText(&data, 40 * kKiB, &rng);     // 7: text, the image's partial last cluster
  const std::string src = d.Path("src.raw"), q = d.Path("q.qcow2");
  WriteFile(src, data);
  ASSERT_TRUE(Must("qemu-img convert -c -O qcow2 " + Quote(src) + " " + Quote(q)));
  const std::vector<uint64_t> want = {0, 3 * 64 * kKiB, 5 * 64 * kKiB, 6 * 64 * kKiB};
  ASSERT_EQ(UncompressedClusters(q, 64 * kKiB), want) << "qemu-img, the oracle, stores these uncompressed";
  for (const char* flags : {"-c", "-c -t none", "-c -m 1"}) {
    SCOPED_TRACE(flags);
    const std::string out = d.Path("out.qcow2");
    std::remove(out.c_str());
    RunResult r = test::Run(Cli() + " convert " + flags + " -O qcow2 " + Quote(src) + " " + Quote(out));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ExpectIdentical(src, out);
    EXPECT_EQ(QemuRaw(d, out), data);
    EXPECT_EQ(UncompressedClusters(out, 64 * kKiB), want);
    EXPECT_EQ(CompressedClusters(CheckClean(out)), 4u) << "clusters 1, 2, 4 and 7";
  }
}

// convert -O qcow2 with and without -c, from raw and from qcow2 sources,
// with the target on O_DIRECT (-t none) and with a progress bar.
TEST(ConvertTest, RawAndQcow2SourcesToQcow2) {
  RequireQemu();
  TempDir d;
  const std::string src = d.Path("src.raw"), qsrc = d.Path("src.qcow2");
  WriteFile(src, MixedData(6 * kMiB, 23));
  ASSERT_TRUE(Must("qemu-img convert -O qcow2 -o cluster_size=4096 " + Quote(src) + " " + Quote(qsrc)));
  int n = 0;
  for (const std::string& from : {src, qsrc}) {
    for (const char* flags : {"", "-c", "-c -t none -m 3", "-p -W", "-c -p -o compression_type=zstd"}) {
      SCOPED_TRACE(from + " " + flags);
      const std::string out = d.Path("out" + std::to_string(n++) + ".qcow2");
      RunResult r = test::Run(Cli() + " convert " + flags + " -O qcow2 " + Quote(from) + " " + Quote(out));
      ASSERT_TRUE(r.ok()) << r.Describe();
      ExpectIdentical(from, out);
      ExpectIdentical(src, out);
      Json check = CheckClean(out);
      bool compressed = std::string(flags).find("-c") != std::string::npos;
      EXPECT_EQ(CompressedClusters(check) > 0, compressed);
      if (std::string(flags).find("-p") != std::string::npos) {
        EXPECT_NE(r.out.find("(100.00/100%)"), std::string::npos) << r.Describe();
      }
    }
  }
}

// -n into an existing image that holds other data: zeros of the source must
// overwrite it, compressed or not.
TEST(ConvertTest, ExistingTargetIsOverwritten) {
  RequireQemu();
  TempDir d;
  const std::string src = d.Path("src.raw"), dst = d.Path("dst.qcow2");
  WriteFile(src, MixedData(2 * kMiB, 31));
  for (const char* flags : {"-n", "-n -c"}) {
    SCOPED_TRACE(flags);
    ASSERT_TRUE(Must("qemu-img create -q -f qcow2 " + Quote(dst) + " 2M"));
    ASSERT_TRUE(Must("qemu-io -f qcow2 -c 'write -P 0x99 0 2M' " + Quote(dst)));
    RunResult r = test::Run(Cli() + " convert " + flags + " -O qcow2 " + Quote(src) + " " + Quote(dst));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ExpectIdentical(src, dst);
    CheckClean(dst);
  }
}

// -B: the target gets only what the source's top layer holds, and reads as
// the source through the new backing file.
TEST(ConvertTest, BackingFileTarget) {
  RequireQemu();
  TempDir d;
  const std::string base = d.Path("base.qcow2"), top = d.Path("top.qcow2");
  ASSERT_TRUE(Must("qemu-img create -q -f qcow2 " + Quote(base) + " 4M"));
  ASSERT_TRUE(Must("qemu-io -f qcow2 -c 'write -P 0x11 0 3M' " + Quote(base)));
  ASSERT_TRUE(Must("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 " + Quote(top)));
  ASSERT_TRUE(Must("qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' -c 'write -z 0 64k' " + Quote(top)));
  for (const char* flags : {"", "-c"}) {
    SCOPED_TRACE(flags);
    const std::string out = d.Path(std::string("out") + (*flags ? "c" : "") + ".qcow2");
    RunResult r = test::Run(Cli() + " convert " + flags + " -O qcow2 -B base.qcow2 -F qcow2 " + Quote(top) +
                      " " + Quote(out));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ExpectIdentical(top, out);
    CheckClean(out);
    // [64k, 1M) and [2M, 3M) come from the backing file (depth 1).
    uint64_t from_backing = MappedBytes(
        out, [](const Json& e) { return e.Get("depth")->str == "1" && e.Get("data")->b; });
    EXPECT_EQ(from_backing, 2 * kMiB - 64 * kKiB);
  }
  RunResult r = test::Run(Cli() + " convert -O qcow2 -B base.qcow2 " + Quote(top) + " " + Quote(d.Path("x.qcow2")));
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.err.find("requires explicit backing format"), std::string::npos) << r.Describe();
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
