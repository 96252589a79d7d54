// The write engine against QEMU: one qemu-io command script runs through
// qemu-io on a QEMU-created image (the oracle), and through `qcow2j io` on a
// qcow2j-created image and on a QEMU-created image. `qemu-img compare` must
// find all three identical, and `qemu-img check` must find no error and no
// leak in the images we wrote. Every create option is covered; the scripts
// mix partial, straddling and overwriting writes, write -z, discard, COW over
// a backing file, subcluster writes, far offsets and refcount growth.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

struct Case {
  std::string opts;  // -o for all three images; {DATA} = that image's data file
  uint64_t size = 64ull << 20;
  uint32_t cluster = 65536;  // for the script generators
  // A qcow2 backing file (same cluster size), filled by qemu-io with base_script.
  bool backing = false;
  uint64_t backing_size = 0;  // 0: size
  std::vector<std::string> base_script;
  // Run by qemu-io on the QEMU-created images before the script (e.g. compressed
  // writes qcow2j cannot make yet); the qcow2j-created image is then left out.
  std::vector<std::string> qemu_prep;
  bool snapshot_after_prep = false;  // qemu-img snapshot -c s1 after qemu_prep
  std::vector<std::string> script;
};

std::string Num(uint64_t v) { return std::to_string(v); }

std::string Cmd(const char* fmt_op, uint64_t off, uint64_t len) {
  return std::string(fmt_op) + " " + Num(off) + " " + Num(len);
}

// A script in units of the cluster size `cs`; it uses the first 40 clusters
// and the last two of an image of `size` bytes.
std::vector<std::string> GenericScript(uint64_t cs, uint64_t size) {
  std::vector<std::string> s = {
      Cmd("write -P 0x11", 0, cs),                    // one whole cluster
      Cmd("write -P 0x22", cs / 2, cs),               // straddles clusters 0 and 1
      Cmd("write -P 0x33", 3 * cs + 100, 1000 % cs),  // unaligned, inside a cluster
      Cmd("write -P 0x44", cs / 4, cs / 8),           // overwrite in place
      Cmd("write -P 0x45", 4 * cs, 4 * cs),           // several clusters at once
      Cmd("write -z", 5 * cs, 2 * cs),                // zero allocated clusters
      Cmd("write -z", 3 * cs + 50, 200 % cs),         // partial zeroes
      Cmd("write -z", 9 * cs, cs),                    // zero an unallocated cluster
      Cmd("write -P 0x55", 10 * cs, 4 * cs),
      Cmd("discard", 10 * cs + cs / 2, 2 * cs),   // whole cluster 11 only
      Cmd("discard", 13 * cs, cs),                // an aligned whole cluster
      Cmd("write -P 0x56", 11 * cs + 7, 9),       // partial write into a discarded cluster
      Cmd("write -P 0x66", 16 * cs - 10, 20),     // tiny straddle
      Cmd("write -z -u", 4 * cs, cs),             // zero with unmap
      Cmd("write -P 0x67", 4 * cs + cs / 2, cs),  // into the unmapped cluster and the next
      Cmd("aio_write -P 0x71", 20 * cs, cs),
      Cmd("aio_write -P 0x72", 21 * cs + 3, cs / 2),
      Cmd("aio_write -P 0x73", 23 * cs, 3 * cs),
      "aio_flush",
      Cmd("write -P 0x74", 20 * cs + cs / 3, cs),  // over the aio data
      "flush",
      Cmd("discard", 0, 2 * cs),
      Cmd("write -P 0x75", 1 * cs + 1, cs - 2),  // reallocate after discard
      Cmd("write -P 0x76", 30 * cs, 10 * cs),
      Cmd("discard", 31 * cs, 8 * cs),
      Cmd("write -P 0x77", 32 * cs, 2 * cs),        // reuse freed clusters
      Cmd("write -P 0x78", size - cs - 7, cs + 7),  // up to the last byte
      Cmd("write -z", size - cs / 2, cs / 2),       // zeroes at the end
  };
  return s;
}

// COW head/tail over a backing file: partial writes into clusters whose old
// contents live in the backing file (or past its end, or in its holes).
std::vector<std::string> BackingScript(uint64_t cs, uint64_t size) {
  return {
      Cmd("write -P 0xc1", 100, 1000),                // head + tail COW
      Cmd("write -P 0xc2", cs + cs / 2, cs),          // straddle: tail of 1, head of 2
      Cmd("write -P 0xc3", 3 * cs, cs / 2),           // head only written, tail COW
      Cmd("write -P 0xc4", 4 * cs + cs / 2, cs / 2),  // head COW
      Cmd("write -P 0xc5", 5 * cs + 10, 10),
      Cmd("write -P 0xc6", 5 * cs + 30, 10),     // second write into the same cluster
      Cmd("write -P 0xc7", 5 * cs, cs),          // covers the pending COW entirely
      Cmd("write -P 0xc8", 6 * cs + 1, cs - 2),  // over the backing file's zeroed cluster
      Cmd("write -z", 7 * cs, cs),               // zero over backing data
      Cmd("write -z", 8 * cs + 16, 32),          // partial zero over backing data
      Cmd("discard", 9 * cs, 2 * cs),            // discard over backing data (v3: zeros)
      Cmd("write -P 0xc9", 9 * cs + 5, 5),
      "flush",
      Cmd("write -P 0xca", 12 * cs - 3, 6),
      Cmd("aio_write -P 0xcb", 14 * cs + 1, 1),
      Cmd("aio_write -P 0xcc", 14 * cs + 3, 1),
      Cmd("aio_write -P 0xcd", 15 * cs + 3, 3 * cs),
      "aio_flush",
      Cmd("write -P 0xce", size - cs / 2 - 5, cs / 2),  // past the end of a smaller backing file
      Cmd("write -P 0xcf", 20 * cs + 9, 11),
  };
}

// Subcluster writes for extended L2 (32 subclusters of cs/32).
std::vector<std::string> SubclusterScript(uint64_t cs) {
  uint64_t sc = cs / 32;
  return {
      Cmd("write -P 0xd1", 40 * cs + sc, sc),            // one aligned subcluster
      Cmd("write -P 0xd2", 40 * cs + 3 * sc + 10, 100),  // partial subcluster
      Cmd("write -P 0xd3", 40 * cs + 5 * sc - 7, 14),    // straddles two subclusters
      Cmd("write -P 0xd4", 40 * cs + 31 * sc, sc),       // the last subcluster
      Cmd("write -P 0xd5", 41 * cs - sc / 2, sc),        // straddles into the next cluster
      Cmd("write -z", 40 * cs + 2 * sc, sc),             // zero one subcluster
      Cmd("write -z", 40 * cs + 3 * sc + 20, 40),        // partial zero in an allocated one
      Cmd("write -P 0xd6", 40 * cs + 2 * sc + 3, 3),     // write into a zero subcluster
      Cmd("write -P 0xd7", 42 * cs + 10 * sc, 4 * sc),   // several subclusters of a new cluster
      Cmd("write -P 0xd8", 42 * cs + 12 * sc, 8 * sc),   // extends over the allocated ones
      Cmd("discard", 43 * cs, cs),
      Cmd("write -P 0xd9", 43 * cs + 7 * sc + 1, 1),
      Cmd("write -z", 44 * cs, cs),                    // whole zero cluster
      Cmd("write -P 0xda", 44 * cs + 9 * sc, sc / 2),  // one subcluster into the zero cluster
  };
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string Script(const std::vector<std::string>& cmds) {
  std::string s;
  for (const auto& c : cmds) s += " -c " + Quote(c);
  return s;
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
    s.replace(p, from.size(), to);
  return s;
}

void ExpectClean(const std::string& img) {
  RunResult r = Run("qemu-img check " + Quote(img));
  EXPECT_EQ(r.exit_code, 0) << "qemu-img check of " << img << ":\n" << r.Describe();
  EXPECT_NE(r.out.find("No errors were found on the image."), std::string::npos) << r.Describe();
}

void ExpectIdentical(const std::string& a, const std::string& b) {
  RunResult r = Run("qemu-img compare " + Quote(a) + " " + Quote(b));
  EXPECT_EQ(r.exit_code, 0) << a << " vs " << b << ":\n" << r.Describe();
  EXPECT_NE(r.out.find("Images are identical."), std::string::npos) << r.Describe();
}

void RunCase(const Case& c) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img (qemu-utils) is required";
  ASSERT_TRUE(HaveProgram("qemu-io")) << "qemu-io (qemu-utils) is required";
  TempDir d;
  std::string backing_args;
  if (c.backing) {
    std::string base = d.Path("base.qcow2");
    uint64_t bsize = c.backing_size ? c.backing_size : c.size;
    RunResult r = Run("qemu-img create -q -f qcow2 -o cluster_size=" + Num(c.cluster) + " " +
                      Quote(base) + " " + Num(bsize));
    ASSERT_TRUE(r.ok()) << r.Describe();
    r = Run("qemu-io" + Script(c.base_script) + " " + Quote(base));
    ASSERT_TRUE(r.ok()) << r.Describe();
    backing_args = " -b " + Quote(base) + " -F qcow2";
  }
  struct Target {
    std::string name;
    bool qemu_created;
    bool qemu_io;
  };
  std::vector<Target> targets = {{"a", true, true}, {"c", true, false}};
  if (c.qemu_prep.empty()) targets.push_back({"b", false, false});
  for (const Target& t : targets) {
    std::string img = d.Path(t.name + ".qcow2");
    std::string opts = Replace(c.opts, "{DATA}", d.Path(t.name + ".data"));
    std::string o = opts.empty() ? "" : " -o " + Quote(opts);
    std::string create =
        t.qemu_created ? "qemu-img create -q -f qcow2" : Quote(Cli()) + " create -q -f qcow2";
    RunResult r = Run(create + o + backing_args + " " + Quote(img) + " " + Num(c.size));
    ASSERT_TRUE(r.ok()) << r.Describe();
    if (!c.qemu_prep.empty()) {
      r = Run("qemu-io" + Script(c.qemu_prep) + " " + Quote(img));
      ASSERT_TRUE(r.ok()) << r.Describe();
      if (c.snapshot_after_prep) {
        r = Run("qemu-img snapshot -c s1 " + Quote(img));
        ASSERT_TRUE(r.ok()) << r.Describe();
      }
    }
    std::string io = t.qemu_io ? "qemu-io" : Quote(Cli()) + " io";
    r = Run(io + Script(c.script) + " " + Quote(img));
    ASSERT_TRUE(r.ok()) << t.name << ": " << r.Describe();
    ASSERT_FALSE(r.crashed()) << r.Describe();
  }
  // QEMU's own result must be clean too, or the case tests nothing.
  for (const Target& t : targets) ExpectClean(d.Path(t.name + ".qcow2"));
  for (const Target& t : targets)
    if (t.name != "a") ExpectIdentical(d.Path("a.qcow2"), d.Path(t.name + ".qcow2"));
  if (c.snapshot_after_prep) {
    // The snapshot's view must be untouched by our writes.
    for (const Target& t : targets) {
      RunResult r =
          Run("qemu-img convert -l snapshot.name=s1 -O raw " + Quote(d.Path(t.name + ".qcow2")) +
              " " + Quote(d.Path(t.name + ".snap.raw")));
      ASSERT_TRUE(r.ok()) << r.Describe();
    }
    EXPECT_EQ(CompareFiles(d.Path("a.snap.raw"), d.Path("c.snap.raw")), "");
  }
  if (!c.backing) return;
  // Writes to the overlay must leave the backing file alone.
  ExpectClean(d.Path("base.qcow2"));
}

Case Generic(const std::string& opts, uint32_t cs, uint64_t size = 64ull << 20) {
  Case c;
  c.opts = opts;
  c.cluster = cs;
  c.size = size;
  c.script = GenericScript(cs, size);
  return c;
}

Case WithBacking(const std::string& opts, uint32_t cs, bool v2 = false) {
  Case c;
  c.opts = opts;
  c.cluster = cs;
  c.size = 64ull * cs;
  c.backing = true;
  c.backing_size = 48ull * cs;  // the overlay is larger: its tail has no backing data
  c.base_script = {Cmd("write -P 0xb1", 0, 40 * cs), Cmd("write -z", 6 * cs, cs),
                   Cmd("discard", 16 * cs, 2 * cs), Cmd("write -P 0xb2", 16 * cs + cs / 2, 10)};
  c.script = BackingScript(cs, c.size);
  if (v2) c.script.push_back(Cmd("write -z", 30 * cs, 2 * cs));  // v2: zeroes written as data
  return c;
}

TEST(WriteInteropTest, DefaultOptions) { RunCase(Generic("", 65536)); }
TEST(WriteInteropTest, ClusterSize512) { RunCase(Generic("cluster_size=512", 512)); }
TEST(WriteInteropTest, ClusterSize4k) { RunCase(Generic("cluster_size=4096", 4096)); }
TEST(WriteInteropTest, ClusterSize64k) { RunCase(Generic("cluster_size=65536", 65536)); }
TEST(WriteInteropTest, ClusterSize2M) {
  RunCase(Generic("cluster_size=2M", 2u << 20, 128ull << 20));
}
TEST(WriteInteropTest, RefcountBits1) {
  RunCase(Generic("cluster_size=4096,refcount_bits=1", 4096));
}
TEST(WriteInteropTest, RefcountBits8) { RunCase(Generic("refcount_bits=8", 65536)); }
TEST(WriteInteropTest, RefcountBits16) { RunCase(Generic("refcount_bits=16", 65536)); }
TEST(WriteInteropTest, RefcountBits64) {
  RunCase(Generic("cluster_size=4096,refcount_bits=64", 4096));
}
TEST(WriteInteropTest, Compat010) { RunCase(Generic("compat=0.10", 65536)); }
TEST(WriteInteropTest, Compat010ClusterSize4k) {
  RunCase(Generic("compat=0.10,cluster_size=4096", 4096));
}
TEST(WriteInteropTest, ExtendedL2) {
  Case c = Generic("extended_l2=on", 65536);
  c.script = Concat(c.script, SubclusterScript(65536));
  RunCase(c);
}
TEST(WriteInteropTest, ExtendedL2ClusterSize16k) {
  Case c = Generic("extended_l2=on,cluster_size=16384", 16384);
  c.script = Concat(c.script, SubclusterScript(16384));
  RunCase(c);
}
TEST(WriteInteropTest, LazyRefcounts) { RunCase(Generic("lazy_refcounts=on", 65536)); }
TEST(WriteInteropTest, CompressionZstd) { RunCase(Generic("compression_type=zstd", 65536)); }
TEST(WriteInteropTest, PreallocMetadata) {
  RunCase(Generic("preallocation=metadata,cluster_size=4096", 4096, 8ull << 20));
}
TEST(WriteInteropTest, PreallocFalloc) {
  RunCase(Generic("preallocation=falloc", 65536, 16ull << 20));
}
TEST(WriteInteropTest, PreallocFull) { RunCase(Generic("preallocation=full", 65536, 16ull << 20)); }
TEST(WriteInteropTest, PreallocMetadataExtendedL2) {
  Case c = Generic("preallocation=metadata,extended_l2=on", 65536, 8ull << 20);
  c.script = Concat(c.script, SubclusterScript(65536));
  RunCase(c);
}
TEST(WriteInteropTest, DataFile) { RunCase(Generic("data_file={DATA}", 65536)); }
TEST(WriteInteropTest, DataFileRaw) {
  RunCase(Generic("data_file={DATA},data_file_raw=on", 65536));
}
TEST(WriteInteropTest, DataFileExtendedL2) {
  Case c = Generic("data_file={DATA},extended_l2=on", 65536);
  c.script = Concat(c.script, SubclusterScript(65536));
  RunCase(c);
}

TEST(WriteInteropTest, BackingFile) { RunCase(WithBacking("", 65536)); }
TEST(WriteInteropTest, BackingFileClusterSize4k) {
  RunCase(WithBacking("cluster_size=4096", 4096));
}
TEST(WriteInteropTest, BackingFileCompat010) {
  RunCase(WithBacking("compat=0.10,cluster_size=4096", 4096, true));
}
TEST(WriteInteropTest, BackingFileExtendedL2) {
  Case c = WithBacking("extended_l2=on", 65536);
  c.script = Concat(c.script, SubclusterScript(65536));
  c.size = 64ull * 65536;
  RunCase(c);
}
TEST(WriteInteropTest, BackingFileExtendedL2Subclusters) {
  // Every subcluster write over backing data needs its own partial COW.
  Case c = WithBacking("extended_l2=on,cluster_size=32768", 32768);
  uint64_t cs = 32768, sc = cs / 32;
  c.script = Concat(c.script,
                    {Cmd("write -P 0xe1", 2 * cs + 3 * sc + 5, 10),
                     Cmd("write -P 0xe2", 2 * cs + 3 * sc + 100, 10),
                     Cmd("write -P 0xe3", 2 * cs + 4 * sc - 1, 2),
                     Cmd("write -P 0xe4", 24 * cs + sc / 2, sc), Cmd("write -z", 25 * cs + sc, sc),
                     Cmd("discard", 26 * cs, cs), Cmd("write -P 0xe5", 26 * cs + 5 * sc, 5)});
  RunCase(c);
}
TEST(WriteInteropTest, BackingFileDataFile) { RunCase(WithBacking("data_file={DATA}", 65536)); }

// Writes past 4 GiB in a large sparse image with small clusters: L2 tables
// far apart, the refcount structures grow to describe a larger file.
TEST(WriteInteropTest, LargeSparseImage) {
  uint64_t g = 1ull << 30;
  Case c;
  c.opts = "cluster_size=512";
  c.cluster = 512;
  c.size = 6 * g;
  c.script = {Cmd("write -P 0x01", 0, 4096),
              Cmd("write -P 0x02", 4 * g - 700, 1400),  // across the 4 GiB line
              Cmd("write -P 0x03", 5 * g + 12345, 300000),
              Cmd("write -P 0x04", 3 * g, 65536),
              Cmd("write -z", 5 * g + 12345 + 1000, 100000),
              Cmd("discard", 5 * g + 200000, 50000),
              Cmd("write -P 0x05", 6 * g - 1000, 1000),  // the last bytes
              Cmd("write -P 0x06", 2 * g + 511, 2),
              Cmd("write -P 0x07", 4 * g + 1, 600000)};
  RunCase(c);
}
TEST(WriteInteropTest, LargeSparseImage64k) {
  uint64_t g = 1ull << 30;
  Case c;
  c.opts = "refcount_bits=64";
  c.size = 300 * g;  // many L1 entries, L2 tables far apart in guest space
  c.script = {Cmd("write -P 0x01", 0, 4096),
              Cmd("write -P 0x02", 4 * g - 7, 14),
              Cmd("write -P 0x03", 100 * g + 3, 200000),
              Cmd("write -P 0x04", 299 * g, 65536),
              Cmd("write -z", 100 * g, 65536),
              Cmd("discard", 100 * g + 65536, 65536),
              Cmd("write -P 0x05", 300 * g - 512, 512)};
  RunCase(c);
}

// Small clusters with 64-bit refcounts: each refcount block covers only 64
// clusters (32 KiB), each table cluster 64 blocks (2 MiB of file), so a few
// MiB of allocations grow the refcount table several times.
TEST(WriteInteropTest, RefcountTableGrowth) {
  Case c;
  c.opts = "cluster_size=512,refcount_bits=64";
  c.cluster = 512;
  c.size = 64ull << 20;
  c.script = {Cmd("write -P 0x21", 0, 3 << 20),
              Cmd("write -P 0x22", 8 << 20, 1 << 20),
              Cmd("write -P 0x23", 20 << 20, 2 << 20),
              Cmd("discard", 1 << 20, 1 << 20),
              Cmd("write -P 0x24", 40 << 20, 1 << 20),  // reuses freed clusters
              Cmd("write -P 0x25", (1 << 20) + 100, 300000),
              Cmd("aio_write -P 0x26", 50 << 20, 512 << 10),
              Cmd("aio_write -P 0x27", (50 << 20) + (600 << 10), 512 << 10),
              "aio_flush",
              Cmd("write -z", 9 << 20, 100000)};
  RunCase(c);
}

// Overwriting clusters that QEMU wrote compressed: COW from a compressed
// cluster and freeing its sectors.
TEST(WriteInteropTest, OverwriteCompressedClusters) {
  for (const char* type : {"zlib", "zstd"}) {
    SCOPED_TRACE(type);
    Case c;
    c.opts = std::string("compression_type=") + type;
    uint64_t cs = 65536;
    c.size = 32 * cs;
    c.qemu_prep = {Cmd("write -c -P 0x31", 0, 8 * cs), Cmd("write -c -P 0x32", 10 * cs, 4 * cs)};
    c.script = {Cmd("write -P 0x41", 100, 100),
                Cmd("write -P 0x42", cs + cs / 2, cs),
                Cmd("write -z", 3 * cs, cs),
                Cmd("discard", 4 * cs, cs),
                Cmd("write -P 0x43", 5 * cs, cs),
                Cmd("write -z", 6 * cs + 5, 5),
                Cmd("write -P 0x44", 10 * cs + 1, 4 * cs - 2)};
    RunCase(c);
  }
}

// Writes after an internal snapshot: L2 tables and data clusters shared with
// the snapshot (refcount 2, no COPIED flag) must be copied, not overwritten.
TEST(WriteInteropTest, OverwriteSnapshotSharedClusters) {
  for (const char* opts :
       {"cluster_size=65536", "cluster_size=4096,extended_l2=off", "extended_l2=on"}) {
    SCOPED_TRACE(opts);
    Case c;
    c.opts = opts;
    uint64_t cs = std::string(opts).find("4096") != std::string::npos ? 4096 : 65536;
    c.cluster = static_cast<uint32_t>(cs);
    c.size = 64 * cs;
    c.qemu_prep = {Cmd("write -P 0x51", 0, 20 * cs), Cmd("write -z", 20 * cs, 2 * cs),
                   Cmd("write -P 0x52", 30 * cs + 7, 100)};
    c.snapshot_after_prep = true;
    c.script = {Cmd("write -P 0x61", 100, 100),
                Cmd("write -P 0x62", 2 * cs + cs / 2, cs),
                Cmd("write -z", 5 * cs, cs),
                Cmd("discard", 6 * cs, 2 * cs),
                Cmd("write -P 0x63", 10 * cs, cs),
                Cmd("write -P 0x64", 20 * cs + 3, 3),
                Cmd("write -P 0x65", 30 * cs + 50, 100),
                Cmd("write -P 0x66", 11 * cs, 5)};
    RunCase(c);
  }
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
