#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>

#include "tools/cli/info_format.h"
#include "tools/cli/io_format.h"
#include "tools/cli/json_writer.h"
#include "tools/cli/map_format.h"
#include "tools/cli/zero_detect.h"

namespace qcow2j::cli {
namespace {

TEST(JsonWriterTest, KeysFollowQemuHashOrder) {
  JsonValue o = JsonValue::MakeObject();
  for (const char* k : {"id", "name", "vm-state-size", "date-sec", "date-nsec", "vm-clock-sec",
                        "vm-clock-nsec", "icount"}) {
    o.Set(k, 0);
  }
  std::string order;
  for (const auto* kv : o.OrderedEntries()) order += kv->first + " ";
  // What qemu-img info prints for a snapshot.
  EXPECT_EQ(order, "icount vm-clock-nsec name date-sec date-nsec vm-clock-sec id vm-state-size ");
}

TEST(JsonWriterTest, PrettyAndCompactMatchQemu) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("format", "qcow2");
  o.Set("dirty-flag", false);
  JsonValue list = JsonValue::MakeArray();
  list.Append(1);
  o.Set("snapshots", std::move(list));
  o.Set("virtual-size", uint64_t{1} << 40);
  EXPECT_EQ(o.Pretty(),
            "{\n    \"snapshots\": [\n        1\n    ],\n    \"virtual-size\": 1099511627776,\n"
            "    \"format\": \"qcow2\",\n    \"dirty-flag\": false\n}");
  EXPECT_EQ(JsonValue::MakeArray().Pretty(), "[\n]");
  EXPECT_EQ(o.Compact(),
            "{\"snapshots\": [1], \"virtual-size\": 1099511627776, \"format\": \"qcow2\", "
            "\"dirty-flag\": false}");
}

TEST(JsonWriterTest, EscapesLikeQemu) {
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(JsonQuote("\xc3\xa9"), "\"\\u00E9\"");
  EXPECT_EQ(JsonQuote("\xff"), "\"\\uFFFD\"");
  EXPECT_EQ(JsonQuote("\xf0\x9f\x98\x80"), "\"\\uD83D\\uDE00\"");
}

ImageInfo SampleInfo() {
  ImageInfo i;
  i.format = "qcow2";
  i.filename = "top.qcow2";
  i.virtual_size = 67108864;
  i.actual_size = 1323008;
  i.cluster_size = 65536;
  i.version = 3;
  i.refcount_bits = 16;
  i.compression_type = "zlib";
  i.backing_file = "base.qcow2";
  i.full_backing_file = "base.qcow2";
  i.backing_format = "qcow2";
  return i;
}

TEST(InfoFormatTest, JsonMatchesQemuImg) {
  EXPECT_EQ(InfoToJson(SampleInfo()).Pretty(),
            "{\n"
            "    \"backing-filename-format\": \"qcow2\",\n"
            "    \"virtual-size\": 67108864,\n"
            "    \"filename\": \"top.qcow2\",\n"
            "    \"cluster-size\": 65536,\n"
            "    \"format\": \"qcow2\",\n"
            "    \"actual-size\": 1323008,\n"
            "    \"format-specific\": {\n"
            "        \"type\": \"qcow2\",\n"
            "        \"data\": {\n"
            "            \"compat\": \"1.1\",\n"
            "            \"compression-type\": \"zlib\",\n"
            "            \"lazy-refcounts\": false,\n"
            "            \"refcount-bits\": 16,\n"
            "            \"corrupt\": false,\n"
            "            \"extended-l2\": false\n"
            "        }\n"
            "    },\n"
            "    \"full-backing-filename\": \"base.qcow2\",\n"
            "    \"backing-filename\": \"base.qcow2\",\n"
            "    \"dirty-flag\": false\n"
            "}");
}

TEST(InfoFormatTest, HumanMatchesQemuImg) {
  setenv("TZ", "UTC", 1);
  tzset();
  ImageInfo i = SampleInfo();
  SnapshotInfo s;
  s.id = "1";
  s.name = "snap1";
  s.date_sec = 1795290813;
  s.vm_clock_nsec = 3723004000000ull;  // 1:02:03.004
  s.icount = 0;
  i.snapshots.push_back(s);
  i.version = 2;
  EXPECT_EQ(InfoToHuman(i),
            "image: top.qcow2\n"
            "file format: qcow2\n"
            "virtual size: 64 MiB (67108864 bytes)\n"
            "disk size: 1.26 MiB\n"
            "cluster_size: 65536\n"
            "backing file: base.qcow2\n"
            "backing file format: qcow2\n"
            "Snapshot list:\n"
            "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n"
            "1         snap1                 0 B 2026-11-21 19:53:33 01:02:03.004          0\n"
            "Format specific information:\n"
            "    compat: 0.10\n"
            "    compression type: zlib\n"
            "    refcount bits: 16\n");
}

TEST(MapFormatTest, MergesOnlyEqualContiguousExtents) {
  BlockStatus a;
  a.offset = 0;
  a.length = 65536;
  a.present = a.data = true;
  a.host_offset = 327680;
  a.filename = "x";
  BlockStatus b = a;
  b.offset = 65536;
  b.host_offset = 327680 + 65536;
  EXPECT_TRUE(CanMerge(a, b));
  b.host_offset = 0;  // not contiguous on the host
  EXPECT_FALSE(CanMerge(a, b));
  b.host_offset = 327680 + 65536;
  b.depth = 1;
  EXPECT_FALSE(CanMerge(a, b));
  BlockStatus z1, z2;
  z1.length = z2.length = 512;
  z2.offset = 512;
  z1.zero = z2.zero = true;
  EXPECT_TRUE(CanMerge(z1, z2));
  EXPECT_EQ(MapEntryJson(a), "{ \"start\": 0, \"length\": 65536, \"depth\": 0, \"present\": true, "
                             "\"zero\": false, \"data\": true, \"offset\": 327680}");
  EXPECT_EQ(MapEntryJson(z1), "{ \"start\": 0, \"length\": 512, \"depth\": 0, \"present\": false, "
                              "\"zero\": true, \"data\": false}");
  EXPECT_EQ(MapHumanHeader(), "Offset          Length          Mapped to       File\n");
  EXPECT_EQ(*MapEntryHuman(a), "0               0x10000         0x50000         x\n");
  EXPECT_EQ(*MapEntryHuman(z1), "");
  a.host_offset.reset();
  EXPECT_FALSE(MapEntryHuman(a).ok());
}

TEST(IoFormatTest, TokenizesAtSpaces) {
  EXPECT_EQ(TokenizeIoCommand("  write  -P 0xab 0   4k "),
            (std::vector<std::string>{"write", "-P", "0xab", "0", "4k"}));
  EXPECT_TRUE(TokenizeIoCommand("").empty());
}

TEST(IoFormatTest, NumbersAndPatterns) {
  EXPECT_EQ(*ParseIoNumber("4k"), 4096);
  EXPECT_EQ(ParseIoNumber("1x").status().message(),
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1x");
  EXPECT_EQ(ParseIoNumber("9E").status().message(), "Parsing error: argument too large -- 9E");
  EXPECT_EQ(*ParseIoPattern("0xab"), 0xab);
  EXPECT_EQ(*ParseIoPattern("171"), 171);
  EXPECT_EQ(ParseIoPattern("300").status().message(), "300 is not a valid pattern byte");
  EXPECT_FALSE(ParseIoPattern("zz").ok());
  EXPECT_FALSE(ParseIoPattern("-1").ok());
}

TEST(IoFormatTest, ReportsMatchQemuIo) {
  EXPECT_EQ(IoCvtStr(4096), "4 KiB");
  EXPECT_EQ(IoCvtStr(1536), "1.500 KiB");
  EXPECT_EQ(IoCvtStr(32), "32 bytes");
  EXPECT_EQ(IoCvtStr(0), "0 bytes");
  EXPECT_EQ(IoCvtStr(64.0 * 1048576), "64 MiB");
  EXPECT_EQ(IoTimeStr(0.88), "00.88 sec");
  EXPECT_EQ(IoTimeStr(3725.5), "1:02:05.50");
  EXPECT_EQ(IoReport("read", 0.5, 0, 4096, 4096, 1),
            "read 4096/4096 bytes at offset 0\n"
            "4 KiB, 1 ops; 00.50 sec (8 KiB/sec and 2.0000 ops/sec)\n");
  EXPECT_EQ(IoReportTerse("wrote", 0.5, 65536, 1), "65536,1,0:00:00.50,131072.000,2.000\n");
  uint8_t buf[18];
  for (int i = 0; i < 18; i++) buf[i] = static_cast<uint8_t>(i == 1 ? 'A' : 0xab);
  EXPECT_EQ(IoDumpBuffer(buf, 18, 0x10),
            "00000010:  ab 41 ab ab ab ab ab ab ab ab ab ab ab ab ab ab  .A..............\n"
            "00000020:  ab ab  ..\n");
}

TEST(ZeroDetectTest, SplitsAtGranularity) {
  std::vector<uint8_t> buf(16384, 0);
  buf[5000] = 1;
  EXPECT_FALSE(IsZero(buf.data(), buf.size()));
  EXPECT_TRUE(IsZero(buf.data(), 4096));
  auto runs = NonZeroRuns(buf.data(), buf.size(), 4096, true);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].offset, 4096u);
  EXPECT_EQ(runs[0].length, 4096u);
  auto all = NonZeroRuns(buf.data(), buf.size(), 4096, false);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_TRUE(all[0].zero);
  EXPECT_TRUE(all[2].zero);
  EXPECT_EQ(all[2].length, 8192u);
  EXPECT_EQ(NonZeroRuns(buf.data(), buf.size(), 0, true).size(), 1u);
}

}  // namespace
}  // namespace qcow2j::cli
