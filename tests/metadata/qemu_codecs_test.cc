// The metadata codecs against images written by QEMU's own tools: every
// field we parse must agree with `qemu-img info`, and QEMU must accept what
// we serialize.
#include <zlib.h>

#include <gtest/gtest.h>

#include "metadata/bitmap_directory.h"
#include "metadata/endian.h"
#include "metadata/header.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "metadata/snapshot_table.h"
#include "util/test_util.h"

namespace qcow2j {
namespace {

using test::Json;
using test::Quote;
using test::RunResult;
using test::TempDir;

class QemuCodecsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Interop tests must run for real: a missing QEMU is a failure, not a skip.
    ASSERT_TRUE(test::HaveProgram("qemu-img")) << "qemu-img not installed (scripts/install-deps.sh)";
  }

  std::string Img(const std::string& name) { return dir_.Path(name); }

  void Sh(const std::string& cmd) {
    RunResult r = test::Run(cmd);
    ASSERT_TRUE(r.ok()) << r.Describe();
  }

  Json Info(const std::string& path) {
    RunResult r = test::Run("qemu-img info -U --output=json " + Quote(path));
    EXPECT_TRUE(r.ok()) << r.Describe();
    std::string err;
    std::optional<Json> j = test::ParseJson(r.out, &err);
    EXPECT_TRUE(j.has_value()) << err;
    return j.value_or(Json());
  }

  static uint64_t Num(const Json& j, const std::string& path) {
    const Json* v = j.At(path);
    EXPECT_TRUE(v != nullptr && v->type == Json::Type::kNumber) << path;
    return v ? std::stoull(v->str) : 0;
  }
  static std::string Str(const Json& j, const std::string& path) {
    const Json* v = j.At(path);
    EXPECT_TRUE(v != nullptr && v->type == Json::Type::kString) << path;
    return v ? v->str : "";
  }
  static bool Bool(const Json& j, const std::string& path) {
    const Json* v = j.At(path);
    EXPECT_TRUE(v != nullptr && v->type == Json::Type::kBool) << path;
    return v && v->b;
  }

  // Parses as the engine does: a probe of the first bytes for cluster_bits,
  // then the whole first cluster.
  Header Parse(const std::string& path) {
    file_ = test::ReadFile(path);
    const auto* p = reinterpret_cast<const uint8_t*>(file_.data());
    std::span<const uint8_t> all(p, file_.size());
    Result<Header> probe = ParseHeader(all.first(kHeaderProbeBytes), file_.size());
    EXPECT_TRUE(probe.ok()) << probe.status().ToString();
    if (!probe.ok()) return Header();
    Result<Header> h = ParseHeader(all.first(std::min<uint64_t>(probe->cluster_size(),
                                                                file_.size())),
                                   file_.size());
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    if (!h.ok()) return Header();
    EXPECT_FALSE(h->probe_only);
    EXPECT_EQ(h->cluster_bits, probe->cluster_bits);
    EXPECT_EQ(h->l1_table_offset, probe->l1_table_offset);
    return *h;
  }

  std::span<const uint8_t> Bytes(uint64_t offset, uint64_t len) {
    EXPECT_LE(offset + len, file_.size());
    if (offset + len > file_.size()) return {};
    return {reinterpret_cast<const uint8_t*>(file_.data()) + offset, len};
  }

  // Writes SerializeHeader(h) over the first cluster of a copy of `path` and
  // asks QEMU to check it and describe it; returns the info.
  Json QemuReadsOurHeader(const std::string& path, const Header& h) {
    Result<std::vector<uint8_t>> bytes = SerializeHeader(h);
    EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
    if (!bytes.ok()) return Json();
    std::string copy = path + ".ours";
    std::string data = test::ReadFile(path);
    std::fill(data.begin(), data.begin() + static_cast<long>(h.cluster_size()), '\0');
    std::copy(bytes->begin(), bytes->end(), data.begin());
    test::WriteFile(copy, data);
    // From the image's directory: a relative data file name is found there.
    RunResult r = test::Run("cd " + Quote(dir_.path()) + " && qemu-img check -U " + Quote(copy));
    EXPECT_TRUE(r.ok()) << r.Describe();
    Result<Header> again = ParseHeader(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), h.cluster_size()),
        data.size());
    EXPECT_TRUE(again.ok()) << again.status().ToString();
    return Info(copy);
  }

  TempDir dir_;
  std::string file_;
};

TEST_F(QemuCodecsTest, Version2) {
  Sh("qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k " + Quote(Img("a")) + " 100M");
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  EXPECT_EQ(h.version, 2u);
  EXPECT_EQ(Str(info, "format-specific.data.compat"), "0.10");
  EXPECT_EQ(h.cluster_size(), Num(info, "cluster-size"));
  EXPECT_EQ(h.size, Num(info, "virtual-size"));
  EXPECT_EQ(h.refcount_order, 4u);
  EXPECT_EQ(h.refcount_bits(), Num(info, "format-specific.data.refcount-bits"));
  EXPECT_EQ(h.header_length, 72u);
  EXPECT_EQ(h.incompatible_features, 0u);
  EXPECT_TRUE(h.feature_names.empty());
  Json ours = QemuReadsOurHeader(Img("a"), h);
  EXPECT_EQ(Num(ours, "virtual-size"), h.size);
  EXPECT_EQ(Str(ours, "format-specific.data.compat"), "0.10");
}

TEST_F(QemuCodecsTest, Version3Defaults) {
  Sh("qemu-img create -q -f qcow2 " + Quote(Img("a")) + " 3G");
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  EXPECT_EQ(h.version, 3u);
  EXPECT_EQ(h.size, 3ull << 30);
  EXPECT_EQ(h.size, Num(info, "virtual-size"));
  EXPECT_EQ(h.cluster_size(), 65536u);
  EXPECT_EQ(h.l1_size, 6u);  // 3 GiB / 512 MiB per L2 table
  EXPECT_EQ(h.header_length, 112u);
  EXPECT_EQ(h.unknown_header_tail, std::string(7, '\0'));
  EXPECT_EQ(h.compression_type, kCompressionZlib);
  EXPECT_EQ(Str(info, "format-specific.data.compression-type"), "zlib");
  EXPECT_FALSE(Bool(info, "format-specific.data.lazy-refcounts"));
  EXPECT_FALSE(Bool(info, "format-specific.data.extended-l2"));
  EXPECT_EQ(DescribeFeature(h.feature_names, 0, 0), "dirty bit");
  bool has_corrupt = false;
  for (const FeatureName& f : h.feature_names) has_corrupt |= f.name == "corrupt bit";
  EXPECT_TRUE(has_corrupt);
  Json ours = QemuReadsOurHeader(Img("a"), h);
  EXPECT_EQ(Num(ours, "virtual-size"), h.size);
}

TEST_F(QemuCodecsTest, ExtendedL2ZstdLazyRefcounts64) {
  Sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k,compression_type=zstd,"
     "refcount_bits=64,lazy_refcounts=on " + Quote(Img("a")) + " 5G");
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  EXPECT_TRUE(h.extended_l2());
  EXPECT_TRUE(Bool(info, "format-specific.data.extended-l2"));
  EXPECT_EQ(h.l2_entries(), 8192u);
  EXPECT_EQ(h.l1_size, 5u);  // 1 GiB per L2 table
  EXPECT_EQ(h.compression_type, kCompressionZstd);
  EXPECT_TRUE(h.incompatible_features & kIncompatCompression);
  EXPECT_EQ(Str(info, "format-specific.data.compression-type"), "zstd");
  EXPECT_EQ(h.refcount_order, 6u);
  EXPECT_EQ(h.refcount_bits(), Num(info, "format-specific.data.refcount-bits"));
  EXPECT_TRUE(h.compatible_features & kCompatLazyRefcounts);
  EXPECT_TRUE(Bool(info, "format-specific.data.lazy-refcounts"));
  EXPECT_EQ(h.cluster_size(), Num(info, "cluster-size"));
  Json ours = QemuReadsOurHeader(Img("a"), h);
  EXPECT_EQ(Str(ours, "format-specific.data.compression-type"), "zstd");
  EXPECT_TRUE(Bool(ours, "format-specific.data.extended-l2"));
}

TEST_F(QemuCodecsTest, BackingFileAndFormat) {
  Sh("qemu-img create -q -f qcow2 " + Quote(Img("base.qcow2")) + " 64M");
  Sh("cd " + Quote(dir_.path()) + " && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top");
  Header h = Parse(Img("top"));
  Json info = Info(Img("top"));
  EXPECT_EQ(h.backing_file, "base.qcow2");
  EXPECT_EQ(h.backing_file, Str(info, "backing-filename"));
  ASSERT_TRUE(h.backing_format.has_value());
  EXPECT_EQ(*h.backing_format, Str(info, "backing-filename-format"));
  EXPECT_EQ(h.size, 64u << 20);
  // Our placement of the name differs from QEMU's; QEMU still finds it.
  h.backing_file = "base.qcow2";
  Json ours = QemuReadsOurHeader(Img("top"), h);
  EXPECT_EQ(Str(ours, "backing-filename"), "base.qcow2");
  EXPECT_EQ(Str(ours, "backing-filename-format"), "qcow2");
}

TEST_F(QemuCodecsTest, ExternalDataFile) {
  Sh("cd " + Quote(dir_.path()) +
     " && qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on a 16M");
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  EXPECT_TRUE(h.has_data_file());
  ASSERT_TRUE(h.data_file.has_value());
  EXPECT_EQ(*h.data_file, Str(info, "format-specific.data.data-file"));
  EXPECT_TRUE(h.autoclear_features & kAutoclearDataFileRaw);
  EXPECT_TRUE(Bool(info, "format-specific.data.data-file-raw"));
  Json ours = QemuReadsOurHeader(Img("a"), h);
  EXPECT_EQ(Str(ours, "format-specific.data.data-file"), "d.raw");
}

TEST_F(QemuCodecsTest, BitmapDirectory) {
  Sh("qemu-img create -q -f qcow2 " + Quote(Img("a")) + " 1G");
  Sh("qemu-img bitmap --add -g 128k " + Quote(Img("a")) + " first");
  Sh("qemu-img bitmap --add --disable " + Quote(Img("a")) + " second-bitmap");
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  ASSERT_TRUE(h.bitmaps.has_value());
  EXPECT_TRUE(h.autoclear_features & kAutoclearBitmaps);
  const Json* list = info.At("format-specific.data.bitmaps");
  ASSERT_TRUE(list && list->is_array());
  ASSERT_EQ(h.bitmaps->nb_bitmaps, list->arr.size());
  Result<std::vector<BitmapDirectoryEntry>> dir = ParseBitmapDirectory(
      Bytes(h.bitmaps->bitmap_directory_offset, h.bitmaps->bitmap_directory_size),
      h.bitmaps->nb_bitmaps, h.cluster_bits, file_.size());
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  for (size_t i = 0; i < dir->size(); ++i) {
    const BitmapDirectoryEntry& e = (*dir)[i];
    EXPECT_EQ(e.name, Str(list->arr[i], "name"));
    EXPECT_EQ(e.granularity(), Num(list->arr[i], "granularity"));
    const Json* flags = list->arr[i].Get("flags");
    ASSERT_TRUE(flags && flags->is_array());
    bool auto_flag = false;
    for (const Json& f : flags->arr) auto_flag |= f.str == "auto";
    EXPECT_EQ(e.auto_enabled(), auto_flag);
    EXPECT_TRUE(e.usable());
    // A 1 GiB disk at this granularity needs this many bitmap clusters.
    const uint64_t bits = (h.size + e.granularity() - 1) / e.granularity();
    EXPECT_EQ(e.bitmap_table_size, (bits / 8 + h.cluster_size() - 1) / h.cluster_size());
  }
  EXPECT_EQ((*dir)[0].granularity(), 131072u);
  EXPECT_TRUE((*dir)[0].auto_enabled());
  EXPECT_FALSE((*dir)[1].auto_enabled());
  EXPECT_EQ(SerializeBitmapDirectory(*dir),
            std::vector<uint8_t>(Bytes(h.bitmaps->bitmap_directory_offset,
                                       h.bitmaps->bitmap_directory_size).begin(),
                                 Bytes(h.bitmaps->bitmap_directory_offset,
                                       h.bitmaps->bitmap_directory_size).end()));
  Json ours = QemuReadsOurHeader(Img("a"), h);
  const Json* list2 = ours.At("format-specific.data.bitmaps");
  ASSERT_TRUE(list2 && list2->is_array());
  EXPECT_EQ(list2->arr.size(), 2u);
}

TEST_F(QemuCodecsTest, SnapshotTable) {
  Sh("qemu-img create -q -f qcow2 " + Quote(Img("a")) + " 256M");
  Sh("qemu-img snapshot -c first " + Quote(Img("a")));
  Sh("qemu-img snapshot -c 'with a longer name' " + Quote(Img("a")));
  Header h = Parse(Img("a"));
  Json info = Info(Img("a"));
  const Json* list = info.Get("snapshots");
  ASSERT_TRUE(list && list->is_array());
  ASSERT_EQ(h.nb_snapshots, list->arr.size());
  Result<std::vector<SnapshotEntry>> snaps =
      ParseSnapshotTable(Bytes(h.snapshots_offset, file_.size() - h.snapshots_offset),
                         h.nb_snapshots, h.cluster_bits, file_.size());
  ASSERT_TRUE(snaps.ok()) << snaps.status().ToString();
  for (size_t i = 0; i < snaps->size(); ++i) {
    const SnapshotEntry& s = (*snaps)[i];
    const Json& j = list->arr[i];
    EXPECT_EQ(s.id, Str(j, "id"));
    EXPECT_EQ(s.name, Str(j, "name"));
    EXPECT_EQ(s.date_sec, Num(j, "date-sec"));
    EXPECT_EQ(s.date_nsec, Num(j, "date-nsec"));
    EXPECT_EQ(s.vm_clock_nsec, Num(j, "vm-clock-nsec"));
    EXPECT_EQ(s.vm_state_size, Num(j, "vm-state-size"));
    ASSERT_TRUE(s.icount.has_value());
    EXPECT_EQ(*s.icount, Num(j, "icount"));
    EXPECT_EQ(s.disk_size, h.size);
    EXPECT_EQ(s.l1_size, h.l1_size);
  }
  EXPECT_EQ((*snaps)[1].name, "with a longer name");
  // QEMU 7 writes exactly what we write, except that it leaves out the
  // padding of the last entry (the table ends the file here).
  std::vector<uint8_t> ours = SerializeSnapshotTable(*snaps);
  const uint64_t theirs_size = std::min<uint64_t>(ours.size(), file_.size() - h.snapshots_offset);
  EXPECT_GT(theirs_size, ours.size() - 8);
  std::span<const uint8_t> theirs = Bytes(h.snapshots_offset, theirs_size);
  EXPECT_TRUE(std::equal(theirs.begin(), theirs.end(), ours.begin()));
}

// An unknown extension and header tail we write survive QEMU rewriting the
// header (amend), and our journal extension is kept as an unknown one.
TEST_F(QemuCodecsTest, QemuKeepsOurUnknownExtensionsAndTail) {
  Sh("qemu-img create -q -f qcow2 " + Quote(Img("a")) + " 64M");
  Header h = Parse(Img("a"));
  h.other_extensions.push_back({0x7a7a7a7a, "opaque bytes"});
  h.journal = std::string("journal\0payload", 15);
  h.unknown_header_tail = std::string(7, '\0') + "futurefl";  // header_length 120
  Result<std::vector<uint8_t>> bytes = SerializeHeader(h);
  ASSERT_TRUE(bytes.ok());
  std::string data = test::ReadFile(Img("a"));
  std::copy(bytes->begin(), bytes->end(), data.begin());
  test::WriteFile(Img("a"), data);
  Sh("qemu-img amend -f qcow2 -o lazy_refcounts=on " + Quote(Img("a")));
  Header after = Parse(Img("a"));
  EXPECT_TRUE(after.compatible_features & kCompatLazyRefcounts);
  EXPECT_EQ(after.header_length, 120u);
  EXPECT_EQ(after.unknown_header_tail, h.unknown_header_tail);
  ASSERT_TRUE(after.journal.has_value());
  EXPECT_EQ(*after.journal, *h.journal);
  bool found = false;
  for (const HeaderExtension& e : after.other_extensions) {
    found |= e.type == 0x7a7a7a7a && e.data == "opaque bytes";
  }
  EXPECT_TRUE(found);
}

// QEMU packs sub-byte refcounts as we do: the four clusters of a new image
// (header, refcount table, refcount block, L1 table) have refcount 1.
TEST_F(QemuCodecsTest, RefcountBlocksOfEveryWidth) {
  for (uint32_t order = 0; order <= 6; ++order) {
    SCOPED_TRACE("refcount_bits " + std::to_string(1u << order));
    const std::string img = Img("r" + std::to_string(order));
    Sh("qemu-img create -q -f qcow2 -o refcount_bits=" + std::to_string(1u << order) + " " +
       Quote(img) + " 64M");
    Header h = Parse(img);
    EXPECT_EQ(h.refcount_order, order);
    const uint64_t block_offset =
        LoadBE64(Bytes(h.refcount_table_offset, 8).data()) & kRefcountTableOffsetMask;
    ASSERT_NE(block_offset, 0u);
    std::span<const uint8_t> block = Bytes(block_offset, h.cluster_size());
    ASSERT_EQ(block.size(), h.cluster_size());
    for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(GetRefcount(block, order, i), 1u) << i;
    for (uint64_t i = 4; i < RefcountBlockEntries(h.cluster_bits, order); ++i) {
      ASSERT_EQ(GetRefcount(block, order, i), 0u) << i;
    }
  }
}

std::string Inflate(std::span<const uint8_t> in, size_t out_size) {
  std::string out(out_size, '\0');
  z_stream z{};
  if (inflateInit2(&z, -15) != Z_OK) return "";
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&z, Z_FINISH);
  const size_t produced = out.size() - z.avail_out;
  inflateEnd(&z);
  // QEMU stops decompressing once a cluster is produced; trailing bytes of the
  // last sector may belong to the next cluster.
  if ((rc != Z_STREAM_END && rc != Z_OK && rc != Z_BUF_ERROR) || produced != out_size) return "";
  return out;
}

// Compressed descriptors as QEMU writes them, for every cluster size: decode,
// read the bytes named, inflate, compare with the source.
TEST_F(QemuCodecsTest, CompressedClustersOfEveryClusterSize) {
  for (uint32_t bits = kMinClusterBits; bits <= kMaxClusterBits; ++bits) {
    SCOPED_TRACE("cluster_bits " + std::to_string(bits));
    const uint64_t cs = 1ull << bits;
    std::string raw;
    for (uint64_t i = 0; raw.size() < 2 * cs; ++i) raw += "line " + std::to_string(i * 7919) + "\n";
    raw.resize(2 * cs);
    const std::string src = Img("src" + std::to_string(bits));
    const std::string img = Img("c" + std::to_string(bits));
    test::WriteFile(src, raw);
    Sh("qemu-img convert -c -f raw -O qcow2 -o cluster_size=" + std::to_string(cs) + " " +
       Quote(src) + " " + Quote(img));
    Header h = Parse(img);
    ASSERT_EQ(h.cluster_bits, bits);
    L1Entry l1 = L1Entry::Decode(LoadBE64(Bytes(h.l1_table_offset, 8).data()));
    ASSERT_NE(l1.l2_offset, 0u);
    EXPECT_EQ(l1.reserved_bits, 0u);
    for (uint64_t c = 0; c < 2; ++c) {
      // With 512-byte clusters the second guest cluster is in the same L2 table.
      L2Entry e = L2Entry::Decode(LoadBE64(Bytes(l1.l2_offset + 8 * c, 8).data()), 0, false);
      ASSERT_EQ(e.type(), ClusterType::kCompressed) << c;
      CompressedDescriptor d = CompressedDescriptor::Decode(e.raw, bits);
      const uint64_t len = std::min<uint64_t>(d.compressed_size(), file_.size() - d.host_offset);
      std::string got = Inflate(Bytes(d.host_offset, len), cs);
      EXPECT_TRUE(got == raw.substr(c * cs, cs)) << "cluster " << c;
      // Re-encoding the same extent gives QEMU's descriptor back.
      Result<uint64_t> again = CompressedDescriptor::Encode(d.host_offset, d.compressed_size(),
                                                            bits);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(*again, e.raw);
    }
  }
}

}  // namespace
}  // namespace qcow2j
