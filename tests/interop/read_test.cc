// "qcow2j must read every image QEMU writes": each variant builds an image
// with qemu-img / qemu-io, then checks that qcow2j's convert, info and map agree
// with qemu-img's on it.
#include <algorithm>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * kKiB, kTiB = kMiB * kMiB;

// Runs a setup command; a failure here is the test's fault (or QEMU missing),
// never a skip.
bool Must(const std::string& cmd) {
  RunResult r = Run(cmd);
  if (!r.ok()) {
    ADD_FAILURE() << "setup command failed: " << r.Describe();
    return false;
  }
  return true;
}

std::string QemuImg(const std::string& args) { return "qemu-img " + args; }

// qemu-io -f FMT -c CMD... IMG
std::string QemuIo(const std::string& img, const std::vector<std::string>& cmds,
                   const std::string& fmt = "qcow2") {
  std::string s = "qemu-io -f " + fmt;
  for (const auto& c : cmds) s += " -c " + Quote(c);
  return s + " " + Quote(img);
}

// A data pattern that differs per offset, so a misplaced cluster shows.
void WriteRandomFile(const std::string& path, uint64_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string data(size, '\0');
  for (auto& c : data) c = static_cast<char>(rng() & 0xff);
  WriteFile(path, data);
}

// A read check for images too big to convert: qcow2j io must find the pattern
// qemu-io finds.
struct PatternRead {
  uint64_t offset;
  uint64_t length;
  int pattern;
};

struct Variant {
  std::string name;
  // Builds the image(s) in `dir`; returns the path of the image to read.
  std::function<std::string(const TempDir& dir)> setup;
  bool compare_map = false;
  // Too big to convert whole: check with pattern reads instead.
  bool big = false;
  std::vector<PatternRead> reads;
  // Extra `convert` option sets to compare (e.g. snapshot views).
  std::vector<std::string> convert_opts;
  // Expected dirty-flag (checked in both tools' info, besides their agreement).
  bool expect_dirty = false;
};

// gtest prints a parameter with this (not as a byte dump).
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

// The common writes most variants get: distinct patterns at several offsets,
// partial clusters, cluster-straddling writes, zero writes and discards.
std::vector<std::string> StandardWrites(uint64_t cluster) {
  uint64_t c = cluster;
  return {
      "write -P 0x11 0 " + std::to_string(c),                          // whole cluster
      "write -P 0x22 " + std::to_string(c + 512) + " 1000",           // partial
      "write -P 0x33 " + std::to_string(3 * c - 700) + " 1400",       // straddles
      "write -P 0x44 " + std::to_string(5 * c) + " " + std::to_string(3 * c),  // several
      "write -z " + std::to_string(6 * c) + " " + std::to_string(c),  // zero in the middle
      "discard " + std::to_string(7 * c) + " " + std::to_string(c),   // discard the tail
      "write -P 0x55 " + std::to_string(9 * c + 17) + " 333",         // odd offset
      "write -P 0x66 " + std::to_string(1 * kMiB + 4096) + " 65536",  // further out
      "write -P 0x77 " + std::to_string(4 * kMiB - 1024) + " 1024",   // end of disk
  };
}

std::string Create(const TempDir& dir, const std::string& name, const std::string& opts,
                   const std::string& size = "4M") {
  std::string img = dir.Path(name);
  Must(QemuImg("create -q -f qcow2 " + opts + " " + Quote(img) + " " + size));
  return img;
}

std::string ClusterVariant(const TempDir& dir, uint64_t cluster) {
  // StandardWrites reaches 10 clusters in: grow the disk for big clusters.
  std::string size = std::to_string(std::max<uint64_t>(4 * kMiB, 12 * cluster));
  std::string img =
      Create(dir, "img.qcow2", "-o cluster_size=" + std::to_string(cluster), size);
  Must(QemuIo(img, StandardWrites(cluster)));
  return img;
}

std::string OptsVariant(const TempDir& dir, const std::string& opts) {
  std::string img = Create(dir, "img.qcow2", opts);
  Must(QemuIo(img, StandardWrites(64 * kKiB)));
  return img;
}

// Overlay whose backing file has data everywhere the overlay writes, so every
// partial write exercises copy-on-write / subcluster allocation.
std::string ExtendedL2Backing(const TempDir& dir) {
  std::string base = Create(dir, "base.qcow2", "");
  Must(QemuIo(base, {"write -P 0xaa 0 2M", "write -P 0xbb 2M 1M"}));
  std::string img =
      Create(dir, "img.qcow2", "-o extended_l2=on -b base.qcow2 -F qcow2", "");
  Must(QemuIo(img, {
                       "write -P 0x11 2048 2048",         // one subcluster (64k / 32)
                       "write -P 0x12 5000 100",          // inside a subcluster: COW
                       "write -z 8192 2048",              // zero subcluster over backing data
                       "write -P 0x13 63488 4096",        // straddles the cluster boundary
                       "discard 131072 65536",            // discard over backing
                       "write -P 0x14 200000 30000",      // several subclusters
                       "write -z 262144 65536",           // whole zero cluster
                       "write -P 0x15 3145728 6144",      // past the backing's data
                   }));
  return img;
}

std::string ExtendedL2NoBacking(const TempDir& dir) {
  std::string img = Create(dir, "img.qcow2", "-o extended_l2=on,cluster_size=128k");
  std::vector<std::string> w = StandardWrites(128 * kKiB);
  w.push_back("write -P 0x21 4096 4096");  // subcluster size is 4k
  w.push_back("write -z 4096 2048");
  w.push_back("write -P 0x22 700000 5");
  Must(QemuIo(img, w));
  return img;
}

std::string CompressedIo(const TempDir& dir, const std::string& type) {
  std::string img = Create(dir, "img.qcow2", "-o compression_type=" + type);
  Must(QemuIo(img, {
                       "write -c -P 0x11 0 64k",
                       "write -c -P 0x22 128k 128k",
                       "write -P 0x33 300k 10k",       // normal cluster next to compressed
                       "write -P 0x44 10000 100",      // overwrite inside a compressed cluster
                       "write -c -z 1M 64k",
                       "write -c -P 0x55 2M 64k",
                       "discard 2M 64k",
                   }));
  return img;
}

std::string CompressedConvert(const TempDir& dir, const std::string& type,
                              const std::string& cluster) {
  std::string raw = dir.Path("src.raw");
  WriteRandomFile(raw, 3 * kMiB, 7);  // incompressible: stored uncompressed
  Must(QemuIo(raw, {"write -P 0x5a 0 1M", "write -z 1M 512k", "write -P 0x01 2000000 3000"},
              "raw"));
  std::string img = dir.Path("img.qcow2");
  Must(QemuImg("convert -c -f raw -O qcow2 -o compression_type=" + type + ",cluster_size=" +
               cluster + " " + Quote(raw) + " " + Quote(img)));
  return img;
}

std::string Snapshots(const TempDir& dir) {
  std::string img = Create(dir, "img.qcow2", "");
  Must(QemuIo(img, {"write -P 0x11 0 256k", "write -P 0x12 1M 5000"}));
  Must(QemuImg("snapshot -c s1 " + Quote(img)));
  Must(QemuIo(img, {"write -P 0x21 64k 64k", "write -z 1M 64k", "write -P 0x22 2M 100"}));
  Must(QemuImg("snapshot -c s2 " + Quote(img)));
  Must(QemuIo(img, {"write -P 0x31 0 10", "discard 128k 64k", "write -P 0x32 3M 64k"}));
  return img;
}

std::string ChainDepth3(const TempDir& dir) {
  std::string base = Create(dir, "base.qcow2", "");
  Must(QemuIo(base, {"write -P 0x11 0 4M"}));
  std::string mid = Create(dir, "mid.qcow2", "-b base.qcow2 -F qcow2", "");
  Must(QemuIo(mid, {"write -P 0x22 64k 128k", "write -z 1M 64k", "write -P 0x23 2M 1000"}));
  std::string top = Create(dir, "top.qcow2", "-b mid.qcow2 -F qcow2", "");
  Must(QemuIo(top, {"write -P 0x33 100k 10", "discard 3M 64k", "write -P 0x34 1M 512"}));
  return top;
}

std::string RawBacking(const TempDir& dir) {
  std::string base = dir.Path("base.raw");
  WriteRandomFile(base, 4 * kMiB, 3);
  std::string img = Create(dir, "img.qcow2", "-b base.raw -F raw", "");
  Must(QemuIo(img, {"write -P 0x11 1000 70000", "write -z 2M 64k", "write -P 0x12 4193792 512"}));
  return img;
}

std::string SmallBacking(const TempDir& dir) {
  std::string base = Create(dir, "base.qcow2", "", "1000k");
  Must(QemuIo(base, {"write -P 0x11 0 1000k"}));
  std::string img = Create(dir, "img.qcow2", "-b base.qcow2 -F qcow2", "4M");
  // A partial write in the cluster where the backing ends: COW reads past its end.
  Must(QemuIo(img, {"write -P 0x22 1000k 100", "write -P 0x23 3M 64k", "write -P 0x24 60k 8k"}));
  return img;
}

std::string Big(const TempDir& dir) {
  std::string img = Create(dir, "img.qcow2", "", "2T");
  Must(QemuIo(img, {"write -P 0x11 0 64k", "write -P 0x12 1049088 3000",
                    "write -P 0x13 2199023190016 64k",
                    "write -P 0x14 2199023050752 100k",
                    "write -P 0x15 1099511627676 200"}));
  return img;
}

std::string LazyDirty(const TempDir& dir) {
  std::string img = Create(dir, "img.qcow2", "-o lazy_refcounts=on");
  Must(QemuIo(img, {"write -P 0x11 0 128k"}));
  // qemu-io aborts with the image still dirty: refcounts are stale on disk.
  RunResult r = Run("ulimit -c 0; " + QemuIo(img, {"write -P 0x22 64k 200k",
                                                  "write -P 0x23 1M 4k", "abort"}));
  if (!r.crashed()) ADD_FAILURE() << "qemu-io abort did not abort: " << r.Describe();
  return img;
}

std::string Bitmap(const TempDir& dir) {
  std::string img = OptsVariant(dir, "");
  Must(QemuImg("bitmap --add " + Quote(img) + " b0"));
  Must(QemuImg("bitmap --add -g 128k " + Quote(img) + " b1"));
  Must(QemuIo(img, {"write -P 0x71 2M 64k"}));
  return img;
}

std::string DataFile(const TempDir& dir) {
  std::string img = Create(dir, "img.qcow2", "-o data_file=" + Quote(dir.Path("img.data")));
  Must(QemuIo(img, StandardWrites(64 * kKiB)));
  return img;
}

Variant V(std::string name, std::function<std::string(const TempDir&)> setup,
          bool compare_map = false) {
  Variant v;
  v.name = std::move(name);
  v.setup = std::move(setup);
  v.compare_map = compare_map;
  return v;
}

std::string ZeroesAndDiscards(const TempDir& d) {
  std::string img = Create(d, "img.qcow2", "");
  Must(QemuIo(img, {"write -P 0x11 0 4M", "write -z 64k 128k", "discard 1M 192k",
                    "write -z 2101248 4k", "discard 3145828 10000", "write -z -u 3211264 64k"}));
  return img;
}

std::string PreallocMetadata(const TempDir& d) {
  std::string img = Create(d, "img.qcow2", "-o preallocation=metadata");
  Must(QemuIo(img, {"write -P 0x11 64k 1000", "write -P 0x12 2M 100k"}));
  return img;
}

std::vector<Variant> Variants() {
  using D = const TempDir&;
  std::vector<Variant> v;
  v.push_back(V("Cluster512", [](D d) { return ClusterVariant(d, 512); }, true));
  v.push_back(V("Cluster4k", [](D d) { return ClusterVariant(d, 4 * kKiB); }, true));
  v.push_back(V("Cluster64k", [](D d) { return ClusterVariant(d, 64 * kKiB); }, true));
  v.push_back(V("Cluster2M", [](D d) { return ClusterVariant(d, 2 * kMiB); }));
  v.push_back(V("RefcountBits1", [](D d) { return OptsVariant(d, "-o refcount_bits=1"); }));
  v.push_back(V("RefcountBits16", [](D d) { return OptsVariant(d, "-o refcount_bits=16"); }));
  v.push_back(V("RefcountBits64", [](D d) { return OptsVariant(d, "-o refcount_bits=64"); }));
  v.push_back(V("Compat010", [](D d) { return OptsVariant(d, "-o compat=0.10"); }, true));
  v.push_back(V("ExtendedL2", ExtendedL2NoBacking, true));
  v.push_back(V("ExtendedL2WithBacking", ExtendedL2Backing, true));
  v.push_back(V("ZlibCompressedByQemuIo", [](D d) { return CompressedIo(d, "zlib"); }, true));
  v.push_back(V("ZstdCompressedByQemuIo", [](D d) { return CompressedIo(d, "zstd"); }));
  v.push_back(V("ZlibCompressedByConvert",
                [](D d) { return CompressedConvert(d, "zlib", "64k"); }));
  v.push_back(V("ZstdCompressedByConvert",
                [](D d) { return CompressedConvert(d, "zstd", "64k"); }));
  v.push_back(V("ZlibCompressedCluster4k",
                [](D d) { return CompressedConvert(d, "zlib", "4k"); }));
  v.push_back(V("ZeroClustersAndDiscards", ZeroesAndDiscards, true));
  v.push_back(V("PreallocMetadata", PreallocMetadata, true));
  {
    Variant s = V("InternalSnapshots", Snapshots, true);
    s.convert_opts = {"-l snapshot.name=s1", "-l snapshot.name=s2", "-l snapshot.id=1",
                      "-l snapshot.id=2"};
    v.push_back(s);
  }
  v.push_back(V("BackingChainDepth3", ChainDepth3, true));
  v.push_back(V("RawBackingFile", RawBacking, true));
  v.push_back(V("BackingSmallerThanOverlay", SmallBacking, true));
  {
    Variant b = V("Sparse2TiB", Big, true);
    b.big = true;
    b.reads = {{0, 64 * kKiB, 0x11},
               {64 * kKiB, 1 * kMiB - 64 * kKiB, 0},
               {1 * kMiB + 512, 3000, 0x12},
               {1 * kMiB, 512, 0},
               {kTiB - 100, 200, 0x15},
               {kTiB - 64 * kKiB, 64 * kKiB - 100, 0},
               {2 * kTiB - 200 * kKiB, 100 * kKiB, 0x14},
               {2 * kTiB - 100 * kKiB, 36 * kKiB, 0},
               {2 * kTiB - 64 * kKiB, 64 * kKiB, 0x13}};
    v.push_back(b);
  }
  {
    Variant l = V("LazyRefcountsDirty", LazyDirty, true);
    l.expect_dirty = true;
    v.push_back(l);
  }
  v.push_back(V("PersistentBitmap", Bitmap));
  v.push_back(V("ExternalDataFile", DataFile));
  return v;
}

// --- comparisons ---

Json ParseOrFail(const RunResult& r) {
  std::string err;
  auto j = ParseJson(r.out, &err);
  if (!j) {
    ADD_FAILURE() << "not JSON (" << err << "): " << r.Describe();
    return Json();
  }
  return *j;
}

std::string Text(const Json* j) { return j ? j->ToString() : "<absent>"; }

void CompareConvert(const TempDir& dir, const std::string& img, const std::string& opts,
                    int n) {
  SCOPED_TRACE("convert " + opts);
  std::string ref = dir.Path("ref" + std::to_string(n) + ".raw");
  std::string out = dir.Path("out" + std::to_string(n) + ".raw");
  RunResult q = Run(QemuImg("convert -O raw " + opts + " " + Quote(img) + " " + Quote(ref)));
  ASSERT_TRUE(q.ok()) << q.Describe();
  RunResult r = Run(Cli() + " convert -O raw " + opts + " " + Quote(img) + " " + Quote(out));
  ASSERT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(CompareFiles(out, ref), "") << "qcow2j convert differs from qemu-img convert";
}

void CompareInfo(const std::string& img, const Variant& v) {
  RunResult q = Run(QemuImg("info --output=json " + Quote(img)));
  ASSERT_TRUE(q.ok()) << q.Describe();
  RunResult r = Run(Cli() + " info --output=json " + Quote(img));
  ASSERT_TRUE(r.ok()) << r.Describe();
  Json qj = ParseOrFail(q), rj = ParseOrFail(r);
  ASSERT_TRUE(qj.is_object());
  ASSERT_TRUE(rj.is_object()) << r.out;
  for (const char* field :
       {"virtual-size", "cluster-size", "format", "dirty-flag", "backing-filename",
        "full-backing-filename", "backing-filename-format", "format-specific.type",
        "format-specific.data.compat", "format-specific.data.compression-type",
        "format-specific.data.lazy-refcounts", "format-specific.data.refcount-bits",
        "format-specific.data.corrupt", "format-specific.data.extended-l2"}) {
    EXPECT_EQ(Text(rj.At(field)), Text(qj.At(field))) << "info field " << field;
  }
  EXPECT_EQ(Text(rj.At("dirty-flag")), v.expect_dirty ? "true" : "false");
  const Json* qs = qj.Get("snapshots");
  const Json* rs = rj.Get("snapshots");
  size_t qn = qs && qs->is_array() ? qs->arr.size() : 0;
  size_t rn = rs && rs->is_array() ? rs->arr.size() : 0;
  ASSERT_EQ(rn, qn) << "number of snapshots; qcow2j: " << r.out;
  for (size_t i = 0; i < qn; i++) {
    for (const char* field : {"id", "name", "vm-state-size"}) {
      EXPECT_EQ(Text(rs->arr[i].Get(field)), Text(qs->arr[i].Get(field)))
          << "snapshot " << i << " field " << field;
    }
  }
}

void CompareMap(const std::string& img) {
  RunResult q = Run(QemuImg("map --output=json " + Quote(img)));
  ASSERT_TRUE(q.ok()) << q.Describe();
  RunResult r = Run(Cli() + " map --output=json " + Quote(img));
  ASSERT_TRUE(r.ok()) << r.Describe();
  Json qj = ParseOrFail(q), rj = ParseOrFail(r);
  ASSERT_TRUE(qj.is_array());
  ASSERT_TRUE(rj.is_array()) << r.out;
  EXPECT_EQ(rj.arr.size(), qj.arr.size()) << "map extents\nqemu-img:\n" << q.out << "qcow2j:\n"
                                          << r.out;
  for (size_t i = 0; i < std::min(qj.arr.size(), rj.arr.size()); i++) {
    EXPECT_EQ(rj.arr[i].ToString(), qj.arr[i].ToString()) << "map extent " << i;
  }
  if (::testing::Test::HasFailure()) return;
  // The goal is byte-identical output; field equality is what is asserted.
  if (r.out != q.out) {
    std::printf("note: map JSON text differs from qemu-img's (fields agree)\n");
  }
}

void CheckReads(const std::string& img, const std::vector<PatternRead>& reads) {
  for (const PatternRead& p : reads) {
    std::string cmd = "read -P " + std::to_string(p.pattern) + " " + std::to_string(p.offset) +
                      " " + std::to_string(p.length);
    SCOPED_TRACE(cmd);
    // The oracle must agree with the expectation, or the check proves nothing.
    RunResult q = Run("qemu-io -r -f qcow2 -c " + Quote(cmd) + " " + Quote(img));
    ASSERT_TRUE(q.ok()) << q.Describe();
    ASSERT_EQ(q.out.find("Pattern verification failed"), std::string::npos) << q.out;
    RunResult r = Run(Cli() + " io -r -f qcow2 -c " + Quote(cmd) + " " + Quote(img));
    EXPECT_TRUE(r.ok()) << r.Describe();
    EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.Describe();
    EXPECT_NE(r.out.find("read " + std::to_string(p.length) + "/" + std::to_string(p.length)),
              std::string::npos)
        << r.Describe();
  }
  // A wrong pattern must be reported, or the reads above prove nothing.
  const PatternRead& p = reads.front();
  std::string bad = "read -P " + std::to_string((p.pattern + 1) & 0xff) + " " +
                    std::to_string(p.offset) + " " + std::to_string(p.length);
  RunResult r = Run(Cli() + " io -r -f qcow2 -c " + Quote(bad) + " " + Quote(img));
  EXPECT_NE(r.out.find("Pattern verification failed"), std::string::npos) << r.Describe();
}

class ReadTest : public ::testing::TestWithParam<Variant> {};

TEST_P(ReadTest, MatchesQemuImg) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required (apt-get install qemu-utils)";
  ASSERT_TRUE(HaveProgram("qemu-io")) << "qemu-io is required (apt-get install qemu-utils)";
  const Variant& v = GetParam();
  TempDir dir;
  std::string img = v.setup(dir);
  ASSERT_FALSE(HasFailure()) << "image setup failed";

  if (v.big) {
    CheckReads(img, v.reads);
  } else {
    CompareConvert(dir, img, "", 0);
    int n = 1;
    for (const std::string& opts : v.convert_opts) CompareConvert(dir, img, opts, n++);
  }
  CompareInfo(img, v);
  if (v.compare_map) CompareMap(img);
}

INSTANTIATE_TEST_SUITE_P(QemuImages, ReadTest, ::testing::ValuesIn(Variants()),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace test
}  // namespace qcow2j
